"""The one contract every segmentation model and encoder implements (``docs/models.md``, ``docs/architecture.md``).

A segmentation model maps ``(B, in_channels, H, W)`` to logits ``(B, num_classes, H, W)`` for any ``H, W``: it
pads the input bottom/right to a multiple of :attr:`SegmentationModel.pad_multiple` and crops the logits back
(:func:`pad_to_multiple`, written once; the ONNX backend of ``predict`` uses the same function). Its
:attr:`~SegmentationModel.encoder` and its decoder meet only through the encoder's feature maps, described by
:attr:`Encoder.out_channels` and :attr:`Encoder.strides`. The engine talks to models only through this contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..utils import is_tracing
from .layers import check_input
from .modules import split_decay_params

__all__ = ["PAD_MODES", "Encoder", "SegmentationModel", "pad_to_multiple"]

PAD_MODES = ("constant", "reflect", "replicate")


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "constant") -> Tensor:
    """Pad ``(..., H, W)`` bottom/right so that H and W are multiples of ``multiple``.

    ``mode`` is ``"constant"`` (zeros), ``"reflect"`` or ``"replicate"``; reflect needs a pad smaller than the
    side, so tiny images fall back to edge replication. Crop the result back with ``y[..., :H, :W]``.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"expected pad mode in {PAD_MODES}, got {mode!r}")
    H, W = x.shape[-2:]
    pad = (0, (-W) % multiple, 0, (-H) % multiple)  # (left, right, top, bottom)
    if not (pad[1] or pad[3]) and not is_tracing():  # a traced graph must pad at every size, also by 0
        return x
    if mode == "reflect" and (pad[1] >= W or pad[3] >= H):
        mode = "replicate"
    return F.pad(x, pad) if mode == "constant" else F.pad(x, pad, mode=mode)


class Encoder(nn.Module):
    """A multi-scale encoder: ``forward(x) -> list`` of NCHW maps, map ``i`` with ``out_channels[i]`` channels at
    stride ``strides[i]`` (increasing). ``pad_multiple`` is the input size multiple it needs.

    Implementations: ``VRWKVAdapter`` (adapter.py), ``PlainVRWKVEncoder`` (encoders.py), ``UNetEncoder`` (unet.py).
    """

    out_channels: list[int]
    strides: list[int]
    pad_multiple: int


class SegmentationModel(nn.Module):
    """Base class of every segmentation model (Med-URWKV family, U-Net, ...).

    Subclasses set ``in_channels``, ``num_classes``, ``pad_multiple``, ``pad_mode`` and ``encoder`` and implement
    :meth:`forward_padded` (inputs already padded to ``pad_multiple``); a model with a pretrained part overrides
    :meth:`pretrained_target`. ``create_model`` attaches ``model_spec = {"name", "kwargs"}``, from which a
    checkpoint rebuilds the model.
    """

    in_channels: int
    num_classes: int
    pad_multiple: int
    pad_mode: str = "constant"
    encoder: Encoder
    model_spec: dict[str, Any]
    aux_strides: Sequence[int] = ()  # strides of the deep-supervision heads (none by default)

    def __init__(self) -> None:
        super().__init__()
        self._encoder_frozen = False

    # ---- forward -----------------------------------------------------------------------------------------
    def forward_padded(self, x: Tensor) -> Tensor:
        """``(B, in_channels, Hp, Wp)`` with ``Hp, Wp`` multiples of ``pad_multiple`` -> ``(B, K, Hp, Wp)``."""
        raise NotImplementedError

    def forward_padded_aux(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Like :meth:`forward_padded`, plus the logits of the auxiliary (deep supervision) heads, each
        ``(B, K, Hp/s, Wp/s)`` at the strides ``aux_strides``. Models without auxiliary heads return ``[]``."""
        return self.forward_padded(x), []

    def forward(self, x: Tensor, aux: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """``(B, in_channels, H, W)`` -> logits ``(B, num_classes, H, W)``: pad bottom/right, run, crop back.

        With ``aux=True`` (training with deep supervision): ``(logits, aux_logits)``, each auxiliary map
        upsampled (bilinear) to the input size, so every head is scored against the same full-size mask.
        """
        check_input(x, self.in_channels)
        H, W = x.shape[-2:]
        xp = pad_to_multiple(x, self.pad_multiple, self.pad_mode)
        if not aux:
            return self.forward_padded(xp)[..., :H, :W]
        logits, extra = self.forward_padded_aux(xp)
        size = xp.shape[-2:]
        up = [F.interpolate(a, size=size, mode="bilinear", align_corners=False)[..., :H, :W] for a in extra]
        return logits[..., :H, :W], up

    # ---- pretrained encoder ------------------------------------------------------------------------------
    def pretrained_target(self) -> nn.Module | None:
        """The module that official pretrained weights load into, or None when the model has none."""
        return None

    def freeze_encoder(self, frozen: bool = True) -> None:
        """(Un)freeze :meth:`pretrained_target`; its BatchNorms stay in eval mode while frozen. No-op without one."""
        target = self.pretrained_target()
        if target is None:
            return
        self._encoder_frozen = bool(frozen)
        for p in target.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    @property
    def encoder_frozen(self) -> bool:
        return self._encoder_frozen

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        target = self.pretrained_target()
        if self._encoder_frozen and target is not None:  # frozen BN statistics must not drift with new data
            for m in target.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ---- optimisation ------------------------------------------------------------------------------------
    def param_groups(
        self, lr: float, encoder_lr_scale: float = 1.0, weight_decay: float = 1e-4
    ) -> list[dict]:
        """AdamW parameter groups: :meth:`pretrained_target` at ``lr * encoder_lr_scale``, the rest at ``lr``.

        Each part is split into decay / no-decay (no decay on tensors with ndim <= 1 and on the names in
        ``modules.NO_DECAY_NAMES``: position/level embeddings, RWKV decay/first/mix vectors, gammas). Without a
        pretrained target every parameter is in one decay / no-decay pair at ``lr``. Frozen parameters are
        included (they join training when the encoder is unfrozen).
        """
        target = self.pretrained_target()
        if target is None:
            return split_decay_params(self.named_parameters(), lr, weight_decay)
        enc_ids = {id(p) for p in target.parameters()}
        rest = [(n, p) for n, p in self.named_parameters() if id(p) not in enc_ids]
        return split_decay_params(
            target.named_parameters(), lr * encoder_lr_scale, weight_decay, tag="encoder_"
        ) + split_decay_params(rest, lr, weight_decay, tag="decoder_")
