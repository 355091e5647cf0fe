"""Developer reload: every loaded module of the named packages is imported again, so edits in
MRISynthesisSlicer/ and MRISynthesisLib/ take effect with Slicer's Reload (no restart)."""

import importlib
import sys

from MRISynthesisSlicer.Reloading import PACKAGES, reloadPackages


def test_reload_picks_up_edited_modules_of_a_package(tmp_path, monkeypatch):
    package = tmp_path / "reloadprobe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "values.py").write_text("NUMBER = 1\n")
    (package / "user.py").write_text("from .values import NUMBER\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        user = importlib.import_module("reloadprobe.user")
        assert user.NUMBER == 1
        (package / "values.py").write_text("NUMBER = 2\n")
        reloaded = reloadPackages(("reloadprobe",))
        assert reloaded == ["reloadprobe", "reloadprobe.user", "reloadprobe.values"]
        assert sys.modules["reloadprobe.user"].NUMBER == 2  # 'from .values import' sees the new module
        assert sys.modules["reloadprobe.user"] is not user
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "reloadprobe"]:
            del sys.modules[name]


def test_a_module_that_no_longer_imports_is_skipped(tmp_path, monkeypatch):
    package = tmp_path / "brokenprobe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "gone.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module("brokenprobe.gone")
        (package / "gone.py").unlink()
        importlib.invalidate_caches()
        assert reloadPackages(("brokenprobe",)) == ["brokenprobe"]
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "brokenprobe"]:
            del sys.modules[name]


def test_the_module_reloads_the_core_and_its_mrml_glue():
    assert PACKAGES == ("MRISynthesisLib", "MRISynthesisSlicer")
