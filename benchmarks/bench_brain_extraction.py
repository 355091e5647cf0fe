"""Speed and memory of automatic brain extraction on a 256 x 256 x 180 whole-head volume.

    python benchmarks/bench_brain_extraction.py [--threads 1] [--volume PATH] [--repeats 2]

The volume is the whole-head avg152 T1 template (``../shared/data/templates/spm_avg152``)
resampled to 256 x 256 x 180 voxels, unless ``--volume`` names another file. Prints one line per
run: wall seconds, CPU seconds of this process (on a busy machine CPU time is the steadier
number), torch threads, peak RSS. Target: under 30 s. The first run includes loading and
verifying deepbet's weights; later runs reuse them.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MRISynthesisLib.brain_extraction import extract_brain  # noqa: E402
from MRISynthesisLib.io import load_volume  # noqa: E402
from MRISynthesisLib.volume import Volume  # noqa: E402

AVG152_T1 = REPO.parent / "shared" / "data" / "templates" / "spm_avg152" / "avg152T1.nii"
SHAPE = (256, 256, 180)


def resized(volume: Volume, shape=SHAPE) -> Volume:
    """``volume`` resampled (linear) to ``shape`` voxels over the same field of view."""
    from scipy import ndimage

    factors = np.array(shape) / np.array(volume.shape)
    array = ndimage.zoom(volume.array.astype(np.float32), factors, order=1)
    affine = volume.affine.copy()
    affine[:3, :3] = affine[:3, :3] / factors
    return Volume(array, affine)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", default=str(AVG152_T1), help="whole-head volume (default: avg152T1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs (default: 2)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if not Path(args.volume).is_file():
        raise SystemExit(f"missing {args.volume}; pass --volume")
    volume = resized(load_volume(args.volume))
    for run in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        mask = extract_brain(volume, device="cpu")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"brain extraction {'x'.join(map(str, volume.shape))} run {run + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
              f"{args.threads} torch thread(s), brain {mask.mean() * 100:.1f} % of voxels, peak RSS {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
