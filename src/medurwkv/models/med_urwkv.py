"""Med-URWKV: a pretrained VRWKV encoder + RWKV bottleneck + patch-expanding VRWKV decoder + 1x1 head.

``spec/med-urwkv.md`` §1-§2. Encoder and decoder meet only through a list of NCHW maps with known channels and
strides (``encoder.out_channels``, ``encoder.strides``; 4/8/16/32 here). Variants are data
(:data:`MED_URWKV_VARIANTS`), registered with the registry together with the PretrainedCfg of their encoder's
official release, so ``create_model("med_urwkv_t", pretrained=True)`` loads the ADE20K adapter weights into the
encoder (``backbone.*`` of the UperNet checkpoint; its ``decode_head.*`` / ``auxiliary_head.*`` are skipped).

Tiny configs for tests (any override of the encoder goes through ``encoder_overrides``)::

    create_model("med_urwkv_t", encoder_overrides=dict(embed_dims=32, depth=4, conv_inplane=8,
                 deform_num_heads=2, interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]]), decoder_dim=32)
    create_model("med_urwkv_t_pure", encoder_overrides=dict(embed_dims=32, depth=4))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .decoder import URWKVDecoder
from .layers import check_input
from .modules import FAWA, MSCF, split_decay_params
from .registry import PretrainedCfg, get_model_entry, register_model
from .vrwkv import VRWKV

__all__ = [
    "MedURWKV",
    "PlainVRWKVEncoder",
    "MedURWKVVariant",
    "MED_URWKV_VARIANTS",
    "build_encoder",
    "count_parameters",
]

PAD_MODES = ("constant", "reflect", "replicate")


class PlainVRWKVEncoder(nn.Module):
    """Plain VRWKV trunk turned into a 4-level pyramid, ViTDet-style (``spec/vrwkv.md`` §5b).

    The stride-16 maps after blocks ``out_indices`` (default evenly spaced, ``(2, 5, 8, 11)`` for depth 12) are
    resampled x4 (ConvT 2x2/2 -> BN -> GELU -> ConvT 2x2/2), x2 (ConvT 2x2/2), x1 (identity) and x0.5 (2x2
    max-pool), then each level gets a BatchNorm (the raw residual streams of intermediate blocks are not
    normalised; the adapter ends with BNs too). Output: 4 maps of ``embed_dims`` channels at strides 4/8/16/32.
    No conv stem, no deformable attention. Only ``backbone`` holds pretrained weights.
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


def build_encoder(name: str, in_channels: int, overrides: dict[str, Any] | None = None) -> nn.Module:
    """Encoder ``name`` (a registered backbone: ``vrwkv_adapter_t``/``_s`` or plain ``vrwkv_t``/``_s``...).

    Its registered defaults (the official config and kernel constants of its release) are merged with
    ``overrides``. A plain VRWKV becomes a :class:`PlainVRWKVEncoder` (``out_indices`` may be overridden).
    """
    entry = get_model_entry(name)
    kw = {**entry.default_kwargs, "in_channels": in_channels, **(overrides or {})}
    if entry.builder is VRWKV:
        return PlainVRWKVEncoder(**kw)
    enc = entry.builder(**kw)
    if not (hasattr(enc, "out_channels") and hasattr(enc, "strides")):
        raise ValueError(
            f"expected an encoder with out_channels and strides (a multi-scale encoder), got {name!r} "
            f"({type(enc).__name__}); use a vrwkv_adapter_* or plain vrwkv_* name"
        )
    return enc


