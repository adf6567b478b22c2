"""Encoders built from the plain VRWKV backbone (the adapter encoder is ``adapter.py``; ``docs/models.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .base import Encoder
from .vrwkv import VRWKV

__all__ = ["PlainVRWKVEncoder"]


class PlainVRWKVEncoder(Encoder):
    """Plain VRWKV trunk turned into a 4-level pyramid, ViTDet-style (``docs/models.md``, ``med_urwkv_t_pure``).

    The stride-16 maps after blocks ``out_indices`` (default evenly spaced, ``(2, 5, 8, 11)`` for depth 12) are
    resampled x4 (ConvT 2x2/2 -> BN -> GELU -> ConvT 2x2/2), x2 (ConvT 2x2/2), x1 (identity) and x0.5 (2x2
    max-pool), then each level gets a BatchNorm (the raw residual streams of intermediate blocks are not
    normalised; the adapter ends with BNs too). Output: 4 maps of ``embed_dims`` channels at strides 4/8/16/32.
    No conv stem, no deformable attention. Only ``backbone`` (a :class:`VRWKV`) holds pretrained weights.
    """

    pad_multiple = 32

    def __init__(self, out_indices: Sequence[int] | None = None, **vrwkv_kwargs: Any) -> None:
        super().__init__()
        depth = int(vrwkv_kwargs.get("depth", 12))
        if out_indices is None:
            out_indices = [depth * (j + 1) // 4 - 1 for j in range(4)]  # (2, 5, 8, 11) for depth 12
        out_indices = list(out_indices)
        if len(out_indices) != 4 or depth < 4:
            raise ValueError(f"expected 4 out_indices and depth >= 4, got {out_indices} with depth {depth}")
        self.backbone = VRWKV(out_indices=out_indices, **vrwkv_kwargs)
        C = self.backbone.embed_dims
        self.out_channels = [C] * 4
        self.strides = [4, 8, 16, 32]
        self.resample = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(C, C, 2, stride=2),
                    nn.BatchNorm2d(C),
                    nn.GELU(),
                    nn.ConvTranspose2d(C, C, 2, stride=2),
                ),
                nn.ConvTranspose2d(C, C, 2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(2),
            ]
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(C) for _ in range(4))

    def set_wkv_constants(self, token_split: int | None, eps: float) -> None:
        self.backbone.set_wkv_constants(token_split, eps)

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.backbone.forward_intermediates(x)  # 4 x (B, C, H/16, W/16)
        return [norm(rs(m)) for m, rs, norm in zip(maps, self.resample, self.norms)]
