"""Static checks of the extension's packaging and GUI wiring that need no Slicer application:
what CMake ships, what the .ui binds, what the catalog entry says."""

import ast
import json
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MODULE_DIR = REPO / "MRISynthesis"
MODULE_FILE = MODULE_DIR / "MRISynthesis.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MRISynthesis.ui"


def cmakeList(path: Path, variable: str) -> list:
    """Entries of ``set(<variable> ...)`` in a CMakeLists.txt (comments dropped, ${MODULE_NAME} expanded)."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found in {path}"
    return [entry.replace("${MODULE_NAME}", "MRISynthesis") for entry in match.group(1).split()]


def pythonFiles(folder: Path) -> set:
    return {p.relative_to(folder.parent).as_posix() for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def test_every_module_script_is_packaged_and_exists():
    listed = cmakeList(MODULE_DIR / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")
    onDisk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert set(listed) == onDisk


def test_every_core_library_file_is_packaged():
    listed = cmakeList(MODULE_DIR / "CMakeLists.txt", "MRISynthesisLib_PYTHON_SCRIPTS")
    assert set(listed) == pythonFiles(REPO / "MRISynthesisLib"), \
        "update MRISynthesisLib_PYTHON_SCRIPTS in MRISynthesis/CMakeLists.txt"


def test_packaged_resources_exist():
    for entry in cmakeList(MODULE_DIR / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES"):
        assert (MODULE_DIR / entry).is_file(), entry
    for entry in cmakeList(MODULE_DIR / "CMakeLists.txt", "MRISynthesisLib_RESOURCES"):
        assert (REPO / entry).is_file(), entry


def test_bundled_model_files_are_packaged():
    """Every weight file the catalog lists must be shipped, or the catalog points at nothing."""
    catalog = json.loads((REPO / "Resources" / "Models.json").read_text())
    listed = set(cmakeList(MODULE_DIR / "CMakeLists.txt", "MRISynthesisLib_RESOURCES"))
    for model in catalog.get("models", []):
        assert f"Resources/{model['file']}" in listed, f"add Resources/{model['file']} to MRISynthesisLib_RESOURCES"


def test_no_stray_python_files_next_to_the_module():
    """Slicer loads every .py file directly in a module folder as a module."""
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["MRISynthesis.py"]


def test_top_level_cmake_matches_catalog_entry():
    cmake = (REPO / "CMakeLists.txt").read_text()
    entry = json.loads((REPO / "MRISynthesis.json").read_text())
    assert re.search(r"project\(MRISynthesis\)", cmake)
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in cmake
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', cmake).group(1).split()
    assert depends == entry["build_dependencies"] == ["PyTorch"]
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert "add_subdirectory(MRISynthesis)" in cmake


def test_minimum_slicer_version_is_enforced_and_stated():
    """5.10 is the oldest supported Slicer: the build refuses older ones (through the embedded
    Python version, which SlicerConfig exports) and the catalog description says so."""
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r'if\(Slicer_REQUIRED_PYTHON_VERSION VERSION_LESS "3\.12"\)\s*message\(FATAL_ERROR', cmake)
    description = re.search(r'set\(EXTENSION_DESCRIPTION "([^"]*)"\)', cmake).group(1)
    assert description.endswith("Requires 3D Slicer 5.10 or newer.")
    assert "Slicer 5.10 or newer" in (REPO / "README.md").read_text()


def test_module_file_and_its_start_up_helpers_parse_on_python_3_9():
    """On Slicer 5.8 (Python 3.9) the module must still load far enough to say that it needs 5.10."""
    for path in (MODULE_FILE, MODULE_DIR / "MRISynthesisSlicer" / "Dependencies.py",
                 MODULE_DIR / "MRISynthesisSlicer" / "ProcessingStates.py", REPO / "MRISynthesisLib" / "conventions.py",
                 REPO / "MRISynthesisLib" / "errors.py"):
        text = path.read_text()
        ast.parse(text, feature_version=(3, 9))
        if "from __future__ import annotations" not in text:  # else annotations are never evaluated
            assert not re.search(r"(:|->)\s*[\w\[\]]+\s*\|\s*\w", text), f"PEP 604 annotation in {path.name}"


def parameterNames() -> dict:
    """Annotated members of MRISynthesisParameterNode -> their annotation source."""
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "MRISynthesisParameterNode":
            return {item.target.id: ast.unparse(item.annotation) for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("MRISynthesisParameterNode not found")


def boundWidgets() -> dict:
    """SlicerParameterName -> widget class, from the .ui."""
    bound = {}
    for widget in ElementTree.parse(UI_FILE).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    return bound


def test_every_parameter_is_bound_to_a_widget_and_back():
    parameters, widgets = parameterNames(), boundWidgets()
    # model is the one exception: its list depends on the catalog and the direction (see the widget).
    assert set(parameters) - {"model"} == set(widgets)


@pytest.mark.parametrize("parameter, widgetClass", [
    ("inputVolume", "qMRMLNodeComboBox"), ("outputVolume", "qMRMLNodeComboBox"),
    ("referenceVolume", "qMRMLNodeComboBox"), ("maskVolume", "qMRMLNodeComboBox"),
    ("direction", "QComboBox"), ("device", "QComboBox"), ("batchSize", "QSpinBox"), ("uncertainty", "QCheckBox"),
])
def test_bound_widget_can_represent_the_parameter_type(parameter, widgetClass):
    assert boundWidgets()[parameter] == widgetClass


def test_node_selectors_are_connected_to_the_scene():
    ui = ElementTree.parse(UI_FILE)
    selectors = {w.get("name") for w in ui.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in ui.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert selectors == connected


def test_widgets_used_by_the_module_exist_in_the_ui():
    names = {w.get("name") for w in ElementTree.parse(UI_FILE).iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used <= names, used - names


#: Modules the module file may import when Slicer loads it: plain Python, no torch, no numpy.
LIGHT_HELPERS = {"MRISynthesisSlicer.Dependencies", "MRISynthesisSlicer.ProcessingStates"}
LIGHT_CORE = {"MRISynthesisLib.conventions"}


def topLevelImports(path: Path) -> list:
    tree = ast.parse(path.read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += [f"{node.module}.{alias.name}" if node.module == "MRISynthesisSlicer" else node.module
                      for alias in node.names]
    return names


def test_torch_is_not_imported_when_slicer_loads_the_module():
    imported = topLevelImports(MODULE_FILE)
    imported = [name + ".conventions" if name == "MRISynthesisLib" else name for name in imported]  # from . import
    assert not [name for name in imported if "torch" in name or name.startswith("MRISynthesisLib")
                and name not in LIGHT_CORE]
    assert {name for name in imported if name.startswith("MRISynthesisSlicer")} <= LIGHT_HELPERS
    for helper in LIGHT_HELPERS:  # and the helpers import nothing heavy either
        helperImports = topLevelImports(MODULE_DIR / (helper.replace(".", "/") + ".py"))
        assert not [name for name in helperImports if name.split(".")[0] in {"torch", "MRISynthesisLib", "slicer",
                                                                              "vtk", "qt", "numpy"}], helper
    # the core's conventions import only the standard library and the core's exceptions (plain Python)
    conventionsImports = topLevelImports(REPO / "MRISynthesisLib" / "conventions.py")
    assert set(conventionsImports) <= {"__future__", "dataclasses", "errors"}, conventionsImports
    errorsImports = topLevelImports(REPO / "MRISynthesisLib" / "errors.py")
    assert errorsImports == []


def test_reload_reimports_the_helper_packages_before_the_standard_reload():
    """Reload in developer mode must pick up edits in MRISynthesisSlicer/ and MRISynthesisLib/."""
    classes = {node.name: node for node in ast.parse(MODULE_FILE.read_text()).body if isinstance(node, ast.ClassDef)}
    onReload = next(f for f in classes["MRISynthesisWidget"].body if getattr(f, "name", "") == "onReload")
    calls = [ast.unparse(node.func) for node in ast.walk(onReload) if isinstance(node, ast.Call)]
    assert calls == ["reloadPackages", "ScriptedLoadableModuleWidget.onReload"]


def test_logic_process_has_an_explicit_documented_signature():
    classes = {node.name: node for node in ast.parse(MODULE_FILE.read_text()).body if isinstance(node, ast.ClassDef)}
    process = next(f for f in classes["MRISynthesisLogic"].body if getattr(f, "name", "") == "process")
    assert process.args.kwarg is None and process.args.vararg is None  # no **options
    arguments = [a for a in process.args.args if a.arg != "self"]
    assert all(a.annotation is not None for a in arguments), [a.arg for a in arguments if a.annotation is None]
    docstring = ast.get_docstring(process)
    for argument in arguments:
        assert f"``{argument.arg}" in docstring, argument.arg
    import inspect

    from MRISynthesisSlicer.SynthesisLogic import SynthesisLogic

    # every parameter of the logic it delegates to, nothing more
    delegate = set(inspect.signature(SynthesisLogic.process).parameters) - {"self"}
    assert {a.arg for a in arguments} == delegate


def test_module_has_the_four_slicer_classes_and_a_test_runner():
    classes = {node.name: node for node in ast.parse(MODULE_FILE.read_text()).body if isinstance(node, ast.ClassDef)}
    for name in ("MRISynthesis", "MRISynthesisWidget", "MRISynthesisLogic", "MRISynthesisTest",
                 "MRISynthesisParameterNode"):
        assert name in classes
    testMethods = [f.name for f in classes["MRISynthesisTest"].body if isinstance(f, ast.FunctionDef)]
    assert "runTest" in testMethods
    runTestSource = ast.unparse(next(f for f in classes["MRISynthesisTest"].body if getattr(f, "name", "") == "runTest"))
    for method in (m for m in testMethods if m.startswith("test_")):
        assert method in runTestSource, f"runTest does not call {method}"


def test_help_text_says_not_for_diagnosis():
    assert "not for diagnosis" in MODULE_FILE.read_text()
