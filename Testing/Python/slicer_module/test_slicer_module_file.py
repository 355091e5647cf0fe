"""The module file MRISynthesis/MRISynthesis.py itself, on Slicer 5.10's own Python framework with the
real MRML classes (harness: slicer_framework.py, which says what runs for real and what is stood
in for). Skipped with the reason where ../shared/slicer-5.10-python is absent."""

import shutil
import sys
import types
import zipfile

import numpy as np
import pytest
import slicer

import qt_standins
from slicer_framework import openPanel


def checkpointOf(path):
    return str(path)


@pytest.fixture
def volumes(makeVolume, helpers):
    t1 = makeVolume("T1")
    t2 = makeVolume("T2", arrayKJI=helpers.headPhantomKJI(seed=1))
    output = makeVolume("old output", arrayKJI=np.ones((20, 40, 36), np.float32))
    labelmap = slicer.util.addVolumeFromArray((helpers.headPhantomKJI() > 0).astype(np.uint8),
                                              ijkToRAS=helpers.ijkToRAS("RAS"), name="brain labelmap",
                                              nodeClassName="vtkMRMLLabelMapVolumeNode")
    from MRISynthesisSlicer.BrainMaskNodes import showMaskAsSegmentation

    segmentation = showMaskAsSegmentation(helpers.headPhantomKJI().transpose(2, 1, 0) > 0, t1, "brain segmentation")
    return {"input": t1, "reference": t2, "output": output, "labelmap": labelmap, "segmentation": segmentation}


# --- the parameter node -------------------------------------------------------------------------------

def test_parameter_node_is_created_with_every_default(slicerModule):
    """What setup() and enter() do when the panel opens; this raised TypeError for the None default
    of maskVolume before None was part of its Union."""
    parameterNode = slicerModule.MRISynthesisLogic().getParameterNode()

    assert parameterNode.inputVolume is None
    assert parameterNode.outputVolume is None
    assert parameterNode.referenceVolume is None
    assert parameterNode.maskVolume is None
    assert parameterNode.direction == slicerModule.Direction.T1_TO_T2
    assert parameterNode.device == slicerModule.Device.AUTO
    assert parameterNode.precision == slicerModule.Precision.AUTO
    assert parameterNode.batchSize == 8
    assert parameterNode.uncertainty is False
    assert parameterNode.model == ""
    assert parameterNode.parameterNode.GetAttribute("ModuleName") == "MRISynthesis"


def test_the_panel_opens_with_the_parameter_node_bound_to_the_ui(slicerModule, volumes):
    widget = openPanel(slicerModule)
    parameterNode = widget._parameterNode
    ui = widget.ui

    from MRISynthesisLib import catalog

    assert parameterNode.inputVolume is volumes["input"]  # the first plain scalar volume is preselected
    assert ui.inputSelector.currentNode() is volumes["input"]
    assert parameterNode.model == catalog.list_models("t1-to-t2")[0].id
    assert ui.modelComboBox.itemData(ui.modelComboBox.currentIndex) == parameterNode.model
    assert ui.directionComboBox.currentText == "T1 \u2192 T2"
    assert ui.maskSelector.nodeTypes == ("vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode")
    assert ui.batchSizeSpinBox.value == 8
    assert ui.applyButton.text == "Synthesize T2" and ui.applyButton.enabled


NODE_PARAMETERS = {"inputVolume": ("input", "inputSelector"), "outputVolume": ("output", "outputSelector"),
                   "referenceVolume": ("reference", "referenceSelector")}


