"""Run a synthesizer with the GPU-memory fallbacks a desktop user needs.

A GPU out-of-memory error is retried once with batch size 1 on the same device, then on the CPU;
each fallback is reported in ``notes`` so the user is told why it was slower. Synthesizers are
made by an injected factory ``createSynthesizer(checkpoint, device, batchSize)``, so tests can
exercise the fallbacks without a GPU.
"""

import gc
import logging
import sys


def defaultSynthesizerFactory(checkpoint, device, batchSize, precision="auto"):
    from MRISynthesisLib.synthesis import Synthesizer

    return Synthesizer(checkpoint, device=device, batch_size=batchSize, precision=precision)


def isOutOfMemory(error: BaseException) -> bool:
    """True for a GPU (CUDA or MPS) out-of-memory error; a CPU ``MemoryError`` is not retried."""
    torch = sys.modules.get("torch")
    cudaOutOfMemory = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if cudaOutOfMemory is not None and isinstance(error, cudaOutOfMemory):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _releaseGPUMemory():
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def deviceName(synthesizer) -> str:
    """'cuda', 'mps' or 'cpu': the device a synthesizer runs on."""
    return str(getattr(getattr(synthesizer, "device", None), "type", synthesizer.device))


def synthesizeWithFallback(createSynthesizer, checkpoint, volume, device="auto", batchSize=8,
                           progress=None, mask=None, uncertaintySamples=0):
    """Synthesize ``volume``; returns ``(synthetic, uncertainty or None, synthesizer, notes)``.

    ``uncertaintySamples`` > 1 asks the model for a mean and a standard-deviation volume (models
    that can sample only). ``MRISynthesisLib.errors.Cancelled`` and every other error propagate.
    """
    notes = []
    synthesizer = createSynthesizer(checkpoint, device, batchSize)
    attempt = (deviceName(synthesizer), batchSize)
    while True:
        try:
            if uncertaintySamples:
                synthetic, uncertainty = synthesizer.synthesize_with_uncertainty(
                    volume, samples=uncertaintySamples, progress=progress, mask=mask)
            else:
                synthetic, uncertainty = synthesizer.synthesize(volume, progress=progress, mask=mask), None
            return synthetic, uncertainty, synthesizer, notes
        except Exception as error:  # noqa: BLE001 - only GPU memory errors are retried
            usedDevice, usedBatch = attempt
            if not isOutOfMemory(error) or usedDevice == "cpu":
                raise
            if usedBatch > 1:
                attempt = (usedDevice, 1)
                note = (f"The GPU ({usedDevice}) ran out of memory with batch size {usedBatch}; "
                        "retrying with batch size 1.")
            else:
                attempt = ("cpu", batchSize)
                note = f"The GPU ({usedDevice}) ran out of memory even with batch size 1; retrying on the CPU (slower)."
            logging.warning(note)
            notes.append(note)
            synthesizer = None
            _releaseGPUMemory()
            synthesizer = createSynthesizer(checkpoint, attempt[0], attempt[1])
