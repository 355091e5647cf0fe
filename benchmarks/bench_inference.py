"""Inference speed of every engine x precision for the shipped models, side by side in one run.

    python benchmarks/bench_inference.py [--models ID ...] [--batch-size 8] [--threads 2] [--repeats 5]
                                         [--whole-command] [--large] [--volume T1.nii.gz]

These machines are noisy and shared, so everything compared is measured in the same run,
interleaved (A, B, C, A, B, C, ...), and printed as ratios with their spread over the rounds.

For each model (default: every model in Resources/Models.json) and each engine x precision:

* time per batch of ``--batch-size`` real slices (the central slices of ``--volume``, preprocessed
  exactly as synthesis does), median over ``--repeats`` rounds, and slices per second;
* speed against PyTorch eager float32 (``--engine torch --precision fp32``: today's CPU path on
  CPUs without native bfloat16): the median of the per-round ratios, with their min-max;
* the largest absolute difference of the synthesised values from that reference, in output units
  (0 background, 1 = the 99.5th percentile of the target contrast).

Engines: torch, torch-channels-last and onnxruntime (MRISynthesisLib.engines), and OpenVINO when it
is installed (measured for comparison only: not adopted, see the README). bfloat16 rows run
PyTorch autocast (emulated, hence slow, on CPUs without native bfloat16).

``--whole-command`` also times whole ``mrisynthesis synthesize`` processes on ``--volume`` per engine
(interleaved, the cached graphs already built, so ONNX Runtime runs without PyTorch) against
``--engine torch --precision fp32`` (today's float32 eager path), compares their outputs and reports
whether each process imported PyTorch; ``--large`` measures the peak RSS (the child's own
``VmHWM``, Linux) of the whole command on a 512 x 512 x 300 volume made by upsampling ``--volume``,
stored as int16 (as scanners write it) and as float32 with fractional values, for each engine:
goal under 1.0 GB.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from MRISynthesisLib import catalog, engines  # noqa: E402
from MRISynthesisLib.device import cpu_has_native_bf16  # noqa: E402
from MRISynthesisLib.io import load_volume  # noqa: E402
from MRISynthesisLib.orientation import find_axial_axis  # noqa: E402
from MRISynthesisLib.preprocessing import brain_mask  # noqa: E402
from MRISynthesisLib.synthesis import Synthesizer  # noqa: E402
from MRISynthesisLib.volume import Volume  # noqa: E402

DEFAULT_VOLUME = REPO.parent / "shared" / "data" / "paired" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz"
LARGE_SHAPE = (512, 512, 300)
#: (label, engine, precision); the first is the reference.
VARIANTS = [("torch fp32 (eager)", "torch", "fp32"), ("torch fp32 + channels-last", "torch-channels-last", "fp32"),
            ("onnxruntime fp32", "onnxruntime", "fp32"), ("openvino fp32 (not adopted)", "openvino", "fp32"),
            ("torch bf16 + channels-last", "torch", "bf16")]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def central_slices(volume: Volume, n: int) -> Volume:
    """The ``n`` axial slices around the one with the most foreground (a real, smaller volume)."""
    axis = find_axial_axis(volume.affine)
    per_slice = np.moveaxis(brain_mask(volume.array), axis, 0).reshape(volume.shape[axis], -1).sum(axis=1)
    centre = int(np.argmax(per_slice))
    first = max(0, min(volume.shape[axis] - n, centre - n // 2))
    index = [slice(None)] * 3
    index[axis] = slice(first, first + n)
    return Volume(np.ascontiguousarray(volume.array[tuple(index)]), volume.affine)


def model_batch(synthesizer: Synthesizer, volume: Volume) -> torch.Tensor:
    """The network input synthesis builds for ``volume`` (all its foreground slices, one batch)."""
    captured = []
    original = synthesizer._forward
    synthesizer._forward = lambda x: captured.append(x.contiguous()) or original(x)
    batch_size, synthesizer.batch_size = synthesizer.batch_size, 10 ** 6
    try:
        synthesizer.synthesize(volume)
    finally:
        synthesizer._forward, synthesizer.batch_size = original, batch_size
    return captured[0]


class OpenVinoForBenchmark:
    """OpenVINO on the same ONNX graph, for comparison only. Its Python package imports a usage
    telemetry client that reports to a web service unless told otherwise: blocked here."""

    name = "openvino"

    def __init__(self, synthesizer: Synthesizer):
        sys.modules.setdefault("openvino_telemetry", None)  # the converter then uses its no-op stub
        import openvino
        import onnxruntime

        graph, _ = engines.export_onnx_graph(synthesizer.model, synthesizer.metadata, onnxruntime)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            path.write_bytes(graph)
            core = openvino.Core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", {
                "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32"})
        self.version = openvino.__version__

    def __call__(self, x):
        return torch.from_numpy(self.compiled(x.numpy())[0])


def make_variants(path, batch_size: int, bf16: bool = True) -> dict:
    made = {}
    for label, engine, precision in VARIANTS:
        if precision == "bf16" and not bf16:
            continue
        try:
            if engine == "openvino":
                synthesizer = Synthesizer(path, device="cpu", batch_size=batch_size, precision="fp32", engine="torch")
                synthesizer.engine = OpenVinoForBenchmark(synthesizer)
            else:
                synthesizer = Synthesizer(path, device="cpu", batch_size=batch_size, precision=precision, engine=engine)
                if synthesizer.engine.name != engine:
                    print(f"  {label}: skipped ({'; '.join(synthesizer.engine.notes)})")
                    continue
        except Exception as error:  # noqa: BLE001 - a runtime that is not installed is skipped
            print(f"  {label}: skipped ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
            continue
        made[label] = synthesizer
    return made


def bench_model(entry, volume: Volume, args) -> list[dict]:
    variants = make_variants(entry.path(), args.batch_size, bf16=not args.no_bf16)
    reference = variants[VARIANTS[0][0]]
    x = model_batch(reference, volume)[:args.batch_size]
    with torch.inference_mode():
        expected = reference._forward(x)
        outputs = {label: s._forward(x) for label, s in variants.items()}  # also the warm-up
        times = {label: [] for label in variants}
        for _ in range(args.repeats):
            for label, synthesizer in variants.items():
                start = time.perf_counter()
                synthesizer._forward(x)
                times[label].append(time.perf_counter() - start)
    rows = []
    for label in variants:
        ratios = [r / t for r, t in zip(times[VARIANTS[0][0]], times[label])]
        seconds = statistics.median(times[label])
        rows.append({"model": entry.id, "variant": label, "seconds": seconds, "slices_per_s": len(x) / seconds,
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     # output units: y in [-1, 1] is written as (y + 1) / 2
                     "max_abs": 0.5 * float((outputs[label] - expected).abs().max())})
    return rows


def whole_command(volume_path: Path, args, folder: Path) -> None:
    """Whole ``mrisynthesis synthesize`` processes per engine, interleaved; outputs compared."""
    import nibabel as nib

    fp32_engines = ["torch"] + [e for e in args.whole_engines if e != "torch"]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))

    imported_torch = {}

    def run(engine, tag):
        output = folder / f"whole-{engine}-{tag}.nii.gz"
        arguments = ["synthesize", str(volume_path), "-o", str(output), "--engine", engine, "--device", "cpu", "--quiet"] \
            + (["--precision", "fp32"] if engine == "torch" else []) + (["--model", args.models[0]] if args.models else [])
        # The command line as `python -m MRISynthesisLib`, then whether it imported PyTorch (told on stdout).
        code = ("import sys; from MRISynthesisLib.cli import main; status = main(sys.argv[1:]); "
                "print('imported torch:', 'torch' in sys.modules); sys.exit(status)")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code] + arguments, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"whole command failed: {done.stderr.strip()}")
        imported_torch[engine] = "imported torch: True" in done.stdout
        return time.perf_counter() - start, output

    start = time.perf_counter()
    run("onnxruntime", "warm")  # builds the cached graphs if needed (a one-time cost, reported here)
    print(f"\nwhole command, first onnxruntime run (graphs cached or built): {time.perf_counter() - start:.1f} s")
    seconds = {engine: [] for engine in fp32_engines}
    for _ in range(args.whole_repeats):
        for engine in fp32_engines:
            elapsed, output = run(engine, "timed")
            seconds[engine].append(elapsed)
    reference = np.asarray(nib.load(str(folder / "whole-torch-timed.nii.gz")).dataobj)
    print(f"whole `mrisynthesis synthesize {volume_path.name} --device cpu` ({torch.get_num_threads()} threads, default "
          f"model and settings but --engine; torch with --precision fp32), {args.whole_repeats} interleaved rounds")
    print(f"{'engine':<22}{'median s':>10}{'min-max s':>16}{'speed-up (per round)':>26}{'max abs diff':>14}"
          f"{'PyTorch imported':>18}")
    for engine in fp32_engines:
        ratios = [r / t for r, t in zip(seconds["torch"], seconds[engine])]
        difference = np.abs(np.asarray(nib.load(str(folder / f"whole-{engine}-timed.nii.gz")).dataobj) - reference).max()
        print(f"{engine:<22}{statistics.median(seconds[engine]):>10.1f}"
              f"{min(seconds[engine]):>8.1f}-{max(seconds[engine]):<7.1f}"
              f"{statistics.median(ratios):>12.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
              f"{difference:>14.1e}{'yes' if imported_torch[engine] else 'no':>18}")


#: Runs the command line in the child and prints its own peak resident size (KiB) as it exits.
_PEAK_WRAPPER = ("import atexit, sys\n"
                 "def _peak():\n"
                 "    kib = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
                 "    print('peak kib:', kib[0], file=sys.stderr)\n"
                 "atexit.register(_peak)\n"
                 "from MRISynthesisLib.cli import main\n"
                 "sys.exit(main(sys.argv[1:]))\n")


def large_volume(source: Path, folder: Path, dtype) -> Path:
    """``source`` upsampled (linearly) to :data:`LARGE_SHAPE`: int16 rounded, or float32 as computed."""
    path = folder / f"large_t1_{np.dtype(dtype).name}.nii.gz"
    if not path.exists():
        import nibabel as nib
        from scipy import ndimage

        image = nib.load(str(source))
        array = np.asarray(image.dataobj, dtype=np.float32)
        zoom = [t / s for t, s in zip(LARGE_SHAPE, array.shape)]
        big = ndimage.zoom(array, zoom, order=1, output=np.float32)
        del array
        if np.issubdtype(dtype, np.integer):
            big = np.round(big).astype(dtype)
        affine = image.affine.copy()
        affine[:3, :3] /= np.array(zoom)[None, :]
        nib.save(nib.Nifti1Image(big, affine), str(path))
    return path


def large_case_peak_rss(big_path: Path, folder: Path, engine: str, threads: int):
    """Peak RSS (bytes) and wall seconds of a whole CLI process (default settings but ``--engine``)."""
    command = [sys.executable, "-c", _PEAK_WRAPPER, "synthesize", str(big_path), "-o", str(folder / "out.nii.gz"),
               "--engine", engine, "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"large case failed: {done.stderr.strip()}")
    peak = [int(line.split(":")[1]) for line in done.stderr.splitlines() if line.startswith("peak kib:")]
    return peak[-1] * 1024, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", type=Path, default=DEFAULT_VOLUME)
    parser.add_argument("--models", nargs="+", default=None, help="catalog ids (default: every shipped model)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch and engine threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds per model")
    parser.add_argument("--whole-command", action="store_true", help="also time whole CLI processes per engine")
    parser.add_argument("--whole-repeats", type=int, default=3)
    parser.add_argument("--whole-engines", nargs="+", default=["torch-channels-last", "onnxruntime", "auto"],
                        help="engines timed against torch by --whole-command")
    parser.add_argument("--large", action="store_true", help="also the 512 x 512 x 300 peak RSS per engine")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 rows (slow where emulated)")
    parser.add_argument("--no-table", action="store_true", help="skip the per-model table (only --whole-command/--large)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.volume.is_file():
        print(f"volume not found: {args.volume} (needs ../shared/data or --volume)")
        return 2
    entries = [e for e in catalog.list_models() if not args.models or e.id in args.models]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores, kind {engines.cpu_kind()} (native bf16: "
          f"{'yes' if cpu_has_native_bf16() else 'no'}); {args.threads} threads; torch {torch.__version__}"
          + "".join(f", {name} {_version(name)}" for name in ("onnxruntime", "openvino") if _version(name)))
    print(f"load average at start: {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    volume = central_slices(load_volume(args.volume), 2 * args.batch_size)
    print(f"batch: {args.batch_size} real slices of {args.volume.name}; {args.repeats} interleaved rounds; "
          "speed-up = median of the per-round ratios to torch fp32 eager (min-max)")
    print(f"{'model':<22}{'engine x precision':<30}{'s/batch':>9}{'slices/s':>10}{'speed-up':>22}{'max abs diff':>14}")
    for entry in ([] if args.no_table else entries):
        for row in bench_model(entry, volume, args):
            print(f"{row['model']:<22}{row['variant']:<30}{row['seconds']:>9.3f}{row['slices_per_s']:>10.2f}"
                  f"{row['ratio']:>9.2f}x ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
                  f"{row['max_abs']:>14.1e}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        if args.whole_command:
            whole_command(args.volume, args, Path(folder))
        if args.large:
            print(f"\n512x512x300, whole `mrisynthesis synthesize` with default settings but --engine, "
                  f"{args.threads} threads; goal: peak RSS < 1.0 GB")
            for dtype in (np.int16, np.float32):
                big_path = large_volume(args.volume, Path(folder), dtype)
                for engine in ("onnxruntime", "auto", "torch", "torch-channels-last"):
                    peak, seconds = large_case_peak_rss(big_path, Path(folder), engine, args.threads)
                    print(f"  {np.dtype(dtype).name:<8} input  --engine {engine:<20} peak RSS {peak / 1e9:.3f} GB "
                          f"({peak / 2 ** 20:.0f} MiB)  {seconds:.0f} s wall", flush=True)
    return 0


def _version(name: str):
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
