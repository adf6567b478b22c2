"""The plain Vision-RWKV (v1) backbone with the official parameter names (``spec/vrwkv.md`` §2).

An official ImageNet checkpoint loads with ``strict=True`` after stripping ``backbone.`` and dropping ``head.*``
(see :func:`medurwkv.models.load_pretrained`). Variants T/S/B/L are registered as data at the bottom.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Block, PatchEmbed, check_input
from .registry import PretrainedCfg, register_model

__all__ = ["VRWKV", "resize_pos_embed", "VRWKV_CONFIGS"]


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def resize_pos_embed(
    pos_embed: Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: str = "bicubic"
) -> Tensor:
    """Resize a (1, h*w, C) positional grid to (1, H*W, C); a no-op when the grids are equal (mmcls semantics).

    While tracing/exporting the resize always runs: a same-size bicubic resize (align_corners=False) is an exact
    identity, and skipping it would bake the export size's shortcut into the graph.
    """
    if tuple(src_hw) == tuple(dst_hw) and not _tracing():
        return pos_embed
    C = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, src_hw[0], src_hw[1], C).permute(0, 3, 1, 2)  # (1, C, h, w)
    grid = F.interpolate(grid, size=tuple(dst_hw), mode=mode, align_corners=False)
    return grid.flatten(2).transpose(1, 2)  # (1, H*W, C)


class VRWKV(nn.Module):
    """Vision-RWKV backbone.

    ``forward(x)`` returns the tuple of ``(B, C, H/16, W/16)`` maps at ``out_indices`` (official semantics: raw
    residual streams, except the last block's output which passes the final norm ``ln1``).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        out_indices: int | Sequence[int] = -1,
        drop_rate: float = 0.0,
        embed_dims: int = 256,
        depth: int = 12,
        drop_path_rate: float = 0.0,
        channel_gamma: float = 0.25,
        shift_pixel: int = 1,
        init_mode: str = "fancy",
        post_norm: bool = False,
        key_norm: bool = False,
        init_values: float | None = None,
        hidden_rate: int = 4,
        final_norm: bool = True,
        interpolate_mode: str = "bicubic",
        with_cp: bool = False,
        wkv_token_split: int | None = 32,
        wkv_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.embed_dims, self.depth, self.patch_size = embed_dims, depth, patch_size
        self.in_channels = in_channels
        self.interpolate_mode = interpolate_mode
        self.init_out_size = (img_size // patch_size, img_size // patch_size)
        self.out_indices = self._normalize_indices(out_indices)
        # Registration order = official state_dict order: pos_embed first.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.init_out_size[0] * self.init_out_size[1], embed_dims)
        )
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size)
        self.drop_after_pos = nn.Dropout(drop_rate)
        # Linear stochastic-depth schedule, as torch.linspace(0, rate, depth) (computed in Python: meta-device safe).
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.layers = nn.ModuleList(
            Block(
                embed_dims,
                depth,
                i,
                shift_pixel=shift_pixel,
                channel_gamma=channel_gamma,
                drop_path=dpr[i],
                hidden_rate=hidden_rate,
                init_mode=init_mode,
                init_values=init_values,
                post_norm=post_norm,
                key_norm=key_norm,
                with_cp=with_cp,
                wkv_token_split=wkv_token_split,
                wkv_eps=wkv_eps,
            )
            for i in range(depth)
        )
        self.ln1 = nn.LayerNorm(embed_dims) if final_norm else None
        self._init_weights()

    def _normalize_indices(self, indices: int | Sequence[int]) -> list[int]:
        idx = [indices] if isinstance(indices, int) else list(indices)
        out = []
        for i in idx:
            j = i + self.depth if i < 0 else i
            if not 0 <= j < self.depth:
                raise ValueError(f"expected block indices in [-{self.depth}, {self.depth}), got {i}")
            out.append(j)
        return out

    @torch.no_grad()
    def _init_weights(self) -> None:
        # Training init of the official config: truncated normal (std .02) for Linear and pos_embed, LayerNorm 1/0;
        # the RWKV decay/first/mix parameters keep their 'fancy' values set by the blocks.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_wkv_constants(self, token_split: int | None, eps: float) -> None:
        """Switch the Bi-WKV kernel constants of every block (e.g. to those of another checkpoint)."""
        for blk in self.layers:
            blk.set_wkv_constants(token_split, eps)

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding + bicubic-resized position embedding: (B, 3, H, W) -> (B, T, C), (H', W')."""
        check_input(x, self.in_channels)
        tokens, hw = self.patch_embed(x)
        pos = resize_pos_embed(self.pos_embed, self.init_out_size, hw, self.interpolate_mode)
        return self.drop_after_pos(tokens + pos), hw

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None) -> list[Tensor]:
        """NCHW maps (B, C, H/16, W/16) after the blocks in ``indices`` (default: ``out_indices``)."""
        wanted = self.out_indices if indices is None else self._normalize_indices(indices)
        tokens, hw = self.embed(x)
        B = tokens.shape[0]
        outs: dict[int, Tensor] = {}
        last = max(wanted)
        for i, blk in enumerate(self.layers[: last + 1]):
            tokens = blk(tokens, hw)
            if i == self.depth - 1 and self.ln1 is not None:
                tokens = self.ln1(tokens)
            if i in wanted:
                outs[i] = tokens.transpose(1, 2).reshape(B, self.embed_dims, hw[0], hw[1])
        return [outs[i] for i in wanted]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.forward_intermediates(x))


# Variant configs as data (spec/vrwkv.md §4). Kernel constants default to those of each release (§3.5).
_IN1K = dict(wkv_token_split=32, wkv_eps=1e-6)
VRWKV_CONFIGS: dict[str, tuple[dict, PretrainedCfg]] = {
    "vrwkv_t": (
        dict(embed_dims=192, depth=12, **_IN1K),
        PretrainedCfg.official("vrwkv_t_in1k_224.pth", layout="mmcls", wkv_token_split=32, wkv_eps=1e-6),
    ),
    "vrwkv_s": (
        dict(embed_dims=384, depth=12, post_norm=True, init_values=1.0, drop_path_rate=0.3, **_IN1K),
        PretrainedCfg.official("vrwkv_s_in1k_224.pth", layout="mmcls", wkv_token_split=32, wkv_eps=1e-6),
    ),
    "vrwkv_b": (
        dict(embed_dims=768, depth=12, post_norm=True, init_values=1e-5, drop_path_rate=0.5, **_IN1K),
        PretrainedCfg.official("vrwkv_b_in1k_224.pth", layout="mmcls", wkv_token_split=32, wkv_eps=1e-6),
    ),
    "vrwkv_l": (
        dict(
            img_size=192,
            embed_dims=1024,
            depth=24,
            post_norm=True,
            key_norm=True,
            init_values=1e-5,
            drop_path_rate=0.1,
            wkv_token_split=16,
            wkv_eps=1e-6,
        ),
        PretrainedCfg.official("vrwkv_l_in22k_192.pth", layout="mmcls", wkv_token_split=16, wkv_eps=1e-6),
    ),
}

for _name, (_kw, _pre) in VRWKV_CONFIGS.items():
    register_model(
        _name, VRWKV, default_kwargs=_kw, pretrained=_pre, description=f"Vision-RWKV backbone ({_pre.file})"
    )
