"""Med-URWKV bottleneck + patch-expanding VRWKV decoder (``docs/models.md``, our concrete design).

The decoder only sees a list of NCHW maps ``[X1, ..., Xn]`` with known channels and strides (each stride twice
the previous one, e.g. 4/8/16/32), map ``i`` projected to the width ``dims[i]`` of its level:

* bottleneck: ``bottleneck_depth`` VRWKV blocks on the tokens of the coarsest map Xn;
* ``n - 1`` stages, coarse to fine: patch expand x2 (Linear d -> 2·d, 2x2 sub-pixel rearrange -> d/2 channels at
  twice the resolution, LayerNorm), concatenate the skip map (d' channels, the width of the finer level),
  Linear to d', then ``depths[j]`` VRWKV blocks of width d';
* a final patch expand ``x strides[0]`` to full resolution (same rule: Linear d0 -> s·d0, s x s rearrange ->
  d0/s channels, LayerNorm), returned as an NCHW map for the segmentation head.

Each level has its own width ``dims[i]``: constant (the first design, 192 at every level for the -T models) or
halving as the resolution doubles, as Swin-Unet's patch expanding does (``docs/results_decoder.md`` measures
both).

Every VRWKV block here has its own token count T (its decay is divided by the T of its own grid), pre-norm, no
layer scale, no ``ln0``, no positional embedding. The Bi-WKV constants default to the artefact-free "ideal" form
(``token_split=None, eps=0``): these blocks are trained from scratch, so there is no release whose kernel we
must reproduce.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Block

__all__ = ["PatchExpand", "DecoderBlock", "URWKVDecoder", "tokens_to_map", "map_to_tokens"]


def map_to_tokens(x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """(B, C, H, W) -> (B, H*W, C) in raster order, and (H, W)."""
    return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


def tokens_to_map(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    B, _, C = x.shape
    return x.transpose(1, 2).reshape(B, C, hw[0], hw[1])


class PatchExpand(nn.Module):
    """Swin-Unet style patch expanding: Linear C -> s·C, sub-pixel rearrange s x s, LayerNorm(C/s).

    ``(B, H*W, C), (H, W) -> (B, (sH)*(sW), C/s), (sH, sW)``.
    """

    def __init__(self, dim: int, scale: int = 2) -> None:
        super().__init__()
        if dim % scale:
            raise ValueError(f"expected a width divisible by the expand scale {scale}, got {dim}")
        self.dim, self.scale, self.out_dim = dim, scale, dim // scale
        self.expand = nn.Linear(dim, scale * dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        B = x.shape[0]
        H, W = hw
        s, c = self.scale, self.out_dim
        x = self.expand(x).reshape(B, H, W, s, s, c)  # channel index = (p1 * s + p2) * c + ch
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, H * s * W * s, c)  # (B, sH*sW, C/s), raster order
        return self.norm(x), (H * s, W * s)


class DecoderBlock(Block):
    """A VRWKV :class:`~medurwkv.models.layers.Block` whose per-token work runs in row bands at inference.

    Same parameters and the same function as ``Block``. In eval mode, for grids larger than ``tile_tokens``
    tokens, everything except the global Bi-WKV scan (layer norms, Q-Shift with a one-row halo, token mixing,
    the k/v/r projections, the output projection and the whole channel mix) is computed band by band. On large
    inputs (the stride-4 stage holds H·W/16 tokens) this keeps the working set in the CPU cache: measured on
    this project's CPU, the channel mix of 65,536 tokens x 192 channels takes 1.30 s in one piece and 0.75 s in
    bands of 4,096 tokens. ``tile_tokens = 0`` disables banding. Training always uses the plain path (DropPath
    draws one mask per sample).
    """

    tile_tokens: int = 4096

    def _bands(self, H: int, W: int) -> list[tuple[int, int]]:
        rows = max(1, self.tile_tokens // W)
        return [(r0, min(H, r0 + rows)) for r0 in range(0, H, rows)]

    def _halo(
        self, x: Tensor, hw: tuple[int, int], r0: int, r1: int
    ) -> tuple[Tensor, tuple[int, int], slice]:
        """Rows [r0 - s, r1 + s) of the token grid (clipped), its grid size, and the slice of rows [r0, r1)."""
        H, W = hw
        s = self.att.shift_pixel
        a0, a1 = max(0, r0 - s), min(H, r1 + s)
        return x[:, a0 * W : a1 * W], (a1 - a0, W), slice((r0 - a0) * W, (r1 - a0) * W)

    def _forward(self, x: Tensor, patch_resolution: tuple[int, int]) -> Tensor:
        H, W = patch_resolution
        if (
            self.training
            or not self.tile_tokens
            or self.tile_tokens >= H * W
            or self.ln0 is not None
            or self.post_norm
            or self.att.shift_pixel <= 0
            or self.ffn.shift_pixel != self.att.shift_pixel
        ):
            return super()._forward(x, patch_resolution)
        att, ffn = self.att, self.ffn
        bands = self._bands(H, W)
        ks, vs, srs = [], [], []
        for r0, r1 in bands:  # spatial mix up to the Bi-WKV inputs, band by band (B, rows*W, C)
            xh, hwh, inner = self._halo(x, patch_resolution, r0, r1)
            xh = self.ln1(xh)  # the halo rows only feed Q-Shift
            k, v, sr = att.wkv_inputs(xh[:, inner], att.shift(xh, hwh)[:, inner])
            ks.append(k)
            vs.append(v)
            srs.append(sr)
        y = att.wkv(torch.cat(ks, 1), torch.cat(vs, 1))  # (B, T, C): the one global step
        del ks, vs
        outs = []
        for (r0, r1), sr in zip(bands, srs):
            rows = slice(r0 * W, r1 * W)
            outs.append(x[:, rows] + self._scale(att.wkv_output(y[:, rows], sr), self.gamma1))
        x = torch.cat(outs, 1)
        outs = []
        for r0, r1 in bands:  # channel mix, band by band
            xh, hwh, inner = self._halo(x, patch_resolution, r0, r1)
            xh = self.ln2(xh)
            xm = ffn.mix(xh[:, inner], ffn.shift(xh, hwh)[:, inner])
            outs.append(x[:, r0 * W : r1 * W] + self._scale(xm, self.gamma2))
        return torch.cat(outs, 1)


class DecoderStage(nn.Module):
    """Patch expand x2 (``in_dim -> in_dim/2`` channels), concat the skip (``skip_dim``), Linear to ``skip_dim``,
    then VRWKV blocks of width ``skip_dim``. With ``in_dim == skip_dim`` this is the constant-width stage."""

    def __init__(self, in_dim: int, skip_dim: int, blocks: list[Block]) -> None:
        super().__init__()
        self.expand = PatchExpand(in_dim, 2)
        self.fuse = nn.Linear(in_dim // 2 + skip_dim, skip_dim, bias=False)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, hw: tuple[int, int], skip: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x, hw = self.expand(x, hw)  # (B, 4T, in_dim/2)
        s, shw = map_to_tokens(skip)  # (B, 4T, skip_dim)
        if tuple(shw) != tuple(hw):
            raise ValueError(
                f"expected a skip map of size {hw}, got {shw}; encoder strides must double per level"
            )
        x = self.fuse(torch.cat([x, s], dim=-1))  # (B, 4T, skip_dim)
        for blk in self.blocks:
            x = blk(x, hw)
        return x, hw


class URWKVDecoder(nn.Module):
    """RWKV bottleneck + VRWKV patch-expanding decoder; see the module docstring.

    Args:
        dims: width of each level, finest first (one per input map, e.g. ``(48, 96, 192, 384)`` for strides
            4/8/16/32), or one int for a constant width. Input map ``i`` must have ``dims[i]`` channels; the
            bottleneck runs at ``dims[-1]``, the stage that fuses skip ``i`` at ``dims[i]``.
        strides: strides of the input maps, finest first (e.g. ``(4, 8, 16, 32)``); each must be twice the
            previous one. The final expansion scale is ``strides[0]``.
        depths: VRWKV blocks per decoder stage, coarse to fine (``len(strides) - 1`` entries; 0 allowed).
        bottleneck_depth: VRWKV blocks on the coarsest map.
        final_dim: channels after the final expansion (default ``dims[0] // strides[0]``, the patch-expand rule).
        drop_path_rate: stochastic depth, linear over all bottleneck + decoder blocks.
        wkv_token_split, wkv_eps: Bi-WKV constants of these blocks (default: the ideal form).
    """

    def __init__(
        self,
        dims: int | Sequence[int],
        strides: Sequence[int] = (4, 8, 16, 32),
        depths: Sequence[int] = (2, 2, 2),
        bottleneck_depth: int = 2,
        final_dim: int | None = None,
        hidden_rate: int = 4,
        drop_path_rate: float = 0.0,
        wkv_token_split: int | None = None,
        wkv_eps: float = 0.0,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        strides = [int(s) for s in strides]
        depths = [int(d) for d in depths]
        dims = [int(dims)] * len(strides) if isinstance(dims, int) else [int(d) for d in dims]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(
                f"expected encoder strides that double per level (e.g. 4, 8, 16, 32), got {strides}"
            )
        if len(depths) != len(strides) - 1 or min(depths, default=0) < 0:
            raise ValueError(
                f"expected {len(strides) - 1} decoder depths >= 0 (one per skip level), got {depths}; "
                "pass decoder_depths with one entry per stage"
            )
        if len(dims) != len(strides) or any(d < 2 or d % 2 for d in dims):
            raise ValueError(
                f"expected {len(strides)} even decoder widths (one per level, finest first), got {dims}"
            )
        self.dims, self.strides = dims, strides
        scale = strides[0]
        if final_dim is None:
            if dims[0] % scale:
                raise ValueError(
                    f"expected a finest decoder width divisible by {scale}, got {dims[0]}; or set final_dim"
                )
            final_dim = dims[0] // scale
        self.out_channels = final_dim
        # width of every block, bottleneck first, then the stages coarse to fine
        widths = [dims[-1]] * bottleneck_depth + [
            dims[-2 - j] for j, d in enumerate(depths) for _ in range(d)
        ]
        n_blocks = len(widths)
        dpr = [drop_path_rate * i / (n_blocks - 1) if n_blocks > 1 else 0.0 for i in range(n_blocks)]
        # One layer-id sequence over bottleneck + decoder so that the 'fancy' init spreads the decay rates
        # from local (first block) to global (last block) as in the encoder.
        blocks = [
            DecoderBlock(
                widths[i],
                n_blocks,
                i,
                drop_path=dpr[i],
                hidden_rate=hidden_rate,
                use_ln0=False,
                with_cp=with_cp,
                wkv_token_split=wkv_token_split,
                wkv_eps=wkv_eps,
            )
            for i in range(n_blocks)
        ]
        self.bottleneck = nn.ModuleList(blocks[:bottleneck_depth])
        stages, i0 = [], bottleneck_depth
        for j, d in enumerate(depths):  # stage j fuses skip level n-2-j into the map of level n-1-j
            stages.append(DecoderStage(dims[-1 - j], dims[-2 - j], blocks[i0 : i0 + d]))
            i0 += d
        self.stages = nn.ModuleList(stages)
        # Final expansion: Linear dims[0] -> scale^2 * final_dim, scale x scale sub-pixel rearrange.
        self.final_scale = scale
        self.final_expand = nn.Linear(dims[0], scale * scale * final_dim, bias=False)
        self.final_norm = nn.LayerNorm(final_dim)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_wkv_constants(self, token_split: int | None, eps: float) -> None:
        """Switch the Bi-WKV constants of every bottleneck and decoder block."""
        for m in self.modules():
            if isinstance(m, Block):
                m.set_wkv_constants(token_split, eps)

    def forward(
        self, feats: Sequence[Tensor], head: nn.Conv2d | None = None, *, stage_maps: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """``[X1..Xn]`` (B, dims[i], H/s_i, W/s_i) -> (B, final_dim, H, W).

        With ``head`` (a 1x1 conv ``final_dim -> K``) the result is ``head(features)`` (B, K, H, W), computed
        per sub-pixel *before* the final rearrangement: the same numbers, without materialising and permuting
        the full-resolution ``final_dim``-channel map (the largest tensor of the model). With ``stage_maps``
        it also returns the output of every stage as an NCHW map, coarse to fine (``(B, dims[n-2-j], H/s, W/s)``
        for stage j; deep supervision reads them).
        """
        if len(feats) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature maps, got {len(feats)}")
        x, hw = map_to_tokens(feats[-1])  # (B, T, dims[-1]) at the coarsest stride
        for blk in self.bottleneck:
            x = blk(x, hw)
        maps = []
        for stage, skip in zip(self.stages, reversed(feats[:-1])):
            x, hw = stage(x, hw, skip)
            if stage_maps:
                maps.append(tokens_to_map(x, hw))
        B = x.shape[0]
        H, W = hw
        s, c = self.final_scale, self.out_channels
        x = self.final_norm(self.final_expand(x).reshape(B, H, W, s, s, c))  # (B, H, W, s, s, c)
        if head is not None:
            if head.kernel_size != (1, 1) or head.in_channels != c:
                raise ValueError(f"expected a 1x1 conv head with {c} input channels, got {head}")
            x = F.linear(x, head.weight.flatten(1), head.bias)  # (B, H, W, s, s, K)
            c = head.out_channels
        out = x.permute(0, 5, 1, 3, 2, 4).reshape(B, c, H * s, W * s)  # (B, c, sH, sW)
        return (out, maps) if stage_maps else out
