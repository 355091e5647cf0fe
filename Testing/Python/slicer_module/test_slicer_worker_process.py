"""The worker process the module runs the core in (MRISynthesisSlicer.WorkerProcess over
``python -m MRISynthesisLib.worker``): its line protocol, its errors and its result files."""

import json

import numpy as np
import pytest

from MRISynthesisLib import worker
from MRISynthesisLib.errors import InputError
from MRISynthesisLib.volume import Volume
from MRISynthesisSlicer.WorkerProcess import WorkerProcess


def request(volume, checkpoint, **options):
    return dict({"volume": volume, "model": str(checkpoint), "direction": "t1-to-t2", "device": "cpu",
                 "precision": "fp32", "batch_size": 4, "uncertainty": False, "brain_mask": "auto",
                 "reference": None}, **options)


def runToTheEnd(process, timeout=300):
    import time

    process.start()
    events, deadline = [], time.monotonic() + timeout
    while True:
        done = process.finished()
        events += process.poll()
        if done:
            return events
        assert time.monotonic() < deadline, "the worker did not finish"
        time.sleep(0.02)


@pytest.mark.realBrainDecision  # both sides run deepbet's real coarse network
def test_the_worker_gives_exactly_what_the_core_gives_in_process(helpers, t1ToT2Checkpoint):
    volume = Volume(helpers.headPhantomKJI().transpose(2, 1, 0), helpers.ijkToRAS("LPS", (1.0, 1.1, 2.0)))
    reference = helpers.headPhantomKJI(seed=3).transpose(2, 1, 0)
    process = WorkerProcess(request(volume, t1ToT2Checkpoint, reference=reference))
    try:
        events = runToTheEnd(process)
        viaProcess = process.workerResult()
    finally:
        process.kill()

    inProcess = worker.run(request(volume, t1ToT2Checkpoint, reference=reference), lambda event: True)
    np.testing.assert_array_equal(viaProcess.synthetic, inProcess.synthetic)
    np.testing.assert_array_equal(viaProcess.difference, inProcess.difference)
    assert viaProcess.info["metrics"]["mae"] == pytest.approx(inProcess.info["metrics"]["mae"], rel=1e-12)
    assert viaProcess.warnings == inProcess.warnings
    kinds = [event["event"] for event in events if event["event"] != "log"]
    assert kinds[0] == "stage" and kinds[-1] == "result"
    assert [e["stage"] for e in events if e["event"] == "stage"] == ["loading model", "synthesis", "scoring"]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"]
    assert not process.folder.exists()  # kill() also removes the temporary files


def test_a_bad_request_is_one_line_and_exit_status_2(helpers, t2ToT1Checkpoint):
    volume = Volume(helpers.headPhantomKJI().transpose(2, 1, 0), helpers.ijkToRAS())
    process = WorkerProcess(request(volume, t2ToT1Checkpoint))  # a T2 -> T1 model asked for T1 -> T2
    try:
        events = runToTheEnd(process)
        assert process.process.returncode == 2
        errors = [event for event in events if event["event"] == "error"]
        assert len(errors) == 1 and errors[0]["kind"] == "input" and "\n" not in errors[0]["message"]
        with pytest.raises(InputError, match="t2-to-t1"):
            process.workerResult()
    finally:
        process.kill()


def test_every_line_the_worker_writes_on_stdout_is_json(helpers, t1ToT2Checkpoint, tmp_path):
    volume = Volume(helpers.headPhantomKJI().transpose(2, 1, 0), helpers.ijkToRAS())
    process = WorkerProcess(request(volume, t1ToT2Checkpoint))
    try:
        runToTheEnd(process)
        stdout = [line for line in process.log if line.startswith("{")]
        assert stdout and all(isinstance(json.loads(line), dict) for line in stdout)
    finally:
        process.kill()
