"""``SynthesisLogic.process``: volume node in, synthetic volume node out (plus comparison).

Usable from Slicer's Python console and from tests without the module's widget. The module's
``MRISynthesisLogic`` delegates to it after making sure PyTorch is importable. The model runs in the
core (``MRISynthesisLib.synthesis``: ``Synthesizer`` and its GPU out-of-memory fallbacks); this file
turns nodes into volumes and the results back into nodes, and keeps the loaded model between runs.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from MRISynthesisLib.conventions import check_direction, target_contrast
from MRISynthesisLib.errors import Cancelled
from MRISynthesisLib.volume import Volume

from . import ComparisonViews, OutputNodes
from .BrainMaskNodes import maskArrayFromNode, showMaskAsSegmentation
from .Comparison import referenceOnGrid
from .SceneChanges import SceneChanges
from .VolumeNodes import (checkScalarVolume, ijkToRASArray, isInScene, isPlainScalarVolume, matrixBetweenNodes,
                          updateNodeFromVolume, volumeFromNode, worldIJKToRAS)


def defaultSynthesizerFactory(checkpoint, device, batchSize, precision="auto"):
    from MRISynthesisLib.synthesis import Synthesizer  # imports PyTorch: only for in-process runs

    return Synthesizer(checkpoint, device=device, batch_size=batchSize, precision=precision)


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
    warnings: list = field(default_factory=list)  # the core's warnings: input check, brain mask, metrics
    conventionsText: str = ""  # the scoring conventions in words (MRISynthesisLib.metrics.Score.conventions_text)


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
    check_direction(direction)
    checkScalarVolume(inputVolume, "Input volume")
    if inputVolume.GetScene() is None:
        raise ValueError(f"Input volume '{inputVolume.GetName()}' is not in a scene")
    checkOutputVolume(outputVolume, inputVolume, referenceVolume, maskVolume)
    if referenceVolume is not None:
        if referenceVolume is inputVolume or referenceVolume is maskVolume:
            raise ValueError("Reference volume must be a different volume (a real "
                             f"{target_contrast(direction)} of the same subject)")
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


class SynthesisJob:
    """One run between :meth:`SynthesisLogic.start` and :meth:`SynthesisLogic.finish`: the nodes, the
    request for the core (``MRISynthesisLib.worker``) and, once it ran, the worker's result."""

    def __init__(self, nodes, request, notes, started):
        self.inputVolume, self.outputVolume, self.referenceVolume, self.maskVolume = nodes
        self.scene = self.inputVolume.GetScene()
        self.request = request
        self.notes = notes
        self.started = started
        self.workerResult = None  # MRISynthesisLib.worker.WorkerResult
        self.result = None  # the SynthesisResult, once finished
        self.worker = None  # WorkerProcess.WorkerProcess when the core runs in another process

    @property
    def watchedNodes(self):
        return [node for node in (self.inputVolume, self.outputVolume, self.referenceVolume, self.maskVolume)
                if node is not None]

    def checkStillInScene(self):
        checkStillInScene(self.watchedNodes, self.scene)


#: Stages of the core's run that ``process(onStage=...)`` reports (the pipeline has more).
REPORTED_STAGES = ("brain extraction", "synthesis")


