"""Choosing the compute device: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

from .errors import InputError

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


def autocast_dtype(device):
    """Mixed-precision dtype for ``device``: bfloat16 on CUDA GPUs that support it, else float16;
    ``None`` (full float32) on CPU and MPS."""
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
