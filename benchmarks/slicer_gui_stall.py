"""How long the Slicer module's panel stops answering during a run: the longest main-thread interval.

    python benchmarks/slicer_gui_stall.py [--subject MSLUB-patient07] [--repeats 2]

Runs on the test harness (Slicer 5.10's own framework, the slicer-core MRML classes, stand-ins for
the Qt widgets; see Testing/Python/slicer_module/slicer_framework.py): opens the module's panel,
loads a real T1 of ``../shared/data/paired/<subject>`` with its T2 as the reference, clicks
*Synthesize T2* (shipped default model, CPU, float32) and runs the harness's event loop until the
run ends. Every callback the loop runs on the main thread (the click, each poll of the worker's
output, each step of the import of the results) is timed; the longest one is how long a click on the
panel could have to wait. The longest time between two turns of the loop is printed too: it also
counts the loop's own 5 ms sleep and any wait for the Python lock held by the reader or starter
threads. For comparison it then runs the same synthesis the old way, in Slicer's process
(``SynthesisLogic`` in process), and prints the longest interval between two progress callbacks,
which is how long the panel was frozen at a time when the model ran on the main thread.

Prints, per run (the same panel clicked again): the three longest main-thread intervals and what
they were, the number of callbacks, the run's wall time; then the in-process longest interval and
the ratio. Target of
issue 24: < 100 ms.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "Testing" / "Python" / "slicer_module"
DATA = REPO.parent / "shared" / "data" / "paired"
for path in (str(REPO), str(REPO / "MRISynthesis"), str(HARNESS)):
    sys.path.insert(0, path)


def findOne(folder: Path, prefix: str) -> Path:
    matches = sorted(folder.glob(f"{prefix}*.nii*"))
    if not matches:
        raise SystemExit(f"no {prefix}* file in {folder}")
    return matches[0]


def addVolume(slicer, path: Path, name: str):
    from MRISynthesisLib.io import load_volume

    volume = load_volume(path)
    return slicer.util.addVolumeFromArray(volume.array_kji().astype("float32"), ijkToRAS=volume.affine, name=name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subject", default="MSLUB-patient07")
    parser.add_argument("--repeats", type=int, default=2, help="runs on the same panel (the first checks the "
                        "Python packages, later ones do not)")
    args = parser.parse_args()

    import slicer_framework

    problem = slicer_framework.frameworkProblem()
    if problem:
        raise SystemExit(problem)
    slicer_framework.install()
    spec = importlib.util.spec_from_file_location("slicer_module_conftest", HARNESS / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    import qt_standins
    import slicer

    folder = DATA / args.subject
    app = conftest.AppLikeScene()
    try:
        t1 = addVolume(slicer, findOne(folder, "T1_"), "T1")
        t2 = addVolume(slicer, findOne(folder, "T2_"), "T2")
        module = slicer_framework.loadModuleFile()
        widget = slicer_framework.openPanel(module)
        p = widget._parameterNode
        p.inputVolume, p.referenceVolume = t1, t2
        p.device, p.precision = module.Device.CPU, module.Precision.FP32
        loop = qt_standins.eventLoop
        states = module.ProcessingState
        longest = []
        for repeat in range(args.repeats):  # the same panel clicked again, as a user would
            loop.busy.clear()
            loop.longestTurn = 0.0
            started = time.perf_counter()
            loop._call(widget.ui.applyButton.click, "click")  # the user's click, timed like every callback
            loop.run(lambda: widget._state in (states.DONE, states.FAILED, states.CANCELLED), timeout=1800)
            wall = time.perf_counter() - started
            print(f"run {repeat + 1}: {widget.ui.statusLabel.text}")
            worst = sorted(loop.busy, reverse=True)[:3]
            longest.append(worst[0][0])
            clickSeconds = next(seconds for seconds, what in loop.busy if what == "click")
            print(f"  worker process: longest main-thread interval {worst[0][0] * 1000:.0f} ms ({worst[0][1]}); "
                  f"three longest: {', '.join(f'{s * 1000:.0f} ms ({w})' for s, w in worst)}; "
                  f"{len(loop.busy)} callbacks; run {wall:.1f} s; the click {clickSeconds * 1000:.0f} ms; longest "
                  f"time between two turns of the event loop (callbacks, 5 ms sleep, waits for the reader threads) "
                  f"{loop.longestTurn * 1000:.0f} ms")

        from MRISynthesisLib.conventions import T1_TO_T2
        from MRISynthesisSlicer.SynthesisLogic import SynthesisLogic

        stamps = [time.perf_counter()]
        SynthesisLogic().process(t1, None, None, T1_TO_T2, device="cpu", precision="fp32", referenceVolume=t2,
                                 progress=lambda done, total: stamps.append(time.perf_counter()) or True)
        stamps.append(time.perf_counter())
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        print(f"in Slicer's process (before the worker): longest interval between progress callbacks "
              f"{max(gaps):.2f} s; ratio to the worker's longest main-thread interval: "
              f"{max(gaps) / max(longest):.0f}x")
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
