"""The layering rule, enforced: the core (MRISynthesisLib/) never imports Slicer, Qt, VTK, CTK or
the training package; ``mrisynthesis train`` reaches Training through an entry-point plug-in that
Training registers in pyproject.toml."""

import ast
import dataclasses
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
FORBIDDEN_IN_CORE = {"slicer", "qt", "vtk", "ctk", "Training", "studies"}


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


def test_the_training_package_imports_no_study():
    """Research lives in studies/ (not shipped); the shipped Training package never imports it."""
    files = sorted((REPO / "Training").rglob("*.py"))
    assert not list((REPO / "Training").glob("study/*.py"))
    assert {path.relative_to(REPO).as_posix(): sorted(imported_modules(path) & {"studies"})
            for path in files if imported_modules(path) & {"studies"}} == {}


def test_pyproject_registers_train_as_a_plugin_and_a_script():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][cli.COMMAND_GROUP] == {"train": "Training.cli:main",
                                                          "prepare-pairs": "Training.prepare_pairs:main"}
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


# -- the public API ------------------------------------------------------------------------------

#: Folders of the packages that use the core from outside (they may import only its public API).
CLIENTS = ("Training", "MRISynthesis", "benchmarks", "studies")
PRODUCT = ("MRISynthesisLib",) + CLIENTS


def public_api() -> dict:
    """``{module: set of public names}`` as the core declares it."""
    import importlib

    import MRISynthesisLib

    return {name: set(importlib.import_module(f"MRISynthesisLib.{name}").__all__)
            for name in MRISynthesisLib.PUBLIC_MODULES}


