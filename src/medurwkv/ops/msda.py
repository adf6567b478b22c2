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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils import is_tracing

__all__ = ["ms_deform_attn"]

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

    out_dtype = value.dtype
    compute = torch.float32 if value.dtype in (torch.float16, torch.bfloat16) else value.dtype
    B, _, M, Dh = value.shape
    Lq, L, P = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]

    # grid_sample wants (N, Hout, Wout, 2) grids in [-1, 1]; fold heads into the batch: (B*M, Lq, L, P, 2).
    grids = (2 * sampling_locations.to(compute) - 1).transpose(1, 2).flatten(0, 1)
    sampled = []
    for lvl, ((h, w), s0) in enumerate(zip(shapes, starts)):
        v = value[:, s0 : s0 + h * w].to(compute)  # (B, h*w, M, Dh)
        v = v.permute(0, 2, 3, 1).reshape(B * M, Dh, h, w)  # (B*M, Dh, h, w)
        s = F.grid_sample(v, grids[:, :, lvl], mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled.append(s)  # (B*M, Dh, Lq, P)
    stacked = torch.stack(sampled, dim=3).flatten(3)  # (B*M, Dh, Lq, L*P)
    a = attention_weights.to(compute).transpose(1, 2).reshape(B * M, 1, Lq, L * P)
    out = (stacked * a).sum(-1)  # (B*M, Dh, Lq)
    out = out.view(B, M * Dh, Lq).transpose(1, 2)  # (B, Lq, M*Dh)
    return out.to(out_dtype)
