"""GPU out-of-memory handling of the module's logic: a smaller batch first, then the CPU, and the
user is told. The GPU is simulated by an injected synthesizer factory (no GPU needed)."""

import numpy as np
import pytest
import slicer
import torch

from MRISynthesisLib.synthesis import Synthesizer
from MRISynthesisLib.synthesis import is_out_of_memory as isOutOfMemory
from MRISynthesisSlicer.SynthesisLogic import SynthesisLogic


class GPUWithoutMemory:
    """Behaves like a CUDA synthesizer whose every batch size >= ``failFrom`` runs out of memory."""

    def __init__(self, real, batchSize, failFrom):
        self.metadata, self.supports_uncertainty, self.precision = real.metadata, False, real.precision
        self.device, self.batch_size, self.failFrom = torch.device("cuda"), batchSize, failFrom
        self.real = real

    def synthesize(self, volume, progress=None, mask=None):
        if self.batch_size >= self.failFrom:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.real.synthesize(volume, progress=progress, mask=mask)


class Factory:
    def __init__(self, failFrom, error=None):
        self.calls, self.failFrom, self.error = [], failFrom, error

    def __call__(self, checkpoint, device, batchSize, precision="auto"):
        self.calls.append((str(device), batchSize))
        real = Synthesizer(checkpoint, device="cpu", batch_size=batchSize)
        if str(device) == "cpu":
            return real
        if self.error is not None:
            fake = GPUWithoutMemory(real, batchSize, failFrom=1)
            fake.synthesize = self.raiseError
            return fake
        return GPUWithoutMemory(real, batchSize, self.failFrom)

    def raiseError(self, *args, **kwargs):
        raise self.error


def gpuWarnings(result):
    """The out-of-memory fallbacks among the run's warnings (the phantom also gets input-check ones)."""
    return [warning for warning in result.warnings if warning.startswith("The GPU")]


def run(factory, makeVolume, checkpoint, **options):
    return SynthesisLogic(createSynthesizer=factory).process(
        makeVolume("T1"), None, str(checkpoint), "t1-to-t2", device="auto", batchSize=8, **options)


def test_gpu_out_of_memory_retries_with_batch_size_1(makeVolume, t1ToT2Checkpoint):
    factory = Factory(failFrom=2)
    result = run(factory, makeVolume, t1ToT2Checkpoint)
    assert factory.calls == [("auto", 8), ("cuda", 1)]
    assert result.device == "cuda" and result.batchSize == 1
    assert gpuWarnings(result) == ["The GPU (cuda) ran out of memory with batch size 8; retrying with batch size 1."]


def test_gpu_out_of_memory_at_batch_size_1_falls_back_to_cpu(makeVolume, t1ToT2Checkpoint):
    factory = Factory(failFrom=1)
    result = run(factory, makeVolume, t1ToT2Checkpoint)
    assert factory.calls == [("auto", 8), ("cuda", 1), ("cpu", 8)]
    assert result.device == "cpu" and result.batchSize == 8
    assert len(gpuWarnings(result)) == 2 and "retrying on the CPU" in gpuWarnings(result)[1]
    assert slicer.util.arrayFromVolume(result.outputVolume).max() > 0


def test_cpu_fallback_gives_the_same_synthetic_as_a_cpu_run(makeVolume, t1ToT2Checkpoint):
    fallback = slicer.util.arrayFromVolume(run(Factory(failFrom=1), makeVolume, t1ToT2Checkpoint).outputVolume)
    direct = slicer.util.arrayFromVolume(SynthesisLogic().process(
        makeVolume("T1 again"), None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu").outputVolume)
    np.testing.assert_array_equal(fallback, direct)


def test_other_gpu_errors_are_not_retried(app, makeVolume, t1ToT2Checkpoint):
    factory = Factory(failFrom=1, error=RuntimeError("CUDA error: an illegal memory access was encountered"))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run(factory, makeVolume, t1ToT2Checkpoint)
    assert factory.calls == [("auto", 8)]
    assert not [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if "synthetic" in n.GetName()]


def test_out_of_memory_recognition():
    assert isOutOfMemory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert isOutOfMemory(RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"))
    assert not isOutOfMemory(MemoryError())
    assert not isOutOfMemory(ValueError("out of memory"))
