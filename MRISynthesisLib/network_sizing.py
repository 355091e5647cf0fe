"""Size a network without memory: build it on PyTorch's ``meta`` device with bounds, and measure the
memory its intermediate results need for one slice, before a checkpoint's network is built for real.

Both steps are bounded, so a crafted configuration cannot make the sizing itself expensive:
construction stops at ``max_modules`` modules or ``max_values`` parameter and buffer values
(:func:`bounded_construction`); the forward pass runs on meta tensors (no memory, no arithmetic).

The forward pass follows every result (:class:`PeakMemory`): a new tensor counts while it is
referenced, so skip connections and temporaries count as they do in real inference. PyTorch's own
meta kernels of most operations go through its Python decompositions, whose first use imports its
compiler stack (several seconds and ~100 MB); the operations our networks use are therefore sized
by their shape rules (:data:`_SHAPE_RULES`). An operation without a rule still works, through
PyTorch's kernel.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

from .errors import CheckpointError


def build_on_meta(builder, max_modules: int, max_values: int):
    """``builder()`` on the meta device: weight initialisers skipped, construction bounded."""
    import torch

    with torch.device("meta"), skip_meta_initialisers(), bounded_construction(max_modules, max_values):
        return builder()


@contextlib.contextmanager
def bounded_construction(max_modules: int, max_values: int):
    """Stop building a network (in this thread) once it has more than ``max_modules`` modules or
    ``max_values`` parameter and buffer values (:class:`CheckpointError`), through PyTorch's global
    registration hooks: options that are each in range but multiply (``levels: 4096, blocks: 4096``)
    cannot make the construction itself run for minutes."""
    from torch.nn.modules import module as torch_module

    thread, counts = threading.get_ident(), {"modules": 0, "values": 0}

    def on_module(parent, name, child):
        if threading.get_ident() == thread:
            counts["modules"] += 1
            if counts["modules"] > max_modules:
                raise CheckpointError(f"its config describes a network of more than {max_modules:,} layers")

    def on_tensor(parent, name, tensor):
        if threading.get_ident() == thread and tensor is not None:
            counts["values"] += tensor.numel()
            if counts["values"] > max_values:
                raise CheckpointError(f"its config describes a network of more than {max_values:,} values")

    handles = [torch_module.register_module_module_registration_hook(on_module),
               torch_module.register_module_parameter_registration_hook(on_tensor),
               torch_module.register_module_buffer_registration_hook(on_tensor)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def skip_meta_initialisers():
    """A torch function mode that turns in-place operations on meta tensors (the weight
    initialisers: ``nn.init.normal_``, ``uniform_``, ``fill_``...) into no-ops.

    Meta tensors hold no values, so nothing is lost; without it, torch's meta ``normal_`` imports
    the compiler stack on first use (seconds to a minute)."""
    import torch
    from torch.overrides import TorchFunctionMode

    class SkipInitialisers(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            target = args[0] if args else kwargs.get("tensor")
            if (name.endswith("_") and not name.startswith("__") and name not in ("resize_", "set_", "requires_grad_")
                    and isinstance(target, torch.Tensor) and target.is_meta):
                return target
            return func(*args, **kwargs)

    return SkipInitialisers()


def peak_activation_bytes(network, input_shape) -> int:
    """Most bytes the intermediate results of ``network`` (built on meta) hold at once during the
    inference of one input of ``input_shape``. Errors of the network's own checks propagate."""
    import torch

    peak = PeakMemory()
    with torch.no_grad(), peak:
        network(torch.zeros(input_shape, device="meta"))
    return peak.peak


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _convolution(transposed, input, weight, bias=None, stride=1, padding=0, *rest, **options):
    names = ("output_padding", "groups", "dilation") if transposed else ("dilation", "groups")
    extra = dict(zip(names, rest), **options)
    dilation, groups = _pair(extra.get("dilation", 1)), extra.get("groups", 1)
    kernel, sizes = weight.shape[-2:], input.shape[-2:]
    if transposed:
        channels = weight.shape[1] * groups
        sizes = [(n - 1) * s - 2 * p + d * (k - 1) + o + 1 for n, s, p, d, k, o in
                 zip(sizes, _pair(stride), _pair(padding), dilation, kernel, _pair(extra.get("output_padding", 0)))]
    else:
        channels = weight.shape[0]
        if padding != "same":
            padding = (0, 0) if padding == "valid" else _pair(padding)
            sizes = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, s, p, d, k in
                     zip(sizes, _pair(stride), padding, dilation, kernel)]
    if min(sizes) < 1:
        raise ValueError(f"a convolution's output would be {sizes[0]} x {sizes[1]} pixels")
    return (*input.shape[:-3], channels, *sizes)


