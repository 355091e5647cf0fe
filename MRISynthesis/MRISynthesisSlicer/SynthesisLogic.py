"""``SynthesisLogic.process``: volume node in, synthetic volume node out (plus comparison).

Usable from Slicer's Python console and from tests without the module's widget. The module's
``MRISynthesisLogic`` delegates to it after making sure PyTorch is importable.
"""

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from MRISynthesisLib import catalog
from MRISynthesisLib.brain_extraction import choose_brain_mask
from MRISynthesisLib.errors import Cancelled
from MRISynthesisLib.preprocessing import looks_skull_stripped

from . import ComparisonViews, OutputNodes
from .BrainMaskNodes import maskArrayFromNode, showMaskAsSegmentation
from .Comparison import addDifferenceNode, compareWithReference
from .Inference import defaultSynthesizerFactory, deviceName, synthesizeWithFallback
from .SceneChanges import SceneChanges
from .VolumeNodes import (checkScalarVolume, isInScene, isPlainScalarVolume, matrixBetweenNodes, updateNodeFromVolume,
                          volumeFromNode, worldIJKToRAS)

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
    brainMaskSegmentation: object = None  # the automatically extracted brain mask, editable
    notes: list = field(default_factory=list)  # e.g. GPU out-of-memory fallbacks
    precision: str = ""  # resolved network arithmetic, e.g. "fp32" or "bf16 + channels_last"


def checkOutputVolume(outputVolume, inputVolume, referenceVolume=None, maskVolume=None) -> None:
    """``ValueError`` unless ``outputVolume`` (when given) is a plain scalar volume that is none of
    the run's other nodes: a labelmap, vector or DWI volume, the input, the reference or the mask
    would be destroyed or cannot hold a float image."""
    if outputVolume is None:
        return
    roles = (("input", inputVolume), ("reference", referenceVolume), ("brain mask", maskVolume))
    for role, node in roles:
        if outputVolume is node:
            raise ValueError(f"Output volume is the {role} volume; choose another node (inputs are never overwritten)")
    if not isPlainScalarVolume(outputVolume):
        raise ValueError(f"Output volume '{outputVolume.GetName()}' is a {outputVolume.GetClassName()}; "
                         "expected a scalar volume node (vtkMRMLScalarVolumeNode) or a new volume")


def checkNodes(inputVolume, outputVolume, referenceVolume, maskVolume, direction) -> None:
    """Every check on the nodes of a run, before anything is computed: one-line ``ValueError``s."""
    OutputNodes.targetContrast(direction)  # validates the direction
    checkScalarVolume(inputVolume, "Input volume")
    if inputVolume.GetScene() is None:
        raise ValueError(f"Input volume '{inputVolume.GetName()}' is not in a scene")
    checkOutputVolume(outputVolume, inputVolume, referenceVolume, maskVolume)
    if referenceVolume is not None:
        if referenceVolume is inputVolume or referenceVolume is maskVolume:
            raise ValueError("Reference volume must be a different volume (a real "
                             f"{OutputNodes.targetContrast(direction)} of the same subject)")
        checkScalarVolume(referenceVolume, "Reference volume")
        matrixBetweenNodes(inputVolume, referenceVolume)  # a non-linear transform is refused now, not after the run
    if maskVolume is not None:
        if maskVolume is inputVolume:
            raise ValueError("Brain mask is the input volume; choose a labelmap of the brain")
        isSegmentation = maskVolume.IsA("vtkMRMLSegmentationNode")  # its segments are checked when read
        if not isSegmentation and (maskVolume.GetImageData() is None or maskVolume.GetImageData().GetNumberOfPoints() == 0):
            raise ValueError(f"Brain mask '{maskVolume.GetName()}' is empty (it has no voxels)")
        matrixBetweenNodes(inputVolume, maskVolume)


def checkStillInScene(nodes, scene) -> None:
    """``Cancelled`` naming the first of ``nodes`` that was removed from ``scene`` (or the scene closed)."""
    gone = [node.GetName() for node in nodes if not isInScene(node, scene)]
    if gone:
        raise Cancelled(f"cancelled: '{gone[0]}' was removed from the scene (or the scene was closed) "
                        "during the run; nothing was added")