def core_uses(path: Path) -> list:
    """``(line, module, name)`` of every use of the core in ``path``: ``from MRISynthesisLib.m import
    name``, ``from MRISynthesisLib import m`` (name None) and ``alias.name`` where ``alias`` is a core
    module, wherever the import is (also inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    uses, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "MRISynthesisLib":
            for alias in node.names:
                if node.module == "MRISynthesisLib":
                    uses.append((node.lineno, alias.name, None))
                    aliases[alias.asname or alias.name] = alias.name
                else:
                    uses.append((node.lineno, node.module.split(".", 1)[1], alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("MRISynthesisLib."):
                    uses.append((node.lineno, alias.name.split(".", 1)[1], None))
                    if alias.asname:
                        aliases[alias.asname] = alias.name.split(".", 1)[1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            uses.append((node.lineno, aliases[node.value.id], node.attr))
    return uses


def product_files(folders=PRODUCT):
    return [path for folder in folders if (REPO / folder).is_dir() for path in sorted((REPO / folder).rglob("*.py"))]


def test_every_public_module_declares_its_names():
    api = public_api()
    assert {"pipeline", "metrics", "synthesis", "io", "volume"} <= set(api)
    for module, names in api.items():
        assert names and not [n for n in names if n.startswith("_")], module


def test_other_packages_import_only_the_public_api():
    api = public_api()
    offending = []
    for path in product_files(CLIENTS):
        for line, module, name in core_uses(path):
            where = f"{path.relative_to(REPO).as_posix()}:{line}"
            if module == "__version__" or (name or "").startswith("__"):
                continue
            if module not in api:
                offending.append(f"{where} imports the private module MRISynthesisLib.{module}")
            elif name is not None and name not in api[module]:
                offending.append(f"{where} uses MRISynthesisLib.{module}.{name}, not in its __all__")
    assert offending == []


def test_the_public_api_scan_sees_imports_and_attributes(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from MRISynthesisLib.io import load_volume\nfrom MRISynthesisLib import metrics as m\n"
                      "def f():\n    import MRISynthesisLib.bids_app\n    return m.score, m._hidden\n")
    assert sorted(core_uses(sample)) == [(1, "io", "load_volume"), (2, "metrics", None), (4, "bids_app", None),
                                         (5, "metrics", "_hidden"), (5, "metrics", "score")]


def test_no_private_name_is_imported_from_another_module():
    """Within the project (another project's private names are that project's business)."""
    ours = {"MRISynthesisLib", "MRISynthesisSlicer", "Training", "studies", "benchmarks"}
    offending = []
    for path in product_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in ours):
                names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if names:
                    offending.append(f"{path.relative_to(REPO).as_posix()}:{node.lineno} {names}")
    assert offending == []


def core_import_graph() -> dict:
    """``{core module: core modules it imports}`` (imports anywhere in the file, relative or not)."""
    graph = {}
    for path in CORE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                if node.module:
                    targets.add(f"{base}.{node.module}")
                else:
                    targets |= {f"{base}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("MRISynthesisLib"):
                targets.add(node.module)
        graph[module] = targets - {module}
    return {module: targets & set(graph) for module, targets in graph.items()}


def test_the_core_has_no_import_cycle():
    """e.g. io reads NRRD through nrrd_io, which must not import io back (it did)."""
    graph = core_import_graph()
    assert graph["MRISynthesisLib.io"] >= {"MRISynthesisLib.nrrd_io"}
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", " -> ".join(path + [target])
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


# -- one home per concept (docs/architecture.md) -------------------------------------------------

def test_the_slice_grid_has_one_default_for_checkpoints_configs_and_the_cache():
    import inspect

    from MRISynthesisLib.checkpoint import ModelMetadata
    from MRISynthesisLib.conventions import DEFAULT_SLICE_GRID
    from Training.config import DataConfig
    from Training.data.cache import SliceCache

    metadata = ModelMetadata(architecture="baseline", config={}, direction="t1-to-t2")
    assert metadata.grid == DataConfig().grid == DEFAULT_SLICE_GRID
    for build in (SliceCache.build, SliceCache.build_unpaired):
        defaults = {name: p.default for name, p in inspect.signature(build).parameters.items()}
        assert {name: defaults[name] for name in ("slice_size", "pixel_spacing_mm", "context_slices")} == \
            dataclasses.asdict(DEFAULT_SLICE_GRID)


def test_run_folder_names_live_in_run_folder_only():
    """Training code asks Training.run_folder.RunFolder for a run's paths instead of spelling them."""
    from Training.run_folder import RunFolder

    names = {RunFolder.CONFIG, RunFolder.SPLIT, RunFolder.STATE, RunFolder.CHECKPOINTS, RunFolder.METRICS_JSONL,
             RunFolder.METRICS_CSV, RunFolder.TENSORBOARD, RunFolder.REPORT, RunFolder.CURVES}
    offending = []
    for path in product_files(("Training",)):
        if path.name == "run_folder.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # path / "name" joins
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                for side in (node.left, node.right):
                    if isinstance(side, ast.Constant) and side.value in names:
                        offending.append(f"{path.relative_to(REPO).as_posix()}:{node.lineno} {side.value!r}")
    assert offending == []


def test_the_architecture_document_lists_the_public_api():
    """docs/architecture.md's list between its public-api markers is the declaration, name for name."""
    import re

    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("<!-- public-api")[1].split("<!-- /public-api -->")[0]
    listed = {line.split("`")[1]: set(re.findall(r"`([^`]+)`", line.split(":", 1)[1]))
              for line in block.splitlines() if line.startswith("- `")}
    assert listed == public_api(), ("docs/architecture.md (## Public API) differs from the modules' __all__; "
                                    "rewrite its list with: python Testing/Python/test_layering.py")


def write_public_api_list() -> None:
    """Rewrite the list between the public-api markers of docs/architecture.md from ``__all__``."""
    path = REPO / "docs" / "architecture.md"
    text = path.read_text(encoding="utf-8")
    start = text.index("\n", text.index("<!-- public-api")) + 1
    end = text.index("<!-- /public-api -->")
    lines = [f"- `{module}`: " + ", ".join(f"`{name}`" for name in sorted(names, key=lambda n: (n.lower(), n)))
             for module, names in public_api().items()]
    path.write_text(text[:start] + "\n".join(lines) + "\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":
    write_public_api_list()
