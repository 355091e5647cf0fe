"""The module's decisions that need no Slicer application: supported versions, PyTorch checks,
what the self-test skips, the panel's processing states and the default input volume."""

import ast
import importlib.metadata
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import slicer

from MRISynthesisSlicer import Dependencies
from MRISynthesisSlicer.ProcessingStates import ProcessingState, panelState
from MRISynthesisSlicer.VolumeNodes import defaultInputVolume

REPO = Path(__file__).resolve().parents[3]


# --- versions ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("version, expected", [
    ("2.1.0", (2, 1, 0)), ("2.4.0+cu121", (2, 4, 0)), ("2.6.0.dev20240901", (2, 6, 0)), ("2.5.0a0+git1234", (2, 5, 0)),
    ("2.13.0", (2, 13, 0)), ("1.13", (1, 13)),
])
def test_version_tuple(version, expected):
    assert Dependencies.versionTuple(version) == expected


@pytest.mark.parametrize("version, older", [
    ("2.0.1", True), ("1.13.1+cu117", True), ("2.1", False), ("2.1.0+cpu", False), ("2.13.0", False), ("10.0", False),
])
def test_torch_older_than_the_minimum(version, older):
    assert Dependencies.minimumTorchVersion() == "2.1"
    assert Dependencies.isOlder(version, Dependencies.minimumTorchVersion()) is older
    problem = Dependencies.torchVersionProblem(version)
    assert (problem is not None) is older
    if older:
        assert problem == f"PyTorch {version} is installed, but MRI Synthesis needs PyTorch 2.1 or newer"


def test_minimum_torch_version_is_the_one_in_pyproject():
    requirement = re.search(r'"torch>=([0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert requirement == Dependencies.minimumTorchVersion()
    assert Dependencies.pyprojectPath() == str(REPO / "pyproject.toml")  # developer mode: the repository root


def test_python_requirements_are_read_from_pyproject():
    """pyproject.toml is the one requirements list: the module pip-installs every core dependency
    except torch (PyTorch extension), numpy (Slicer has it), tqdm and pynrrd (command line only),
    with pyproject's exact specifiers; the ONNX Runtime engine (and onnx, which exports its graph)
    and cc3d (deepbet's connected-components library, also used directly) included."""
    assert Dependencies.pipRequirements() == {"nibabel": "nibabel>=5.0", "skimage": "scikit-image>=0.22",
                                              "scipy": "scipy>=1.9", "safetensors": "safetensors>=0.4",
                                              "deepbet": "deepbet==1.0.2", "onnxruntime": "onnxruntime>=1.17",
                                              "onnx": "onnx>=1.16", "cc3d": "connected-components-3d"}


def test_requirements_follow_an_edited_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["torch>=2.5", "numpy", "scikit-image >= 0.25",\n'
                         '    "newpackage[extra]~=1.2"]\n')
    assert Dependencies.pipRequirements(pyproject) == {"skimage": "scikit-image >= 0.25",
                                                       "newpackage": "newpackage[extra]~=1.2"}
    assert Dependencies.minimumTorchVersion(pyproject) == "2.5"


@pytest.mark.parametrize("major, minor, supported", [(5, 8, False), (5, 9, False), (5, 10, True), (5, 12, True),
                                                      (6, 0, True), (4, 13, False)])
def test_supported_slicer_versions(major, minor, supported):
    problem = Dependencies.slicerVersionProblem(major, minor)
    assert (problem is None) is supported
    if not supported:
        assert problem.startswith("MRI Synthesis needs 3D Slicer 5.10 or newer")


def test_torch_version_prefers_the_imported_module(monkeypatch):
    """An upgrade on disk does not replace the torch already loaded in this process."""
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="2.0.1"))
    assert Dependencies.torchVersion(distributionVersion=lambda name: "2.5.0") == "2.0.1"