class SynthesisLogic:
    """Synthesis on MRML nodes. ``createSynthesizer(checkpoint, device, batchSize)`` is injectable."""

    def __init__(self, createSynthesizer=defaultSynthesizerFactory):
        self.createSynthesizer = createSynthesizer

    def process(self, inputVolume, outputVolume, model, direction, device="auto", referenceVolume=None,
                progress=None, batchSize=8, maskVolume=None, uncertainty=False, showResults=True, onStage=None,
                precision="auto"):
        """Synthesize ``direction``'s target contrast of ``inputVolume`` with ``model``.

        ``model``: catalog id (``MRISynthesisLib.catalog``), checkpoint path, or None for the
        direction's default model. ``outputVolume``: a scalar volume node to overwrite, or None to
        create "<input> synthetic T2 (<model>)" next to the input in the subject hierarchy. Output
        geometry is exactly the input's (same voxels, same parent transform); voxels are float32 in
        normalised units (0 background, 1 = 99.5th percentile of the target contrast).
        ``referenceVolume`` (a real target-contrast volume) adds a difference volume and metrics,
        compared in world coordinates (parent transforms included; non-linear ones between the
        volumes are refused). ``maskVolume`` (labelmap, non-zero = brain, or a segmentation: union of its segments)
        replaces the automatic brain mask; without it a skull-stripped input keeps its own
        foreground and a whole-head input is brain-extracted (progress reported as 3 steps before
        the slices), the mask shown as the segmentation ``result.brainMaskSegmentation``.
        ``onStage(name)``, if given, is told "brain extraction" and "synthesis" as they start.
        ``progress(done, total)`` returning False cancels; so does removing the input,
        output, reference or mask node, or closing the scene, during the run:
        ``MRISynthesisLib.errors.Cancelled`` is raised. On cancel or any error the scene is left as
        it was (no node added, existing nodes unchanged). The input volume is never modified.
        Raises ``ValueError`` (or an ``MRISynthesisError``) with a one-line message on bad inputs.
        """
        started = time.time()
        direction = str(direction)
        checkNodes(inputVolume, outputVolume, referenceVolume, maskVolume, direction)
        scene = inputVolume.GetScene()
        watched = [node for node in (inputVolume, outputVolume, referenceVolume, maskVolume) if node is not None]
        checkpoint = catalog.resolve_model(model or None, direction=direction)
        volume = volumeFromNode(inputVolume, inWorld=True)
        notes = []
        if worldIJKToRAS(inputVolume) is None:
            notes.append(f"'{inputVolume.GetName()}' is under a non-linear transform: slices were taken on its own "
                         "voxel grid; the synthetic volume is under the same transform.")
        mask = maskArrayFromNode(maskVolume, inputVolume) if maskVolume is not None else None

        createSynthesizer = self.createSynthesizer
        if precision != "auto":  # a factory is given precision= only when it is not 'auto'
            createSynthesizer = functools.partial(self.createSynthesizer, precision=precision)
        synthesizer = createSynthesizer(checkpoint, device, batchSize)
        metadata = synthesizer.metadata
        if metadata.direction != direction:
            raise ValueError(f"Model '{metadata.model_id}' synthesizes {metadata.direction}, but {direction} "
                             "was requested; choose a model for that direction")
        if uncertainty and not synthesizer.supports_uncertainty:
            raise ValueError(f"Model '{metadata.model_id}' cannot produce an uncertainty map "
                             "(only models that can sample, e.g. VAEs, can)")
        extracted = False
        if mask is None:  # automatic: skull-stripped inputs are kept, whole-head scans brain-extracted
            if onStage is not None and not looks_skull_stripped(volume.array):
                onStage("brain extraction")
            chosen = choose_brain_mask(volume, "auto", device=getattr(synthesizer, "device", "cpu"),
                                       progress=progress)
            mask, extracted = chosen.mask, chosen.source == "extracted"
        if onStage is not None:
            onStage("synthesis")
        firstSynthesizer = [synthesizer]

        def createOrReuse(path, dev, batch):
            # The synthesizer loaded above is used for the first attempt; fallbacks make new ones.
            return firstSynthesizer.pop() if firstSynthesizer else createSynthesizer(path, dev, batch)

        def progressUnlessNodesRemoved(done, total):
            # The widget's progress callback processes GUI events, so the user may close the scene or
            # delete a node between two batches: stop at once instead of failing on a missing node.
            checkStillInScene(watched, scene)
            return True if progress is None else progress(done, total)

        synthetic, uncertaintyVolume, synthesizer, fallbackNotes = synthesizeWithFallback(
            createOrReuse, checkpoint, volume, device, batchSize, progressUnlessNodesRemoved, mask,
            UNCERTAINTY_SAMPLES if uncertainty else 0)
        notes += fallbackNotes
        checkStillInScene(watched, scene)
        comparison = None
        if referenceVolume is not None:
            comparison = compareWithReference(synthetic, inputVolume, referenceVolume, mask)

        # Nothing in the scene has changed up to here; from here on, undo on failure.
        changes = SceneChanges()
        try:
            modelTitle = metadata.title or (metadata.model_id if metadata.model_id != "unnamed" else Path(checkpoint).stem)
            if outputVolume is None:
                outputVolume = changes.created(scene.AddNewNodeByClass(
                    "vtkMRMLScalarVolumeNode", OutputNodes.syntheticVolumeName(inputVolume.GetName(), direction, modelTitle)))
            else:
                changes.willModify(outputVolume)
            result = SynthesisResult(outputVolume, metadata.model_id, direction, deviceName(synthesizer),
                                     int(synthesizer.batch_size), 0.0, notes=notes)
            resolved = getattr(synthesizer, "precision", None)
            result.precision = resolved.describe() if hasattr(resolved, "describe") else str(resolved or "")
            self._fillDerivedVolume(outputVolume, synthetic, "synthetic", metadata, direction, inputVolume)

            if extracted:
                result.brainMaskSegmentation = changes.created(showMaskAsSegmentation(
                    mask, inputVolume, f"{inputVolume.GetName()} brain mask"))
                OutputNodes.placeNextTo(result.brainMaskSegmentation, inputVolume)
                result.notes.append(f"Brain extracted automatically (deepbet): segmentation "
                                    f"'{result.brainMaskSegmentation.GetName()}'. Edit it if needed and choose it "
                                    "as Brain mask to synthesize again with it.")

            if uncertaintyVolume is not None:
                result.uncertaintyVolume = changes.created(scene.AddNewNodeByClass(
                    "vtkMRMLScalarVolumeNode", f"{outputVolume.GetName()} uncertainty"))
                self._fillDerivedVolume(result.uncertaintyVolume, uncertaintyVolume, "uncertainty", metadata,
                                        direction, inputVolume)

            if comparison is not None:
                result.differenceVolume = changes.created(
                    addDifferenceNode(scene, outputVolume.GetName(), comparison, inputVolume))
                result.metrics = comparison.metrics
                OutputNodes.setProvenance(result.differenceVolume, "difference", metadata.model_id, direction, inputVolume)
                OutputNodes.placeNextTo(result.differenceVolume, inputVolume)
        except Exception:
            changes.undo()
            raise

        if showResults:
            try:
                self.showResults(inputVolume, outputVolume, referenceVolume, result.differenceVolume)
            except Exception as error:  # the volumes are made; a view problem must not undo them
                logging.exception("MRISynthesis: could not set up the comparison views")
                result.notes.append(f"The comparison views could not be set up: {error}")
        result.seconds = time.time() - started
        logging.info(f"MRISynthesis: {inputVolume.GetName()} -> {outputVolume.GetName()} with {metadata.model_id} "
                     f"on {result.device} in {result.seconds:.1f} s")
        return result

    @staticmethod
    def _fillDerivedVolume(volumeNode, volume, role, metadata, direction, inputVolume):
        updateNodeFromVolume(volumeNode, volume, inputVolume)
        OutputNodes.setProvenance(volumeNode, role, metadata.model_id, direction, inputVolume)
        OutputNodes.showAsSynthetic(volumeNode)
        OutputNodes.placeNextTo(volumeNode, inputVolume)

    @staticmethod
    def showResults(inputVolume, outputVolume, referenceVolume=None, differenceVolume=None):
        """Linked axial views: input | synthetic (| reference, with the difference as its overlay).

        Returns the view names used, or an empty list when the scene has no layout node."""
        layoutNode = inputVolume.GetScene().GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layoutNode is None:
            return []
        volumes = [inputVolume, outputVolume] + ([referenceVolume] if referenceVolume is not None else [])
        return ComparisonViews.showComparison(layoutNode, volumes, overlayNode=differenceVolume)
