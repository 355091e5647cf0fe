"""Inference speed and memory of the default-size U-Net on a real 240 x 240 x 155 volume.

    python benchmarks/bench_inference.py [--volume PATH] [--batch-size 8] [--threads N]

Prints, measured in one run (these machines are noisy, so compare ratios, not seconds):
wall time and slices/s of ``Synthesizer.synthesize``; the bare model forward on the same
slices; end-to-end overhead over the bare forward (target: under 10 %); the model's FLOPs per
slice (torch.utils.flop_counter); achieved GFLOP/s as a fraction of this CPU's fp32 matmul
GFLOP/s measured in the same process; peak RSS. With ``--large`` it also synthesises a
512 x 512 x 300 volume with a tiny model and reports the peak-RSS growth relative to the
volume's own size (memory is bounded by the batch, not by the volume).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MRISynthesisLib.checkpoint import ModelMetadata, save_checkpoint  # noqa: E402
from MRISynthesisLib.io import load_volume  # noqa: E402
from MRISynthesisLib.models import build_model, default_config  # noqa: E402
from MRISynthesisLib.synthesis import Synthesizer  # noqa: E402
from MRISynthesisLib.volume import Volume  # noqa: E402

DEFAULT_VOLUME = REPO.parent / "shared" / "data" / "paired" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def flops_per_slice(model, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 1, size, size))
    return float(counter.get_total_flops())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", type=Path, default=DEFAULT_VOLUME)
    parser.add_argument("--architecture", default="unet_256")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--large", action="store_true", help="also run the 512 x 512 x 300 memory check")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.volume.is_file():
        print(f"volume not found: {args.volume} (needs ../shared/data or --volume)")
        return 2

    torch.manual_seed(0)
    config = default_config(args.architecture)
    model = build_model(args.architecture, **config)
    with tempfile.TemporaryDirectory() as folder:
        path = save_checkpoint(Path(folder) / "bench.safetensors", model, ModelMetadata(
            architecture=args.architecture, config=config, direction="t1-to-t2", slice_size=256))
        synthesizer = Synthesizer(path, device="cpu", batch_size=args.batch_size)
    volume = load_volume(args.volume)
    peak_matmul = matmul_gflops()
    flops = flops_per_slice(synthesizer.model, 256)

    slices = []
    synthesizer.synthesize(volume, progress=lambda done, total: slices.append(total) or True)
    n_slices = slices[-1]
    start = time.perf_counter()
    synthesizer.synthesize(volume)
    end_to_end = time.perf_counter() - start

    x = torch.randn(args.batch_size, 1, 256, 256)
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, n_slices, args.batch_size):
            synthesizer.model(x[: min(args.batch_size, n_slices - first)])
    bare = time.perf_counter() - start

    achieved = flops * n_slices / bare / 1e9
    print(f"volume: {args.volume.name} {volume.shape}, {n_slices} foreground slices, "
          f"{args.architecture} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"end-to-end synthesize: {end_to_end:.2f} s = {n_slices / end_to_end:.2f} slices/s")
    print(f"bare model forward:    {bare:.2f} s = {n_slices / bare:.2f} slices/s")
    print(f"end-to-end overhead over bare forward: {100 * (end_to_end / bare - 1):.1f} % (target < 10 %)")
    print(f"model FLOPs per 256x256 slice: {flops / 1e9:.2f} GFLOP")
    print(f"achieved: {achieved:.1f} GFLOP/s = {achieved / peak_matmul:.2f} x this CPU's fp32 matmul "
          f"({peak_matmul:.1f} GFLOP/s, 2048^2, same run)")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")

    if args.large:
        tiny_config = default_config("baseline")
        tiny = build_model("baseline", **tiny_config)
        with tempfile.TemporaryDirectory() as folder:
            path = save_checkpoint(Path(folder) / "tiny.safetensors", tiny, ModelMetadata(
                architecture="baseline", config=tiny_config, direction="t1-to-t2", slice_size=256))
            tiny_synth = Synthesizer(path, device="cpu", batch_size=args.batch_size)
        rng = np.random.default_rng(0)
        big = (rng.random((512, 512, 300), dtype=np.float32) * 100 + 1)
        volume_mb = big.nbytes / 2 ** 20
        before = peak_rss_mb()
        tiny_synth.synthesize(Volume(big, np.diag([0.5, 0.5, 0.5, 1.0])))
        growth = peak_rss_mb() - before
        print(f"512x512x300 volume: {volume_mb:.0f} MB as float32; peak RSS grew by {growth:.0f} MB "
              f"= {growth / volume_mb:.1f} x the volume (working copies at input size; model-size "
              f"slices exist one batch at a time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
