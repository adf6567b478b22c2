"""Vision-RWKV building blocks with the official parameter names (``docs/vrwkv.md``, module tree).

Shapes: tokens are ``(B, T, C)`` in raster (row-major) order over a ``(H, W)`` grid, ``T = H * W``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..ops import bi_wkv, mix_linear, squared_relu_linear
from ..utils import is_tracing

__all__ = [
    "q_shift",
    "DropPath",
    "PatchEmbed",
    "SpatialMix",
    "ChannelMix",
    "Block",
    "check_input",
    "resize_pos_embed",
]


def q_shift(
    x: Tensor, patch_resolution: tuple[int, int], shift_pixel: int = 1, gamma: float = 0.25
) -> Tensor:
    """Quad-directional token shift with zero fill (official ``q_shift``).

    Channel quarter 0 moves right, 1 left, 2 down, 3 up by ``shift_pixel``; the rest is unchanged.
    Built from pad + slice + cat (no in-place writes) so that it exports to ONNX.
    """
    if not 0 < gamma <= 0.25:
        raise ValueError(f"expected 0 < channel_gamma <= 1/4, got {gamma}")
    B, T, C = x.shape
    H, W = patch_resolution
    s = shift_pixel
    q = int(C * gamma)
    img = x.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
    right = F.pad(img[:, 0:q], (s, 0, 0, 0))[..., :W]
    left = F.pad(img[:, q : 2 * q], (0, s, 0, 0))[..., s:]
    down = F.pad(img[:, 2 * q : 3 * q], (0, 0, s, 0))[..., :H, :]
    up = F.pad(img[:, 3 * q : 4 * q], (0, 0, 0, s))[..., s:, :]
    out = torch.cat([right, left, down, up, img[:, 4 * q :]], dim=1)
    return out.flatten(2).transpose(1, 2)  # (B, T, C)


def check_input(x: Tensor, in_channels: int) -> None:
    """Raise a ValueError unless ``x`` is an image batch (B, in_channels, H, W)."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"expected input (B, {in_channels}, H, W), got {tuple(x.shape)}; "
            f"create the model with in_channels={x.shape[1] if x.ndim == 4 else '?'} to match your images"
        )


def resize_pos_embed(
    pos_embed: Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: str = "bicubic"
) -> Tensor:
    """Resize a (1, h*w, C) positional grid to (1, H*W, C); a no-op when the grids are equal (mmcls semantics).

    While tracing/exporting the resize always runs: a same-size bicubic resize (align_corners=False) is an exact
    identity, and skipping it would bake the export size's shortcut into the graph.
    """
    if tuple(src_hw) == tuple(dst_hw) and not is_tracing():
        return pos_embed
    C = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, src_hw[0], src_hw[1], C).permute(0, 3, 1, 2)  # (1, C, h, w)
    grid = F.interpolate(grid, size=tuple(dst_hw), mode=mode, align_corners=False)
    return grid.flatten(2).transpose(1, 2)  # (1, H*W, C)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or with ``p == 0``)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchEmbed(nn.Module):
    """Corner-padded (bottom/right) Conv2d patchify, as mmcv's ``PatchEmbed(padding='corner')``."""

    def __init__(self, in_channels: int = 3, embed_dims: int = 192, patch_size: int = 16) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        p = self.patch_size
        H, W = x.shape[-2:]
        pad_h, pad_w = (-H) % p, (-W) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.projection(x)  # (B, C, H', W')
        hw = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), hw  # (B, H'W', C)


def _channel_ramp(C: int) -> Tensor:
    return (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)


def _layer_ratios(layer_id: int, n_layer: int) -> tuple[float, float]:
    r01 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0  # 0 -> 1 over depth
    r10 = 1.0 - layer_id / n_layer  # 1 -> ~0 over depth
    return r01, r10