def test_every_parameter_is_set_shown_and_cleared(slicerModule, volumes, t1ToT2Checkpoint):
    widget = openPanel(slicerModule)
    p, ui = widget._parameterNode, widget.ui

    for name, (role, selector) in NODE_PARAMETERS.items():
        setattr(p, name, volumes[role])
        assert getattr(p, name) is volumes[role]
        assert getattr(ui, selector).currentNode() is volumes[role]
    for mask in ("labelmap", "segmentation"):
        p.maskVolume = volumes[mask]
        assert p.maskVolume is volumes[mask]
        assert ui.maskSelector.currentNode() is volumes[mask]
    p.direction = slicerModule.Direction.T2_TO_T1
    assert ui.directionComboBox.currentText == "T2 \u2192 T1"
    assert ui.applyButton.text == "Synthesize T1"
    p.direction = slicerModule.Direction.T1_TO_T2
    p.model = checkpointOf(t1ToT2Checkpoint)
    assert ui.modelComboBox.itemData(ui.modelComboBox.currentIndex) == str(t1ToT2Checkpoint)
    for device in slicerModule.Device:
        p.device = device
        assert ui.deviceComboBox.currentText == device.label()
    for precision in slicerModule.Precision:
        p.precision = precision
        assert ui.precisionComboBox.currentText == precision.label()
    p.batchSize = 3
    assert ui.batchSizeSpinBox.value == 3
    p.uncertainty = True
    assert ui.uncertaintyCheckBox.checked

    for name, (role, selector) in NODE_PARAMETERS.items():
        setattr(p, name, None)
        assert getattr(p, name) is None
        assert getattr(ui, selector).currentNode() is None
    p.maskVolume = None
    assert p.maskVolume is None and ui.maskSelector.currentNode() is None
    assert ui.applyButton.enabled is False  # no input volume any more


def test_the_user_s_choices_in_the_panel_reach_the_parameter_node(slicerModule, volumes):
    widget = openPanel(slicerModule)
    p, ui = widget._parameterNode, widget.ui

    ui.directionComboBox.activate(1)
    assert p.direction == slicerModule.Direction.T2_TO_T1
    assert p.model.startswith("t2-to-t1")  # the model list follows the direction
    ui.batchSizeSpinBox.value = 16
    assert p.batchSize == 16
    ui.maskSelector.setCurrentNode(volumes["segmentation"])
    assert p.maskVolume is volumes["segmentation"]
    ui.referenceSelector.setCurrentNode(volumes["reference"])
    assert p.referenceVolume is volumes["reference"]
    ui.referenceSelector.setCurrentNode(None)
    assert p.referenceVolume is None


def test_uncertainty_box_is_enabled_only_for_models_that_can_sample(slicerModule, vaeCheckpoint):
    from MRISynthesisLib import catalog

    widget = openPanel(slicerModule)
    p, ui = widget._parameterNode, widget.ui
    assert not any(entry.supports_uncertainty for entry in catalog.list_models())  # no shipped model can sample
    assert ui.uncertaintyCheckBox.enabled is False
    ui.uncertaintyCheckBox.click()
    assert p.uncertainty is False

    qt_standins.QFileDialog.nextOpenFileName = str(vaeCheckpoint)  # "Load a checkpoint file..."
    ui.modelComboBox.activate(ui.modelComboBox.findData(widget.LOAD_CHECKPOINT))
    assert p.model == str(vaeCheckpoint)
    assert ui.uncertaintyCheckBox.enabled is True
    ui.uncertaintyCheckBox.click()
    assert p.uncertainty is True

    ui.modelComboBox.activate(0)  # back to a catalog model: the box is cleared and disabled
    assert p.uncertainty is False and ui.uncertaintyCheckBox.enabled is False


def test_device_offers_apple_mps_and_a_gpu_index(slicerModule):
    widget = openPanel(slicerModule)
    p, ui = widget._parameterNode, widget.ui
    labels = [ui.deviceComboBox.itemText(i) for i in range(ui.deviceComboBox.count)]
    assert labels == ["Auto", "GPU (CUDA)", "Apple GPU (MPS)", "CPU"]
    assert ui.gpuIndexSpinBox.enabled is False
    ui.deviceComboBox.activate(labels.index("GPU (CUDA)"))
    ui.gpuIndexSpinBox.value = 2
    assert ui.gpuIndexSpinBox.enabled is True
    assert widget.deviceName() == "cuda:2"
    ui.deviceComboBox.activate(labels.index("Apple GPU (MPS)"))
    assert widget.deviceName() == "mps" and ui.gpuIndexSpinBox.enabled is False


