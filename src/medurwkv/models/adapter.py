"""VRWKV_Adapter: the multi-scale encoder of the official ADE20K models (``docs/adapter.md``).

A ViT-Adapter around the plain Vision-RWKV trunk. A convolutional spatial prior module (SPM) gives stride
4/8/16/32 maps; four interaction stages exchange information between the stride-16 RWKV tokens and the
stride-8/16/32 SPM tokens with multi-scale deformable attention (injector: tokens <- SPM, extractor:
SPM <- tokens); the stage outputs are added back and four BatchNorms give ``[f1, f2, f3, f4]`` with
``C`` channels each.

Parameter names and state_dict order are the official ones, so the ``backbone.*`` part of
``upernet_vrwkv_adapter_{tiny,small,base,large}_512_160k_ade20k.pth`` loads with ``strict=True``.
Differences from the official module: the deformable attention is pure PyTorch (``ops.msda``) and the batch
norms are plain ``nn.BatchNorm2d`` (convert with ``nn.SyncBatchNorm.convert_sync_batchnorm`` for DDP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import Encoder
from .deform_attn import MSDeformAttn
from .layers import Block, DropPath, check_input
from .registry import register_model
from .releases import PretrainedCfg, release
from .vrwkv import VRWKVTrunk

__all__ = [
    "ADAPTER_CONFIGS",
    "ConvFFN",
    "DeformInputs",
    "Extractor",
    "Injector",
    "InteractionBlock",
    "MSDeformAttn",
    "SpatialPriorModule",
    "VRWKVAdapter",
    "deform_inputs",
    "reference_points",
]

# Injector/extractor LayerNorms: eps 1e-6 (official partial(nn.LayerNorm, eps=1e-6)); the trunk uses 1e-5.
_ADAPTER_LN_EPS = 1e-6


class DeformInputs(NamedTuple):
    """Geometry of one deformable-attention call; depends only on the token grid (h, w)."""

    reference_points: Tensor  # (1, Lq, 1, 2) float32, (x, y) in [0, 1]
    spatial_shapes: list[tuple[int, int]]  # L levels (H_l, W_l) of the sampled feature
    level_start_index: list[int]  # first token of every level


def reference_points(shapes: Sequence[tuple[int, int]], device: torch.device | str | None = None) -> Tensor:
    """Pixel centres ``((c + 0.5) / W_l, (r + 0.5) / H_l)`` of every level, row-major, concatenated.

    Always float32, as in the official ``get_reference_points`` (``linspace(0.5, H - 0.5, H) / H`` in
    float32): a float64 run must keep these float32-rounded values to reproduce the official float64 outputs
    (building them in float64 changes f1..f4 by ~5e-7 on grids whose sides are not powers of two).

    Returns:
        ``(1, Σ H_l·W_l, 1, 2)`` float32.
    """
    refs = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h  # (h,)
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w  # (w,)
        ref = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)  # (h, w, 2)
        refs.append(ref.reshape(-1, 2))
    return torch.cat(refs, dim=0)[None, :, None, :]


def deform_inputs(
    h: int, w: int, device: torch.device | str | None = None
) -> tuple[DeformInputs, DeformInputs]:
    """Injector and extractor geometry for a stride-16 token grid ``(h, w)`` (official ``deform_inputs``).

    Injector: queries are the ``h·w`` RWKV tokens, sampling the SPM levels ``(2h, 2w), (h, w), (h/2, w/2)``.
    Extractor: queries are the ``21·h·w/4`` SPM tokens (each at its own level's pixel centre), sampling the
    single RWKV level ``(h, w)``.
    """
    shapes = [(2 * h, 2 * w), (h, w), (h // 2, w // 2)]
    starts = [0, 4 * h * w, 5 * h * w]
    inj = DeformInputs(reference_points([(h, w)], device), shapes, starts)
    ext = DeformInputs(reference_points(shapes, device), [(h, w)], [0])
    return inj, ext


class DWConv(nn.Module):
    """Depthwise 3x3 conv applied separately to the stride-8/16/32 parts (16:4:1) of the SPM tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        B, _, C = x.shape
        h, w = hw
        n = h * w
        parts = []
        # (start, stop, grid) of the three levels: (2h, 2w) = 4n tokens, (h, w) = n, (h/2, w/2) = n/4.
        for s0, s1, (gh, gw) in (
            (0, 4 * n, (2 * h, 2 * w)),
            (4 * n, 5 * n, (h, w)),
            (5 * n, None, (h // 2, w // 2)),
        ):
            t = x[:, s0:s1].transpose(1, 2).reshape(B, C, gh, gw)  # (B, C, gh, gw)
            parts.append(self.dwconv(t).flatten(2).transpose(1, 2))
        return torch.cat(parts, dim=1)  # (B, 21n/4, C)


class ConvFFN(nn.Module):
    """fc1 -> DWConv -> GELU (exact erf) -> fc2 on the SPM tokens (official ``ConvFFN``; dropout 0)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DWConv(hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), hw)))
        return self.drop(self.fc2(x))


class Injector(nn.Module):
    """RWKV tokens <- SPM tokens: ``x + gamma ⊙ MSDA_3lvl(LN(x), LN(c))`` (gamma starts at init_values)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        n_levels: int = 3,
        deform_ratio: float = 1.0,
        init_values: float = 0.0,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.query_norm = nn.LayerNorm(dim, eps=_ADAPTER_LN_EPS)
        self.feat_norm = nn.LayerNorm(dim, eps=_ADAPTER_LN_EPS)
        self.attn = MSDeformAttn(dim, n_levels, num_heads, n_points, deform_ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def _inner(self, query: Tensor, feat: Tensor, inputs: DeformInputs) -> Tensor:
        attn = self.attn(self.query_norm(query), inputs.reference_points, self.feat_norm(feat), *inputs[1:])
        return query + self.gamma * attn

    def forward(self, query: Tensor, feat: Tensor, inputs: DeformInputs) -> Tensor:
        if self.with_cp and query.requires_grad:
            return checkpoint(self._inner, query, feat, inputs, use_reentrant=False)
        return self._inner(query, feat, inputs)


class Extractor(nn.Module):
    """SPM tokens <- RWKV tokens: ``c + MSDA_1lvl(LN(c), LN(x))``, then ``c + ConvFFN(LN(c))`` (no gamma)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        n_levels: int = 1,
        deform_ratio: float = 1.0,
        with_cffn: bool = True,
        cffn_ratio: float = 0.25,
        drop: float = 0.0,
        drop_path: float = 0.0,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=_ADAPTER_LN_EPS)
        self.feat_norm = nn.LayerNorm(dim, eps=_ADAPTER_LN_EPS)
        self.attn = MSDeformAttn(dim, n_levels, num_heads, n_points, deform_ratio)
        self.with_cffn, self.with_cp = with_cffn, with_cp
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio), drop=drop)
            self.ffn_norm = nn.LayerNorm(dim, eps=_ADAPTER_LN_EPS)
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _inner(self, query: Tensor, feat: Tensor, inputs: DeformInputs, hw: tuple[int, int]) -> Tensor:
        query = query + self.attn(
            self.query_norm(query), inputs.reference_points, self.feat_norm(feat), *inputs[1:]
        )
        if self.with_cffn:
            query = query + self.drop_path(self.ffn(self.ffn_norm(query), hw))
        return query

    def forward(self, query: Tensor, feat: Tensor, inputs: DeformInputs, hw: tuple[int, int]) -> Tensor:
        if self.with_cp and query.requires_grad:
            return checkpoint(self._inner, query, feat, inputs, hw, use_reentrant=False)
        return self._inner(query, feat, inputs, hw)


class InteractionBlock(nn.Module):
    """One stage: injector, the stage's RWKV blocks (owned by the trunk), extractor (+2 in the last stage)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 6,
        n_points: int = 4,
        drop: float = 0.0,
        drop_path: float = 0.0,
        with_cffn: bool = True,
        cffn_ratio: float = 0.25,
        init_values: float = 0.0,
        deform_ratio: float = 1.0,
        extra_extractor: bool = False,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, 3, deform_ratio, init_values, with_cp)
        ext_kw = dict(
            n_levels=1,
            deform_ratio=deform_ratio,
            with_cffn=with_cffn,
            cffn_ratio=cffn_ratio,
            drop=drop,
            drop_path=drop_path,
            with_cp=with_cp,
        )
        self.extractor = Extractor(dim, num_heads, n_points, **ext_kw)
        self.extra_extractors = (
            nn.ModuleList(Extractor(dim, num_heads, n_points, **ext_kw) for _ in range(2))
            if extra_extractor
            else None
        )

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        blocks: Sequence[Block],
        inputs1: DeformInputs,
        inputs2: DeformInputs,
        hw: tuple[int, int],
        record: dict[str, list[Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x (B, h*w, C) RWKV tokens, c (B, 21hw/4, C) SPM tokens -> updated (x, c)."""
        x = self.injector(x, c, inputs1)
        if record is not None:
            record["injector_out"].append(x)
        for blk in blocks:
            x = blk(x, hw)
            if record is not None:
                record["blocks"].append(x)
        c = self.extractor(c, x, inputs2, hw)
        if self.extra_extractors is not None:
            for ext in self.extra_extractors:
                c = ext(c, x, inputs2, hw)
        return x, c


def _cbr(cin: int, cout: int, stride: int) -> list[nn.Module]:
    # conv3x3 (no bias) -> BN -> ReLU; plain BatchNorm2d where the official code hard-codes SyncBatchNorm.
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Conv stem giving the stride-4 map c1 and stride-8/16/32 tokens c2..c4, all projected to embed_dim."""

    def __init__(self, inplanes: int = 64, embed_dim: int = 384, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_cbr(in_channels, inplanes, 2),
            *_cbr(inplanes, inplanes, 1),
            *_cbr(inplanes, inplanes, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_cbr(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_cbr(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_cbr(4 * inplanes, 4 * inplanes, 2))  # keeps 4x inplanes
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B, in, H, W) -> c1 (B, C, H/4, W/4) map; c2, c3, c4 tokens (B, H_l·W_l, C), strides 8, 16, 32."""
        s1 = self.stem(x)
        s2 = self.conv2(s1)
        s3 = self.conv3(s2)
        s4 = self.conv4(s3)
        c1 = self.fc1(s1)
        c2, c3, c4 = (
            fc(s).flatten(2).transpose(1, 2) for fc, s in ((self.fc2, s2), (self.fc3, s3), (self.fc4, s4))
        )
        return c1, c2, c3, c4


def _default_interactions(depth: int) -> list[list[int]]:
    if depth % 4 != 0:
        raise ValueError(
            f"expected depth divisible by 4 to split the blocks into 4 interaction stages, got {depth}; "
            "pass interaction_indexes=[[a0, b0], ..., [a3, b3]]"
        )
    q = depth // 4
    return [[i * q, (i + 1) * q - 1] for i in range(4)]


class VRWKVAdapter(VRWKVTrunk, Encoder):
    """Vision-RWKV + ViT-Adapter encoder (official ``VRWKV_Adapter``; ``docs/adapter.md``).

    ``forward(x)`` maps ``(B, in_channels, H, W)`` with H, W multiples of 32 to ``[f1, f2, f3, f4]``, the
    maps at strides 4, 8, 16, 32 with ``embed_dims`` channels each (after BatchNorm).

    Attributes:
        out_channels: ``[C] * 4``.
        strides: ``[4, 8, 16, 32]``.
        pad_multiple: 32 (inputs must be multiples of it; the Med-URWKV models pad for you).

    The trunk (``pos_embed``, ``patch_embed``, ``layers``) is the plain backbone's :class:`VRWKVTrunk`; the
    final norm ``ln1`` of :class:`~medurwkv.models.vrwkv.VRWKV` does not exist here (the official adapter
    deletes it: stage outputs are raw residual streams). Bi-WKV kernel constants default to those that trained the ADE20K
    checkpoints (16 chunks, EPS 0); change them with :meth:`set_wkv_constants`. The batch norms are plain
    ``nn.BatchNorm2d``: for multi-GPU training convert them with ``nn.SyncBatchNorm.convert_sync_batchnorm``.
    """

    pad_multiple = 32

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dims: int = 192,
        depth: int = 12,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        channel_gamma: float = 0.25,
        shift_pixel: int = 1,
        init_mode: str = "fancy",
        post_norm: bool = False,
        key_norm: bool = False,
        init_values: float | None = None,
        hidden_rate: int = 4,
        interpolate_mode: str = "bicubic",
        with_cp: bool = False,
        wkv_token_split: int | None = 16,
        wkv_eps: float = 0.0,
        conv_inplane: int = 64,
        n_points: int = 4,
        deform_num_heads: int = 6,
        init_values_inject: float = 0.0,
        interaction_indexes: Sequence[Sequence[int]] | None = None,
        with_cffn: bool = True,
        cffn_ratio: float = 0.25,
        deform_ratio: float = 1.0,
        add_rwkv_feature: bool = True,
        use_extra_extractor: bool = True,
    ) -> None:
        if patch_size != 16:
            raise ValueError(
                f"expected patch_size 16 (the adapter's levels assume stride-16 tokens), got {patch_size}"
            )
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
        self.ln1 = None  # the official attribute, set to None by VRWKV_Adapter: no final norm
        self._init_trunk_weights()  # before the adapter modules exist: the official init order of the RNG
        idx = (
            _default_interactions(depth)
            if interaction_indexes is None
            else [list(p) for p in interaction_indexes]
        )
        for pair in idx:
            if len(pair) != 2 or not 0 <= pair[0] <= pair[1] < depth:
                raise ValueError(
                    f"expected interaction_indexes as [first, last] block pairs in [0, {depth}), got {idx}"
                )
        if add_rwkv_feature and len(idx) != 4:
            raise ValueError(
                f"expected 4 interaction stages (one per output) with add_rwkv_feature=True, got {len(idx)}"
            )
        self.interaction_indexes = idx
        self.add_rwkv_feature = add_rwkv_feature
        C = embed_dims
        self.out_channels: list[int] = [C] * 4
        self.strides: list[int] = [4, 8, 16, 32]
        # Registered right after pos_embed, so the state_dict starts pos_embed, level_embed (official order).
        self.level_embed = nn.Parameter(torch.zeros(3, C))
        self.spm = SpatialPriorModule(conv_inplane, C, in_channels)
        self.interactions = nn.ModuleList(
            InteractionBlock(
                C,
                num_heads=deform_num_heads,
                n_points=n_points,
                drop_path=drop_path_rate,  # the official code gives every extractor the full rate
                with_cffn=with_cffn,
                cffn_ratio=cffn_ratio,
                init_values=init_values_inject,
                deform_ratio=deform_ratio,
                extra_extractor=use_extra_extractor and i == len(idx) - 1,
                with_cp=with_cp,
            )
            for i in range(len(idx))
        )
        self.up = nn.ConvTranspose2d(C, C, 2, 2)
        self.norm1 = nn.BatchNorm2d(C)
        self.norm2 = nn.BatchNorm2d(C)
        self.norm3 = nn.BatchNorm2d(C)
        self.norm4 = nn.BatchNorm2d(C)
        self._init_adapter_weights()

    @torch.no_grad()
    def _init_adapter_weights(self) -> None:
        # ViT-Adapter's training init for the new modules: trunc-normal Linear, 1/0 norms, He-normal
        # (fan-out) convs; then the Deformable-DETR init of every MSDeformAttn, and N(0, 1) level embeddings.
        # The injector gamma keeps init_values_inject (0: the injectors start as identities).
        for part in (self.spm, self.interactions, self.up):
            for m in part.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def _check_input(self, x: Tensor) -> None:
        check_input(x, self.in_channels)
        H, W = x.shape[-2:]
        if H % 32 != 0 or W % 32 != 0:
            raise ValueError(
                f"expected H and W multiples of 32, got {H}x{W}; "
                "pad the input (Med-URWKV models pad automatically)"
            )

    def _forward(self, x: Tensor, record: dict[str, Any] | None) -> list[Tensor]:
        self._check_input(x)
        B, C = x.shape[0], self.embed_dims
        c1, c2, c3, c4 = self.spm(x)  # c1 (B, C, H/4, W/4); c2..c4 (B, HlWl, C)
        tokens, hw = self.embed(x)  # (B, h*w, C): patch embed + bicubic-resized pos_embed
        h, w = hw
        inputs1, inputs2 = deform_inputs(h, w, x.device)
        if record is not None:
            record.update(
                spm_c1=c1, spm_c2=c2, spm_c3=c3, spm_c4=c4, deform_inputs1=inputs1, deform_inputs2=inputs2
            )
            record.update(embed=tokens, injector_out=[], blocks=[], interaction_x=[], interaction_c=[])
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)
        xs = []
        for stage, (a, b) in zip(self.interactions, self.interaction_indexes):
            tokens, c = stage(tokens, c, self.layers[a : b + 1], inputs1, inputs2, hw, record)
            xs.append(tokens.transpose(1, 2).reshape(B, C, h, w))  # raw residual stream, no final LN
            if record is not None:
                record["interaction_x"].append(tokens)
                record["interaction_c"].append(c)
        n = h * w
        c2 = c[:, : 4 * n].transpose(1, 2).reshape(B, C, 2 * h, 2 * w)
        c3 = c[:, 4 * n : 5 * n].transpose(1, 2).reshape(B, C, h, w)
        c4 = c[:, 5 * n :].transpose(1, 2).reshape(B, C, h // 2, w // 2)
        c1 = self.up(c2) + c1  # c1 never enters the interactions
        if self.add_rwkv_feature:
            x1, x2, x3, x4 = xs
            c1 = c1 + F.interpolate(x1, scale_factor=4, mode="bilinear", align_corners=False)
            c2 = c2 + F.interpolate(x2, scale_factor=2, mode="bilinear", align_corners=False)
            c3 = c3 + x3
            c4 = c4 + F.interpolate(
                x4, scale_factor=0.5, mode="bilinear", align_corners=False
            )  # = 2x2 avg pool
        return [self.norm1(c1), self.norm2(c2), self.norm3(c3), self.norm4(c4)]

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, in_channels, H, W), H and W multiples of 32 -> [f1, f2, f3, f4] at strides 4, 8, 16, 32."""
        return self._forward(x, None)

    def forward_debug(self, x: Tensor) -> tuple[list[Tensor], dict[str, Any]]:
        """Like :meth:`forward`, also returning the intermediate tensors (names as in the golden pack).

        ``spm_c1`` (B, C, H/4, W/4); ``spm_c2..4`` tokens before ``level_embed``; ``embed`` (patch + pos);
        ``deform_inputs1/2``; lists ``injector_out`` and ``interaction_x`` (per stage, (B, hw, C)),
        ``interaction_c`` (per stage, (B, 21hw/4, C)) and ``blocks`` (per trunk block).
        """
        record: dict[str, Any] = {}
        outs = self._forward(x, record)
        return outs, record

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None) -> list[Tensor]:
        """Not available: code written for the plain :class:`~medurwkv.models.vrwkv.VRWKV` is told what to use."""
        raise NotImplementedError(
            "VRWKVAdapter returns its multi-scale maps from forward(x); "
            "use forward_debug(x) for intermediate tensors"
        )


# ADE20K adapter configs as data (docs/adapter.md); the kernel constants are those of each release.
_ADAPTER_COMMON = dict(img_size=224, patch_size=16, conv_inplane=64, n_points=4, cffn_ratio=0.25)
_STAGES_12 = [[0, 2], [3, 5], [6, 8], [9, 11]]


def _adapter(size: str, **kw: Any) -> tuple[dict[str, Any], PretrainedCfg]:
    """One released adapter (S, B and L are post-norm with layer scale 1e-5); ``kw`` sets the rest."""
    cfg = dict(_ADAPTER_COMMON, depth=12, post_norm=True, init_values=1e-5, interaction_indexes=_STAGES_12)
    cfg.update(kw)
    cfg["interaction_indexes"] = [list(p) for p in cfg["interaction_indexes"]]  # fresh lists per config
    pre = release(f"upernet_vrwkv_adapter_{size}_512_160k_ade20k.pth")
    cfg.update(wkv_token_split=pre.wkv_token_split, wkv_eps=pre.wkv_eps)
    return cfg, pre


ADAPTER_CONFIGS: dict[str, tuple[dict[str, Any], PretrainedCfg]] = {
    "vrwkv_adapter_t": _adapter(
        "tiny",
        embed_dims=192,
        post_norm=False,
        init_values=1.0,
        drop_path_rate=0.1,
        deform_num_heads=6,
        deform_ratio=1.0,
    ),
    "vrwkv_adapter_s": _adapter(
        "small", embed_dims=384, drop_path_rate=0.2, deform_num_heads=6, deform_ratio=1.0
    ),
    "vrwkv_adapter_b": _adapter(
        "base", embed_dims=768, drop_path_rate=0.3, deform_num_heads=12, deform_ratio=0.5
    ),
    "vrwkv_adapter_l": _adapter(
        "large",
        img_size=192,
        embed_dims=1024,
        depth=24,
        key_norm=True,
        drop_path_rate=0.4,
        deform_num_heads=16,
        deform_ratio=0.5,
        interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
    ),
}

for _name, (_kw, _pre) in ADAPTER_CONFIGS.items():
    register_model(
        _name,
        VRWKVAdapter,
        default_kwargs=_kw,
        pretrained=_pre,
        description=f"VRWKV_Adapter multi-scale encoder ({_pre.file}, backbone part)",
    )
