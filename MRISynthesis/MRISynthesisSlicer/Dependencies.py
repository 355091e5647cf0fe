"""What the module needs from Slicer and Python, and the checks that say what is missing.

Plain Python (no slicer import), so the decisions are tested without Slicer; the module's logic
acts on them (install prompts through the PyTorch extension and pip, a restart after an upgrade).
"""

import importlib.metadata
import importlib.util
import os
import re
import sys

#: Slicer 5.10 embeds Python 3.12 (5.8 embeds 3.9, which the core does not support) and its
#: parameter-node wrapper's connectGui returns the tag that disconnectGui needs (5.8 returns None).
MINIMUM_SLICER_VERSION = (5, 10)
#: The one list of the core's requirements is ``[project] dependencies`` in pyproject.toml, which the
#: extension ships next to MRISynthesisLib (developer mode: the repository root). Packages that the
#: module does not install with pip, and why:
NOT_INSTALLED_BY_PIP = {"torch": "installed by the PyTorch extension (the build that matches the GPU driver)",
                        "numpy": "part of Slicer",
                        "tqdm": "command line only (progress bars)",
                        "pynrrd": "command line only (Slicer reads and writes NRRD itself)"}
#: Import names that differ from the distribution name.
IMPORT_NAMES = {"scikit-image": "skimage"}


def pyprojectPath():
    """pyproject.toml beside the core: the installed extension's scripted-modules folder, or the
    repository root in developer mode."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.dirname(here), os.path.dirname(os.path.dirname(here))):
        candidate = os.path.join(folder, "pyproject.toml")
        if os.path.isfile(candidate):
            return candidate
    raise RuntimeError(f"pyproject.toml (the list of MRI Synthesis's Python requirements) is missing near {here}; "
                       "reinstall the extension")


def coreRequirements(path=None) -> dict:
    """``{distribution name: pip requirement}`` of pyproject.toml's ``[project] dependencies``."""
    import tomllib  # Python 3.11+: only called on supported Slicers (5.10 embeds 3.12)

    with open(path or pyprojectPath(), "rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    requirements = {}
    for requirement in dependencies:
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
        requirements[name] = requirement.strip()
    return requirements


def minimumTorchVersion(path=None) -> str:
    """The x.y of pyproject.toml's "torch>=x.y"."""
    match = re.search(r">=\s*([0-9][0-9.]*)", coreRequirements(path).get("torch", ""))
    return match.group(1) if match else "0"


def pipRequirements(path=None) -> dict:
    """``{import name: pip requirement}`` of the core's packages the module installs with pip."""
    return {IMPORT_NAMES.get(name, name): requirement for name, requirement in coreRequirements(path).items()
            if name not in NOT_INSTALLED_BY_PIP}


def versionTuple(version: str) -> tuple:
    """Leading release numbers of a version string: '2.4.0+cu121' -> (2, 4, 0), '2.6.0.dev2024' -> (2, 6, 0)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(version))
    if match is None:
        raise ValueError(f"cannot read the version '{version}'")
    return tuple(int(part) for part in match.group(1).split("."))


def isOlder(version: str, minimum: str) -> bool:
    """True when ``version``'s release is below ``minimum`` (pre-release tags are ignored)."""
    have, need = versionTuple(version), versionTuple(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) < need + (0,) * (width - len(need))


def slicerVersionProblem(major: int, minor: int):
    """A sentence for Slicer versions older than ``MINIMUM_SLICER_VERSION``, else None."""
    if (int(major), int(minor)) >= MINIMUM_SLICER_VERSION:
        return None
    return (f"MRI Synthesis needs 3D Slicer {MINIMUM_SLICER_VERSION[0]}.{MINIMUM_SLICER_VERSION[1]} or newer; "
            f"this is Slicer {major}.{minor}. Please install a newer Slicer.")


def torchVersion(findSpec=importlib.util.find_spec, distributionVersion=importlib.metadata.version):
    """Version of the torch this process uses: the imported module's ``__version__`` when torch is
    already imported (an upgrade on disk needs a restart), else the installed distribution's;
    None when torch is not installed."""
    module = sys.modules.get("torch")
    if module is not None:
        return str(getattr(module, "__version__", "0"))
    if findSpec("torch") is None:
        return None
    try:
        return distributionVersion("torch")
    except importlib.metadata.PackageNotFoundError:
        import torch

        return str(torch.__version__)


def torchVersionProblem(version):
    """A sentence when ``version`` (None: not installed) cannot be used, else None."""
    if version is None:
        return "PyTorch is not installed"
    minimum = minimumTorchVersion()
    if isOlder(version, minimum):
        return f"PyTorch {version} is installed, but MRI Synthesis needs PyTorch {minimum} or newer"
    return None


def missingRequirements(findSpec=importlib.util.find_spec) -> list:
    """pip requirements of the core's packages that are not importable."""
    return [requirement for name, requirement in pipRequirements().items() if findSpec(name) is None]


def inferenceUnavailableReason(findSpec=importlib.util.find_spec, distributionVersion=importlib.metadata.version):
    """Why the model cannot run here without installing anything (None when it can). The self-test
    skips its inference parts with this reason in testing mode, e.g. on the extension build
    machines, where ctest sees only this extension's modules (no PyTorch extension, no torch)."""
    problems = []
    torchProblem = torchVersionProblem(torchVersion(findSpec, distributionVersion))
    if torchProblem:
        problems.append(torchProblem)
    missing = missingRequirements(findSpec)
    if missing:
        problems.append("missing Python packages: " + ", ".join(missing))
    return "; ".join(problems) or None