def _broadcast(*args, **kwargs):
    import numpy as np
    import torch

    return tuple(np.broadcast_shapes(*(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))))


def _cat(tensors, dim=0, **kwargs):
    shape = list(tensors[0].shape)
    dim = dim % len(shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return tuple(shape)


def _linear(input, weight, bias=None):
    return (*input.shape[:-1], weight.shape[0])


def _interpolate(input, size=None, scale_factor=None, *args, **kwargs):
    if size is not None:
        return (*input.shape[:2], *_pair(size))
    return (*input.shape[:2], *(int(n * f) for n, f in zip(input.shape[2:], _pair(scale_factor))))


def _pad(input, pad, *args, **kwargs):
    shape = list(input.shape)
    for axis, (before, after) in enumerate(zip(pad[::2], pad[1::2])):
        shape[-1 - axis] += before + after
    return tuple(shape)


def _same(input, *args, **kwargs):
    return tuple(input.shape)


def _shape_rules():
    """``{torch function: rule(args) -> output shape}`` for the operations of our networks."""
    import torch
    import torch.nn.functional as F

    rules = {torch.conv2d: lambda *a, **k: _convolution(False, *a, **k),
             torch.conv_transpose2d: lambda *a, **k: _convolution(True, *a, **k),
             torch.cat: _cat, F.linear: _linear, F.interpolate: _interpolate, F.pad: _pad}
    for function in (F.batch_norm, F.instance_norm, F.group_norm, F.layer_norm, F.relu, F.leaky_relu, F.elu, F.gelu,
                     F.dropout, F.dropout2d, torch.tanh, torch.sigmoid, torch.relu, torch.exp, torch.flip,
                     torch.Tensor.exp, torch.Tensor.tanh, torch.Tensor.flip, torch.Tensor.clamp):
        rules[function] = _same
    for name in ("add", "sub", "mul", "div", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
                 "__truediv__", "__rtruediv__"):
        rules[getattr(torch.Tensor, name)] = _broadcast
    for name in ("add", "sub", "mul", "div"):
        rules[getattr(torch, name)] = _broadcast
    return rules


class PeakMemory:
    """A torch function mode (made on first use) that follows the results of every operation: a
    new tensor (not a view, not an in-place result) adds its size while it is referenced; ``peak``
    is the most held at once. Operations on meta tensors with a rule in :func:`_shape_rules` are
    sized by it instead of PyTorch's meta kernel."""

    def __new__(cls):
        import torch
        from torch.overrides import TorchFunctionMode

        import torch.nn.functional as F

        rules = _shape_rules()
        inplace_argument = {F.relu: 1, F.leaky_relu: 2, F.elu: 2, F.dropout: 3, F.dropout2d: 3}

        class Mode(TorchFunctionMode):
            def __init__(self):
                super().__init__()
                self.live, self.peak, self.held = 0, 0, set()

            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                first = args[0] if args else None
                if isinstance(first, (list, tuple)) and first:
                    first = first[0]
                rule = rules.get(func)
                if rule is not None and isinstance(first, torch.Tensor) and first.is_meta:
                    position = inplace_argument.get(func)
                    inplace = kwargs.get("inplace") is True or (position is not None and len(args) > position
                                                                  and args[position] is True)
                    out = first if inplace else torch.empty(rule(*args, **kwargs), device="meta", dtype=first.dtype)
                else:
                    out = func(*args, **kwargs)
                for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
                    if isinstance(tensor, torch.Tensor) and tensor._base is None and id(tensor) not in self.held:
                        size = tensor.numel() * tensor.element_size()
                        self.held.add(id(tensor))
                        self.live += size
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(tensor, self._release, id(tensor), size)
                return out

            def _release(self, key, size):
                self.held.discard(key)
                self.live -= size

        return Mode()