def test_brain_extraction_choice_reaches_the_core_when_no_mask_is_chosen(slicerModule, volumes):
    """The command line's --brain-mask auto|extract|none, offered as Brain extraction (issue 21)."""
    widget = openPanel(slicerModule)
    p, ui = widget._parameterNode, widget.ui
    labels = [ui.brainExtractionComboBox.itemText(i) for i in range(ui.brainExtractionComboBox.count)]
    assert labels == ["Automatic (whole-head scans only)", "Always extract the brain", "Never (use the head)"]
    logic = widget.logic.synthesisLogic()
    for index, expected in enumerate(("auto", "extract", "none")):
        ui.brainExtractionComboBox.activate(index)
        job = logic.start(p.inputVolume, None, None, "t1-to-t2", brainExtraction=p.brainExtraction.value)
        assert job.request["brain_mask"] == expected
    p.maskVolume = volumes["labelmap"]  # a mask node wins; the choice is greyed out
    assert ui.brainExtractionComboBox.enabled is False
    job = logic.start(p.inputVolume, None, None, "t1-to-t2", maskVolume=p.maskVolume,
                      brainExtraction=p.brainExtraction.value)
    assert job.request["brain_mask"].dtype == bool


def test_batch_size_outside_its_range_is_refused(slicerModule):
    p = slicerModule.MRISynthesisLogic().getParameterNode()
    with pytest.raises(ValueError):
        p.batchSize = 0
    assert p.batchSize == 8


def saveBundle(app, path):
    """File > Save as a .mrb, as Slicer does: the scene and its data in a folder, zipped."""
    folder = path.parent / "bundle"
    folder.mkdir()
    assert app.applicationLogic.SaveSceneToSlicerDataBundleDirectory(str(folder))
    with zipfile.ZipFile(path, "w") as archive:
        for file in folder.rglob("*"):
            archive.write(file, file.relative_to(folder.parent))
    shutil.rmtree(folder)


@pytest.mark.parametrize("mask", ["labelmap", "segmentation", None])
def test_parameters_are_saved_with_the_scene_and_read_back(slicerModule, volumes, app, tmp_path, mask,
                                                           t1ToT2Checkpoint):
    p = slicerModule.MRISynthesisLogic().getParameterNode()
    p.inputVolume, p.outputVolume, p.referenceVolume = volumes["input"], volumes["output"], volumes["reference"]
    p.maskVolume = volumes[mask] if mask else None
    p.direction = slicerModule.Direction.T2_TO_T1
    p.model = checkpointOf(t1ToT2Checkpoint)
    p.device, p.precision = slicerModule.Device.CPU, slicerModule.Precision.FP32
    p.batchSize, p.uncertainty = 5, True
    bundle = tmp_path / "scene.mrb"
    saveBundle(app, bundle)

    app.scene.Clear(False)  # File > Close scene, then open the bundle
    assert app.scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is None
    (tmp_path / "unpacked").mkdir()
    assert app.applicationLogic.OpenSlicerDataBundle(str(bundle), str(tmp_path / "unpacked"))
    read = slicerModule.MRISynthesisLogic().getParameterNode()

    assert read.inputVolume.GetName() == "T1" and read.outputVolume.GetName() == "old output"
    assert read.referenceVolume.GetName() == "T2"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(read.referenceVolume),
                                  slicer.util.arrayFromVolume(slicer.util.getNode("T2")))
    if mask is None:
        assert read.maskVolume is None
    else:
        assert read.maskVolume.GetName() == volumes[mask].GetName()
        assert read.maskVolume.GetClassName() == volumes[mask].GetClassName()
    assert read.direction == slicerModule.Direction.T2_TO_T1
    assert read.model == str(t1ToT2Checkpoint)
    assert (read.device, read.precision) == (slicerModule.Device.CPU, slicerModule.Precision.FP32)
    assert (read.batchSize, read.uncertainty) == (5, True)


# --- the logic and the panel, end to end --------------------------------------------------------------

