"""Choosing the compute device: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import os
import sys

from .errors import InputError

#: What other packages may import from this module (see MRISynthesisLib.PUBLIC_MODULES).
__all__ = [
    "DEVICE_CHOICES", "PRECISION_CHOICES", "CpuDevice", "Precision", "auto_precision_follows_engine", "autocast_dtype",
    "cpu_has_native_bf16", "native_bf16_without_torch", "resolve_precision", "select_device", "surely_cpu"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def select_device(requested: str = "auto"):
    """Return a ``torch.device`` for ``requested`` ('auto', 'cpu', 'cuda', 'cuda:N' or 'mps').

    'auto' picks CUDA when a GPU is usable, else Apple's MPS, else the CPU. Asking for a device
    that is not available is an error rather than a silent fallback.
    """
    import torch

    name = str(requested or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was requested but no CUDA GPU is available; use --device auto or cpu")
        return torch.device(name)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError("device 'mps' was requested but Apple MPS is not available")
        return torch.device("mps")
    raise InputError(f"unknown device '{requested}'; expected one of {', '.join(DEVICE_CHOICES)}")


class CpuDevice:
    """The CPU, for code that runs without PyTorch: ``type`` is 'cpu', as for ``torch.device('cpu')``
    (whose ``str`` it shares, so :func:`select_device` turns it into one)."""

    type = "cpu"
    index = None

    def __str__(self):
        return "cpu"

    def __repr__(self):
        return "CpuDevice()"


def surely_cpu(requested) -> bool:
    """True when :func:`select_device` would surely give the CPU for ``requested``, told without
    PyTorch: 'cpu', or 'auto' on Linux or Windows without any GPU driver (NVIDIA, AMD ROCm or the WSL
    GPU device). False when only PyTorch can tell (macOS, a GPU driver present) or for a GPU."""
    name = str(requested or "auto").lower()
    if name == "cpu":
        return True
    if name != "auto":
        return False
    if sys.platform.startswith("linux"):
        return not any(os.path.exists(path) for path in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd",
                                                          "/dev/dxg"))
    if sys.platform == "win32":
        system = os.environ.get("SystemRoot", r"C:\Windows")
        return not os.path.exists(os.path.join(system, "System32", "nvcuda.dll"))
    return False


def autocast_dtype(device):
    """Mixed-precision dtype for ``device``: bfloat16 on CUDA GPUs that support it, else float16;
    ``None`` (full float32) on CPU and MPS."""
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# -- inference precision -------------------------------------------------------------------------

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


class Precision:
    """How a model runs: ``name`` ('fp32', 'bf16' or 'fp16'), the autocast ``dtype`` (None for
    full float32) and whether tensors use the channels-last memory format (faster bf16 on CPUs)."""

    def __init__(self, name: str, dtype=None, channels_last: bool = False):
        self.name, self.dtype, self.channels_last = name, dtype, bool(channels_last)

    def __repr__(self):
        return f"Precision({self.name!r}{', channels_last' if self.channels_last else ''})"

    def describe(self) -> str:
        return self.name + (" + channels_last" if self.channels_last else "")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (x86 AVX-512 BF16 or AMX).

    Without such instructions bfloat16 is emulated and slower than float32. Uses torch's CPU
    feature queries when present, else the Linux ``/proc/cpuinfo`` flags; False when unknown.
    """
    import torch

    mkldnn = getattr(torch.backends, "mkldnn", None)
    if mkldnn is None or not mkldnn.is_available():
        return False
    cpu = getattr(torch, "cpu", None)
    queries = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(query) for query in queries):
        try:
            return any(bool(query()) for query in queries)
        except Exception:  # noqa: BLE001 - a failing feature query means "unknown"
            pass
    return bool(_cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})


def native_bf16_without_torch() -> bool | None:
    """:func:`cpu_has_native_bf16` without importing PyTorch: from PyTorch when it is already loaded,
    else from the Linux CPU flags; None where they cannot be read (other systems)."""
    if "torch" in sys.modules:
        return cpu_has_native_bf16()
    if not sys.platform.startswith("linux"):
        return None
    flags = _cpuinfo_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16"}) if flags else None


def _cpuinfo_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def auto_precision_follows_engine(engine, device_type: str) -> bool:
    """True where an explicitly requested ``engine`` decides 'auto' precision: ONNX Runtime runs
    float32 on the CPU only, so ``--engine onnxruntime`` with ``--precision auto`` on a CPU is a
    float32 run on that engine (on a CPU with native bfloat16, 'auto' would otherwise pick bf16,
    which ONNX Runtime cannot run, and the engine asked for would be replaced by PyTorch)."""
    return str(engine or "auto").lower() == "onnxruntime" and device_type == "cpu"


def resolve_precision(requested: str, device, engine: str = "auto") -> Precision:
    """The :class:`Precision` for ``requested`` ('auto', 'fp32', 'bf16' or 'fp16') on ``device``.

    'auto': on CUDA bfloat16 autocast where the GPU supports it, else float16; on a CPU with
    native bfloat16 (:func:`cpu_has_native_bf16`) bfloat16 autocast + channels_last, else float32;
    float32 on Apple MPS; float32 on a CPU when ``engine`` is 'onnxruntime'
    (:func:`auto_precision_follows_engine`). An explicit choice is honoured on any device (bf16 on
    a CPU without native support runs, emulated and slower); bf16 on a GPU without bf16 support is
    refused.
    """
    import torch

    name = str(requested or "auto").lower()
    if name not in PRECISION_CHOICES:
        raise InputError(f"unknown precision '{requested}'; expected one of {', '.join(PRECISION_CHOICES)}")
    kind = device.type
    if name == "auto" and auto_precision_follows_engine(engine, kind):
        name = "fp32"
    if name == "auto":
        if kind == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif kind == "cpu" and cpu_has_native_bf16():
            name = "bf16"
        else:
            name = "fp32"
    if name == "fp32":
        return Precision("fp32")
    if name == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("precision 'bf16' was requested but this GPU does not support bfloat16; use fp16 or auto")
    dtype = torch.bfloat16 if name == "bf16" else torch.float16
    return Precision(name, dtype, channels_last=kind == "cpu")
