"""Multi-scale deformable attention (MSDA) sampling core in pure PyTorch.

This is the arithmetic of the Deformable-DETR operator ``MultiScaleDeformableAttention`` used by the official
``VRWKV_Adapter`` (``docs/adapter.md``, "Multi-scale deformable attention"): for every query ``q`` and
head ``m``::

    out[b, q, m] = Σ_l Σ_p A[b, q, m, l, p] · bilinear(V_l[b, :, m], x = loc_x·W_l − 0.5, y = loc_y·H_l − 0.5)

where ``V_l`` is level ``l`` of ``value`` reshaped row-major to ``(H_l, W_l)``, ``loc`` is in ``[0, 1]``
(x first) and a bilinear neighbour that falls outside the map contributes zero. That is exactly
``F.grid_sample(V_l, 2·loc − 1, mode="bilinear", padding_mode="zeros", align_corners=False)``, which is what
this implementation calls, so it runs on any device and dtype, is differentiable by autograd and exports to
ONNX (``GridSample``, opset ≥ 16) without a custom kernel.

When a gradient is needed (training, eager or under ``torch.compile``), :func:`ms_deform_attn` runs that same
code inside the custom operator ``medurwkv::ms_deform_attn`` (registered at import, with a fake implementation
and autograd), so that the compiler sees one node per call; its backward is the custom op
``medurwkv::ms_deform_attn_backward``, written out with ATen's ``grid_sampler_2d_backward``, which recomputes
the samples: only the inputs are kept between forward and backward. Differentiating the plain ops instead
would keep the ``(B·M, Dh, P, Lq)`` samples of every level and call, the largest activations of the adapter (about
270 MB of a Med-URWKV-T training step at 256², batch 8). The hand-written backward sums in another order than
autograd would, which moves float32 gradients by rounding (~1e-7 relative; tested against the plain ops).
Without a gradient (inference), and while a graph is recorded for export (exporters cannot translate a custom
op), the plain ops run: ONNX gets ``GridSample`` nodes with dynamic H/W.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils import is_exporting, is_tracing

__all__ = ["ms_deform_attn", "ms_deform_attn_pytorch"]

ShapesLike = Sequence[Sequence[int]] | Tensor
StartsLike = Sequence[int] | Tensor | None


def _as_shapes(spatial_shapes: ShapesLike) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        # A tensor costs a device->host copy and freezes the shapes in an exported graph; Python ints
        # (possibly symbolic, e.g. derived from ``x.shape``) keep H/W dynamic.
        spatial_shapes = spatial_shapes.tolist()
    shapes = [tuple(s) for s in spatial_shapes]
    if not shapes or any(len(s) != 2 for s in shapes):
        raise ValueError(
            f"expected spatial_shapes as a non-empty list of (H, W) pairs, got {spatial_shapes!r}"
        )
    return shapes  # type: ignore[return-value]


def _as_starts(level_start_index: StartsLike, shapes: list[tuple[int, int]]) -> list[int]:
    if level_start_index is None:
        starts, acc = [], 0
        for h, w in shapes:
            starts.append(acc)
            acc = acc + h * w
        return starts
    if isinstance(level_start_index, Tensor):
        level_start_index = level_start_index.tolist()
    starts = list(level_start_index)
    if len(starts) != len(shapes):
        raise ValueError(
            f"expected one level start per level ({len(shapes)}), got {len(starts)}: {level_start_index!r}"
        )
    return starts


def _validate(
    value: Tensor,
    shapes: list[tuple[int, int]],
    starts: list[int],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> None:
    if value.ndim != 4:
        raise ValueError(f"expected value of shape (B, S, M, Dh), got shape {tuple(value.shape)}")
    B, S, M, _ = value.shape
    if sampling_locations.ndim != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"expected sampling_locations of shape (B, Lq, M, L, P, 2), got {tuple(sampling_locations.shape)}"
        )
    _, Lq, M2, L, P, _ = sampling_locations.shape
    if sampling_locations.shape[0] != B or M2 != M or len(shapes) != L:
        raise ValueError(
            f"expected sampling_locations (B={B}, Lq, M={M}, L={len(shapes)}, P, 2) matching value and "
            f"spatial_shapes, got {tuple(sampling_locations.shape)}"
        )
    if tuple(attention_weights.shape) != (B, Lq, M, L, P):
        raise ValueError(
            f"expected attention_weights of shape {(B, Lq, M, L, P)}, got {tuple(attention_weights.shape)}"
        )
    for (h, w), s0 in zip(shapes, starts):
        if s0 < 0 or s0 + h * w > S:
            raise ValueError(
                f"expected the tokens [{s0}, {s0 + h * w}) of level ({h}, {w}) inside value's {S} tokens; "
                "check spatial_shapes and level_start_index"
            )


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: ShapesLike,
    level_start_index: StartsLike,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention core (Deformable-DETR semantics, zero padding, align_corners=False).

    Args:
        value: ``(B, S, M, Dh)`` per-head values of all levels, concatenated level by level, row-major.
        spatial_shapes: ``L`` pairs ``(H_l, W_l)``. Prefer Python ints (they may be derived from ``x.shape``,
            which keeps H/W dynamic in ``torch.export`` / ONNX); an ``(L, 2)`` integer tensor is accepted too.
        level_start_index: start token of every level in ``value`` (``None``: cumulative sums of ``H_l·W_l``).
        sampling_locations: ``(B, Lq, M, L, P, 2)`` normalised ``(x, y)`` locations, ``0``/``1`` being the
            outer edges of the map (pixel centres at ``(i + 0.5) / size``).
        attention_weights: ``(B, Lq, M, L, P)`` weights (the caller normalises them, e.g. softmax over L·P).

    Returns:
        ``(B, Lq, M·Dh)``, head-major channels, in ``value``'s dtype. Half/bfloat16 inputs are computed in
        float32 (the official CUDA op is wrapped in ``custom_fwd(cast_inputs=float32)``) and cast back.
    """
    shapes = _as_shapes(spatial_shapes)
    starts = _as_starts(level_start_index, shapes)
    # Shape checks are Python comparisons on (possibly symbolic) sizes: skip them while tracing/compiling so
    # that they cannot add guards that pin the exported shapes.
    if not is_tracing():
        _validate(value, shapes, starts, sampling_locations, attention_weights)

    # the custom op when a gradient is needed (its backward keeps only the inputs) and under torch.compile;
    # the plain ops for inference and for exporters (torch.export compiles too, but cannot take a custom op)
    needs_grad = torch.is_grad_enabled() and (
        value.requires_grad or sampling_locations.requires_grad or attention_weights.requires_grad
    )
    if is_exporting() or not (needs_grad or torch.compiler.is_compiling()):
        return ms_deform_attn_pytorch(value, shapes, starts, sampling_locations, attention_weights)
    flat = [n for hw in shapes for n in hw]  # the op schema takes flat int lists: [H_0, W_0, H_1, W_1, ...]
    return msda_op(value, flat, list(starts), sampling_locations, attention_weights)


