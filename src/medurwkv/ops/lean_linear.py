"""Linear maps of an elementwise input, lean in training memory: the input is recomputed in the backward.

A VRWKV block feeds its linear maps with elementwise functions of tensors that autograd keeps anyway. Written
as plain ops, autograd also keeps each map's input for the weight gradient:

* :func:`mix_linear`, ``(x·μ + xx·(1 − μ)) Wᵀ``: the token mix of the spatial mix (k, v, r) and of the channel
  mix (k, r), ``x`` the normalised tokens and ``xx`` their Q-Shift, both ``(B, T, C)`` and both kept for the
  gradient of ``μ`` already. The plain ops keep the mixed ``(B, T, C)`` input of every map as well (5 per
  block).
* :func:`squared_relu_linear`, ``relu(a)² Wᵀ``: the channel mix's hidden activation and value projection. The
  plain ops keep ``relu(a)`` and ``relu(a)²``, two ``(B, T, 4C)`` tensors, the widest of the block.

Each function keeps only the tensors named in its signature and recomputes the elementwise input in the
backward (negligible next to the matrix products). The forward runs the same ops as its ``_reference`` and
the gradients are the same products, so values match exactly and gradients to float rounding (tested). On
Med-URWKV-T (a training step at 256², batch 8) the two take about 0.3 GB off what autograd keeps
(``docs/results_decoder.md``).

The lean path runs when a gradient is needed and nothing is traced; inference, ``torch.compile`` and export
run the plain ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils import is_tracing

__all__ = ["mix_linear", "mix_linear_reference", "squared_relu_linear", "squared_relu_linear_reference"]


def _needs_lean(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors) and not is_tracing()


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])  # (N, features)


def mix_linear_reference(x: Tensor, xx: Tensor, mix: Tensor, weight: Tensor) -> Tensor:
    """``F.linear(x * mix + xx * (1 - mix), weight)``: x, xx (..., C), mix broadcastable (1, 1, C), weight
    (C_out, C) -> (..., C_out)."""
    return F.linear(x * mix + xx * (1 - mix), weight)


def squared_relu_linear_reference(a: Tensor, weight: Tensor) -> Tensor:
    """``F.linear(relu(a)², weight)``: ``a`` (..., Hd), ``weight`` (C, Hd) -> (..., C)."""
    return F.linear(torch.square(torch.relu(a)), weight)


# Under autocast the forwards run their products in a lower precision than the weights'; the backwards run
# outside autocast, so they work in the incoming gradient's dtype (as autocast's own casts would) and return
# each gradient in its input's dtype.


class _MixLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, xx: Tensor, mix: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, xx, mix, weight)
        return mix_linear_reference(x, xx, mix, weight)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        x, xx, mix, weight = ctx.saved_tensors
        dt = g.dtype
        need_x, need_xx, need_mix, need_w = ctx.needs_input_grad
        mix_d = mix.to(dt)
        grad_x = grad_xx = grad_mix = grad_w = None
        gm = g @ weight.to(dt) if (need_x or need_xx or need_mix) else None  # (..., C): d/d mixed input
        if need_x or need_xx:
            gx = gm * mix_d
            grad_x = gx.to(x.dtype) if need_x else None
            grad_xx = (gm - gx).to(xx.dtype) if need_xx else None  # gm·(1 − μ), a pass fewer
        if need_mix or need_w:
            d = (x - xx).to(dt)  # (..., C)
            if need_mix:  # d/dμ of x·μ + xx·(1 − μ) is x − xx
                grad_mix = (gm * d).sum_to_size(mix.shape).to(mix.dtype)
            if need_w:
                m = torch.addcmul(xx.to(dt), d, mix_d)  # xx + μ·(x − xx): the mixed input, recomputed
                grad_w = (_flat(g).T @ _flat(m)).to(weight.dtype)  # (C_out, C)
        return grad_x, grad_xx, grad_mix, grad_w


class _SquaredReLULinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(a, weight)
        return squared_relu_linear_reference(a, weight)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        a, weight = ctx.saved_tensors
        r = torch.relu(a).to(g.dtype)  # (..., Hd)
        grad_a = grad_w = None
        if ctx.needs_input_grad[0]:
            # d/da relu(a)² = 2·relu(a) (0 where a <= 0): the plain ops' pow and threshold backward
            # (the factor 2 goes on the small weight: scaling by 2 is exact, so this is the same number)
            grad_a = ((g @ (2 * weight.to(g.dtype))) * r).to(a.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (_flat(g).T @ _flat(torch.square(r))).to(weight.dtype)  # (C, Hd), relu(a)² recomputed
        return grad_a, grad_w


def mix_linear(x: Tensor, xx: Tensor, mix: Tensor, weight: Tensor) -> Tensor:
    """``F.linear(x * mix + xx * (1 - mix), weight)``, keeping only the arguments for the backward.

    Args:
        x: ``(..., C)`` tokens.
        xx: ``(..., C)`` their shift.
        mix: the mixing weights, broadcastable to ``x`` (``(1, 1, C)`` in a VRWKV block).
        weight: ``(C_out, C)`` (no bias).

    Returns:
        ``(..., C_out)``.
    """
    if _needs_lean(x, xx, mix, weight):
        return _MixLinear.apply(x, xx, mix, weight)
    return mix_linear_reference(x, xx, mix, weight)


def squared_relu_linear(a: Tensor, weight: Tensor) -> Tensor:
    """``F.linear(relu(a)², weight)``, keeping only ``a`` and ``weight`` for the backward.

    Args:
        a: ``(..., Hd)`` pre-activations (the channel mix's key projection).
        weight: ``(C, Hd)`` the value projection's weight (no bias).

    Returns:
        ``(..., C)``.
    """
    if _needs_lean(a, weight):
        return _SquaredReLULinear.apply(a, weight)
    return squared_relu_linear_reference(a, weight)
