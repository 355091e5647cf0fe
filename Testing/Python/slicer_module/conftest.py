"""Fixtures for the Slicer module's MRML tests, run with pytest against ``slicer-core`` (PyPI).

``slicer-core`` provides Slicer's real MRML scene, nodes and module logics without the Qt
application. Each test gets a fresh ``slicer.mrmlScene`` set up the way the application sets it
up (slice-orientation presets, Red/Yellow/Green slice views with their composite nodes, a layout
node, a crosshair), so the module's MRML code runs unchanged. When ``slicer-core`` is not
installed the whole folder is reported as one skipped test, with the reason.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
MODULE_DIR = REPO / "MRISynthesis"


def _slicerCoreProblem():
    try:
        import slicer
    except ImportError as error:
        return f"slicer-core is not installed ({error}); pip install slicer-core to run the Slicer module tests"
    # PyPI's unrelated "slicer" package uses the same import name.
    if not hasattr(slicer, "vtkMRMLScene"):
        return ("'import slicer' found a package without vtkMRMLScene "
                f"({getattr(slicer, '__file__', None) or list(getattr(slicer, '__path__', []))}); "
                "install slicer-core (and uninstall PyPI's unrelated 'slicer' package)")
    return None


SLICER_CORE_PROBLEM = _slicerCoreProblem()

if SLICER_CORE_PROBLEM:
    collect_ignore_glob = ["test_*.py"]

    class _SkippedFolder(pytest.Item):
        def runtest(self):
            pytest.skip(SLICER_CORE_PROBLEM)

    class _Folder(pytest.File):
        def collect(self):
            yield _SkippedFolder.from_parent(self, name="slicer_core_tests")

    def pytest_collect_file(file_path, parent):
        if file_path == HERE / "conftest.py":
            return _Folder.from_parent(parent, path=file_path)

else:
    import slicer
    import vtk

    for path in (str(REPO), str(MODULE_DIR), str(HERE)):
        if path not in sys.path:
            sys.path.insert(0, path)

    # Slicer 5.10's own Python framework with stand-ins for the Qt widget classes, when it is here
    # (slicer_framework.py says what runs for real and what is stood in for).
    import slicer_framework

    FRAMEWORK_PROBLEM = slicer_framework.frameworkProblem()
    if FRAMEWORK_PROBLEM is None:
        slicer_framework.install()

    class AppLikeScene:
        """A scene plus the logics the Slicer application would attach to it."""

        def __init__(self):
            self.scene = slicer.vtkMRMLScene()
            slicer.mrmlScene = self.scene
            self.applicationLogic = slicer.vtkMRMLApplicationLogic()  # slice orientation presets
            self.applicationLogic.SetMRMLScene(self.scene)
            self.layoutLogic = slicer.vtkMRMLLayoutLogic()
            self.layoutLogic.SetMRMLScene(self.scene)
            self.layoutNode = self.layoutLogic.GetLayoutNode()
            self.layoutNode.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
            self.sliceLogics = []  # like the slice widgets: each creates its view's composite node
            for sliceNode in slicer.util.getNodesByClass("vtkMRMLSliceNode", self.scene):
                sliceLogic = slicer.vtkMRMLSliceLogic()
                sliceLogic.SetMRMLScene(self.scene)
                sliceLogic.SetSliceNode(sliceNode)
                self.sliceLogics.append(sliceLogic)
            self.scene.AddNewNodeByClass("vtkMRMLCrosshairNode")
            slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)  # the app always has one
            slicer_framework.attachScene(self)

        def close(self):
            slicer_framework.attachScene(None)
            for logic in self.sliceLogics + [self.layoutLogic, self.applicationLogic]:
                logic.SetMRMLScene(None)
            self.scene.Clear(True)

    @pytest.fixture(autouse=True)
    def app():
        """Fresh application-like scene per test, installed as ``slicer.mrmlScene``."""
        appScene = AppLikeScene()
        yield appScene
        appScene.close()
        slicer.mrmlScene = None

    _DIRECTIONS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}

    def ijkToRAS(axcodes="RAS", spacing=(1.0, 1.0, 1.0), origin=(12.5, -30.0, 8.0)):
        """4x4 IJK-to-RAS whose i, j, k axes point along ``axcodes`` (e.g. 'LPS', 'ASL')."""
        matrix = np.eye(4)
        for axis, (code, size) in enumerate(zip(axcodes, spacing)):
            matrix[:3, axis] = np.array(_DIRECTIONS[code], dtype=float) * size
        matrix[:3, 3] = origin
        return matrix

    def headPhantomKJI(shapeKJI=(20, 40, 36), seed=0):
        """Zero background and a textured, asymmetric ellipsoid: a stand-in for a skull-stripped head."""
        rng = np.random.default_rng(seed)
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shapeKJI], indexing="ij"))
        inside = (grid ** 2).sum(0) < 0.75
        image = (300 + 120 * grid[2] + 60 * grid[1] + 25 * rng.standard_normal(shapeKJI)) * inside
        return np.clip(image, 0, None).astype(np.float32)

    def pytest_configure(config):
        config.addinivalue_line("markers", "realBrainDecision: keep deepbet's real coarse network in this process")

    @pytest.fixture(autouse=True)
    def phantomsAreSkullStripped(request, monkeypatch):
        """In this process, deepbet's coarse network (``brain_extraction.coarse_brain_share``, which
        decides whether an input with a constant background is skull-stripped) is replaced by its
        answer for a skull-stripped brain, so the phantoms here (zero background) are used as they
        are, as before that decision existed, without running the network for every MRML test.
        Whole-head phantoms (no constant background) still go to extraction, which the brain-mask
        tests replace by a box. Worker processes run the real network. A test marked
        ``realBrainDecision`` keeps the real one."""
        if request.node.get_closest_marker("realBrainDecision") is None:
            from MRISynthesisLib import brain_extraction

            monkeypatch.setattr(brain_extraction, "coarse_brain_share",
                                lambda volume, foreground, device="cpu", engine="torch": 1.0)

    @pytest.fixture
    def slicerModule(app):
        """The module file MRISynthesis/MRISynthesis.py loaded on Slicer 5.10's framework (fresh
        each test); skips with the reason where that framework is absent."""
        if FRAMEWORK_PROBLEM:
            pytest.skip(FRAMEWORK_PROBLEM)
        return slicer_framework.loadModuleFile()

    @pytest.fixture
    def makeVolume():
        """``makeVolume(name, arrayKJI=None, axcodes='RAS', spacing=(1,1,1))`` -> scalar volume node."""

        def make(name="T1", arrayKJI=None, axcodes="RAS", spacing=(1.0, 1.0, 1.0), matrix=None):
            arrayKJI = headPhantomKJI() if arrayKJI is None else arrayKJI
            matrix = ijkToRAS(axcodes, spacing) if matrix is None else matrix
            return slicer.util.addVolumeFromArray(arrayKJI, ijkToRAS=matrix, name=name)

        return make

    @pytest.fixture
    def volumesLogic(app):
        logic = slicer.vtkSlicerVolumesLogic()
        logic.SetMRMLScene(app.scene)
        yield logic
        logic.SetMRMLScene(None)

    def ijkToRASOf(node):
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    @pytest.fixture
    def helpers():
        """Small helpers shared by the test files (fixtures cannot be imported as functions)."""
        class Helpers:
            pass
        h = Helpers()
        h.ijkToRAS = staticmethod(ijkToRAS)
        h.headPhantomKJI = staticmethod(headPhantomKJI)
        h.ijkToRASOf = staticmethod(ijkToRASOf)
        return h

    def _saveTinyModel(directory, architecture, direction, modelId, **config):
        import torch

        from MRISynthesisLib.checkpoint import ModelMetadata, save_checkpoint
        from MRISynthesisLib.models import build_model, default_config

        torch.manual_seed(0)
        config = dict(default_config(architecture), **config)
        model = build_model(architecture, **config)
        metadata = ModelMetadata(architecture=architecture, config=config, direction=direction, model_id=modelId,
                                 title=f"tiny {architecture}", slice_size=64, pixel_spacing_mm=4.0)
        return save_checkpoint(Path(directory) / f"{modelId}.safetensors", model, metadata)

    @pytest.fixture(scope="session")
    def t1ToT2Checkpoint(tmp_path_factory):
        """A 1x1-convolution T1->T2 model on 64 x 64 slices: real checkpoint format, milliseconds to run."""
        return _saveTinyModel(tmp_path_factory.mktemp("models"), "baseline", "t1-to-t2", "tiny-t1-to-t2")

    @pytest.fixture(scope="session")
    def t2ToT1Checkpoint(tmp_path_factory):
        return _saveTinyModel(tmp_path_factory.mktemp("models"), "baseline", "t2-to-t1", "tiny-t2-to-t1")

    @pytest.fixture(scope="session")
    def vaeCheckpoint(tmp_path_factory):
        """A tiny VAE (can sample, so it supports uncertainty maps)."""
        return _saveTinyModel(tmp_path_factory.mktemp("models"), "vae", "t1-to-t2", "tiny-vae",
                              image_size=64, latent_dim=4, nf=4)
