"""The core's run in a worker process, so Slicer's main thread never runs PyTorch.

``WorkerProcess`` starts ``PythonSlicer -m MRISynthesisLib.worker request.json`` (outside Slicer: the
running Python) on temporary ``.npy`` files (written ``[k, j, i]``, Slicer's order, by a starter
thread), reads its output on two small reader threads (they only
move lines into a queue) and hands the parsed lines to the main thread in :meth:`WorkerProcess.poll`,
which the module's widget calls from a ``qt.QTimer``; :meth:`WorkerProcess.kill` stops it at once.
All MRML work stays on the main thread (``SynthesisLogic.start`` before, ``SynthesisLogic.finish``
after). Plain Python (``subprocess``, ``threading``): no Qt, so the same code runs in the tests.
A worker process also keeps CUDA and OpenMP out of Slicer's process and frees the GPU memory when
it ends.
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from MRISynthesisLib.errors import Cancelled, InputError

#: How often ``runAndWait`` looks at the worker's output (seconds).
POLL_INTERVAL = 0.02


def workerPython() -> str:
    """Slicer's ``PythonSlicer`` (on the PATH inside Slicer, as ``slicer.util.pip_install`` finds it);
    elsewhere the running interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def corePath() -> str:
    """The folder that holds ``MRISynthesisLib`` (the installed scripted-modules folder, or the
    repository root in developer mode): the worker's ``PYTHONPATH``."""
    import MRISynthesisLib

    return str(Path(MRISynthesisLib.__file__).resolve().parent.parent)


