"""MRISynthesis: synthesize a missing MRI contrast (T1 -> T2, T2 -> T1) in 3D Slicer.

A thin shell: the GUI and MRML handling live here and in ``MRISynthesisSlicer/``; models,
orientation, normalisation and metrics live in the pure-Python core ``MRISynthesisLib``.
"""

import enum
import importlib.util
import logging
import os
import sys
from typing import Annotated, Callable, Optional, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _makeCoreImportable():
    """Developer mode (``MRISynthesis/`` added to Slicer's additional module paths without a
    build): MRISynthesisLib sits one folder up, in the repository root, so put that on sys.path.
    An installed extension ships MRISynthesisLib beside this file and needs nothing."""
    if importlib.util.find_spec("MRISynthesisLib") is None:
        repositoryRoot = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.isdir(os.path.join(repositoryRoot, "MRISynthesisLib")):
            sys.path.insert(0, repositoryRoot)


_makeCoreImportable()

# Light, Slicer-free helpers (no torch, no numpy): safe to import when Slicer loads the module.
from MRISynthesisLib import conventions  # noqa: E402
from MRISynthesisSlicer import Dependencies  # noqa: E402
from MRISynthesisSlicer.ProcessingStates import ProcessingState, panelState  # noqa: E402


#
# MRISynthesis
#


class MRISynthesis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MRI Synthesis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["MRISynthesis contributors"]
        self.parent.helpText = _(
            "Synthesize a missing MRI contrast: a T2-weighted volume from a T1-weighted one, or the reverse, "
            "with a deep generative model. Pick the input volume, the direction and a model, then click "
            "Synthesize. The result has exactly the input's geometry and is shown next to it; with a real "
            "target volume as reference, a difference map and MAE/PSNR/SSIM/MI are shown too.<br><br>"
            "<b>Synthetic images are not for diagnosis.</b> They are plausible images produced by a model and "
            "can miss or invent findings (for example lesions).<br><br>"
            "See the <a href=\"https://github.com/MRISynthesis/SlicerMRISynthesis\">documentation</a>.")
        self.parent.acknowledgementText = _(
            "Methods: pix2pix (Isola et al., CVPR 2017), CycleGAN (Zhu et al., ICCV 2017), UNIT (Liu et al., "
            "NeurIPS 2017), U-Net (Ronneberger et al., MICCAI 2015), and the comparison of GAN-based T1/T2 "
            "translation by Welander, Karlsson and Eklund (2018). SSIM: Wang et al., IEEE TIP 2004. "
            "Runs on PyTorch through the SlicerPyTorch extension.")
        # Register the comparison layout once Slicer has started, so that a scene saved in it reopens,
        # and the module's T1/T2 sample pair in the Sample Data module (downloaded only on a click).
        slicer.app.connect("startupCompleted()", registerComparisonLayout)
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerComparisonLayout():
    layoutManager = slicer.app.layoutManager()
    if layoutManager is None:  # no main window (e.g. some tests)
        return
    from MRISynthesisSlicer import ComparisonViews

    ComparisonViews.registerLayout(layoutManager.layoutLogic().GetLayoutNode())


def registerSampleData():
    try:
        import SampleData
    except ImportError:  # a Slicer built without the Sample Data module
        return
    from MRISynthesisSlicer.SampleDataSources import registerSampleData as register

    register(SampleData.SampleDataLogic,
             thumbnail=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "MRISynthesis.png"))


#
# Parameters
#


# The label() methods of these enums are not called by this module: Slicer's parameter-node GUI
# connector for enums (slicer.parameterNodeWrapper, QComboBox <-> enum.Enum) shows what label()
# returns as each combo-box item and falls back to the raw value without it. They exist so the
# combo boxes read "T1 -> T2" and "GPU (CUDA)" (translated) instead of "t1-to-t2" and "cuda".


class Direction(enum.Enum):
    T1_TO_T2 = conventions.T1_TO_T2
    T2_TO_T1 = conventions.T2_TO_T1

    def label(self):  # shown by Slicer's combo-box connector (see above)
        return _("{source} \u2192 {target}").format(source=conventions.source_contrast(self.value),
                                                    target=conventions.target_contrast(self.value))

    @property
    def targetContrast(self):
        return conventions.target_contrast(self.value)


class Device(enum.Enum):
    AUTO = "auto"
    GPU = "cuda"  # with the parameter node's gpuIndex: "cuda:N"
    MPS = "mps"
    CPU = "cpu"

    def label(self):  # shown by Slicer's combo-box connector (see above)
        return {"auto": _("Auto"), "cuda": _("GPU (CUDA)"), "mps": _("Apple GPU (MPS)"), "cpu": _("CPU")}[self.value]


