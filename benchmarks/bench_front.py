"""Inference cost of the candidate generators of issue 25 (the x axis of the speed/quality front).

    python benchmarks/bench_front.py [--rounds 3] [--slices 16] [--batch-size 8] [--threads 1]

Bare network forward on 256 x 256 slices (batches of ``--batch-size``, float32, ``torch.no_grad``),
randomly initialised weights (the cost does not depend on the values). Every generator is measured
in each round, interleaved (A, B, C, D, A, B, ...), because the machine is shared; the cost is
process CPU time (``time.process_time``), so with one thread other work on the machine does not
change it. Prints slices per CPU-second (median over rounds) and each generator's cost relative to
the resunet default (today's T1 -> T2 and T2 -> T1 defaults share that network). bf16 is measured
only where the CPU has native bf16 (avx512_bf16 or amx); elsewhere it is emulated and ~10x slower.

The end-to-end speed of the cross-validation's trained models (preprocessing, resampling, whole
volumes) is in each run's ``scores.json`` (``slices_per_second``) of ``studies/cross_validation.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MRISynthesisLib.models import build_model  # noqa: E402

#: (label, registry name, options): today's default and the unet_256 candidates (1 = 2D, 3 = 2.5D +-1)
GENERATORS = [
    ("resunet ngf16 (v2/v4 default)", "resunet", {"ngf": 16, "levels": 4, "blocks": 1, "norm": "none", "in_channels": 1}),
    ("unet_256 ngf16", "unet_256", {"ngf": 16, "dropout": False, "in_channels": 1}),
    ("unet_256 ngf24 (v1)", "unet_256", {"ngf": 24, "dropout": False, "in_channels": 1}),
    ("unet_256 ngf32", "unet_256", {"ngf": 32, "dropout": False, "in_channels": 1}),
    ("unet_256 ngf16 2.5D", "unet_256", {"ngf": 16, "dropout": False, "in_channels": 3}),
    ("unet_256 ngf24 2.5D", "unet_256", {"ngf": 24, "dropout": False, "in_channels": 3}),
    ("unet_256 ngf32 2.5D (v5 candidate)", "unet_256", {"ngf": 32, "dropout": False, "in_channels": 3}),
    ("unet_128 ngf16 2.5D (v5 candidate 2)", "unet_128", {"ngf": 16, "dropout": False, "in_channels": 3}),
]


def native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_seconds(model, batch, batches: int, dtype) -> float:
    started = time.process_time()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        for _ in range(batches):
            model(batch)
    return time.process_time() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=16, help="slices per measurement (a multiple of the batch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtypes = ["fp32"] + (["bf16"] if native_bf16() else [])
    models = []
    for label, name, options in GENERATORS:
        model = build_model(name, **options).eval()
        batch = torch.rand(args.batch_size, options["in_channels"], 256, 256) * 2 - 1
        parameters = sum(p.numel() for p in model.parameters())
        cpu_seconds(model, batch, 1, "fp32")  # warm-up
        models.append((label, model, batch, parameters))
    batches = max(1, args.slices // args.batch_size)
    times = {(label, d): [] for label, *_ in models for d in dtypes}
    for _ in range(args.rounds):
        for label, model, batch, _ in models:
            for dtype in dtypes:
                times[(label, dtype)].append(cpu_seconds(model, batch, batches, dtype))
    n = batches * args.batch_size
    print(f"threads {args.threads}, batch {args.batch_size}, {n} slices x {args.rounds} rounds (interleaved), "
          f"256 x 256, dtypes {', '.join(dtypes)}{'' if 'bf16' in dtypes else ' (no native bf16 on this CPU)'}")
    # the shipped file: fp16 weights (2 bytes a parameter); the repository's clone budget counts it twice
    # (in the working tree and in .git, where fp16 weights barely compress)
    print("| generator | parameters | fp16 file | " + " | ".join(f"{d} slices / CPU-s | {d} cost vs resunet" for d in dtypes) + " |")
    print("|---|---|---|" + "---|---|" * len(dtypes))
    base = {d: statistics.median(times[(models[0][0], d)]) for d in dtypes}
    for label, _, _, parameters in models:
        cells = []
        for d in dtypes:
            seconds = statistics.median(times[(label, d)])
            cells += [f"{n / seconds:.1f}", f"{seconds / base[d]:.2f}x"]
        print(f"| {label} | {parameters / 1e6:.2f} M | {2 * parameters / 1e6:.1f} MB | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