class MedURWKV(nn.Module):
    """Med-URWKV segmentation network: ``(B, in_channels, H, W) -> (B, num_classes, H, W)`` for any H, W.

    Args:
        encoder: registered encoder name (``vrwkv_adapter_t``, ``vrwkv_adapter_s``, ``vrwkv_t``, ...).
        encoder_overrides: keyword overrides of the encoder's official config (tiny test configs, drop path...).
        in_channels: image channels (1 or 3; a 3-channel pretrained stem is adapted by ``load_pretrained``).
        num_classes: number of output logit maps.
        decoder_dim: bottleneck/decoder width (default: the encoder width; otherwise every encoder map is
            projected by a 1x1 conv).
        decoder_depths: VRWKV blocks per decoder stage (coarse to fine), bottleneck_depth: blocks on X4.
        final_dim: channels after the final x4 patch expand (default ``decoder_dim // 4``).
        decoder_wkv_token_split, decoder_wkv_eps: Bi-WKV constants of the bottleneck/decoder blocks (default the
            ideal form ``None, 0.0``: they are trained from scratch).
        fawa, mscf: add FAWA on every skip and MSCF across the levels (Med-URWKV-dagger).
        pad_mode: how inputs are padded (bottom/right) to a multiple of 32: ``"constant"`` (zeros, default: what
            the encoder's corner-padded patch embedding does), ``"reflect"`` or ``"replicate"``.
        decoder_drop_path_rate: stochastic depth of the bottleneck/decoder blocks.
        with_cp: activation checkpointing in the decoder blocks (saves memory when training large inputs).
    """

    def __init__(
        self,
        encoder: str = "vrwkv_adapter_t",
        encoder_overrides: dict[str, Any] | None = None,
        in_channels: int = 3,
        num_classes: int = 2,
        decoder_dim: int | None = None,
        decoder_depths: Sequence[int] = (2, 2, 2),
        bottleneck_depth: int = 2,
        final_dim: int | None = None,
        decoder_wkv_token_split: int | None = None,
        decoder_wkv_eps: float = 0.0,
        fawa: bool = False,
        mscf: bool = False,
        pad_mode: str = "constant",
        decoder_drop_path_rate: float = 0.0,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"expected pad_mode in {PAD_MODES}, got {pad_mode!r}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"expected in_channels >= 1 and num_classes >= 1, got {in_channels}, {num_classes}"
            )
        self.in_channels, self.num_classes, self.pad_mode = in_channels, num_classes, pad_mode
        self.encoder = build_encoder(encoder, in_channels, encoder_overrides)
        enc_ch, strides = list(self.encoder.out_channels), list(self.encoder.strides)
        dim = int(decoder_dim or enc_ch[-1])
        self.pad_multiple = int(getattr(self.encoder, "pad_multiple", strides[-1]))
        # 1x1 projections only where an encoder map's width differs from the decoder width.
        self.proj = nn.ModuleList(nn.Identity() if c == dim else nn.Conv2d(c, dim, 1) for c in enc_ch)
        self.mscf = MSCF([dim] * len(enc_ch)) if mscf else None
        self.fawa = nn.ModuleList(FAWA(dim) for _ in enc_ch[:-1]) if fawa else None
        self.decoder = URWKVDecoder(
            dim,
            strides,
            depths=decoder_depths,
            bottleneck_depth=bottleneck_depth,
            final_dim=final_dim,
            drop_path_rate=decoder_drop_path_rate,
            wkv_token_split=decoder_wkv_token_split,
            wkv_eps=decoder_wkv_eps,
            with_cp=with_cp,
        )
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, 1)
        self._encoder_frozen = False

    # ---- pretrained encoder API ------------------------------------------------------------------------------

    def pretrained_target(self) -> nn.Module:
        """The module that official weights load into: the adapter, or the plain VRWKV inside the pure encoder."""
        return self.encoder.backbone if isinstance(self.encoder, PlainVRWKVEncoder) else self.encoder

    def freeze_encoder(self, frozen: bool = True) -> None:
        """(Un)freeze the pretrained part of the encoder; its BatchNorms stay in eval mode while frozen.

        For the pure variant only the VRWKV trunk is frozen: its ViTDet resampling layers are new and train.
        """
        self._encoder_frozen = bool(frozen)
        for p in self.pretrained_target().parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    @property
    def encoder_frozen(self) -> bool:
        return self._encoder_frozen

    def train(self, mode: bool = True) -> MedURWKV:
        super().train(mode)
        if self._encoder_frozen:  # frozen BN statistics must not drift with the new data
            for m in self.pretrained_target().modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def param_groups(
        self, lr: float, encoder_lr_scale: float = 1.0, weight_decay: float = 1e-4
    ) -> list[dict]:
        """AdamW parameter groups: the pretrained encoder part at ``lr * encoder_lr_scale``, the rest at ``lr``.

        No weight decay on tensors with ndim <= 1 (norms, biases) nor on ``pos_embed``, ``level_embed``, the
        RWKV ``spatial_decay``/``spatial_first``/``spatial_mix_*`` vectors and layer-scale/injector ``gamma``.
        Frozen parameters are included (they join training when the encoder is unfrozen).
        """
        target = self.pretrained_target()
        enc_ids = {id(p) for p in target.parameters()}
        enc = [(n, p) for n, p in target.named_parameters()]
        rest = [(n, p) for n, p in self.named_parameters() if id(p) not in enc_ids]
        return split_decay_params(
            enc, lr * encoder_lr_scale, weight_decay, tag="encoder_"
        ) + split_decay_params(rest, lr, weight_decay, tag="decoder_")

    def set_wkv_constants(self, token_split: int | None, eps: float, *, part: str = "encoder") -> None:
        """Switch the Bi-WKV constants of the ``"encoder"`` or the ``"decoder"`` (bottleneck + decoder) blocks."""
        if part == "encoder":
            self.encoder.set_wkv_constants(token_split, eps)
        elif part == "decoder":
            self.decoder.set_wkv_constants(token_split, eps)
        else:
            raise ValueError(f"expected part 'encoder' or 'decoder', got {part!r}")

    # ---- forward ---------------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_channels)
        H, W = x.shape[-2:]
        m = self.pad_multiple
        pad = (0, (-W) % m, 0, (-H) % m)  # bottom/right, like the encoder's corner padding
        if pad[1] or pad[3]:
            mode = self.pad_mode
            if mode == "reflect" and (pad[1] >= W or pad[3] >= H):
                mode = "replicate"  # reflect needs pad < size; tiny images fall back to edge replication
            x = F.pad(x, pad, mode=mode) if mode != "constant" else F.pad(x, pad)
        feats = [p(f) for p, f in zip(self.proj, self.encoder(x))]  # (B, dim, Hp/s, Wp/s) each
        if self.mscf is not None:
            feats = self.mscf(feats)
        if self.fawa is not None:
            feats = [f(s) for f, s in zip(self.fawa, feats[:-1])] + [feats[-1]]
        logits = self.decoder(feats, head=self.head)  # (B, num_classes, Hp, Wp): 1x1 head fused per sub-pixel
        return logits[..., :H, :W]  # (B, num_classes, H, W)