class BrainExtraction(enum.Enum):
    """What to do without a brain mask node (the command line's --brain-mask choices)."""

    AUTO = "auto"
    EXTRACT = "extract"
    NONE = "none"

    def label(self):  # shown by Slicer's combo-box connector (see above)
        return {"auto": _("Automatic (whole-head scans only)"), "extract": _("Always extract the brain"),
                "none": _("Never (use the head)")}[self.value]


class Precision(enum.Enum):
    """Arithmetic of the network (MRISynthesisLib.device.resolve_precision)."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    def label(self):  # shown by Slicer's combo-box connector (see above)
        return {"auto": _("Auto"), "fp32": _("float32 (reproducible)"), "bf16": _("bfloat16"),
                "fp16": _("float16")}[self.value]


@parameterNodeWrapper
class MRISynthesisParameterNode:
    """
    inputVolume - the acquired volume (T1 for T1 -> T2).
    direction - which contrast to synthesize.
    model - catalog id (MRISynthesisLib.catalog) or path of a .safetensors checkpoint.
    device - where the model runs; Auto picks CUDA, then Apple MPS, then the CPU.
    gpuIndex - which CUDA GPU (0 = the first) when device is GPU.
    outputVolume - overwritten with the result; None creates a new volume.
    referenceVolume - optional real target-contrast volume for the difference map and metrics.
    batchSize - slices per forward pass (GPU memory grows with it).
    maskVolume - optional brain mask (labelmap or segmentation); None (Automatic) keeps a skull-stripped
        input as it is and brain-extracts a whole-head scan, showing the mask as an editable segmentation.
    brainExtraction - without maskVolume: extract the brain of whole-head scans only (Automatic), always, or never.
    uncertainty - also compute a standard-deviation map (models that can sample only).
    precision - network arithmetic; Auto is bfloat16 on CPUs with native bfloat16 and on GPUs, else float32.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    direction: Direction = Direction.T1_TO_T2
    model: str = ""
    device: Device = Device.AUTO
    gpuIndex: Annotated[int, WithinRange(0, 15)] = 0
    outputVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    batchSize: Annotated[int, WithinRange(1, 64)] = 8
    # None must be in the Union: the wrapper writes None for an unset node parameter (Slicer's
    # Docs/developer_guide/parameter_nodes; without it getParameterNode() raises TypeError).
    maskVolume: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    brainExtraction: BrainExtraction = BrainExtraction.AUTO
    uncertainty: bool = False
    precision: Precision = Precision.AUTO


#
# MRISynthesisWidget
#


class MRISynthesisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    LOAD_CHECKPOINT = "load-checkpoint-file"  # item data of the "Load a checkpoint file..." entry

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._state = None
        self._job = None  # the run in progress (SynthesisLogic.SynthesisJob with a worker)
        self._importSteps = None  # SynthesisLogic.finishSteps of the finished run, one step per timer turn
        self._dependencyCheck = None  # the first click's package check (Dependencies.BackgroundCheck), then CHECKED
        self._pollTimer = None
        self._listedDirection = None
        self._catalogEntries = []  # catalog models of the listed direction

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MRISynthesis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        versionProblem = Dependencies.slicerVersionProblem(slicer.app.majorVersion, slicer.app.minorVersion)
        if versionProblem:  # the parameter-node binding below needs 5.10 (see docs/slicer.md)
            self.ui.statusLabel.text = versionProblem
            for section in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                            self.ui.advancedCollapsibleButton, self.ui.applyButton):
                section.enabled = False
            return
        self.logic = MRISynthesisLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._onPollTimer)
        # The model list depends on the catalog and the direction, so it is filled here rather than
        # bound with SlicerParameterName (the parameter node's Choice would be fixed at import).
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.resultsCollapsibleButton.visible = False
        self.initializeParameterNode()
        self.setProcessingState(ProcessingState.IDLE)

    def cleanup(self) -> None:
        self.removeObservers()

    def onReload(self) -> None:
        """Reload and Test in developer mode: re-import MRISynthesisLib and MRISynthesisSlicer too
        (Slicer's standard reload re-imports only this file), then the standard reload."""
        from MRISynthesisSlicer.Reloading import reloadPackages

        reloadPackages()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None or self._dependencyCheck is not None:
            self.cancelRun(_("Cancelled: the scene was closed."))
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            from MRISynthesisSlicer.VolumeNodes import defaultInputVolume

            firstVolume = defaultInputVolume(slicer.mrmlScene)  # exactly vtkMRMLScalarVolumeNode, not hidden
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    # -- parameters -> GUI ----------------------------------------------------------------------

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode is None:
            return
        if self._parameterNode.direction != self._listedDirection:
            self._fillModelComboBox()
        self._selectModelItem()
        self.ui.gpuIndexSpinBox.enabled = self._parameterNode.device == Device.GPU
        self.ui.brainExtractionComboBox.enabled = self._parameterNode.maskVolume is None
        self._updateUncertaintyBox()
        self._updateApplyButton()

    def _updateUncertaintyBox(self) -> None:
        """Enabled only for models that can sample: a catalog model's ``supports_uncertainty`` flag; a
        checkpoint file is trusted here and checked by the core before any work."""
        model = self._parameterNode.model
        entry = next((e for e in self._catalogEntries if e.id == model), None)
        canSample = entry.supports_uncertainty if entry is not None else bool(model)
        self.ui.uncertaintyCheckBox.enabled = canSample
        self.ui.uncertaintyCheckBox.toolTip = (
            _("Also make a standard-deviation volume from several samples.") if canSample else
            _("The chosen model cannot sample, so it cannot make an uncertainty map (only models such as the VAE can)."))
        if not canSample and self._parameterNode.uncertainty:
            self._parameterNode.uncertainty = False

    def _fillModelComboBox(self) -> None:
        from MRISynthesisLib import catalog

        direction = self._parameterNode.direction
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        try:
            entries = catalog.list_models(direction.value)
        except Exception as error:  # a broken catalog must not break the module
            logging.error(f"MRISynthesis: cannot read the model catalog: {error}")
            entries = []
        self._catalogEntries = entries
        for entry in entries:
            combo.addItem(entry.title or entry.id, entry.id)
            combo.setItemData(combo.count - 1, entry.description, qt.Qt.ToolTipRole)
        combo.addItem(_("Load a checkpoint file\u2026"), self.LOAD_CHECKPOINT)
        combo.blockSignals(wasBlocked)
        self._listedDirection = direction
        catalogIds = [entry.id for entry in entries]
        if self._parameterNode.model not in catalogIds and not os.path.isfile(self._parameterNode.model):
            self._warnIfRetired(self._parameterNode.model)
            self._parameterNode.model = catalogIds[0] if catalogIds else ""

    @staticmethod
    def _warnIfRetired(model: str) -> None:
        """A scene saved with a model that was since retired: say which one replaces it (the
        module then selects the direction's first listed model, the default)."""
        from MRISynthesisLib import catalog

        try:
            retired = catalog.retired_model(model) if model else None
        except Exception:  # a broken catalog is reported where the list is read
            retired = None
        if retired is not None:
            logging.warning(f"MRISynthesis: {retired.message()}")
            slicer.util.showStatusMessage(
                _("Model {model} was retired; using {replacement}.").format(model=model, replacement=retired.replaced_by),
                5000)

    def _selectModelItem(self) -> None:
        combo = self.ui.modelComboBox
        model = self._parameterNode.model
        index = combo.findData(model) if model else -1
        if index < 0 and model and os.path.isfile(model):
            combo.insertItem(combo.count - 1, os.path.basename(model), model)
            combo.setItemData(combo.count - 2, model, qt.Qt.ToolTipRole)
            index = combo.count - 2
        wasBlocked = combo.blockSignals(True)
        combo.currentIndex = index
        combo.blockSignals(wasBlocked)

    def onModelActivated(self, index) -> None:
        data = self.ui.modelComboBox.itemData(index)
        if data == self.LOAD_CHECKPOINT:
            path = qt.QFileDialog.getOpenFileName(self.parent, _("Load a model checkpoint"), "",
                                                  _("MRISynthesis checkpoints (*.safetensors)"))
            if path:
                self._parameterNode.model = path
            self._selectModelItem()
            return
        self._parameterNode.model = data or ""

    def _missingInputs(self) -> list:
        p = self._parameterNode
        missing = []
        if not p.inputVolume:
            missing.append(_("select an input volume"))
        if not p.model:
            missing.append(_("choose a model (or load a checkpoint file)"))
        if p.outputVolume and p.outputVolume == p.inputVolume:
            missing.append(_("choose an output volume other than the input"))
        if p.referenceVolume and p.referenceVolume in (p.inputVolume, p.outputVolume):
            missing.append(_("choose a reference other than the input and output volumes"))
        return missing

    def _updateApplyButton(self) -> None:
        if self._parameterNode is None:
            return
        button = self.ui.applyButton
        panel = panelState(self._state)
        if panel.buttonIsCancel:
            button.text = _("Cancel")
            button.enabled = panel.cancelEnabled
            button.toolTip = _("Stop the synthesis; nothing is added to the scene.") if panel.cancelEnabled else \
                _("Checking or installing PyTorch and the Python packages; this cannot be cancelled.")
            return
        contrast = self._parameterNode.direction.targetContrast
        button.text = _("Synthesize {contrast}").format(contrast=contrast)
        missing = self._missingInputs()
        button.enabled = not missing
        button.toolTip = (_("To synthesize: ") + "; ".join(missing)) if missing else \
            _("Synthesize a {contrast}-weighted volume from the input volume.").format(contrast=contrast)

    def setProcessingState(self, state, message="") -> None:
        """The one place that maps the processing state to buttons, progress bar and status
        (``MRISynthesisSlicer.ProcessingStates.panelState`` decides what each state shows)."""
        self._state = state
        panel = panelState(state)
        for section in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                        self.ui.advancedCollapsibleButton):
            section.enabled = panel.controlsEnabled
        self.ui.progressBar.visible = panel.progressVisible
        if panel.resetProgress:
            self.ui.progressBar.maximum = 0  # busy indicator until the first batch reports
            self.ui.progressBar.value = 0
        self.ui.statusLabel.text = message
        self._updateApplyButton()

    # -- running ---------------------------------------------------------------------------------
    # The core runs in a worker process (MRISynthesisSlicer.WorkerProcess); a timer reads its output
    # on the main thread, so the panel stays responsive and Cancel kills the worker at once.

    #: How often the panel reads the worker's output (milliseconds).
    POLL_INTERVAL_MS = 50
    #: ``_dependencyCheck`` once the packages are checked: the next timer turn starts the worker.
    CHECKED = "checked"

    def onApplyButton(self) -> None:
        if self._job is not None:  # the button reads Cancel
            self.cancelRun(_("Cancelled; the scene was not changed."))
            return
        self.setProcessingState(ProcessingState.PREPARING, _("Checking PyTorch and the Python packages\u2026"))
        slicer.app.processEvents()
        if not MRISynthesisLogic.dependenciesSatisfied:
            # The session's first click: the package versions are read in a thread (tens of milliseconds
            # of metadata parsing) while the timer keeps the panel answering; _onDependencyCheckTurn goes
            # on from there, on the main thread (an installation, asked first, stays on it).
            self._dependencyCheck = Dependencies.BackgroundCheck()
            self._pollTimer.start(self.POLL_INTERVAL_MS)
            return
        if self._ensureDependencies():
            self._startRun()

    def _onDependencyCheckTurn(self) -> None:
        """A timer turn of the first click's package check: wait for its thread; once it is done, act on
        it (install what is missing, after asking) and import what the start needs; start the worker
        in the next turn, so that no turn holds the main thread for all of it."""
        check = self._dependencyCheck
        if check == self.CHECKED:
            self._dependencyCheck = None
            self._pollTimer.stop()
            self._startRun()
            return
        if not check.done():
            return
        if not self._ensureDependencies(check):
            self._dependencyCheck = None
            self._pollTimer.stop()
            return
        self.logic.prepareStart()
        self._dependencyCheck = self.CHECKED

    def _ensureDependencies(self, check=None) -> bool:
        """``ensureDependencies``; on failure the panel shows why (with pip's log) and False is returned."""
        try:
            self.logic.ensureDependencies(askConfirmation=not slicer.app.testingEnabled(), check=check)
        except Exception as error:
            self.setProcessingState(ProcessingState.FAILED, _("Failed: {error}").format(error=error))
            log = getattr(error, "log", None)  # pip's output when an installation failed
            if log:
                self._appendLog(log)
                slicer.util.errorDisplay(str(error), detailedText=log)
            else:
                slicer.util.errorDisplay(str(error))
            return False
        return True

    def _startRun(self) -> None:
        p = self._parameterNode  # read after the installation, which processes GUI events
        self.ui.logTextEdit.clear()
        self.setProcessingState(ProcessingState.RUNNING, _("Starting\u2026"))
        try:
            self._job = self.logic.startSynthesis(
                p.inputVolume, p.outputVolume, p.model, p.direction.value, device=self.deviceName(),
                referenceVolume=p.referenceVolume, batchSize=p.batchSize, maskVolume=p.maskVolume,
                uncertainty=p.uncertainty, precision=p.precision.value, brainExtraction=p.brainExtraction.value)
        except Exception as error:
            self._showFailure(error)
            return
        self._appendLog(_("Worker started: {command}").format(command=" ".join(self._job.worker.command)))
        self._pollTimer.start(self.POLL_INTERVAL_MS)

    def deviceName(self) -> str:
        """The device for the core: 'auto', 'cpu', 'mps', or 'cuda:N' with the chosen GPU index."""
        device = self._parameterNode.device
        return f"cuda:{self._parameterNode.gpuIndex}" if device == Device.GPU else device.value

    def cancelRun(self, message) -> None:
        """Kill the worker now; nothing stays in the scene (results are imported only at the end, and an
        import in progress is undone)."""
        job, steps = self._job, self._importSteps
        self._endRun()
        if steps is not None:
            steps.close()  # undoes the nodes already filled
        if job is not None:
            job.worker.kill()
            self._appendLog(_("Worker stopped."))
        self.setProcessingState(ProcessingState.CANCELLED, message)

    def _endRun(self) -> None:
        self._pollTimer.stop()
        self._dependencyCheck = None
        if self._job is not None:
            self._job.worker.cleanup()
        self._job, self._importSteps = None, None

    def _onPollTimer(self) -> None:
        """One turn of a run, on the main thread: the worker's new lines, then, once it has finished,
        one step of the import per turn (each fills one node), so Qt handles events in between."""
        if self._dependencyCheck is not None:
            self._onDependencyCheckTurn()
            return
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        from MRISynthesisLib.errors import Cancelled

        try:
            job.checkStillInScene()  # a node removed, or the scene closed, during the run
        except Cancelled as cancelled:
            self.cancelRun(str(cancelled))
            return
        if self._importSteps is None:
            finished = job.worker.finished()
            for event in job.worker.poll():
                self._onWorkerEvent(event)
            if not finished:
                return
            self.ui.progressBar.maximum = 0
            self.ui.statusLabel.text = _("Adding the results to the scene\u2026")
            try:
                self._importSteps = self.logic.finishSynthesisSteps(job)
            except Exception as error:
                self._endRun()
                self._showFailure(error)
            return
        try:
            next(self._importSteps)
            return
        except StopIteration:
            result = job.result
        except Exception as error:
            self._endRun()
            self._showFailure(error)
            return
        self._endRun()
        slicer.util.resetSliceViews()
        self._showResults(result)
        self.setProcessingState(ProcessingState.DONE, _("Done in {seconds:.1f} s on {device}.").format(
            seconds=result.seconds, device=result.device.upper()))

    def _onWorkerEvent(self, event) -> None:
        kind = event.get("event")
        if kind == "progress":
            self._onProgress(event["stage"], event["done"], event["total"])
            return
        if kind == "stage":
            self.ui.progressBar.maximum = 0  # busy until the stage reports its first step
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = self._stageMessage(event["stage"])
            self._appendLog(_("Stage: {stage}").format(stage=event["stage"]))
        elif kind == "warning":
            logging.warning(f"MRISynthesis: {event['message']}")
            self._appendLog(_("Warning: {message}").format(message=event["message"]))
        elif kind == "error":
            self._appendLog(_("Error: {message}").format(message=event["message"]))
        elif kind in ("note", "log"):
            self._appendLog(event["message"])

    @staticmethod
    def _stageMessage(stage) -> str:
        return {"loading model": _("Loading the model\u2026"), "brain extraction": _("Extracting the brain\u2026"),
                "synthesis": _("Synthesizing\u2026"), "scoring": _("Comparing with the reference\u2026")
                }.get(stage, stage)

    def _onProgress(self, stage, done, total) -> None:
        if total <= 0:
            return
        self.ui.progressBar.maximum = total
        self.ui.progressBar.value = done
        if stage == "brain extraction":
            self.ui.statusLabel.text = _("Extracting the brain: step {done} of {total}").format(done=done, total=total)
        else:
            self.ui.statusLabel.text = _("Synthesizing: {done} of {total} slices").format(done=done, total=total)

    def _appendLog(self, line) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def _showFailure(self, error) -> None:
        self.setProcessingState(ProcessingState.FAILED, _("Failed: {error}").format(error=error))
        self._appendLog(_("Failed: {error}").format(error=error))
        from MRISynthesisLib.errors import MRISynthesisError

        if isinstance(error, (ValueError, MRISynthesisError)):
            slicer.util.errorDisplay(_("Synthesis failed: {error}").format(error=error))
        else:
            import traceback

            slicer.util.errorDisplay(_("Synthesis failed: {error}").format(error=error),
                                     detailedText=traceback.format_exc())

    def _showResults(self, result) -> None:
        picked = _("Auto picked {device}").format(device=result.device.upper()) \
            if self._parameterNode.device == Device.AUTO else ""
        self.ui.deviceStatusLabel.text = picked
        lines = [_("Synthetic volume: {name}").format(name=result.outputVolume.GetName()),
                 _("Model: {model}; device: {device}; batch size: {batch}; precision: {precision}").format(
                     model=result.modelId, device=result.device, batch=result.batchSize,
                     precision=result.precision)]
        lines += [_("Warning: {warning}").format(warning=warning) for warning in result.warnings]
        lines += result.notes
        if result.differenceVolume is not None:
            lines.append(_("Difference map (synthetic \u2212 reference): {name}; fade it in with the reference "
                           "view's foreground slider.").format(name=result.differenceVolume.GetName()))
        self.ui.resultsLabel.text = "\n".join(lines)
        self.ui.resultsCollapsibleButton.visible = True
        hasMetrics = result.metrics is not None
        self.ui.metricsTable.visible = hasMetrics
        self.ui.conventionsLabel.visible = hasMetrics
        if hasMetrics:
            self._fillMetricsTable(result.metrics, result.conventionsText)

    def _fillMetricsTable(self, metrics, conventionsText) -> None:
        rows = [("mae", _("MAE")), ("psnr", _("PSNR (dB)")), ("ssim", _("SSIM")), ("mi_bits", _("MI (bits)"))]
        table = self.ui.metricsTable
        table.setRowCount(len(rows))
        for row, (key, title) in enumerate(rows):
            table.setItem(row, 0, qt.QTableWidgetItem(title))
            value = metrics[key]
            text = "\u221e" if value is None or value == float("inf") else f"{value:.4f}"  # PSNR of an exact match
            table.setItem(row, 1, qt.QTableWidgetItem(text))
        # The core's one description of its scoring conventions (model units, as the command line),
        # written by the worker: importing the metrics here would stall the panel for seconds.
        self.ui.conventionsLabel.text = conventionsText


