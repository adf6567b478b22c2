"""Multi-scale deformable attention with the Deformable-DETR / ViT-Adapter parameter names (``docs/adapter.md``).

The sampling itself is ``medurwkv.ops.msda.ms_deform_attn`` (pure PyTorch); this module holds the projections
and the official initialisation. The adapter's injectors and extractors (``adapter.py``) use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.msda import ms_deform_attn

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the Deformable-DETR / ViT-Adapter parameter names.

    ``ratio`` scales the value width: ``value_proj`` is ``(int(ratio·C), C)``, a head holds ``int(ratio·C)/M``
    channels (base/large adapters use 0.5).
    """

    def __init__(
        self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, ratio: float = 1.0
    ) -> None:
        super().__init__()
        value_dims = int(d_model * ratio)
        if d_model % n_heads != 0 or value_dims % n_heads != 0:
            raise ValueError(
                f"expected d_model ({d_model}) and int(d_model*ratio) ({value_dims}) divisible by "
                f"n_heads ({n_heads}); choose deform_num_heads dividing embed_dims"
            )
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.ratio, self.head_dims = ratio, value_dims // n_heads
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dims)
        self.output_proj = nn.Linear(value_dims, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable-DETR init.

        Zero offset weights with a bias "ring" (head m points in direction 2πm/M, scaled onto the unit square,
        point p at distance p+1 pixels), uniform attention, Xavier value/output projections.
        """
        M, L, P = self.n_heads, self.n_levels, self.n_points
        dev = self.sampling_offsets.bias.device
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(M, dtype=torch.float32, device=dev) * (2.0 * math.pi / M)
        grid = torch.stack([thetas.cos(), thetas.sin()], dim=-1)  # (M, 2)
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values
        grid = grid.view(M, 1, 1, 2).repeat(1, L, P, 1)  # (M, L, P, 2)
        grid = grid * torch.arange(1, P + 1, dtype=torch.float32, device=dev).view(1, 1, P, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        feat: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        level_start_index: Sequence[int],
    ) -> Tensor:
        """query (B, Lq, C), reference_points (1|B, Lq, 1, 2), feat (B, S, C) -> (B, Lq, C)."""
        B, Lq, _ = query.shape
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(feat).view(B, feat.shape[1], M, self.head_dims)  # (B, S, M, Dh)
        off = self.sampling_offsets(query).view(B, Lq, M, L, P, 2)  # (x, y) in pixels of each level
        attn = self.attention_weights(query).view(B, Lq, M, L * P)
        attn = F.softmax(attn, dim=-1).view(B, Lq, M, L, P)  # joint over levels x points
        # Offsets -> normalised units of each level. Divide by the (possibly symbolic) ints per level rather
        # than building a shape tensor, so H/W stay dynamic in exports; same arithmetic as the official one.
        off = torch.stack(
            [
                torch.stack([off[:, :, :, lvl, :, 0] / w, off[:, :, :, lvl, :, 1] / h], dim=-1)
                for lvl, (h, w) in enumerate(spatial_shapes)
            ],
            dim=3,
        )  # (B, Lq, M, L, P, 2)
        # The float32 reference points broadcast over levels and points; adding promotes to off's dtype
        # (float64 stays float64 with float32-rounded centres, as in the official module).
        loc = reference_points[:, :, None, :, None, :] + off
        out = ms_deform_attn(value, spatial_shapes, level_start_index, loc, attn)  # (B, Lq, M*Dh)
        return self.output_proj(out)
