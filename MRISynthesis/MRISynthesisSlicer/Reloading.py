"""Developer reload: Slicer's Reload re-imports only the module file, so edits in its helper
packages (``MRISynthesisSlicer``, ``MRISynthesisLib``) would be ignored until Slicer restarts.

Plain Python (no slicer import), so it is tested without Slicer.
"""

import importlib
import logging
import sys

#: The packages the module's Reload re-imports.
PACKAGES = ("MRISynthesisLib", "MRISynthesisSlicer")


def reloadPackages(packages=PACKAGES) -> list:
    """Forget every loaded module of ``packages`` and import them again, packages before their
    submodules, so every ``from .x import y`` binds the new code. Returns the names re-imported;
    a module that no longer imports (e.g. a deleted file) is logged and skipped."""
    names = sorted(name for name in sys.modules if name.split(".")[0] in packages)
    for name in names:
        del sys.modules[name]
    reloaded = []
    for name in names:
        try:
            importlib.import_module(name)
            reloaded.append(name)
        except Exception as error:  # noqa: BLE001 - one broken module must not stop the developer's reload
            logging.warning(f"MRISynthesis: could not reload {name}: {error}")
    return reloaded