#
# MRISynthesisLogic
#


class MRISynthesisLogic(ScriptedLoadableModuleLogic):
    """Usable without the GUI (Python console, other modules, tests)::

        logic = slicer.util.getModuleLogic("MRISynthesis")
        result = logic.process(t1Node, None, "model-id-or-checkpoint.safetensors", "t1-to-t2")
        result.outputVolume, result.differenceVolume, result.metrics

    The work is done by ``MRISynthesisSlicer.SynthesisLogic``; this class adds the parameter node
    and makes sure PyTorch and the core's Python packages are installed first.
    """

    #: Set once the dependencies were found (or made) satisfied in this Slicer session.
    dependenciesSatisfied = False

    def __init__(self, createSynthesizer=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.createSynthesizer = createSynthesizer
        self._synthesisLogic = None  # made at the first run

    def getParameterNode(self):
        return MRISynthesisParameterNode(super().getParameterNode())

    def process(self, inputVolume: vtkMRMLScalarVolumeNode, outputVolume: Optional[vtkMRMLScalarVolumeNode],
                model: Optional[str], direction: str, device: str = "auto",
                referenceVolume: Optional[vtkMRMLScalarVolumeNode] = None,
                progress: Optional[Callable[[int, int], bool]] = None, batchSize: int = 8,
                maskVolume: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None] = None,
                uncertainty: bool = False, precision: str = "auto", showResults: bool = True,
                onStage: Optional[Callable[[str], None]] = None, brainExtraction: str = "auto"):
        """Synthesize the other contrast of ``inputVolume``; returns a ``SynthesisResult``.

        - ``outputVolume``: scalar volume node to overwrite, or None for a new node next to the input.
        - ``model``: catalog id, path of a ``.safetensors`` checkpoint, or None for the default model.
        - ``direction``: 't1-to-t2' or 't2-to-t1' (must match the model).
        - ``device``: 'auto', 'cuda', 'mps' or 'cpu'; ``precision``: 'auto', 'fp32', 'bf16' or 'fp16'.
        - ``referenceVolume``: real target-contrast volume: adds a difference volume and metrics.
        - ``progress(done, total)``: called after each batch; returning False cancels.
        - ``batchSize``: slices per forward pass; ``maskVolume``: brain mask (labelmap or
          segmentation), None for the automatic one; ``uncertainty``: also a standard-deviation map
          (models that can sample only); ``showResults``: set up the comparison views;
          ``onStage(name)``: told "brain extraction" and "synthesis" as they start;
          ``brainExtraction``: without ``maskVolume``, 'auto', 'extract' or 'none' (``--brain-mask``).

        PyTorch and the Python packages are installed first if needed (asking the user unless
        testing). The loaded model is kept for the next run with the same checkpoint file, device
        and precision. Details, errors and the undo on failure:
        ``MRISynthesisSlicer.SynthesisLogic.SynthesisLogic.process``.
        """
        self.ensureDependencies(askConfirmation=not slicer.app.testingEnabled())
        return self.synthesisLogic().process(
            inputVolume, outputVolume, model, direction, device=device, referenceVolume=referenceVolume,
            progress=progress, batchSize=batchSize, maskVolume=maskVolume, uncertainty=uncertainty,
            showResults=showResults, onStage=onStage, precision=precision, brainExtraction=brainExtraction)

    def synthesisLogic(self):
        if self._synthesisLogic is None:
            from MRISynthesisSlicer.SynthesisLogic import SynthesisLogic

            # The core runs in a worker process, unless a test injects its synthesizers (in process).
            self._synthesisLogic = (SynthesisLogic(self.createSynthesizer) if self.createSynthesizer
                                    else SynthesisLogic(useWorkerProcess=True))
        return self._synthesisLogic

    def startSynthesis(self, inputVolume, outputVolume, model, direction, **options):
        """Check the nodes, start the core in a worker process and return at once (the panel's way):
        a ``SynthesisJob`` whose ``worker`` (``MRISynthesisSlicer.WorkerProcess``) the caller polls and,
        once ``worker.finished()``, gives to :meth:`finishSynthesisSteps`, or kills to cancel (the scene
        is not touched before that). Options as for :meth:`process`; call
        :meth:`ensureDependencies` first."""
        from MRISynthesisSlicer.WorkerProcess import WorkerProcess

        job = self.synthesisLogic().start(inputVolume, outputVolume, model, direction, **options)
        job.worker = WorkerProcess(job.request)
        job.worker.start()
        return job

    def finishSynthesisSteps(self, job, showResults=True):
        """The finished worker's results into the scene, in steps (``SynthesisLogic.finishSteps``):
        iterate it to the end, then ``job.result`` is the ``SynthesisResult``; closing it early undoes
        the import. Raises the worker's error at once when it failed."""
        job.workerResult = job.worker.workerResult()  # the worker's error, at once
        return self.synthesisLogic().finishSteps(job, showResults=showResults)

    def prepareStart(self) -> None:
        """Import what :meth:`startSynthesis` uses (tens of milliseconds, the first time), so that the
        panel can do it in a timer turn of its own."""
        self.synthesisLogic()
        import MRISynthesisLib.worker  # noqa: F401 (SynthesisLogic.start imports it)
        import MRISynthesisSlicer.WorkerProcess  # noqa: F401

    def ensureDependencies(self, askConfirmation=True, check=None) -> None:
        """Slicer version, then PyTorch through the PyTorch extension (it picks the CUDA build for this
        computer), then the core's pure-Python packages with pip; the user is asked before anything
        is installed. ``check``: a finished ``Dependencies.BackgroundCheck`` whose versions are used
        instead of reading them here (the panel's first click)."""
        if MRISynthesisLogic.dependenciesSatisfied:  # checked once per session (it reads package metadata)
            return
        versionProblem = Dependencies.slicerVersionProblem(slicer.app.majorVersion, slicer.app.minorVersion)
        if versionProblem:
            raise RuntimeError(versionProblem)
        torchVersion, unsatisfied = check.result() if check is not None else (Dependencies.torchVersion(), None)
        if self.ensureTorch(askConfirmation, torchVersion) is not None or unsatisfied is None:
            unsatisfied = Dependencies.unsatisfiedRequirements()  # read again after installing PyTorch
        if not unsatisfied:
            MRISynthesisLogic.dependenciesSatisfied = True
            return
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("MRI Synthesis needs these Python packages, which will now be downloaded and installed: {packages}")
                .format(packages=", ".join(unsatisfied)), windowTitle=_("Install Python packages")):
            raise RuntimeError(_("MRI Synthesis cannot run without: {packages}").format(packages=", ".join(unsatisfied)))
        from MRISynthesisSlicer.WorkerProcess import workerPython

        # Slicer 5.12's slicer.pydeps.pip_ensure is not used: this one path (pinned by constraints, pip's
        # output kept for the error details) is the one the tests run, on every Slicer version.
        with slicer.util.WaitCursor():
            log = Dependencies.pipInstall(unsatisfied, workerPython())
        logging.info(log)
        MRISynthesisLogic.dependenciesSatisfied = True

    def ensureTorch(self, askConfirmation=True, version=NotImplemented):
        """Make sure a recent enough PyTorch is installed (not imported: Slicer's process does not
        need it): installed, or upgraded when older than the minimum, through the PyTorch extension
        (an upgrade takes effect after restarting Slicer). ``version``: ``Dependencies.torchVersion()``
        when already read (None: not installed). Returns the torch module it installed, else None."""
        if version is NotImplemented:
            version = Dependencies.torchVersion()
        problem = Dependencies.torchVersionProblem(version)
        if problem is None:  # not imported here: the model runs in a worker process
            return None
        requirement = f">={Dependencies.minimumTorchVersion()}"
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(_("{problem}. Install the 'PyTorch' extension from the Extensions Manager, restart "
                                 "Slicer, and try again.").format(problem=problem)) from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if version is None:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    _("MRI Synthesis needs PyTorch (about 1\u20133 GB to download). Install it now?"),
                    windowTitle=_("Install PyTorch")):
                raise RuntimeError(_("MRI Synthesis cannot run without PyTorch."))
            torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=requirement)
            if torch is None:
                raise RuntimeError(_("PyTorch could not be installed; see the Python console for details."))
            return torch
        # Installed but too old: upgrading replaces the files, but this process keeps the old torch.
        if not askConfirmation or not slicer.util.confirmOkCancelDisplay(
                _("{problem}. Upgrade PyTorch now? Slicer must be restarted afterwards.").format(problem=problem),
                windowTitle=_("Upgrade PyTorch")):
            raise RuntimeError(_("{problem}; upgrade it in the PyTorch Utils module.").format(problem=problem))
        torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=requirement)
        if slicer.util.confirmYesNoDisplay(_("PyTorch was upgraded. Restart Slicer now to use it?"),
                                           windowTitle=_("Restart Slicer")):
            slicer.util.restart()
        raise RuntimeError(_("PyTorch was upgraded; restart Slicer to use the new version."))