def test_logic_synthesizes_with_mask_reference_and_comparison(slicerModule, volumes, t1ToT2Checkpoint, volumesLogic):
    inputBefore = slicer.util.arrayFromVolume(volumes["input"]).copy()

    result = slicerModule.MRISynthesisLogic().process(
        volumes["input"], None, checkpointOf(t1ToT2Checkpoint), "t1-to-t2", device="cpu",
        referenceVolume=volumes["reference"], maskVolume=volumes["labelmap"])

    assert volumesLogic.CompareVolumeGeometry(result.outputVolume, volumes["input"]) == ""
    synthetic = slicer.util.arrayFromVolume(result.outputVolume)
    assert synthetic.dtype == np.float32 and synthetic.max() > 0
    assert np.all(synthetic[slicer.util.arrayFromVolume(volumes["labelmap"]) == 0] == 0)
    assert result.differenceVolume is not None
    assert set(result.metrics) >= {"mae", "psnr", "ssim", "mi_bits", "conventions"}
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volumes["input"]), inputBefore)


def runPanel(widget, whileRunning=None, timeout=120):
    """Click Synthesize and run the (stand-in) event loop until the run ends, calling
    ``whileRunning()`` on each turn of the loop while it runs."""
    states = slicer_module_states()

    def ended():
        if widget._state == states.RUNNING and whileRunning is not None:
            whileRunning()
        return widget._state in (states.DONE, states.FAILED, states.CANCELLED)

    qt_standins.eventLoop.post(widget.ui.applyButton.click)
    qt_standins.eventLoop.run(ended, timeout)


def slicer_module_states():
    from MRISynthesisSlicer.ProcessingStates import ProcessingState

    return ProcessingState


def test_apply_button_runs_the_core_in_a_worker_process_and_shows_the_results(slicerModule, volumes,
                                                                            t1ToT2Checkpoint):
    widget = openPanel(slicerModule)
    p, ui = widget._parameterNode, widget.ui
    p.model = checkpointOf(t1ToT2Checkpoint)
    p.device = slicerModule.Device.CPU
    p.referenceVolume = volumes["reference"]
    nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
    seen = {"busy": False, "states": set()}

    def watch():
        seen["states"].add(ui.statusLabel.text)
        if ui.progressBar.maximum == 0:
            seen["busy"] = True
        assert "0 of 0" not in ui.statusLabel.text

    runPanel(widget, watch)

    assert ui.statusLabel.text.startswith("Done in"), ui.statusLabel.text
    assert seen["busy"]  # a busy bar while the worker starts and loads the model, never "0 of 0 slices"
    assert ui.resultsCollapsibleButton.visible and ui.metricsTable.visible
    assert ui.metricsTable.item(0, 0).text() == "MAE"
    float(ui.metricsTable.item(0, 1).text())
    assert "Reference percentile-normalised" in ui.conventionsLabel.text
    assert slicer.mrmlScene.GetNumberOfNodes() > nodesBefore
    assert ui.applyButton.text == "Synthesize T2" and ui.applyButton.enabled
    log = ui.logTextEdit.toPlainText()
    assert "MRISynthesisLib.worker" in log and "Stage: synthesis" in log and "Stage: scoring" in log


def test_input_check_warnings_are_shown_in_the_panel_and_the_log(slicerModule, makeVolume, helpers, t1ToT2Checkpoint,
                                                                 caplog):
    """Uniform noise is not brain MRI: the command line warns, and so does the panel (results and
    log) and Slicer's log."""
    noise = np.random.default_rng(0).uniform(1, 100, (20, 40, 36)).astype(np.float32)
    makeVolume("noise", arrayKJI=noise)
    everything = slicer.util.addVolumeFromArray(np.ones(noise.shape, np.uint8), ijkToRAS=helpers.ijkToRAS("RAS"),
                                                name="all", nodeClassName="vtkMRMLLabelMapVolumeNode")
    widget = openPanel(slicerModule)
    p, ui = widget._parameterNode, widget.ui
    p.maskVolume = everything  # no brain extraction (deepbet is tested elsewhere; it takes seconds here)
    p.model = checkpointOf(t1ToT2Checkpoint)
    p.device = slicerModule.Device.CPU

    with caplog.at_level("WARNING"):
        runPanel(widget)

    assert ui.statusLabel.text.startswith("Done in"), ui.statusLabel.text
    expected = "the input does not look like the brain MRI the model was trained on"
    assert f"Warning: {expected}" in ui.resultsLabel.text
    assert f"Warning: {expected}" in ui.logTextEdit.toPlainText()
    assert expected in caplog.text


