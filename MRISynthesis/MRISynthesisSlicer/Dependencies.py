"""What the module needs from Slicer and Python, and the checks that say what is missing.

Plain Python (no slicer import), so the decisions are tested without Slicer; the module's logic
acts on them (install prompts through the PyTorch extension and pip, a restart after an upgrade).
"""

import importlib.metadata
import importlib.util
import re
import sys

#: Slicer 5.10 embeds Python 3.12 (5.8 embeds 3.9, which the core does not support) and its
#: parameter-node wrapper's connectGui returns the tag that disconnectGui needs (5.8 returns None).
MINIMUM_SLICER_VERSION = (5, 10)
#: Same minimum as pyproject.toml's "torch>=..." (a test keeps them equal).
MINIMUM_TORCH_VERSION = "2.1"
#: Python packages MRISynthesisLib needs besides PyTorch and numpy (import name -> pip requirement).
PYTHON_REQUIREMENTS = {"nibabel": "nibabel>=5.0", "skimage": "scikit-image>=0.22", "scipy": "scipy>=1.9",
                       "safetensors": "safetensors>=0.4", "deepbet": "deepbet>=1.0.2,<1.0.3"}


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
    if isOlder(version, MINIMUM_TORCH_VERSION):
        return f"PyTorch {version} is installed, but MRI Synthesis needs PyTorch {MINIMUM_TORCH_VERSION} or newer"
    return None


def missingRequirements(findSpec=importlib.util.find_spec) -> list:
    """pip requirements of the core's packages that are not importable."""
    return [requirement for name, requirement in PYTHON_REQUIREMENTS.items() if findSpec(name) is None]


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