#
# MRISynthesisTest
#


class MRISynthesisTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Reload and Test, the SelfTests module, or ctest ``py_MRISynthesis``).

    Uses Slicer's sample T1 (MRBrainTumor1) and the smallest T1 -> T2 model of the bundled catalog.
    In testing mode without PyTorch (e.g. the extension build machines, where ctest sees only this
    extension's modules) the inference tests are skipped with the reason; the others still run.
    The MRML details (every orientation, transforms, errors, views) are covered by the pytest suite
    in Testing/Python/slicer_module, which runs without Slicer.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_SynthesizeT2FromSampleT1, self.test_CancelLeavesSceneUnchanged,
                     self.test_ApplyButtonFollowsDirection):
            self.setUp()
            test()

    def _inferenceSkipped(self) -> bool:
        """True (and says why) when the model cannot run here without installing anything."""
        if not slicer.app.testingEnabled():
            return False
        reason = Dependencies.inferenceUnavailableReason()
        if reason:
            logging.warning(f"MRISynthesis self-test: inference test skipped: {reason}")
            self.delayDisplay(f"Skipped (inference needs PyTorch and the core's packages): {reason}")
        return bool(reason)

    def _sampleT1(self):
        import SampleData

        return SampleData.downloadSample("MRBrainTumor1")

    def _bundledModel(self):
        from MRISynthesisLib import catalog

        entries = catalog.list_models(conventions.T1_TO_T2)
        self.assertTrue(entries, f"no bundled T1->T2 model in {catalog.resources_dir()}")
        return min(entries, key=lambda entry: entry.size_mb).id

    def test_SynthesizeT2FromSampleT1(self):
        if self._inferenceSkipped():
            return
        import numpy as np

        self.delayDisplay("Synthesizing T2 from the sample T1")
        t1 = self._sampleT1()
        t1Before = slicer.util.arrayFromVolume(t1).copy()

        result = MRISynthesisLogic().process(t1, None, self._bundledModel(), conventions.T1_TO_T2, device="cpu")

        output = result.outputVolume
        self.assertEqual(slicer.modules.volumes.logic().CompareVolumeGeometry(output, t1), "")
        synthetic = slicer.util.arrayFromVolume(output)
        self.assertEqual(synthetic.shape, t1Before.shape)
        self.assertEqual(synthetic.dtype, np.float32)
        self.assertGreaterEqual(float(synthetic.min()), 0.0)
        self.assertLessEqual(float(synthetic.max()), 1.0)
        self.assertGreater(float(synthetic.max()), 0.1)
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(t1), t1Before))
        self.assertIn("synthetic T2", output.GetName())
        self.delayDisplay("Test passed")

    def test_CancelLeavesSceneUnchanged(self):
        if self._inferenceSkipped():
            return
        from MRISynthesisLib.errors import Cancelled

        t1 = self._sampleT1()
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(Cancelled):
            MRISynthesisLogic().process(t1, None, self._bundledModel(), conventions.T1_TO_T2, device="cpu",
                                        progress=lambda done, total: False)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        self.delayDisplay("Test passed")

    def test_ApplyButtonFollowsDirection(self):
        widget = slicer.modules.mrisynthesis.widgetRepresentation().self()
        widget.initializeParameterNode()  # the scene was cleared in setUp
        parameterNode = widget.logic.getParameterNode()
        # The same translated text the widget shows (the test must pass in any language).
        parameterNode.direction = Direction.T2_TO_T1
        self.assertEqual(widget.ui.applyButton.text, _("Synthesize {contrast}").format(contrast="T1"))
        parameterNode.direction = Direction.T1_TO_T2
        self.assertEqual(widget.ui.applyButton.text, _("Synthesize {contrast}").format(contrast="T2"))
        self.delayDisplay("Test passed")