def test_torch_version_of_an_installed_but_not_imported_torch(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert Dependencies.torchVersion(findSpec=lambda name: object(), distributionVersion=lambda name: "2.3.1") == "2.3.1"
    assert Dependencies.torchVersion(findSpec=lambda name: None) is None


def versions(table):
    """A distributionVersion() that knows only ``table``."""
    def version(name):
        if name not in table:
            raise importlib.metadata.PackageNotFoundError(name)
        return table[name]
    return version


SATISFIED = {"torch": "2.4.0", "numpy": "2.0.2", "nibabel": "5.2.1", "scikit-image": "0.24.0", "scipy": "1.14.1",
             "safetensors": "0.4.5", "deepbet": "1.0.2", "connected-components-3d": "3.26.1", "onnxruntime": "1.20.1",
             "onnx": "1.17.0"}


def test_self_test_skip_reason(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    nothing = lambda name: None  # noqa: E731 - an empty Python, as on the extension build machines
    reason = Dependencies.inferenceUnavailableReason(findSpec=nothing, distributionVersion=versions({}))
    assert reason == ("PyTorch is not installed; missing Python packages (or other versions installed): nibabel>=5.0, "
                      "scikit-image>=0.22, scipy>=1.9, safetensors>=0.4, deepbet==1.0.2, connected-components-3d, "
                      "onnxruntime>=1.17, onnx>=1.16")
    everything = lambda name: object()  # noqa: E731
    assert Dependencies.inferenceUnavailableReason(findSpec=everything, distributionVersion=versions(SATISFIED)) is None
    assert "PyTorch 1.12.0 is installed" in Dependencies.inferenceUnavailableReason(
        findSpec=everything, distributionVersion=versions(dict(SATISFIED, torch="1.12.0")))


@pytest.mark.parametrize("version, specifier, satisfied", [
    ("0.24.0", ">=0.22", True), ("0.21.0", ">=0.22", False), ("1.0.2", "==1.0.2", True), ("1.0.1", "==1.0.2", False),
    ("1.0.2.post1", "==1.0.2", True), ("2.0.2", ">=1.23,<3", True), ("3.0", ">=1.23,<3", False), ("1.0", "!=1.0", False),
])
def test_requirement_versions_are_checked(version, specifier, satisfied):
    assert Dependencies.satisfies(version, specifier) is satisfied


def test_requirements_are_checked_by_version_not_presence():
    """An installed deepbet 1.0.1 (its weights differ) or an old scikit-image is not accepted."""
    old = versions(dict(SATISFIED, deepbet="1.0.1", **{"scikit-image": "0.19.3"}))
    assert Dependencies.unsatisfiedRequirements(old) == ["scikit-image>=0.22", "deepbet==1.0.2"]
    assert Dependencies.unsatisfiedRequirements(versions(SATISFIED)) == []


class FakePip:
    def __init__(self, returncode, output, installs=None):
        self.returncode, self.output, self.installs = returncode, output, installs
        self.commands, self.constraints = [], None

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        self.constraints = Path(command[command.index("--constraint") + 1]).read_text()
        if self.installs is not None:
            self.installs()
        return types.SimpleNamespace(returncode=self.returncode, stdout=self.output)


def test_pip_install_pins_slicer_s_numpy_and_torch_with_constraints():
    installed = dict(SATISFIED, deepbet="1.0.1")
    pip = FakePip(0, "Successfully installed deepbet-1.0.2", installs=lambda: installed.update(deepbet="1.0.2"))

    log = Dependencies.pipInstall(["deepbet==1.0.2"], "/slicer/bin/PythonSlicer", run=pip,
                                  distributionVersion=versions(installed))

    assert pip.commands[0][:5] == ["/slicer/bin/PythonSlicer", "-m", "pip", "install", "--constraint"]
    assert pip.commands[0][-1] == "deepbet==1.0.2"
    assert pip.constraints.split() == ["numpy==2.0.2", "torch==2.4.0"]
    assert "Successfully installed" in log


def test_pip_failure_keeps_pip_s_log_for_the_error_details():
    pip = FakePip(1, "ERROR: Could not find a version that satisfies the requirement deepbet==1.0.2")
    with pytest.raises(Dependencies.PipInstallError, match="pip could not install deepbet==1.0.2") as failure:
        Dependencies.pipInstall(["deepbet==1.0.2"], "python", run=pip, distributionVersion=versions(SATISFIED))
    assert "Could not find a version" in failure.value.log and "--constraint" in failure.value.log


def test_pip_that_succeeds_without_satisfying_the_requirement_is_an_error():
    pip = FakePip(0, "Requirement already satisfied")
    with pytest.raises(Dependencies.PipInstallError, match="still not satisfied: deepbet==1.0.2"):
        Dependencies.pipInstall(["deepbet==1.0.2"], "python", run=pip,
                                distributionVersion=versions(dict(SATISFIED, deepbet="1.0.1")))


def test_here_the_inference_can_run():
    assert Dependencies.inferenceUnavailableReason() is None, importlib.metadata.version("torch")


# --- processing states -----------------------------------------------------------------------------

def test_cancel_is_disabled_while_dependencies_are_checked_or_installed():
    preparing = panelState(ProcessingState.PREPARING)
    assert preparing.buttonIsCancel and not preparing.cancelEnabled
    assert not preparing.controlsEnabled and preparing.progressVisible


def test_cancel_is_enabled_while_the_model_runs_and_the_bar_starts_empty():
    for state in (ProcessingState.PREPARING, ProcessingState.RUNNING):
        assert panelState(state).resetProgress  # never the previous run's 100 %
    running = panelState(ProcessingState.RUNNING)
    assert running.buttonIsCancel and running.cancelEnabled and running.progressVisible


@pytest.mark.parametrize("state", [ProcessingState.IDLE, ProcessingState.DONE, ProcessingState.CANCELLED,
                                   ProcessingState.FAILED, None])
def test_idle_states_give_the_controls_back(state):
    panel = panelState(state)
    assert panel.controlsEnabled and not panel.buttonIsCancel and not panel.progressVisible


# --- default input volume --------------------------------------------------------------------------

def test_default_input_is_the_first_plain_visible_scalar_volume(app):
    slicer.util.addVolumeFromArray(np.ones((4, 4, 4), np.uint8), name="labels",
                                   nodeClassName="vtkMRMLLabelMapVolumeNode")
    hiddenDWI = app.scene.AddNewNodeByClass("vtkMRMLDiffusionWeightedVolumeNode", "dwi")
    hiddenDWI.SetHideFromEditors(True)
    app.scene.AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", "tensors")
    slicer.util.addVolumeFromArray(np.ones((4, 4, 4, 3), np.uint8), name="rgb", nodeClassName="vtkMRMLVectorVolumeNode")
    hidden = slicer.util.addVolumeFromArray(np.ones((4, 4, 4)), name="hidden scalar")
    hidden.SetHideFromEditors(True)
    t1 = slicer.util.addVolumeFromArray(np.ones((4, 4, 4)), name="T1")
    slicer.util.addVolumeFromArray(np.ones((4, 4, 4)), name="T2")

    assert defaultInputVolume(app.scene) is t1


def test_no_default_input_without_a_scalar_volume(app):
    slicer.util.addVolumeFromArray(np.ones((4, 4, 4), np.uint8), name="labels",
                                   nodeClassName="vtkMRMLLabelMapVolumeNode")
    assert defaultInputVolume(app.scene) is None


# --- supported Python versions ---------------------------------------------------------------------

def test_core_and_module_parse_on_the_oldest_supported_python():
    """Slicer 5.10 embeds Python 3.12; the command line supports 3.10 (pyproject.toml). A syntax
    check against the 3.10 grammar (the newest-only syntax, e.g. PEP 695 generics, would fail)."""
    assert 'requires-python = ">=3.10' in (REPO / "pyproject.toml").read_text()
    files = sorted((REPO / "MRISynthesisLib").rglob("*.py")) + sorted((REPO / "MRISynthesis").rglob("*.py"))
    for path in files:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
    assert len(files) > 20