class SynthesisLogic:
    """Synthesis on MRML nodes, in three steps: :meth:`start` (checks, nodes -> arrays: main thread),
    the core's run (``MRISynthesisLib.worker.run``: in this process with :meth:`runInProcess`, or in a
    worker process, see ``WorkerProcess``), :meth:`finish` (arrays -> nodes: main thread).
    :meth:`process` does all three and waits.

    ``createSynthesizer(checkpoint, device, batchSize, precision)`` makes the core ``Synthesizer``
    for in-process runs (tests inject fakes, e.g. a GPU that runs out of memory); the synthesizer of
    the last in-process run is kept (``MRISynthesisLib.pipeline.SynthesizerCache``). ``useWorkerProcess``: ``process``
    runs the core in a worker process (the module's default; the model is then loaded per run and
    its memory freed when the process ends).
    """

    def __init__(self, createSynthesizer=defaultSynthesizerFactory, useWorkerProcess=False):
        self.createSynthesizer = createSynthesizer
        self._synthesizers = None  # made at the first in-process run (importing the pipeline takes seconds)
        self.useWorkerProcess = useWorkerProcess

    @property
    def synthesizers(self):
        """The pipeline's ``SynthesizerCache`` of in-process runs."""
        if self._synthesizers is None:
            from MRISynthesisLib.pipeline import SynthesizerCache

            create = self.createSynthesizer
            self._synthesizers = SynthesizerCache(
                lambda path, device, batchSize, precision, flipTTA: create(path, device, batchSize, precision))
        return self._synthesizers

    def process(self, inputVolume, outputVolume, model, direction, device="auto", referenceVolume=None,
                progress=None, batchSize=8, maskVolume=None, uncertainty=False, showResults=True, onStage=None,
                precision="auto", brainExtraction="auto"):
        """Synthesize ``direction``'s target contrast of ``inputVolume`` with ``model``.

        ``model``: catalog id (``MRISynthesisLib.catalog``), checkpoint path, or None for the
        direction's default model. ``outputVolume``: a scalar volume node to overwrite, or None to
        create "<input> synthetic T2 (<model>)" next to the input in the subject hierarchy. Output
        geometry is exactly the input's (same voxels, same parent transform); voxels are float32 in
        normalised units (0 background, 1 = 99.5th percentile of the target contrast).
        ``referenceVolume`` (a real target-contrast volume) adds a difference volume and metrics
        (the command line's model-units convention), compared in world coordinates (parent
        transforms included; non-linear ones between the volumes are refused). ``maskVolume``
        (labelmap, non-zero = brain, or a segmentation: union of its segments)
        replaces the automatic brain mask; without it a skull-stripped input keeps its own
        foreground and a whole-head input is brain-extracted (progress reported as 3 steps before
        the slices), the mask shown as the segmentation ``result.brainMaskSegmentation``;
        ``brainExtraction`` ("auto", "extract": always, "none": never) is the command line's
        ``--brain-mask`` choice used when no ``maskVolume`` is given.
        ``onStage(name)``, if given, is told "brain extraction" and "synthesis" as they start.
        ``progress(done, total)`` returning False cancels; so does removing the input,
        output, reference or mask node, or closing the scene, during the run:
        ``MRISynthesisLib.errors.Cancelled`` is raised. On cancel or any error the scene is left as
        it was (no node added, existing nodes unchanged). The input volume is never modified.
        Raises ``ValueError`` (or an ``MRISynthesisError``) with a one-line message on bad inputs.
        """
        job = self.start(inputVolume, outputVolume, model, direction, device=device, referenceVolume=referenceVolume,
                         batchSize=batchSize, maskVolume=maskVolume, uncertainty=uncertainty, precision=precision,
                         brainExtraction=brainExtraction)

        reported = []

        def onEvent(event):
            stage = event.get("stage")
            if onStage is not None and stage in REPORTED_STAGES and stage not in reported:
                reported.append(stage)
                onStage(stage)
            if event["event"] == "progress":
                # A caller's progress callback may process GUI events, so the user may close the scene or
                # delete a node between two batches: stop at once instead of failing on a missing node.
                job.checkStillInScene()
                return True if progress is None else progress(event["done"], event["total"])
            return True

        if self.useWorkerProcess:
            from .WorkerProcess import runAndWait

            job.workerResult = runAndWait(job, onEvent)
        else:
            self.runInProcess(job, onEvent)
        return self.finish(job, showResults=showResults)

    def start(self, inputVolume, outputVolume, model, direction, device="auto", referenceVolume=None, batchSize=8,
              maskVolume=None, uncertainty=False, precision="auto", brainExtraction="auto") -> SynthesisJob:
        """Every check on the nodes, then the arrays the core needs (input in world coordinates, mask
        and reference on the input's grid). Nothing in the scene changes."""
        started = time.time()
        direction = str(direction)
        checkNodes(inputVolume, outputVolume, referenceVolume, maskVolume, direction)
        volume = volumeFromNode(inputVolume, inWorld=True)
        notes = []
        if worldIJKToRAS(inputVolume) is None:
            notes.append(f"'{inputVolume.GetName()}' is under a non-linear transform: slices were taken on its own "
                         "voxel grid; the synthetic volume is under the same transform.")
        # Without a mask node: the core's choice ("auto", "extract" or "none", as --brain-mask).
        mask = maskArrayFromNode(maskVolume, inputVolume) if maskVolume is not None else str(brainExtraction)
        reference = referenceOnGrid(referenceVolume, inputVolume) if referenceVolume is not None else None
        request = {"volume": volume, "model": model or None, "direction": direction, "device": str(device),
                   "precision": str(precision), "batch_size": int(batchSize), "uncertainty": bool(uncertainty),
                   "brain_mask": mask, "reference": reference}
        return SynthesisJob((inputVolume, outputVolume, referenceVolume, maskVolume), request, notes, started)

    def runInProcess(self, job, onEvent) -> None:
        """The core's run in this process (blocking), with the kept synthesizer; a GPU out-of-memory
        retry drops it (its memory is freed) and loads the model anew."""
        from MRISynthesisLib import worker

        attempts = []

        def synthesizers(path, device, batchSize, precision, flipTTA):
            attempts.append(device)
            if len(attempts) == 1:
                return self.synthesizers(path, device, batchSize, precision, flipTTA)
            self.synthesizers.clear()
            return self.createSynthesizer(path, device, batchSize, precision)

        job.workerResult = worker.run(job.request, onEvent, synthesizers=synthesizers)

    def finish(self, job, showResults=True):
        """The worker's result into the scene (main thread): the synthetic volume, the extracted brain
        mask, the uncertainty and difference volumes, the views. A failure undoes every change.
        Returns the ``SynthesisResult``."""
        steps = self.finishSteps(job, showResults)
        for _ in steps:
            pass
        return job.result

    def finishSteps(self, job, showResults=True):
        """:meth:`finish` as a generator that pauses after each node it fills, so the panel can let
        Qt handle events between them (each step copies one volume into its node). Closing the
        generator early (a cancel between steps), or a failure, undoes every change; at the end
        ``job.result`` holds the ``SynthesisResult``."""
        job.checkStillInScene()
        run, info = job.workerResult, job.workerResult.info
        inputVolume, outputVolume, referenceVolume = job.inputVolume, job.outputVolume, job.referenceVolume
        affine = ijkToRASArray(inputVolume)  # local: the output goes under the input's transform
        synthetic = Volume(run.synthetic, affine)
        changes = SceneChanges()
        try:
            modelTitle = info["title"] or (info["model_id"] if info["model_id"] != "unnamed"
                                           else Path(info["checkpoint"]).stem)
            outputNotes = []
            outputVolume = self._outputNode(changes, synthetic, "synthetic", info, inputVolume, node=outputVolume,
                                            name=OutputNodes.syntheticVolumeName(inputVolume.GetName(),
                                                                                 job.request["direction"], modelTitle),
                                            show=lambda node: OutputNodes.showAsSynthetic(node, info["display_range"]),
                                            notes=outputNotes)
            result = SynthesisResult(outputVolume, info["model_id"], job.request["direction"], info["device"],
                                     int(info["batch_size"]), 0.0, notes=job.notes + outputNotes,
                                     precision=info["precision"], warnings=list(run.warnings))
            if run.mask is not None:
                yield
                job.checkStillInScene()
                result.brainMaskSegmentation = changes.created(showMaskAsSegmentation(
                    run.mask, inputVolume, f"{inputVolume.GetName()} brain mask"))
                OutputNodes.placeNextTo(result.brainMaskSegmentation, inputVolume)
                result.notes.append(f"Brain extracted automatically (deepbet): segmentation "
                                    f"'{result.brainMaskSegmentation.GetName()}'. Edit it if needed and choose it "
                                    "as Brain mask to synthesize again with it.")
            if run.uncertainty is not None:
                yield
                job.checkStillInScene()
                result.uncertaintyVolume = self._outputNode(changes, Volume(run.uncertainty, affine), "uncertainty",
                                                            info, inputVolume,
                                                            name=f"{outputVolume.GetName()} uncertainty")
            if run.difference is not None:
                yield
                job.checkStillInScene()
                displayMax = info["difference_display_max"]
                result.differenceVolume = self._outputNode(
                    changes, Volume(run.difference, affine), "difference", info, inputVolume,
                    name=OutputNodes.differenceVolumeName(outputVolume.GetName()),
                    show=lambda node: OutputNodes.showAsDifference(node, displayMax))
                result.metrics = info["metrics"]
                result.conventionsText = info.get("conventions_text") or ""
            yield
        except BaseException:  # a failure, or GeneratorExit: the run was cancelled between two steps
            changes.undo()
            raise

        if showResults:
            try:
                self.showResults(inputVolume, outputVolume, referenceVolume, result.differenceVolume)
            except Exception as error:  # the volumes are made; a view problem must not undo them
                logging.exception("MRISynthesis: could not set up the comparison views")
                result.notes.append(f"The comparison views could not be set up: {error}")
        for warning in result.warnings:
            logging.warning(f"MRISynthesis: {warning}")
        result.seconds = time.time() - job.started
        logging.info(f"MRISynthesis: {inputVolume.GetName()} -> {outputVolume.GetName()} with {info['model_id']} "
                     f"on {result.device} in {result.seconds:.1f} s")
        job.result = result

    @staticmethod
    def _outputNode(changes, volume, role, info, inputVolume, node=None, name="", show=OutputNodes.showAsSynthetic,
                    notes=None):
        """``volume`` (on ``inputVolume``'s grid) written into ``node``, or into a new node ``name``:
        voxels and geometry, provenance attributes, display, and a place next to the input in the
        subject hierarchy. An existing node loses its link to its file (``notes`` says so), so that
        *File > Save* cannot write synthetic voxels over a real acquisition. ``changes`` records it,
        so a failure later in the run undoes it (the link included)."""
        notes = [] if notes is None else notes
        if node is None:
            node = changes.created(inputVolume.GetScene().AddNewNodeByClass("vtkMRMLScalarVolumeNode", name))
        else:
            changes.willModify(node)
            detachedFile = OutputNodes.detachStorage(node)
            if detachedFile:
                notes.append(f"'{node.GetName()}' now holds the synthetic volume; it is no longer linked to the file "
                             f"'{detachedFile}', so saving the scene does not write over that file (it is saved as a "
                             "new file).")
        updateNodeFromVolume(node, volume, inputVolume)
        OutputNodes.setProvenance(node, role, info["model_id"], info["direction"], inputVolume)
        show(node)
        OutputNodes.placeNextTo(node, inputVolume)
        return node

    @staticmethod
    def showResults(inputVolume, outputVolume, referenceVolume=None, differenceVolume=None):
        """Linked axial views: input | synthetic (| reference, with the difference as its overlay).

        Returns the view names used, or an empty list when the scene has no layout node."""
        layoutNode = inputVolume.GetScene().GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layoutNode is None:
            return []
        volumes = [inputVolume, outputVolume] + ([referenceVolume] if referenceVolume is not None else [])
        return ComparisonViews.showComparison(layoutNode, volumes, overlayNode=differenceVolume)
