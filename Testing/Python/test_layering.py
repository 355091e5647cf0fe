"""The layering rule, enforced: the core (MRISynthesisLib/) never imports Slicer, Qt, VTK, CTK or
the training package; ``mrisynthesis train`` reaches Training through an entry-point plug-in that
Training registers in pyproject.toml."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from MRISynthesisLib import cli

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "MRISynthesisLib"
FORBIDDEN_IN_CORE = {"slicer", "qt", "vtk", "ctk", "Training"}


def imported_modules(path: Path) -> set:
    """Top-level names of every module ``path`` imports: import statements anywhere (also inside
    functions) and string arguments of ``importlib.import_module`` / ``__import__``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function in ("import_module", "__import__"):
                names.add(node.args[0].value.split(".")[0])
    return names


def test_the_import_scan_sees_every_kind_of_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import vtk.util\nfrom slicer import util\n\ndef f():\n    from Training.cli import main\n"
                      "    import importlib\n    importlib.import_module('qt.core')\n    __import__('ctk')\n"
                      "from . import relative\n")
    assert imported_modules(sample) == {"vtk", "slicer", "Training", "importlib", "qt", "ctk"}


def test_the_core_imports_no_slicer_qt_vtk_ctk_or_training():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 25
    offending = {path.relative_to(REPO).as_posix(): sorted(imported_modules(path) & FORBIDDEN_IN_CORE)
                 for path in files}
    assert {path: names for path, names in offending.items() if names} == {}


def test_pyproject_registers_train_as_a_plugin_and_a_script():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][cli.COMMAND_GROUP] == {"train": "Training.cli:main"}
    assert project["scripts"]["mrisynthesis-train"] == "Training.cli:main"
    assert project["scripts"]["mrisynthesis"] == "MRISynthesisLib.cli:main"


def _register_plugins(folder: Path) -> Path:
    """A distribution's metadata with pyproject.toml's entry points, as pip would install it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    info = folder / "mrisynthesis_plugin_test-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mrisynthesis-plugin-test\nVersion: 0\n")
    lines = [f"[{cli.COMMAND_GROUP}]"] + [f"{k} = {v}" for k, v in project["entry-points"][cli.COMMAND_GROUP].items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_train_subcommand_runs_the_registered_plugin(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(_register_plugins(tmp_path)))
    assert "train" in cli.plugin_commands()
    assert cli.main(["train", "--list-options"]) == 0
    assert "loss.l1" in capsys.readouterr().out
    assert "train" in cli._parser().format_help()


def test_train_without_the_training_package_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr(cli, "plugin_commands", lambda: {})  # e.g. the core as the Slicer extension ships it
    assert cli.main(["train", "--list-options"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'mrisynthesis train' needs the training package") and err.count("\n") == 1


def test_a_plugin_cannot_replace_a_built_in_subcommand(tmp_path, monkeypatch):
    info = tmp_path / "evil-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[{cli.COMMAND_GROUP}]\nsynthesize = os:abort\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "synthesize" not in cli.plugin_commands()


@pytest.mark.slow
def test_mrisynthesis_train_works_from_a_pip_install(tmp_path):
    """pip installs the project (no dependencies, no network); its ``mrisynthesis train`` and
    ``mrisynthesis-train`` run the training command line, from a folder outside the checkout."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("MRISynthesisLib", "Training", "Resources"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, cwd=tmp_path)
    env = dict(os.environ, PYTHONPATH=str(target))
    check = ("import sys, MRISynthesisLib, importlib.metadata as m\n"
             "from MRISynthesisLib.cli import main\n"
             "assert MRISynthesisLib.__file__.startswith(sys.argv[1]), MRISynthesisLib.__file__\n"
             "scripts = {e.name: e.value for e in m.entry_points(group='console_scripts')}\n"
             "assert scripts['mrisynthesis-train'] == 'Training.cli:main', scripts\n"
             "sys.exit(main(['train', '--list-options']))\n")
    done = subprocess.run([sys.executable, "-c", check, str(target)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "loss.l1" in done.stdout
    assert (target / "bin" / "mrisynthesis-train").is_file()
