"""The comparison layout at the MRML level: registered at start-up (so a saved scene reopens in it),
and the views' orientations restored when the user leaves the comparison."""

import ast
from pathlib import Path

import numpy as np
import pytest
import slicer

from MRISynthesisSlicer import ComparisonViews

MODULE_FILE = Path(__file__).resolve().parents[3] / "MRISynthesis" / "MRISynthesis.py"
FOUR_UP = slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView
CONVENTIONAL = slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView


def orientations(scene):
    return {name: ComparisonViews.sliceNodeByName(scene, name).GetOrientation() for name in ("Red", "Yellow", "Green")}


def volumes(count):
    return [slicer.util.addVolumeFromArray(np.ones((2, 2, 2)), name=f"v{i}") for i in range(count)]


@pytest.fixture(autouse=True)
def noLeftoverWatch(app):
    yield
    ComparisonViews.unwatchLayout(app.layoutNode)


DEFAULT = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


@pytest.mark.parametrize("count, leaveTo", [(2, FOUR_UP), (3, FOUR_UP), (3, CONVENTIONAL), (2, CONVENTIONAL)])
def test_leaving_the_comparison_restores_the_orientations(count, leaveTo, app):
    assert orientations(app.scene) == DEFAULT
    ComparisonViews.showComparison(app.layoutNode, volumes(count))
    assert all(orientations(app.scene)[name] == "Axial" for name in ("Red", "Yellow", "Green")[:count])

    app.layoutNode.SetViewArrangement(leaveTo)

    assert orientations(app.scene) == DEFAULT
    assert app.layoutNode.GetAttribute(ComparisonViews.SAVED_ORIENTATIONS_ATTRIBUTE) is None


def viewSettings(scene):
    settings = {}
    for name in ("Red", "Yellow", "Green"):
        composite = ComparisonViews.sliceCompositeNode(ComparisonViews.sliceNodeByName(scene, name))
        settings[name] = (composite.GetLinkedControl(), composite.GetHotLinkedControl())
    settings["crosshair"] = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode").GetCrosshairMode()
    return settings


@pytest.mark.parametrize("count", [2, 3])
def test_leaving_the_comparison_restores_linking_and_the_crosshair(count, app):
    before = viewSettings(app.scene)
    assert before["Red"] == (0, 0) and before["crosshair"] == slicer.vtkMRMLCrosshairNode.NoCrosshair
    ComparisonViews.showComparison(app.layoutNode, volumes(count))
    assert viewSettings(app.scene)["Red"] == (1, 1)
    assert viewSettings(app.scene)["crosshair"] == slicer.vtkMRMLCrosshairNode.ShowSmallBasic

    app.layoutNode.SetViewArrangement(FOUR_UP)

    assert viewSettings(app.scene) == before
    assert app.layoutNode.GetAttribute(ComparisonViews.SAVED_VIEW_SETTINGS_ATTRIBUTE) is None


def test_a_crosshair_the_user_changed_during_the_comparison_is_left_alone(app):
    ComparisonViews.showComparison(app.layoutNode, volumes(2))
    crosshair = app.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    crosshair.SetCrosshairMode(slicer.vtkMRMLCrosshairNode.ShowBasic)
    app.layoutNode.SetViewArrangement(FOUR_UP)
    assert crosshair.GetCrosshairMode() == slicer.vtkMRMLCrosshairNode.ShowBasic
    assert viewSettings(app.scene)["Red"] == (0, 0)


def test_two_comparisons_in_a_row_restore_what_was_there_before_the_first(app):
    ComparisonViews.showComparison(app.layoutNode, volumes(2))
    ComparisonViews.showComparison(app.layoutNode, volumes(3))
    app.layoutNode.SetViewArrangement(FOUR_UP)
    assert orientations(app.scene) == DEFAULT


def test_a_view_the_user_reoriented_during_the_comparison_is_left_alone(app):
    ComparisonViews.showComparison(app.layoutNode, volumes(3))
    ComparisonViews.sliceNodeByName(app.scene, "Green").SetOrientation("Sagittal")
    app.layoutNode.SetViewArrangement(FOUR_UP)
    assert orientations(app.scene) == {"Red": "Axial", "Yellow": "Sagittal", "Green": "Sagittal"}


def test_switching_between_comparison_layouts_restores_nothing(app):
    ComparisonViews.showComparison(app.layoutNode, volumes(3))
    app.layoutNode.SetViewArrangement(ComparisonViews.TWO_VIEW_LAYOUT_ID)
    assert orientations(app.scene)["Yellow"] == "Axial"


def test_layout_registered_at_start_up_lets_a_saved_scene_reopen_in_it(app, tmp_path):
    """A scene saved in the three-view layout, reopened in a session where no comparison has run."""
    ComparisonViews.showComparison(app.layoutNode, volumes(3))
    app.scene.SetSaveToXMLString(1)
    app.scene.Commit()
    savedScene = app.scene.GetSceneXMLString()
    assert f'currentViewArrangement="{ComparisonViews.THREE_VIEW_LAYOUT_ID}"' in savedScene

    app.close()
    fresh = type(app)()  # a new session: the module registered its layout at startupCompleted()
    ComparisonViews.registerLayout(fresh.layoutNode)
    fresh.scene.SetLoadFromXMLString(1)
    fresh.scene.SetSceneXMLString(savedScene)
    fresh.scene.Import()
    try:
        assert fresh.layoutNode.GetViewArrangement() == ComparisonViews.THREE_VIEW_LAYOUT_ID
        assert fresh.layoutNode.GetCurrentLayoutDescription().count('class="vtkMRMLSliceNode"') == 3
    finally:
        fresh.close()


def test_without_registration_the_saved_layout_has_no_description(app):
    assert not app.layoutNode.IsLayoutDescription(ComparisonViews.THREE_VIEW_LAYOUT_ID)
    ComparisonViews.registerLayout(app.layoutNode)
    ComparisonViews.registerLayout(app.layoutNode)  # idempotent
    assert app.layoutNode.IsLayoutDescription(ComparisonViews.THREE_VIEW_LAYOUT_ID)


def test_module_registers_the_layout_when_slicer_has_started():
    tree = ast.parse(MODULE_FILE.read_text())
    moduleClass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MRISynthesis")
    init = next(f for f in moduleClass.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    connects = [ast.unparse(call) for call in ast.walk(init) if isinstance(call, ast.Call)
                and ast.unparse(call.func) == "slicer.app.connect"]
    assert connects == ["slicer.app.connect('startupCompleted()', registerComparisonLayout)",
                        "slicer.app.connect('startupCompleted()', registerSampleData)"]
    register = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "registerComparisonLayout")
    assert "ComparisonViews.registerLayout(" in ast.unparse(register)
