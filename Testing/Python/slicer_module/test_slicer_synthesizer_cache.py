"""The module keeps the loaded model between clicks: the same checkpoint file (path, modification
time, size), device and precision reuse the synthesizer; anything else loads the model again."""

import os
import shutil

import numpy as np
import slicer

from MRISynthesisLib.synthesis import Synthesizer
from MRISynthesisLib.pipeline import SynthesizerCache
from MRISynthesisSlicer.SynthesisLogic import SynthesisLogic


class CountingFactory:
    def __init__(self):
        self.calls = []

    def __call__(self, checkpoint, device, batchSize, precision="auto"):
        self.calls.append((str(checkpoint), str(device), int(batchSize), precision))
        return Synthesizer(checkpoint, device="cpu", batch_size=batchSize, precision=precision)


def synthesize(logic, makeVolume, checkpoint, name="T1", **options):
    result = logic.process(makeVolume(name), None, str(checkpoint), "t1-to-t2", device="cpu", showResults=False,
                           **options)
    return result, slicer.util.arrayFromVolume(result.outputVolume).copy()


def test_a_second_run_with_the_same_model_does_not_reload_it(makeVolume, t1ToT2Checkpoint):
    factory = CountingFactory()
    logic = SynthesisLogic(createSynthesizer=factory)
    first, firstArray = synthesize(logic, makeVolume, t1ToT2Checkpoint)
    second, secondArray = synthesize(logic, makeVolume, t1ToT2Checkpoint, name="T1 again", batchSize=3)
    assert len(factory.calls) == 1
    assert second.batchSize == 3  # the batch size is a setting of the kept synthesizer, not a reason to reload
    np.testing.assert_array_equal(firstArray, secondArray)


def test_a_changed_checkpoint_file_is_loaded_again(tmp_path, makeVolume, t1ToT2Checkpoint, vaeCheckpoint):
    checkpoint = tmp_path / "model.safetensors"
    shutil.copy2(t1ToT2Checkpoint, checkpoint)
    factory = CountingFactory()
    logic = SynthesisLogic(createSynthesizer=factory)
    synthesize(logic, makeVolume, checkpoint)
    stat = os.stat(checkpoint)
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same bytes, newer file
    synthesize(logic, makeVolume, checkpoint, name="T1 b")
    assert len(factory.calls) == 2
    shutil.copy2(vaeCheckpoint, checkpoint)  # another model under the same name
    result, _ = synthesize(logic, makeVolume, checkpoint, name="T1 c")
    assert len(factory.calls) == 3 and result.modelId == "tiny-vae"


def test_another_device_or_precision_loads_the_model_again(makeVolume, t1ToT2Checkpoint):
    factory = CountingFactory()
    cache = SynthesizerCache(lambda path, device, size, precision, flipTTA: factory(path, device, size, precision))
    fp32 = cache(t1ToT2Checkpoint, "cpu", 8, "fp32")
    assert cache(t1ToT2Checkpoint, "cpu", 2, "fp32") is fp32 and fp32.batch_size == 2
    bf16 = cache(t1ToT2Checkpoint, "cpu", 8, "bf16")
    auto = cache(t1ToT2Checkpoint, "auto", 8, "bf16")
    assert len({id(fp32), id(bf16), id(auto)}) == 3
    assert [call[1:] for call in factory.calls] == [("cpu", 8, "fp32"), ("cpu", 8, "bf16"), ("auto", 8, "bf16")]


def test_a_model_that_ran_out_of_gpu_memory_is_not_kept(makeVolume, t1ToT2Checkpoint):
    import torch

    factory = CountingFactory()
    logic = SynthesisLogic(createSynthesizer=factory)
    synthesize(logic, makeVolume, t1ToT2Checkpoint)
    kept = logic.synthesizers.synthesizer

    def outOfMemory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    kept.device, kept.synthesize = torch.device("cuda"), outOfMemory  # as if it had been loaded on a full GPU
    result, _ = synthesize(logic, makeVolume, t1ToT2Checkpoint, name="T1 b")
    assert result.warnings[0].startswith("The GPU (cuda) ran out of memory with batch size 8")
    assert logic.synthesizers.synthesizer is None  # the next click loads the model again
