"""What the module needs from Slicer and Python, and the checks that say what is missing.

Plain Python (no slicer import), so the decisions are tested without Slicer; the module's logic
acts on them (install prompts through the PyTorch extension and pip, a restart after an upgrade).
"""

import importlib.metadata
import importlib.util
import os
import re
import sys
import threading

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
IMPORT_NAMES = {"scikit-image": "skimage", "connected-components-3d": "cc3d"}


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


def satisfies(version: str, specifier: str) -> bool:
    """True when ``version`` satisfies ``specifier`` (comma-separated ``>=``, ``<=``, ``>``, ``<``,
    ``==``, ``!=`` clauses on release numbers, e.g. ">=0.22" or "==1.0.2"); pre-release tags are ignored."""
    for clause in filter(None, (part.strip() for part in specifier.split(","))):
        match = re.match(r"(>=|<=|==|!=|>|<)\s*(\S+)$", clause)
        if match is None:
            raise ValueError(f"unsupported version specifier '{clause}'")
        operator, bound = match.groups()
        have, need = versionTuple(version), versionTuple(bound)
        width = max(len(have), len(need))
        have, need = have + (0,) * (width - len(have)), need + (0,) * (width - len(need))
        if not {">=": have >= need, "<=": have <= need, ">": have > need, "<": have < need, "==": have == need,
                "!=": have != need}[operator]:
            return False
    return True


def _installedVersion(name, distributionVersion):
    try:
        return distributionVersion(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unsatisfiedRequirements(distributionVersion=importlib.metadata.version) -> list:
    """pip requirements of the core's packages that are not installed, or installed in a version that
    pyproject.toml's specifier excludes (e.g. deepbet 1.0.1 for "deepbet==1.0.2")."""
    unsatisfied = []
    for requirement in pipRequirements().values():
        name, specifier = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", requirement).groups()
        version = _installedVersion(name, distributionVersion)
        if version is None or not satisfies(version, specifier):
            unsatisfied.append(requirement)
    return unsatisfied


def pipConstraints(distributionVersion=importlib.metadata.version) -> list:
    """Constraint lines that keep what Slicer and the PyTorch extension installed as it is while pip
    installs the core's packages (a dependency must not upgrade Slicer's numpy or replace the CUDA
    build of torch): ``name==installed version`` for each installed package of ``NOT_INSTALLED_BY_PIP``
    that Slicer or the PyTorch extension provides."""
    lines = []
    for name in ("numpy", "torch"):
        version = _installedVersion(name, distributionVersion)
        if version is not None:
            lines.append(f"{name}=={version}")
    return lines


class PipInstallError(RuntimeError):
    """pip failed; ``log`` holds its whole output, for the details of the error message."""

    def __init__(self, message, log):
        super().__init__(message)
        self.log = log


def pipInstall(requirements, python, run=None, distributionVersion=importlib.metadata.version) -> str:
    """Install ``requirements`` with ``python -m pip install``, constrained by :func:`pipConstraints`;
    returns pip's output. ``PipInstallError`` (with pip's output) when pip fails or when the
    requirements are still not satisfied afterwards. ``run`` is ``subprocess.run`` (tests replace it)."""
    import subprocess
    import tempfile

    run = run or subprocess.run
    with tempfile.TemporaryDirectory(prefix="MRISynthesis-pip-") as folder:
        constraints = os.path.join(folder, "constraints.txt")
        with open(constraints, "w", encoding="utf-8") as file:
            file.write("\n".join(pipConstraints(distributionVersion)) + "\n")
        command = [python, "-m", "pip", "install", "--constraint", constraints, *requirements]
        completed = run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = f"$ {' '.join(command)}\n{completed.stdout or ''}"
    if completed.returncode != 0:
        raise PipInstallError(f"pip could not install {', '.join(requirements)} (exit status "
                              f"{completed.returncode}); see the details", log)
    still = [r for r in requirements if r in unsatisfiedRequirements(distributionVersion)]
    if still:
        raise PipInstallError(f"after pip install, these requirements are still not satisfied: {', '.join(still)}", log)
    return log


def inferenceUnavailableReason(findSpec=importlib.util.find_spec, distributionVersion=importlib.metadata.version):
    """Why the model cannot run here without installing anything (None when it can). The self-test
    skips its inference parts with this reason in testing mode, e.g. on the extension build
    machines, where ctest sees only this extension's modules (no PyTorch extension, no torch)."""
    problems = []
    torchProblem = torchVersionProblem(torchVersion(findSpec, distributionVersion))
    if torchProblem:
        problems.append(torchProblem)
    unsatisfied = unsatisfiedRequirements(distributionVersion)
    if unsatisfied:
        problems.append("missing Python packages (or other versions installed): " + ", ".join(unsatisfied))
    return "; ".join(problems) or None


class BackgroundCheck:
    """``torchVersion()`` and ``unsatisfiedRequirements()`` read in a Python thread, so that the panel's
    main thread does not wait for them (they parse the installed packages' metadata: tens of
    milliseconds, once per session). The thread only reads package metadata and pyproject.toml; it
    makes no Qt or MRML call. The caller polls :meth:`done`, then takes :meth:`result`."""

    def __init__(self):
        self._result = None
        self._error = None
        self._thread = threading.Thread(target=self._run, name="MRISynthesis package check", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            self._result = (torchVersion(), unsatisfiedRequirements())
        except Exception as error:  # raised again by result(), on the caller's thread
            self._error = error

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> tuple:
        """``(torch version or None, unsatisfied pip requirements)``; waits for the thread if needed and
        raises what the check raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result