class SpatialMix(nn.Module):
    """Token mixing with the bidirectional WKV (official ``VRWKV_SpatialMix``)."""

    def __init__(
        self,
        n_embd: int,
        n_layer: int,
        layer_id: int,
        *,
        shift_pixel: int = 1,
        channel_gamma: float = 0.25,
        init_mode: str = "fancy",
        key_norm: bool = False,
        wkv_token_split: int | None = 32,
        wkv_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        C = n_embd
        self.layer_id, self.n_layer = layer_id, n_layer
        self.shift_pixel, self.channel_gamma = shift_pixel, channel_gamma
        self.wkv_token_split, self.wkv_eps = wkv_token_split, wkv_eps
        self.spatial_decay = nn.Parameter(torch.zeros(C))
        self.spatial_first = nn.Parameter(torch.zeros(C))
        self.spatial_mix_k = nn.Parameter(torch.full((1, 1, C), 0.5))
        self.spatial_mix_v = nn.Parameter(torch.full((1, 1, C), 0.5))
        self.spatial_mix_r = nn.Parameter(torch.full((1, 1, C), 0.5))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.key_norm = nn.LayerNorm(C) if key_norm else None
        self.output = nn.Linear(C, C, bias=False)
        self.reset_mix_parameters(init_mode)

    @torch.no_grad()
    def reset_mix_parameters(self, init_mode: str) -> None:
        C = self.spatial_decay.numel()
        if init_mode == "fancy":
            r01, r10 = _layer_ratios(self.layer_id, self.n_layer)
            h = torch.arange(C, dtype=torch.float32)
            self.spatial_decay.copy_(-5 + 8 * (h / max(C - 1, 1)) ** (0.7 + 1.3 * r01))
            zigzag = torch.tensor([(i + 1) % 3 - 1 for i in range(C)], dtype=torch.float32) * 0.5
            self.spatial_first.copy_(math.log(0.3) + zigzag)
            x = _channel_ramp(C)
            self.spatial_mix_k.copy_(x**r10)
            self.spatial_mix_v.copy_(x**r10 + 0.3 * r01)
            self.spatial_mix_r.copy_(x ** (0.5 * r10))
        elif init_mode == "local":
            for p in (self.spatial_decay, self.spatial_first, self.spatial_mix_k, self.spatial_mix_v):
                p.fill_(1.0)
            self.spatial_mix_r.fill_(1.0)
        elif init_mode == "global":
            self.spatial_decay.zero_()
            self.spatial_first.zero_()
            for p in (self.spatial_mix_k, self.spatial_mix_v, self.spatial_mix_r):
                p.fill_(0.5)
        else:
            raise ValueError(f"expected init_mode 'fancy', 'local' or 'global', got {init_mode!r}")

    def shift(self, x: Tensor, patch_resolution: tuple[int, int]) -> Tensor | None:
        """Q-Shifted ``x`` (B, T, C), or None without a shift."""
        if self.shift_pixel <= 0:
            return None
        return q_shift(x, patch_resolution, self.shift_pixel, self.channel_gamma)

    def wkv_inputs(self, x: Tensor, xx: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-token part before the scan: ``x`` and its shift ``xx`` (B, T, C) -> k, v, sigmoid(r)."""
        if xx is None:
            k, v, r = self.key(x), self.value(x), self.receptance(x)
        else:  # each (x·μ + xx·(1 − μ)) Wᵀ without keeping the mixed input (ops/lean_linear.py)
            k = mix_linear(x, xx, self.spatial_mix_k, self.key.weight)
            v = mix_linear(x, xx, self.spatial_mix_v, self.value.weight)
            r = mix_linear(x, xx, self.spatial_mix_r, self.receptance.weight)
        return k, v, torch.sigmoid(r)  # 3 x (B, T, C)

    def wkv(self, k: Tensor, v: Tensor) -> Tensor:
        """The global Bi-WKV over all T tokens of ``k``, ``v`` (B, T, C)."""
        T = k.shape[1]
        # The decay and bonus are divided by the CURRENT token count (the official module does this), so the
        # effective per-token decay depends on the input resolution.
        return bi_wkv(
            self.spatial_decay / T,
            self.spatial_first / T,
            k,
            v,
            token_split=self.wkv_token_split,
            eps=self.wkv_eps,
        )

    def wkv_output(self, y: Tensor, sr: Tensor) -> Tensor:
        """Per-token part after the scan (B, T, C)."""
        if self.key_norm is not None:
            y = self.key_norm(y)
        return self.output(sr * y)

    def forward(self, x: Tensor, patch_resolution: tuple[int, int]) -> Tensor:
        k, v, sr = self.wkv_inputs(x, self.shift(x, patch_resolution))
        return self.wkv_output(self.wkv(k, v), sr)


class ChannelMix(nn.Module):
    """Channel mixing with squared-ReLU MLP gated by a receptance (official ``VRWKV_ChannelMix``)."""

    def __init__(
        self,
        n_embd: int,
        n_layer: int,
        layer_id: int,
        *,
        shift_pixel: int = 1,
        channel_gamma: float = 0.25,
        hidden_rate: int = 4,
        init_mode: str = "fancy",
        key_norm: bool = False,
    ) -> None:
        super().__init__()
        C, Hd = n_embd, hidden_rate * n_embd
        self.layer_id, self.n_layer = layer_id, n_layer
        self.shift_pixel, self.channel_gamma = shift_pixel, channel_gamma
        self.spatial_mix_k = nn.Parameter(torch.full((1, 1, C), 0.5))
        self.spatial_mix_r = nn.Parameter(torch.full((1, 1, C), 0.5))
        self.key = nn.Linear(C, Hd, bias=False)
        self.key_norm = nn.LayerNorm(Hd) if key_norm else None
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(Hd, C, bias=False)
        self.reset_mix_parameters(init_mode)

    @torch.no_grad()
    def reset_mix_parameters(self, init_mode: str) -> None:
        if init_mode == "fancy":
            _, r10 = _layer_ratios(self.layer_id, self.n_layer)
            x = _channel_ramp(self.spatial_mix_k.shape[-1])
            self.spatial_mix_k.copy_(x**r10)
            self.spatial_mix_r.copy_(x**r10)
        elif init_mode == "local":
            self.spatial_mix_k.fill_(1.0)
            self.spatial_mix_r.fill_(1.0)
        elif init_mode == "global":
            self.spatial_mix_k.fill_(0.5)
            self.spatial_mix_r.fill_(0.5)
        else:
            raise ValueError(f"expected init_mode 'fancy', 'local' or 'global', got {init_mode!r}")

    shift = SpatialMix.shift  # same Q-Shift: uses only shift_pixel and channel_gamma

    def mix(self, x: Tensor, xx: Tensor | None) -> Tensor:
        """Per-token channel mix of ``x`` given its shift ``xx`` (B, T, C) (None: no shift)."""
        # the mixed inputs and relu(k)² are not kept for the backward (ops/lean_linear.py)
        if xx is None:
            k, r = self.key(x), self.receptance(x)  # (B, T, Hd), (B, T, C)
        else:
            k = mix_linear(x, xx, self.spatial_mix_k, self.key.weight)
            r = mix_linear(x, xx, self.spatial_mix_r, self.receptance.weight)
        if self.key_norm is None:
            kv = squared_relu_linear(k, self.value.weight)
        else:
            kv = self.value(self.key_norm(torch.square(torch.relu(k))))
        return torch.sigmoid(r) * kv  # (B, T, C)

    def forward(self, x: Tensor, patch_resolution: tuple[int, int]) -> Tensor:
        return self.mix(x, self.shift(x, patch_resolution))


class Block(nn.Module):
    """One VRWKV block: spatial mix + channel mix, pre- or post-norm, optional layer scale and ln0.

    ``use_ln0`` defaults to the official behaviour (an extra LayerNorm on the input of block 0).
    """

    def __init__(
        self,
        n_embd: int,
        n_layer: int,
        layer_id: int,
        *,
        shift_pixel: int = 1,
        channel_gamma: float = 0.25,
        drop_path: float = 0.0,
        hidden_rate: int = 4,
        init_mode: str = "fancy",
        init_values: float | None = None,
        post_norm: bool = False,
        key_norm: bool = False,
        with_cp: bool = False,
        use_ln0: bool | None = None,
        wkv_token_split: int | None = 32,
        wkv_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        C = n_embd
        self.layer_id = layer_id
        self.post_norm, self.with_cp = post_norm, with_cp
        # Registration order follows the official state_dict: gamma1/2, ln1, ln2, ln0, att, ffn.
        if init_values is not None:
            self.gamma1 = nn.Parameter(torch.full((C,), float(init_values)))
            self.gamma2 = nn.Parameter(torch.full((C,), float(init_values)))
        else:
            self.gamma1 = self.gamma2 = None
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        use_ln0 = layer_id == 0 if use_ln0 is None else use_ln0
        self.ln0 = nn.LayerNorm(C) if use_ln0 else None
        self.att = SpatialMix(
            C,
            n_layer,
            layer_id,
            shift_pixel=shift_pixel,
            channel_gamma=channel_gamma,
            init_mode=init_mode,
            key_norm=key_norm,
            wkv_token_split=wkv_token_split,
            wkv_eps=wkv_eps,
        )
        self.ffn = ChannelMix(
            C,
            n_layer,
            layer_id,
            shift_pixel=shift_pixel,
            channel_gamma=channel_gamma,
            hidden_rate=hidden_rate,
            init_mode=init_mode,
            key_norm=key_norm,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def set_wkv_constants(self, token_split: int | None, eps: float) -> None:
        self.att.wkv_token_split, self.att.wkv_eps = token_split, eps

    def _scale(self, y: Tensor, gamma: Tensor | None) -> Tensor:
        return y if gamma is None else gamma * y

    def _forward(self, x: Tensor, patch_resolution: tuple[int, int]) -> Tensor:
        if self.ln0 is not None:
            x = self.ln0(x)
        if self.post_norm:
            x = x + self.drop_path(self._scale(self.ln1(self.att(x, patch_resolution)), self.gamma1))
            x = x + self.drop_path(self._scale(self.ln2(self.ffn(x, patch_resolution)), self.gamma2))
        else:
            x = x + self.drop_path(self._scale(self.att(self.ln1(x), patch_resolution), self.gamma1))
            x = x + self.drop_path(self._scale(self.ffn(self.ln2(x), patch_resolution), self.gamma2))
        return x

    def forward(self, x: Tensor, patch_resolution: tuple[int, int]) -> Tensor:
        if self.with_cp and x.requires_grad:
            return checkpoint(self._forward, x, patch_resolution, use_reentrant=False)
        return self._forward(x, patch_resolution)
