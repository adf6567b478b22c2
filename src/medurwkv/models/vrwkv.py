"""The plain Vision-RWKV (v1) backbone with the official parameter names (``docs/vrwkv.md``).

:class:`VRWKVTrunk` holds what the plain backbone and the adapter encoder share at the top of their state dicts
(``pos_embed``, ``patch_embed``, ``layers``): the official keys of both are ``<name>`` with no sub-module prefix,
so the trunk is their common base rather than a child module. An official ImageNet checkpoint loads into
:class:`VRWKV` with ``strict=True`` after stripping ``backbone.`` and dropping ``head.*`` (see
:func:`medurwkv.models.load_pretrained`). Variants T/S/B/L are registered as data at the bottom.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import Block, PatchEmbed, check_input, resize_pos_embed
from .registry import register_model
from .releases import release

__all__ = ["VRWKV", "VRWKVTrunk", "VRWKV_CONFIGS"]


class VRWKVTrunk(nn.Module):
    """Position embedding, patch embedding and the VRWKV blocks (``docs/vrwkv.md``, forward pass).

    Registration order = official state_dict order: ``pos_embed`` first, then (in subclasses, own parameters
    such as the adapter's ``level_embed``), then ``patch_embed`` and ``layers``.
    """

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        in_channels: int,
        drop_rate: float,
        embed_dims: int,
        depth: int,
        drop_path_rate: float,
        channel_gamma: float,
        shift_pixel: int,
        init_mode: str,
        post_norm: bool,
        key_norm: bool,
        init_values: float | None,
        hidden_rate: int,
        interpolate_mode: str,
        with_cp: bool,
        wkv_token_split: int | None,
        wkv_eps: float,
    ) -> None:
        super().__init__()
        self.embed_dims, self.depth, self.patch_size = embed_dims, depth, patch_size
        self.in_channels = in_channels
        self.interpolate_mode = interpolate_mode
        self.init_out_size = (img_size // patch_size, img_size // patch_size)
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

    @torch.no_grad()
    def _init_trunk_weights(self) -> None:
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

    @property
    def wkv_constants(self) -> tuple[int | None, float]:
        """The Bi-WKV kernel constants ``(token_split, eps)`` of the blocks (all blocks share them)."""
        att = self.layers[0].att
        return att.wkv_token_split, float(att.wkv_eps)

    def set_wkv_constants(self, token_split: int | None, eps: float) -> None:
        """Switch the Bi-WKV kernel constants of every block (e.g. to those of another checkpoint)."""
        for blk in self.layers:
            blk.set_wkv_constants(token_split, eps)

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding + bicubic-resized position embedding: (B, in_channels, H, W) -> (B, T, C), (H', W')."""
        check_input(x, self.in_channels)
        tokens, hw = self.patch_embed(x)
        pos = resize_pos_embed(self.pos_embed, self.init_out_size, hw, self.interpolate_mode)
        return self.drop_after_pos(tokens + pos), hw


class VRWKV(VRWKVTrunk):
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
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_channels=in_channels,
            drop_rate=drop_rate,
            embed_dims=embed_dims,
            depth=depth,
            drop_path_rate=drop_path_rate,
            channel_gamma=channel_gamma,
            shift_pixel=shift_pixel,
            init_mode=init_mode,
            post_norm=post_norm,
            key_norm=key_norm,
            init_values=init_values,
            hidden_rate=hidden_rate,
            interpolate_mode=interpolate_mode,
            with_cp=with_cp,
            wkv_token_split=wkv_token_split,
            wkv_eps=wkv_eps,
        )
        self.out_indices = self._normalize_indices(out_indices)
        self.ln1 = nn.LayerNorm(embed_dims) if final_norm else None
        self._init_trunk_weights()

    def _normalize_indices(self, indices: int | Sequence[int]) -> list[int]:
        idx = [indices] if isinstance(indices, int) else list(indices)
        out = []
        for i in idx:
            j = i + self.depth if i < 0 else i
            if not 0 <= j < self.depth:
                raise ValueError(f"expected block indices in [-{self.depth}, {self.depth}), got {i}")
            out.append(j)
        return out

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


# Variant configs as data (docs/vrwkv.md); the kernel constants default to those of each release.
VRWKV_CONFIGS: dict[str, tuple[dict, str]] = {
    "vrwkv_t": (dict(embed_dims=192, depth=12), "vrwkv_t_in1k_224.pth"),
    "vrwkv_s": (
        dict(embed_dims=384, depth=12, post_norm=True, init_values=1.0, drop_path_rate=0.3),
        "vrwkv_s_in1k_224.pth",
    ),
    "vrwkv_b": (
        dict(embed_dims=768, depth=12, post_norm=True, init_values=1e-5, drop_path_rate=0.5),
        "vrwkv_b_in1k_224.pth",
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
        ),
        "vrwkv_l_in22k_192.pth",
    ),
}

for _name, (_kw, _file) in VRWKV_CONFIGS.items():
    _pre = release(_file)
    register_model(
        _name,
        VRWKV,
        default_kwargs={**_kw, "wkv_token_split": _pre.wkv_token_split, "wkv_eps": _pre.wkv_eps},
        pretrained=_pre,
        description=f"Vision-RWKV backbone ({_pre.file})",
    )
