"""Med-URWKV: a pretrained VRWKV encoder + RWKV bottleneck + patch-expanding VRWKV decoder + 1x1 head.

``docs/models.md``. Encoder and decoder meet only through a list of NCHW maps with known channels and strides
(``encoder.out_channels``, ``encoder.strides``; 4/8/16/32 here). Variants are data (:data:`MED_URWKV_VARIANTS`),
registered together with the official release of their encoder, so ``create_model("med_urwkv_t",
pretrained=True)`` loads the ADE20K adapter weights into the encoder (``backbone.*`` of the UperNet checkpoint;
its ``decode_head.*`` / ``auxiliary_head.*`` are skipped). Tiny configs for tests: ``medurwkv.models.QUICK_OVERRIDES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .adapter import VRWKVAdapter
from .base import PAD_MODES, SegmentationModel
from .decoder import URWKVDecoder
from .encoders import PlainVRWKVEncoder
from .modules import FAWA, MSCF
from .registry import get_model_entry, register_model
from .releases import release
from .vrwkv import VRWKV

__all__ = ["MedURWKV", "MedURWKVVariant", "MED_URWKV_VARIANTS", "build_encoder"]


def build_encoder(
    name: str, in_channels: int, overrides: dict[str, Any] | None = None
) -> VRWKVAdapter | PlainVRWKVEncoder:
    """Encoder ``name`` (a registered backbone: ``vrwkv_adapter_t``/``_s`` or plain ``vrwkv_t``/``_s``...).

    Its registered defaults (the official config and kernel constants of its release) are merged with
    ``overrides``. A plain VRWKV becomes a :class:`PlainVRWKVEncoder` (``out_indices`` may be overridden).
    """
    entry = get_model_entry(name)
    kw = {**entry.default_kwargs, "in_channels": in_channels, **(overrides or {})}
    if entry.builder is VRWKV:
        return PlainVRWKVEncoder(**kw)
    if entry.builder is VRWKVAdapter:
        return VRWKVAdapter(**kw)
    raise ValueError(
        f"expected a VRWKV encoder name (vrwkv_adapter_* or plain vrwkv_*), got {name!r} "
        f"({entry.builder.__name__}, not a multi-scale VRWKV encoder)"
    )


class MedURWKV(SegmentationModel):
    """Med-URWKV segmentation network: ``(B, in_channels, H, W) -> (B, num_classes, H, W)`` for any H, W.

    Args:
        encoder: registered encoder name (``vrwkv_adapter_t``, ``vrwkv_adapter_s``, ``vrwkv_t``, ...).
        encoder_overrides: keyword overrides of the encoder's official config (tiny test configs, drop path...).
        in_channels: image channels (1 or 3; a 3-channel pretrained stem is adapted by ``load_pretrained``).
        num_classes: number of output logit maps.
        decoder_dim: reference width of the bottleneck/decoder (default: the encoder's deepest width). An
            encoder map whose width differs from its level's width is projected by a 1x1 conv.
        decoder_width_mults: width of each level as a multiple of ``decoder_dim``, finest first (one per
            encoder level): ``(0.25, 0.5, 1, 2)`` halves the width each time the resolution doubles, from
            ``2 * decoder_dim`` in the bottleneck to ``decoder_dim / 4`` at stride 4. Default: 1 everywhere.
        deep_supervision: auxiliary 1x1 heads on the decoder stages at strides 8 and 16 (nnU-Net's deep
            supervision); ``forward(x, aux=True)`` returns their logits for the training loss. Inference and
            export use the main head only.
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
        decoder_width_mults: Sequence[float] | None = None,
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
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"expected pad_mode in {PAD_MODES}, got {pad_mode!r}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"expected in_channels >= 1 and num_classes >= 1, got {in_channels}, {num_classes}"
            )
        self.in_channels, self.num_classes, self.pad_mode = in_channels, num_classes, pad_mode
        self.encoder: VRWKVAdapter | PlainVRWKVEncoder = build_encoder(
            encoder, in_channels, encoder_overrides
        )
        enc_ch, strides = list(self.encoder.out_channels), list(self.encoder.strides)
        dim = int(decoder_dim or enc_ch[-1])
        mults = (
            [1.0] * len(enc_ch) if decoder_width_mults is None else [float(m) for m in decoder_width_mults]
        )
        if len(mults) != len(enc_ch) or any(m <= 0 or dim * m != round(dim * m) for m in mults):
            raise ValueError(
                f"expected {len(enc_ch)} decoder_width_mults > 0 (finest first) that make whole widths of "
                f"decoder_dim={dim}, got {decoder_width_mults}"
            )
        dims = [round(dim * m) for m in mults]  # width of each level, finest first
        self.pad_multiple = self.encoder.pad_multiple
        # 1x1 projections only where an encoder map's width differs from its level's width.
        self.proj = nn.ModuleList(
            nn.Identity() if c == d else nn.Conv2d(c, d, 1) for c, d in zip(enc_ch, dims)
        )
        self.mscf = MSCF(dims) if mscf else None
        self.fawa = nn.ModuleList(FAWA(d) for d in dims[:-1]) if fawa else None
        self.decoder = URWKVDecoder(
            dims,
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
        # deep supervision: the stages at strides 16 and 8 (stage j ends at stride strides[-2 - j])
        n_aux = min(2, len(decoder_depths)) if deep_supervision else 0
        self.aux_strides = [strides[-2 - j] for j in range(n_aux)]
        self.aux_heads = nn.ModuleList(nn.Conv2d(dims[-2 - j], num_classes, 1) for j in range(n_aux))

    # ---- pretrained encoder API ------------------------------------------------------------------------------

    def pretrained_target(self) -> nn.Module:
        """The module that official weights load into: the adapter, or the plain VRWKV inside the pure encoder.

        For the pure variant only the VRWKV trunk is frozen by :meth:`freeze_encoder`: its ViTDet resampling
        layers are new and train.
        """
        return self.encoder.backbone if isinstance(self.encoder, PlainVRWKVEncoder) else self.encoder

    def set_wkv_constants(self, token_split: int | None, eps: float, *, part: str = "encoder") -> None:
        """Switch the Bi-WKV constants of the ``"encoder"`` or the ``"decoder"`` (bottleneck + decoder) blocks."""
        if part == "encoder":
            self.encoder.set_wkv_constants(token_split, eps)
        elif part == "decoder":
            self.decoder.set_wkv_constants(token_split, eps)
        else:
            raise ValueError(f"expected part 'encoder' or 'decoder', got {part!r}")

    # ---- forward ---------------------------------------------------------------------------------------------

    def _decoder_inputs(self, x: Tensor) -> list[Tensor]:
        feats = [p(f) for p, f in zip(self.proj, self.encoder(x))]  # (B, dims[i], Hp/s_i, Wp/s_i) each
        if self.mscf is not None:
            feats = self.mscf(feats)
        if self.fawa is not None:
            feats = [f(s) for f, s in zip(self.fawa, feats[:-1])] + [feats[-1]]
        return feats

    def forward_padded(self, x: Tensor) -> Tensor:
        """``(B, in_channels, Hp, Wp)``, Hp and Wp multiples of 32 -> logits ``(B, num_classes, Hp, Wp)``."""
        # (B, num_classes, Hp, Wp): the 1x1 head fused per sub-pixel
        return self.decoder(self._decoder_inputs(x), head=self.head)

    def forward_padded_aux(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if not self.aux_heads:
            return self.forward_padded(x), []
        logits, maps = self.decoder(self._decoder_inputs(x), head=self.head, stage_maps=True)
        # maps[j]: (B, dims[-2 - j], Hp/s, Wp/s) at s = aux_strides[j]
        return logits, [h(m) for h, m in zip(self.aux_heads, maps)]


@dataclass(frozen=True)
class MedURWKVVariant:
    """A registered Med-URWKV variant: model defaults and the official release of its encoder."""

    kwargs: dict[str, Any]
    release: str  # file name of the encoder's official release (releases.py)
    description: str


# The decoder rule of every variant (docs/results_decoder.md): widths that halve as the resolution doubles,
# 2 x decoder_dim in the bottleneck down to decoder_dim / 4 at stride 4, and one block (not two) in the
# stride-4 stage, whose 16x tokens make it the slowest stage per parameter. Checkpoints of earlier designs keep
# loading: their kwargs are in the file (builder.model_from_spec).
_BASE = dict(
    in_channels=3,
    num_classes=2,
    decoder_width_mults=[0.25, 0.5, 1, 2],
    decoder_depths=[2, 2, 1],
    bottleneck_depth=2,
)
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


for _name, _v in MED_URWKV_VARIANTS.items():
    register_model(
        _name, MedURWKV, default_kwargs=_v.kwargs, pretrained=release(_v.release), description=_v.description
    )