class WorkerProcess:
    """One run of ``MRISynthesisLib.worker`` in a child process; see the module docstring."""

    def __init__(self, request: dict, python=None):
        """``request``: as for ``MRISynthesisLib.worker.run`` (arrays); written to a temporary folder."""
        self.folder = Path(tempfile.mkdtemp(prefix="MRISynthesis-"))
        self.python = python or workerPython()
        self.process = None
        self.log = []  # every line the worker wrote (events as JSON), for the panel's log
        self.result = None  # the "result" event
        self.error = None  # the "error" event
        self._lines = queue.Queue()
        self._readers = []
        self._starter = None  # writes the files, starts the process, waits for it, loads the results
        self._resultLine = None
        self._loaded = {}  # the result arrays ([k, j, i]), loaded by the starter thread
        self._loadError = None
        self._killed = False
        self._lock = threading.Lock()
        self._files = self._requestFiles(request)
        self.command = [self.python, "-m", "MRISynthesisLib.worker", str(self.folder / "request.json")]

    def _requestFiles(self, request) -> dict:
        """What the starter thread writes: the request's JSON and the arrays, each ``[k, j, i]``
        C-contiguous (the request's ``[i, j, k]`` arrays are transposed views of such arrays: no copy)."""
        volume = request["volume"]
        arrays = {"input.npy": kji(volume.array, np.float32)}
        written = {key: value for key, value in request.items() if key not in ("volume", "brain_mask", "reference")}
        written.update(input="input.npy", affine=np.asarray(volume.affine).tolist(), output_dir=str(self.folder),
                       order="kji", brain_mask=request["brain_mask"] if isinstance(request["brain_mask"], str)
                       else "mask-in.npy", reference=None if request.get("reference") is None else "reference.npy")
        if not isinstance(request["brain_mask"], str):
            arrays["mask-in.npy"] = kji(request["brain_mask"], np.uint8)
        if request.get("reference") is not None:
            arrays["reference.npy"] = kji(request["reference"], np.float32)
        return {"request.json": json.dumps(written), **arrays}

    def start(self) -> None:
        """Write the request and start the worker, both on a starter thread (writing tens of MB would
        hold Slicer's main thread); :meth:`poll`, :meth:`finished` and :meth:`kill` work at once."""
        starter = threading.Thread(target=self._writeAndStart, daemon=True)
        self._starter = starter
        starter.start()

    def _writeAndStart(self) -> None:
        try:
            for name, content in self._files.items():
                if isinstance(content, str):
                    (self.folder / name).write_text(content, encoding="utf-8")
                else:
                    np.save(self.folder / name, content, allow_pickle=False)
            self._files = None
            environment = dict(os.environ)
            environment["PYTHONPATH"] = os.pathsep.join(filter(None, [corePath(), environment.get("PYTHONPATH")]))
            environment["PYTHONUNBUFFERED"] = "1"
            with self._lock:
                if self._killed:
                    return
                self.process = subprocess.Popen(
                    self.command, cwd=str(self.folder), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=environment,
                    start_new_session=(os.name != "nt"))
        except Exception as error:  # noqa: BLE001 - told to the main thread as the worker's error
            self._lines.put(("out", json.dumps({"event": "error", "kind": "internal",
                                                "message": f"cannot start the synthesis worker: {error}"})))
            return
        for stream, kind in ((self.process.stdout, "out"), (self.process.stderr, "err")):
            reader = threading.Thread(target=self._read, args=(stream, kind), daemon=True)
            reader.start()
            self._readers.append(reader)
        self.process.wait()
        for reader in self._readers:
            reader.join()
        if self._resultLine is not None and self.process.returncode == 0 and not self._killed:
            self._loadResultFiles()  # here, not on the main thread (tens of MB)

    def _loadResultFiles(self) -> None:
        try:
            files = json.loads(self._resultLine)["files"]
            self._loaded = {name: np.load(self.folder / fileName, allow_pickle=False) for name, fileName in files.items()}
        except (OSError, ValueError, KeyError) as error:
            self._loadError = error

    def _read(self, stream, kind) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if kind == "out" and '"event": "result"' in line:
                try:
                    if json.loads(line).get("event") == "result":
                        self._resultLine = line
                except ValueError:
                    pass
            self._lines.put((kind, line))
        stream.close()

    def poll(self) -> list:
        """The events the worker wrote since the last call (main thread). A line that is not an event
        (a library's message, a traceback on stderr) becomes ``{"event": "log", "message": line}``."""
        events = []
        while True:
            try:
                kind, line = self._lines.get_nowait()
            except queue.Empty:
                return events
            self.log.append(line)
            event = None
            if kind == "out":
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
            if not isinstance(event, dict) or "event" not in event:
                event = {"event": "log", "message": line}
            if event["event"] == "result":
                self.result = event
            elif event["event"] == "error":
                self.error = event
            events.append(event)

    def finished(self) -> bool:
        """True once the process has exited (or could not start) and all its output was read (``poll``
        may still hold some)."""
        return self._starter is not None and not self._starter.is_alive()

    def kill(self) -> None:
        """Stop the worker now (its whole process group: nothing it started stays) and remove its files;
        a worker still being started is not started."""
        with self._lock:
            self._killed = True
        if self._starter is not None and self.process is None:
            self._starter.join()  # at most the rest of the file writing; then it starts nothing
        if self.process is not None and self.process.poll() is None:
            try:
                if os.name != "nt":
                    os.killpg(self.process.pid, signal.SIGKILL)
                else:
                    self.process.kill()
            except ProcessLookupError:
                pass
            self.process.wait()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def workerResult(self):
        """The run's ``MRISynthesisLib.worker.WorkerResult`` once finished; raises the worker's error
        (``InputError`` for a bad input, ``RuntimeError`` otherwise) when it failed."""
        from MRISynthesisLib.worker import WorkerResult

        if self.error is not None:
            message = self.error.get("message", "the worker failed")
            raise InputError(message) if self.error.get("kind") == "input" else RuntimeError(message)
        if self.result is None or self.process.returncode != 0:
            tail = "\n".join(self.log[-5:])
            raise RuntimeError(f"the synthesis worker stopped (exit status {self.process.returncode}) without a "
                               f"result: {tail}")
        if self._loadError is not None or "synthetic" not in self._loaded:
            raise RuntimeError(f"cannot read the synthesis worker's results: {self._loadError}")

        def load(name):  # written [k, j, i]: given back as the [i, j, k] view, no copy
            return self._loaded[name].transpose(2, 1, 0) if name in self._loaded else None

        info = {key: value for key, value in self.result.items() if key not in ("event", "files", "warnings", "notes")}
        mask = load("mask")
        return WorkerResult(load("synthetic"), info, mask=None if mask is None else mask.astype(bool),
                            uncertainty=load("uncertainty"), difference=load("difference"),
                            warnings=list(self.result.get("warnings", [])), notes=list(self.result.get("notes", [])))


def kji(arrayIJK, dtype) -> np.ndarray:
    """``arrayIJK`` as a C-contiguous ``[k, j, i]`` array (free when it is a view of one)."""
    return np.ascontiguousarray(np.asarray(arrayIJK).transpose(2, 1, 0), dtype=dtype)


def runAndWait(job, onEvent, python=None):
    """Run ``job``'s request in a worker process and wait (``SynthesisLogic.process``): events go to
    ``onEvent`` as they arrive; ``onEvent`` returning False, or raising (e.g. ``Cancelled`` for a node
    removed from the scene), kills the worker at once."""
    worker = WorkerProcess(job.request, python=python)
    job.worker = worker
    try:
        worker.start()
        while True:
            done = worker.finished()
            for event in worker.poll():
                if onEvent(event) is False:
                    raise Cancelled("cancelled")
            if done:
                return worker.workerResult()
            time.sleep(POLL_INTERVAL)
    finally:
        worker.kill()