def _grids_and_weights(loc: Tensor, attn: Tensor, compute: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(B, Lq, M, L, P, 2)`` locations and ``(B, Lq, M, L, P)`` weights -> per-level grid_sample grids in
    ``[-1, 1]``, ``(L, B*M, P, Lq, 2)``, and weights ``(L, B*M, 1, P, Lq)``.

    Heads fold into grid_sample's batch, and the points go before the queries, so that the samples come out
    ``(B*M, Dh, P, Lq)``: every product and sum over them then runs along the long, contiguous query axis.
    With the points last (a dimension of 4), the same elementwise ops ran several times slower on CPU.
    """
    B, Lq, M, L, P, _ = loc.shape
    grids = (2 * loc.to(compute) - 1).permute(3, 0, 2, 4, 1, 5).reshape(L, B * M, P, Lq, 2)
    weights = attn.to(compute).permute(3, 0, 2, 4, 1).reshape(L, B * M, 1, P, Lq)
    return grids, weights


def _level(value: Tensor, s0: int, h: int, w: int, compute: torch.dtype) -> Tensor:
    """Level ``(h, w)`` starting at token ``s0`` of ``(B, S, M, Dh)`` values, as a ``(B*M, Dh, h, w)`` map."""
    B, _, M, Dh = value.shape
    return value[:, s0 : s0 + h * w].to(compute).permute(0, 2, 3, 1).reshape(B * M, Dh, h, w)


def ms_deform_attn_pytorch(
    value: Tensor,
    shapes: Sequence[tuple[int, int]],
    starts: Sequence[int],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The sampling core of :func:`ms_deform_attn` in plain differentiable ops (no checks, no custom op)."""
    out_dtype = value.dtype
    compute = torch.float32 if value.dtype in (torch.float16, torch.bfloat16) else value.dtype
    B, _, M, Dh = value.shape
    Lq = sampling_locations.shape[1]
    grids, a = _grids_and_weights(sampling_locations, attention_weights, compute)
    out = None
    for lvl, ((h, w), s0) in enumerate(zip(shapes, starts)):
        v = _level(value, s0, h, w, compute)  # (B*M, Dh, h, w)
        s = F.grid_sample(v, grids[lvl], mode="bilinear", padding_mode="zeros", align_corners=False)
        term = (s * a[lvl]).sum(2)  # (B*M, Dh, P, Lq) -> (B*M, Dh, Lq)
        out = term if out is None else out + term
    out = out.view(B, M * Dh, Lq).transpose(1, 2)  # (B, Lq, M*Dh)
    return out.to(out_dtype)


# ----------------------------------------------------------------------------------------------------------------
# custom operators (what torch.compile sees)
# ----------------------------------------------------------------------------------------------------------------
def _pairs(flat: Sequence[int]) -> list[tuple[int, int]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


@torch.library.custom_op("medurwkv::ms_deform_attn", mutates_args=())
def msda_op(
    value: Tensor,
    spatial_shapes: list[int],
    level_start_index: list[int],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """``ms_deform_attn_pytorch`` with ``spatial_shapes`` flattened to [H_0, W_0, H_1, W_1, ...]."""
    out = ms_deform_attn_pytorch(
        value, _pairs(spatial_shapes), level_start_index, sampling_locations, attention_weights
    )
    return out.contiguous()  # (the core returns a transposed view; the fake promises a contiguous tensor)


@msda_op.register_fake
def _msda_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    B, _, M, Dh = value.shape
    return value.new_empty((B, sampling_locations.shape[1], M * Dh))


@torch.library.custom_op("medurwkv::ms_deform_attn_backward", mutates_args=())
def msda_backward_op(
    grad: Tensor,
    value: Tensor,
    spatial_shapes: list[int],
    level_start_index: list[int],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients for (value, sampling_locations, attention_weights), each in its input's dtype.

    Written out with ATen's own grid_sample backward (no autograd: a custom op's implementation runs below the
    autograd dispatch keys). The per-level samples are recomputed: only the inputs are kept from the forward.
    """
    shapes = _pairs(spatial_shapes)
    compute = torch.float32 if value.dtype in (torch.float16, torch.bfloat16) else value.dtype
    B, _, M, Dh = value.shape
    Lq, L, P = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    grids, a = _grids_and_weights(sampling_locations, attention_weights, compute)
    g = grad.to(compute).transpose(1, 2).reshape(B * M, Dh, 1, Lq)  # the forward's last view, undone
    g_value = torch.zeros(value.shape, dtype=compute, device=value.device)
    g_grid, g_a = [], []
    for lvl, ((h, w), s0) in enumerate(zip(shapes, level_start_index)):
        v = _level(value, s0, h, w, compute)  # (B*M, Dh, h, w)
        s = F.grid_sample(
            v, grids[lvl], mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B*M, Dh, P, Lq)
        g_a.append((g * s).sum(1))  # (B*M, P, Lq)
        g_s = g * a[lvl]  # (B*M, Dh, P, Lq)
        # interpolation_mode 0 = bilinear, padding_mode 0 = zeros (the forward's settings)
        g_v, g_gr = torch.ops.aten.grid_sampler_2d_backward(g_s, v, grids[lvl], 0, 0, False, [True, True])
        g_value[:, s0 : s0 + h * w] += g_v.view(B, M, Dh, h * w).permute(0, 3, 1, 2)  # (B, h*w, M, Dh)
        g_grid.append(g_gr)  # (B*M, P, Lq, 2)
    # (L, B, M, P, Lq, ...) back to the inputs' (B, Lq, M, L, P, ...); d(2·loc − 1)/d loc = 2
    g_loc = 2 * torch.stack(g_grid).view(L, B, M, P, Lq, 2).permute(1, 4, 2, 0, 3, 5)
    g_attn = torch.stack(g_a).view(L, B, M, P, Lq).permute(1, 4, 2, 0, 3)
    return (
        g_value.to(value.dtype),
        g_loc.to(sampling_locations.dtype).contiguous(),
        g_attn.to(attention_weights.dtype).contiguous(),
    )


@msda_backward_op.register_fake
def _msda_backward_fake(
    grad, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
):
    return tuple(
        torch.empty_like(x, memory_format=torch.contiguous_format)
        for x in (value, sampling_locations, attention_weights)
    )


def _msda_setup_context(ctx, inputs, output) -> None:
    value, spatial_shapes, level_start_index, loc, attn = inputs
    ctx.save_for_backward(value, loc, attn)
    ctx.levels = (spatial_shapes, level_start_index)


def _msda_backward(ctx, grad):
    value, loc, attn = ctx.saved_tensors
    gv, gl, ga = msda_backward_op(grad, value, *ctx.levels, loc, attn)
    return gv, None, None, gl, ga


msda_op.register_autograd(_msda_backward, setup_context=_msda_setup_context)