def test_a_failed_installation_shows_pip_s_log(slicerModule, volumes, monkeypatch):
    from MRISynthesisSlicer import Dependencies

    widget = openPanel(slicerModule)
    shown = []
    monkeypatch.setattr(Dependencies, "unsatisfiedRequirements", lambda *args: ["deepbet==1.0.2"])

    def failingPip(requirements, python, **kwargs):
        raise Dependencies.PipInstallError("pip could not install deepbet==1.0.2 (exit status 1); see the details",
                                           "$ PythonSlicer -m pip install ...\nERROR: No matching distribution")

    monkeypatch.setattr(Dependencies, "pipInstall", failingPip)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: shown.append((text, kwargs)))

    runPanel(widget)  # the versions are read in a thread; pip runs on the main thread, from the timer

    assert widget.ui.statusLabel.text.startswith("Failed: pip could not install deepbet==1.0.2")
    assert shown[0][1]["detailedText"].endswith("ERROR: No matching distribution")
    assert "ERROR: No matching distribution" in widget.ui.logTextEdit.toPlainText()
    assert widget._job is None


def test_the_first_click_reads_the_package_versions_in_a_thread(slicerModule, volumes, t1ToT2Checkpoint,
                                                                monkeypatch):
    """The session's first click returns before the package check is done (it parses package metadata:
    tens of milliseconds); the timer starts the worker once the thread has finished."""
    import threading

    from MRISynthesisSlicer import Dependencies

    widget = openPanel(slicerModule)
    p, ui = widget._parameterNode, widget.ui
    p.model = checkpointOf(t1ToT2Checkpoint)
    p.device = slicerModule.Device.CPU
    release, threads = threading.Event(), []

    def slowCheck(*args):
        threads.append(threading.current_thread())
        release.wait(30)
        return []

    monkeypatch.setattr(Dependencies, "unsatisfiedRequirements", slowCheck)
    assert not slicerModule.MRISynthesisLogic.dependenciesSatisfied  # a fresh session

    ui.applyButton.click()

    assert widget._job is None and widget._state == slicer_module_states().PREPARING
    assert not ui.applyButton.enabled  # Cancel, disabled while the packages are checked
    release.set()
    qt_standins.eventLoop.run(lambda: widget._job is not None or widget._state == slicer_module_states().FAILED, 60)
    assert threads and threads[0] is not threading.main_thread()
    assert widget._job is not None, ui.statusLabel.text
    assert slicerModule.MRISynthesisLogic.dependenciesSatisfied
    ui.applyButton.click()  # Cancel
    assert ui.statusLabel.text.startswith("Cancelled"), ui.statusLabel.text
    assert not qt_standins.eventLoop.timers


def test_cancel_kills_the_worker_at_once_and_leaves_the_scene_unchanged(slicerModule, volumes, t1ToT2Checkpoint):
    widget = openPanel(slicerModule)
    p, ui = widget._parameterNode, widget.ui
    p.model = checkpointOf(t1ToT2Checkpoint)
    p.device = slicerModule.Device.CPU
    nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
    workers = []

    def userClicksCancelOnceTheWorkerRuns():
        if widget._job is not None and widget._job.worker.process is not None and not workers:
            workers.append(widget._job.worker)
            ui.applyButton.click()  # the button reads Cancel

    runPanel(widget, userClicksCancelOnceTheWorkerRuns)

    worker = workers[0]
    assert worker.process.poll() is not None  # killed, not waited for
    assert not worker.folder.exists()  # its temporary files are gone
    assert ui.statusLabel.text.startswith("Cancelled"), ui.statusLabel.text
    assert slicer.mrmlScene.GetNumberOfNodes() == nodesBefore
    assert ui.applyButton.text == "Synthesize T2" and ui.applyButton.enabled
    assert not qt_standins.eventLoop.timers  # the poll timer stopped


