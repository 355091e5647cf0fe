"""``SynthesisLogic.process``: volume node in, synthetic volume node out (plus comparison).

Usable from Slicer's Python console and from tests without the module's widget. The module's
``MRISynthesisLogic`` delegates to it after making sure PyTorch is importable.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from MRISynthesisLib import catalog

from . import ComparisonViews, OutputNodes
from .Comparison import compareWithReference
from .Inference import defaultSynthesizerFactory, deviceName, synthesizeWithFallback
from .VolumeNodes import (checkScalarVolume, removeWithDisplayAndStorage, updateNodeFromVolume, volumeFromNode,
                          volumeOnGrid)

#: Stochastic passes for an uncertainty (standard deviation) map.
UNCERTAINTY_SAMPLES = 8


@dataclass
class SynthesisResult:
    """What :meth:`SynthesisLogic.process` made and how."""

    outputVolume: object
    modelId: str
    direction: str
    device: str
    batchSize: int
    seconds: float
    differenceVolume: object = None
    uncertaintyVolume: object = None
    metrics: dict = None  # MRISynthesisLib.metrics.evaluate result, conventions included
    notes: list = field(default_factory=list)  # e.g. GPU out-of-memory fallbacks


class SynthesisLogic:
    """Synthesis on MRML nodes. ``createSynthesizer(checkpoint, device, batchSize)`` is injectable."""

    def __init__(self, createSynthesizer=defaultSynthesizerFactory):
        self.createSynthesizer = createSynthesizer

    def process(self, inputVolume, outputVolume, model, direction, device="auto", referenceVolume=None,
                progress=None, batchSize=8, maskVolume=None, uncertainty=False, showResults=True):
        """Synthesize ``direction``'s target contrast of ``inputVolume`` with ``model``.

        ``model``: catalog id (``MRISynthesisLib.catalog``), checkpoint path, or None for the
        direction's default model. ``outputVolume``: a scalar volume node to overwrite, or None to
        create "<input> synthetic T2 (<model>)" next to the input in the subject hierarchy. Output
        geometry is exactly the input's; voxels are float32 in normalised units (0 background,
        1 = 99.5th percentile of the target contrast). ``referenceVolume`` (a real target-contrast
        volume) adds a difference volume and metrics. ``maskVolume`` (labelmap, non-zero = brain)
        replaces the automatic brain mask. ``progress(done, total)`` returning False cancels:
        ``MRISynthesisLib.errors.Cancelled`` is raised and the scene is left as it was. The input
        volume is never modified. Raises ``ValueError`` (or an ``MRISynthesisError``) with a
        one-line message on bad inputs.
        """
        started = time.time()
        direction = str(direction)
        OutputNodes.targetContrast(direction)  # validates the direction
        checkScalarVolume(inputVolume, "Input volume")
        if outputVolume is not None and outputVolume is inputVolume:
            raise ValueError("Output volume is the input volume; choose another node (the input is never overwritten)")
        if outputVolume is not None and not outputVolume.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError(f"Output volume '{outputVolume.GetName()}' is a {outputVolume.GetClassName()}; "
                             "expected a scalar volume node")
        if referenceVolume is not None:
            if referenceVolume is inputVolume or referenceVolume is outputVolume:
                raise ValueError("Reference volume must be a different volume (a real "
                                 f"{OutputNodes.targetContrast(direction)} of the same subject)")
            checkScalarVolume(referenceVolume, "Reference volume")

        checkpoint = catalog.resolve_model(model or None, direction=direction)
        volume = volumeFromNode(inputVolume)
        mask = volumeOnGrid(maskVolume, inputVolume).array != 0 if maskVolume is not None else None
        if mask is not None and not mask.any():
            raise ValueError(f"Brain mask '{maskVolume.GetName()}' has no non-zero voxel inside the input volume")

        synthesizer = self.createSynthesizer(checkpoint, device, batchSize)
        metadata = synthesizer.metadata
        if metadata.direction != direction:
            raise ValueError(f"Model '{metadata.model_id}' synthesizes {metadata.direction}, but {direction} "
                             "was requested; choose a model for that direction")
        if uncertainty and not synthesizer.supports_uncertainty:
            raise ValueError(f"Model '{metadata.model_id}' cannot produce an uncertainty map "
                             "(only models that can sample, e.g. VAEs, can)")
        firstSynthesizer = [synthesizer]

        def createOrReuse(path, dev, batch):
            # The synthesizer loaded above is used for the first attempt; fallbacks make new ones.
            return firstSynthesizer.pop() if firstSynthesizer else self.createSynthesizer(path, dev, batch)

        synthetic, uncertaintyVolume, synthesizer, notes = synthesizeWithFallback(
            createOrReuse, checkpoint, volume, device, batchSize, progress, mask,
            UNCERTAINTY_SAMPLES if uncertainty else 0)

        # Nothing in the scene has changed up to here; from here on, undo on failure.
        scene = inputVolume.GetScene()
        createdNodes = []
        try:
            modelTitle = metadata.title or (metadata.model_id if metadata.model_id != "unnamed" else Path(checkpoint).stem)
            if outputVolume is None:
                outputVolume = scene.AddNewNodeByClass(
                    "vtkMRMLScalarVolumeNode", OutputNodes.syntheticVolumeName(inputVolume.GetName(), direction, modelTitle))
                createdNodes.append(outputVolume)
            updateNodeFromVolume(outputVolume, synthetic, inputVolume)
            OutputNodes.setProvenance(outputVolume, "synthetic", metadata.model_id, direction, inputVolume)
            OutputNodes.showAsSynthetic(outputVolume)
            OutputNodes.placeNextTo(outputVolume, inputVolume)
            result = SynthesisResult(outputVolume, metadata.model_id, direction, deviceName(synthesizer),
                                     int(synthesizer.batch_size), 0.0, notes=notes)

            if uncertaintyVolume is not None:
                result.uncertaintyVolume = scene.AddNewNodeByClass(
                    "vtkMRMLScalarVolumeNode", f"{outputVolume.GetName()} uncertainty")
                createdNodes.append(result.uncertaintyVolume)
                updateNodeFromVolume(result.uncertaintyVolume, uncertaintyVolume, inputVolume)
                OutputNodes.setProvenance(result.uncertaintyVolume, "uncertainty", metadata.model_id, direction, inputVolume)
                OutputNodes.showAsSynthetic(result.uncertaintyVolume)
                OutputNodes.placeNextTo(result.uncertaintyVolume, inputVolume)

            if referenceVolume is not None:
                result.differenceVolume, result.metrics = compareWithReference(outputVolume, referenceVolume, mask)
                createdNodes.append(result.differenceVolume)
                OutputNodes.setProvenance(result.differenceVolume, "difference", metadata.model_id, direction, inputVolume)
                OutputNodes.placeNextTo(result.differenceVolume, inputVolume)

            if showResults:
                self.showResults(inputVolume, outputVolume, referenceVolume, result.differenceVolume)
        except Exception:
            for node in createdNodes:
                removeWithDisplayAndStorage(node)
            raise
        result.seconds = time.time() - started
        logging.info(f"MRISynthesis: {inputVolume.GetName()} -> {outputVolume.GetName()} with {metadata.model_id} "
                     f"on {result.device} in {result.seconds:.1f} s")
        return result

    @staticmethod
    def showResults(inputVolume, outputVolume, referenceVolume=None, differenceVolume=None):
        """Linked axial views: input | synthetic (| reference, with the difference as its overlay).

        Returns the view names used, or an empty list when the scene has no layout node."""
        layoutNode = inputVolume.GetScene().GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layoutNode is None:
            return []
        volumes = [inputVolume, outputVolume] + ([referenceVolume] if referenceVolume is not None else [])
        return ComparisonViews.showComparison(layoutNode, volumes, overlayNode=differenceVolume)