@dataclass(frozen=True)
class MedURWKVVariant:
    """A registered Med-URWKV variant: model defaults and the official release of its encoder."""

    kwargs: dict[str, Any]
    release: str | None
    description: str


_BASE = dict(in_channels=3, num_classes=2, decoder_depths=[2, 2, 2], bottleneck_depth=2)
MED_URWKV_VARIANTS: dict[str, MedURWKVVariant] = {
    "med_urwkv_t": MedURWKVVariant(
        dict(encoder="vrwkv_adapter_t", **_BASE),
        "upernet_vrwkv_adapter_tiny_512_160k_ade20k.pth",
        "Med-URWKV-T: VRWKV-Adapter-T encoder (ADE20K UperNet release) + RWKV bottleneck + VRWKV decoder",
    ),
    "med_urwkv_s": MedURWKVVariant(
        dict(encoder="vrwkv_adapter_s", **_BASE),
        "upernet_vrwkv_adapter_small_512_160k_ade20k.pth",
        "Med-URWKV-S (v2): VRWKV-Adapter-S encoder (embed 384, post-norm; ADE20K UperNet release)",
    ),
    "med_urwkv_t_pure": MedURWKVVariant(
        dict(encoder="vrwkv_t", **_BASE),
        "vrwkv_t_in1k_224.pth",
        "Med-URWKV-T-pure (ours): plain VRWKV-T (ImageNet-1k) with a ViTDet-style pyramid of blocks 2/5/8/11",
    ),
    "med_urwkv_t_dagger": MedURWKVVariant(
        dict(encoder="vrwkv_adapter_t", fawa=True, mscf=True, **_BASE),
        "upernet_vrwkv_adapter_tiny_512_160k_ade20k.pth",
        "Med-URWKV-dagger (v2): Med-URWKV-T + FAWA + MSCF (module internals are our design)",
    ),
}


def _release(file: str | None) -> PretrainedCfg | None:
    if file is None:
        return None
    try:
        from .pretrained import find_release
    except ImportError:  # pragma: no cover - pretrained.py missing: fall back to the bare file entry
        find_release = None
    cfg = find_release(file) if find_release is not None else None
    if cfg is None:
        adeseg = file.startswith("upernet_")
        cfg = PretrainedCfg.official(
            file,
            layout="mmseg" if adeseg else "mmcls",
            wkv_token_split=16 if adeseg else 32,
            wkv_eps=0.0 if adeseg else 1e-6,
        )
    return cfg


for _name, _v in MED_URWKV_VARIANTS.items():
    register_model(
        _name, MedURWKV, default_kwargs=_v.kwargs, pretrained=_release(_v.release), description=_v.description
    )


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