def test_cancel_while_the_results_are_added_undoes_them(slicerModule, volumes, t1ToT2Checkpoint):
    """The import is done one node per turn of the event loop; Cancel between two turns removes what
    was already added."""
    widget = openPanel(slicerModule)
    p, ui = widget._parameterNode, widget.ui
    p.model = checkpointOf(t1ToT2Checkpoint)
    p.device = slicerModule.Device.CPU
    p.referenceVolume = volumes["reference"]
    nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
    clicked = []

    def userClicksCancelDuringTheImport():
        if widget._importSteps is not None and slicer.mrmlScene.GetNumberOfNodes() > nodesBefore and not clicked:
            clicked.append(slicer.mrmlScene.GetNumberOfNodes())
            ui.applyButton.click()

    runPanel(widget, userClicksCancelDuringTheImport)

    assert clicked and ui.statusLabel.text.startswith("Cancelled"), ui.statusLabel.text
    assert slicer.mrmlScene.GetNumberOfNodes() == nodesBefore


def test_removing_the_input_during_a_run_cancels_it(slicerModule, volumes, t1ToT2Checkpoint):
    widget = openPanel(slicerModule)
    p = widget._parameterNode
    p.model = checkpointOf(t1ToT2Checkpoint)
    p.device = slicerModule.Device.CPU
    removed = []

    def userDeletesTheInput():
        if widget._job is not None and widget._job.worker.process is not None and not removed:
            removed.append(widget._job.worker)
            slicer.mrmlScene.RemoveNode(volumes["input"])

    runPanel(widget, userDeletesTheInput)

    assert removed[0].process.poll() is not None
    assert widget.ui.statusLabel.text.startswith("cancelled: 'T1' was removed"), widget.ui.statusLabel.text
    names = {node.GetName() for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")}
    assert names == {"T2", "old output", "brain labelmap"}  # nothing added


# --- the module's own self-test -------------------------------------------------------------------------

def sampleDataStandIn(helpers):
    """Stand-in for Slicer's SampleData module (a scripted module of the application, which would
    download MRBrainTumor1): a small phantom T1 volume instead."""

    def downloadSample(name):
        return slicer.util.addVolumeFromArray(helpers.headPhantomKJI((24, 48, 40)),
                                              ijkToRAS=helpers.ijkToRAS("RAS", (2.0, 2.0, 2.0)), name=name)

    return types.SimpleNamespace(downloadSample=downloadSample)


def test_the_module_s_self_test_passes(slicerModule, monkeypatch, helpers):
    """MRISynthesisTest.runTest(), as Slicer's ctest runs it, with the smallest bundled T1 -> T2 model
    on a small phantom instead of the downloaded sample."""
    monkeypatch.setitem(sys.modules, "SampleData", sampleDataStandIn(helpers))
    openPanel(slicerModule)

    slicerModule.MRISynthesisTest().runTest()


def test_stand_in_widgets_are_what_the_ui_file_declares(slicerModule):
    widget = openPanel(slicerModule)
    assert type(widget.ui.inputSelector) is slicer.qMRMLNodeComboBox
    assert type(widget.ui.directionComboBox) is qt_standins.QComboBox
    assert widget.ui.inputSelector.property("SlicerParameterName") == "inputVolume"


def test_a_scene_saved_with_a_retired_model_opens_with_its_replacement(slicerModule, volumes, caplog):
    """A parameter node from before 2026-12-04 may name a T1 -> T2 model that was since retired:
    the panel selects the direction's default and the log says which model replaced it and why."""
    from MRISynthesisLib import catalog

    retired = catalog.retired_models()[0]
    slicerModule.MRISynthesisLogic().getParameterNode().model = retired.id
    with caplog.at_level("WARNING"):
        widget = openPanel(slicerModule)

    assert widget._parameterNode.model == retired.replaced_by == catalog.default_model("t1-to-t2").id
    assert widget.ui.modelComboBox.itemData(widget.ui.modelComboBox.currentIndex) == retired.replaced_by
    assert any(f"model '{retired.id}' was retired" in record.getMessage() for record in caplog.records)
