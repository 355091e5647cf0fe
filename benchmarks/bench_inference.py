"""Inference speed (fp32 vs bf16) and memory of synthesis, measured side by side in one run.

    python benchmarks/bench_inference.py [--volume PATH] [--model ID_OR_PATH | --architecture unet_256 --ngf 64]
                                         [--slices 16] [--batch-size 8] [--threads N] [--no-large]

These machines are noisy and shared, so everything that is compared is measured in the same run
and printed as ratios. For each precision (fp32, and bf16 autocast + channels_last):

* end-to-end ``Synthesizer.synthesize`` of a real volume cut to ``--slices`` central axial slices
  (mask, normalisation, resampling, batches, output: the whole inference path), slices/s;
* the bare network forward on the same number of 256x256 slices, same batch size, slices/s;
* the end-to-end overhead over the bare forward (target: under 10 %);
* achieved GFLOP/s (network FLOPs from torch.utils.flop_counter) against this CPU's float32 and
  bfloat16 matrix-multiply rates, measured in the same process;

then bf16/fp32 ratios, and (unless ``--no-large``) the peak RSS of a whole
``mrisynthesis synthesize`` process (a subprocess, precision auto) on a 512 x 512 x 300 volume made
by upsampling the real one: goal under 1.0 GB. CPU times (``time.process_time``) are printed
next to wall-clock times: with one thread they do not depend on other work on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MRISynthesisLib import catalog  # noqa: E402
from MRISynthesisLib.checkpoint import ModelMetadata, save_checkpoint  # noqa: E402
from MRISynthesisLib.conventions import T1_TO_T2  # noqa: E402
from MRISynthesisLib.device import cpu_has_native_bf16, resolve_precision  # noqa: E402
from MRISynthesisLib.io import load_volume  # noqa: E402
from MRISynthesisLib.models import build_model, default_config  # noqa: E402
from MRISynthesisLib.orientation import find_axial_axis  # noqa: E402
from MRISynthesisLib.preprocessing import brain_mask  # noqa: E402
from MRISynthesisLib.synthesis import Synthesizer  # noqa: E402
from MRISynthesisLib.volume import Volume  # noqa: E402

DEFAULT_VOLUME = REPO.parent / "shared" / "data" / "paired" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz"
PRECISIONS = ("fp32", "bf16")
LARGE_SHAPE = (512, 512, 300)


class Clock:
    """Wall-clock and process CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def matmul_gflops(dtype, size: int = 1024, repeats: int = 3) -> float:
    """This CPU's matrix-multiply rate in ``dtype`` (GFLOP/s of CPU time)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    with Clock() as clock:
        for _ in range(repeats):
            torch.mm(a, b)
    return 2 * size ** 3 * repeats / clock.cpu / 1e9


def flops_per_slice(model, channels: int, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, channels, size, size))
    return float(counter.get_total_flops())


def central_slices(volume: Volume, n: int) -> Volume:
    """The ``n`` axial slices around the one with the most foreground (a real, smaller volume)."""
    axis = find_axial_axis(volume.affine)
    per_slice = np.moveaxis(brain_mask(volume.array), axis, 0).reshape(volume.shape[axis], -1).sum(axis=1)
    centre = int(np.argmax(per_slice))
    first = max(0, min(volume.shape[axis] - n, centre - n // 2))
    index = [slice(None)] * 3
    index[axis] = slice(first, first + n)
    return Volume(np.ascontiguousarray(volume.array[tuple(index)]), volume.affine)


def load_synthesizers(args, folder: Path) -> dict:
    if args.architecture:
        torch.manual_seed(0)
        config = dict(default_config(args.architecture), **({"ngf": args.ngf} if args.ngf else {}))
        path = save_checkpoint(folder / "bench.safetensors", build_model(args.architecture, **config), ModelMetadata(
            architecture=args.architecture, config=config, direction=T1_TO_T2, slice_size=256))
    else:
        path = catalog.resolve_model(args.model, None if args.model else T1_TO_T2)
    return {p: Synthesizer(path, device="cpu", batch_size=args.batch_size, precision=p) for p in PRECISIONS}, path


def measure(synthesizer: Synthesizer, volume: Volume, args) -> dict:
    counted = []
    synthesizer.synthesize(volume, progress=lambda done, total: counted.append(total) or True)  # warm-up
    n = counted[-1]
    with Clock() as end_to_end:
        synthesizer.synthesize(volume)
    size, channels = int(synthesizer.metadata.slice_size), 2 * int(synthesizer.metadata.context_slices) + 1
    x = torch.rand(args.batch_size, channels, size, size) * 2 - 1
    if synthesizer.precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        synthesizer._forward(x)  # warm-up (oneDNN primitive creation)
        with Clock() as bare:
            for first in range(0, n, args.batch_size):
                synthesizer._forward(x[: min(args.batch_size, n - first)])
    return {"slices": n, "e2e": end_to_end, "bare": bare}


def large_case_peak_rss(source: Path, model_path, folder: Path, precision: str = "auto"):
    """Peak RSS (bytes) of a whole CLI process on a 512 x 512 x 300 upsampling of ``source``."""
    import nibabel as nib
    from scipy import ndimage

    image = nib.load(str(source))
    array = np.asarray(image.dataobj, dtype=np.float32)
    zoom = [t / s for t, s in zip(LARGE_SHAPE, array.shape)]
    big = np.round(ndimage.zoom(array, zoom, order=1)).astype(np.int16)
    del array
    affine = image.affine.copy()
    affine[:3, :3] /= np.array(zoom)[None, :]
    big_path = folder / "large_t1.nii.gz"
    nib.save(nib.Nifti1Image(big, affine), str(big_path))
    del big
    command = [sys.executable, "-m", "MRISynthesisLib", "synthesize", str(big_path), "-o", str(folder / "out.nii.gz"),
               "--model", str(model_path), "--device", "cpu", "--precision", precision, "--quiet"]
    with Clock() as clock:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"large case failed: {process.stderr.read().decode().strip()}")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return usage.ru_maxrss * scale, clock.wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", type=Path, default=DEFAULT_VOLUME)
    parser.add_argument("--model", default=None, help="catalog id or checkpoint (default: the shipped T1->T2 default)")
    parser.add_argument("--architecture", default=None, help="instead of --model: a randomly initialised network")
    parser.add_argument("--ngf", type=int, default=0, help="width of --architecture (default: its literature value)")
    parser.add_argument("--slices", type=int, default=16, help="central axial slices synthesised (default: 16)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-large", action="store_true", help="skip the 512 x 512 x 300 peak-RSS subprocess")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.volume.is_file():
        print(f"volume not found: {args.volume} (needs ../shared/data or --volume)")
        return 2

    with tempfile.TemporaryDirectory() as folder:
        synthesizers, model_path = load_synthesizers(args, Path(folder))
        volume = central_slices(load_volume(args.volume), args.slices)
        fp32 = synthesizers["fp32"]
        channels = 2 * int(fp32.metadata.context_slices) + 1
        flops = flops_per_slice(fp32.model, channels, int(fp32.metadata.slice_size))
        peaks = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
        results = {p: measure(s, volume, args) for p, s in synthesizers.items()}

        auto = resolve_precision("auto", torch.device("cpu")).describe()
        print(f"volume: {args.volume.name}, {args.slices} central slices {volume.shape}; model "
              f"{fp32.metadata.model_id if not args.architecture else args.architecture} "
              f"({sum(p.numel() for p in fp32.model.parameters()) / 1e6:.1f} M params, {flops / 1e9:.2f} GFLOP "
              f"per {fp32.metadata.slice_size}^2 slice); batch {args.batch_size}; {torch.get_num_threads()} threads; "
              f"native bf16: {'yes' if cpu_has_native_bf16() else 'no'} (auto = {auto})")
        print(f"matmul 1024^2 on this CPU: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s "
              f"(bf16/fp32 {peaks['bf16'] / peaks['fp32']:.2f}x)")
        print("rates are slices per CPU second (wall-clock in brackets)")
        header = f"{'precision':<24}{'end-to-end':>18}{'bare forward':>18}{'overhead':>10}{'GFLOP/s':>9}{'of fp32 mm':>11}{'of bf16 mm':>11}"
        print(header)
        for p, r in results.items():
            n = r["slices"]
            e2e, bare = n / r["e2e"].cpu, n / r["bare"].cpu
            achieved = flops * n / r["bare"].cpu / 1e9
            print(f"{synthesizers[p].precision.describe():<24}"
                  f"{e2e:>8.2f} ({n / r['e2e'].wall:6.2f}) {bare:>8.2f} ({n / r['bare'].wall:6.2f})"
                  f"{100 * (r['e2e'].cpu / r['bare'].cpu - 1):>9.1f}%{achieved:>9.1f}"
                  f"{achieved / peaks['fp32']:>11.2f}{achieved / peaks['bf16']:>11.2f}")
        ratio = {k: results["fp32"][k].cpu / results["bf16"][k].cpu for k in ("e2e", "bare")}
        print(f"bf16 / fp32 speed: end-to-end {ratio['e2e']:.2f}x, bare forward {ratio['bare']:.2f}x")

        if not args.no_large:
            peak, seconds = large_case_peak_rss(args.volume, model_path, Path(folder))
            print(f"512x512x300 ({np.prod(LARGE_SHAPE) * 4 / 1e6:.0f} MB as float32): whole `mrisynthesis synthesize` "
                  f"process, precision auto: peak RSS {peak / 1e9:.3f} GB ({peak / 2 ** 20:.0f} MiB; goal < 1.0 GB), "
                  f"{seconds:.0f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
