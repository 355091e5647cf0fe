"""The resumable training state: written atomically, read with ``torch.load(weights_only=True)``.

``train_state.pt`` holds everything needed to continue a run exactly where it stopped: model,
optimiser and schedule states, the GradScaler, the epoch and step counters, the image pools, the
best validation score so far and the random number generator states (python, numpy, torch CPU
and CUDA). RNG states are stored as tensors and plain python lists so that no pickled object is
needed: loading never executes code from the file.

The file is written to a temporary name in the same folder, flushed to disk and renamed over the
previous one (``os.replace`` is atomic on POSIX and Windows), so a process killed at any moment
leaves either the old or the new complete state, never a truncated one.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from MRISynthesisLib.atomic import atomic_path
from MRISynthesisLib.errors import InputError

STATE_VERSION = 1


def capture_rng_states() -> dict:
    """The states of python's, numpy's and torch's (CPU and CUDA) generators, weights_only-safe."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    states = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return states


def restore_rng_states(states: dict) -> None:
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"version": STATE_VERSION, **state}, tmp)
    return path


def load_state(path, map_location="cpu") -> dict:
    """Read a state written by :func:`save_state`; InputError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no resumable state in {path.parent}: {path.name} is missing "
                         "(the run stopped before its first checkpoint; start it again without --resume)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        # torch's own message suggests weights_only=False, which would run the file's pickled code:
        # never repeat that advice.
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise InputError(f"cannot read the training state {path}: it holds objects other than tensors and "
                             "plain values, so it is not a state written by MRISynthesis (it is not unpickled, "
                             "as that could run code)") from None
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise InputError(f"cannot read the training state {path}: {first}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise InputError(f"{path} is not a training state of this version ({STATE_VERSION})")
    return state
