"""``wsss_fast.ops.drs``: fused DRS suppression (SPEC.md, "DRS").

The compiled operators (declared in csrc/ops.cpp) are
``torch.ops.wsss_fast.drs(x, gate)`` and ``torch.ops.wsss_fast.drs_delta(x, delta)``,
with ``drs_backward`` / ``drs_delta_backward`` as their gradients. This module
adds their fake (shape) kernels and autograd formulas, and the user-facing
:func:`drs` that checks its arguments and falls back to the reference.
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import _backend
from ._checks import check_dtype
from ..reference import drs as reference

_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CPU_DTYPES = (torch.float32, torch.float64)


def drs(x: torch.Tensor, gate: torch.Tensor | float) -> torch.Tensor:
    """Discriminative region suppression: ``min(relu(x), amax_hw(relu(x)) * gate)``.

    Args:
        x: (N, C, H, W) feature map; float32/float64 on CPU, float32/float16/
            bfloat16 on CUDA. Any strides (the kernels read a contiguous copy).
            Under CPU autocast (bfloat16 inference, :mod:`wsss_fast.cpu`) a
            bfloat16 or float16 x and gate run in float32, as autocast runs
            the operations that have no low-precision CPU kernel.
        gate: (N, C) tensor with the dtype and device of x (the learnable
            controller's output), or a Python float (the constant delta).

    Returns:
        (N, C, H, W) contiguous tensor of x's dtype (float32 for the CPU
        autocast case above). Differentiable in x and in a
        tensor gate, with exactly the gradients of the reference composition
        (:func:`wsss_fast.reference.drs`). A tensor with N = 0 or C = 0 gives an
        empty result; H = 0 or W = 0 is an error (the plane max is undefined).
        A NaN in a plane makes that output plane NaN, as in the reference.
    """
    if (isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)
            and torch.is_autocast_enabled("cpu")):
        x = x.float()
        gate = gate.float() if isinstance(gate, torch.Tensor) else gate
    _check(x, gate)
    op = "drs" if isinstance(gate, torch.Tensor) else "drs_delta"
    if not _backend.use_kernel(op, x.device.type):
        return reference(x, gate)
    if op == "drs":
        return torch.ops.wsss_fast.drs(x, gate)
    return torch.ops.wsss_fast.drs_delta(x, float(gate))


def _check(x, gate) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"drs: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"drs: x must be a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    check_dtype("drs", "x", x, _CPU_DTYPES, _CUDA_DTYPES)
    n, c, h, w = x.shape
    if n * c > 0 and h * w == 0:
        raise ValueError(f"drs: x must have H > 0 and W > 0 (the plane max is undefined), "
                         f"got shape {tuple(x.shape)}")
    if isinstance(gate, torch.Tensor):
        if gate.shape != (n, c):
            raise ValueError(f"drs: gate must have shape (N, C) = ({n}, {c}), got {tuple(gate.shape)}")
        if gate.dtype != x.dtype:
            raise TypeError(f"drs: gate must have the dtype of x ({x.dtype}), got {gate.dtype}")
        if gate.device != x.device:
            raise ValueError(f"drs: gate must be on the device of x ({x.device}), got {gate.device}")
    elif isinstance(gate, numbers.Real) and not isinstance(gate, bool):
        if not math.isfinite(gate):
            raise ValueError(f"drs: gate must be finite, got {gate}")
    else:
        raise TypeError(f"drs: gate must be a (N, C) tensor or a float, got {type(gate).__name__}")


def _register() -> None:
    """Fake kernels and autograd for the compiled operators."""

    @torch.library.register_fake("wsss_fast::drs")
    def _(x, gate):
        return x.new_empty(x.shape)

    @torch.library.register_fake("wsss_fast::drs_delta")
    def _(x, delta):
        return x.new_empty(x.shape)

    @torch.library.register_fake("wsss_fast::drs_backward")
    def _(grad_out, x, gate):
        return x.new_empty(x.shape), gate.new_empty(gate.shape)

    @torch.library.register_fake("wsss_fast::drs_delta_backward")
    def _(grad_out, x, delta):
        return x.new_empty(x.shape)

    def setup_gate(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward_gate(ctx, grad_out):
        x, gate = ctx.saved_tensors
        return tuple(torch.ops.wsss_fast.drs_backward(grad_out, x, gate))

    def setup_delta(ctx, inputs, output):
        x, ctx.delta = inputs
        ctx.save_for_backward(x)

    def backward_delta(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return torch.ops.wsss_fast.drs_delta_backward(grad_out, x, ctx.delta), None

    torch.library.register_autograd("wsss_fast::drs", backward_gate, setup_context=setup_gate)
    torch.library.register_autograd("wsss_fast::drs_delta", backward_delta, setup_context=setup_delta)


if _backend._C is not None:
    _register()
