"""MONAI's 2D ``UNet`` and ``SwinUNETR`` as medurwkv models: the baselines a user would pick instead (#10).

Registered as ``monai_unet`` and ``swin_unetr``, they are trained, evaluated, exported and benchmarked by the
same engine, on the same data, split, recipe and clock as the Med-URWKV family, so a comparison measures the
models and nothing else. Each wraps the MONAI network unchanged as its child ``net`` (``forward_padded`` is
MONAI's own forward), so the numbers are MONAI's: the state dict is MONAI's with the prefix ``net.``; weights
trained with MONAI itself load with ``model.net.load_state_dict(sd)``.

What the wrapper adds is the model contract (``base.py``): any input size (zero padding bottom/right to a
multiple of 16 for the U-Net with four stride-2 levels, 32 for SwinUNETR, then a crop back), ``in_channels`` /
``num_classes`` names, an ``encoder`` view of the contracting path, and ``model_spec`` (from
``create_model``). Neither has an official release for 2D segmentation: ``pretrained=True`` raises a
``UserError`` and ``pretrained=PATH`` loads your own weights of the model, as for ``unet``.
``pretrained_target()`` is None, so ``freeze_encoder()`` is the base class's documented no-op (nothing
pretrained to keep) and ``param_groups`` puts every parameter at ``lr``.

MONAI is imported when a model is built, not at ``import medurwkv.models`` (its networks take ~2 s to import).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .base import Encoder, SegmentationModel
from .modules import split_decay_params
from .registry import register_model

__all__ = ["MonaiUNet", "MonaiUNetEncoder", "MonaiSwinUNETR", "SwinUNETREncoder"]

# The issue #10 anchor, against which its targets are set (6.50 M parameters at 1 -> 2 channels).
ANCHOR_UNET = dict(channels=[32, 64, 128, 256, 512], strides=[2, 2, 2, 2], num_res_units=2)


def _int_list(name: str, value: Any) -> list[int]:
    """A sequence of positive ints as a list (lists survive the YAML config and the checkpoint alike)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise UserError(f"expected {name} as a list of positive ints, got {value!r}")
    out = list(value)
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise UserError(f"expected {name} as a list of positive ints, got {value!r}")
    return out


def _build(cls_name: str, build: Any) -> nn.Module:
    """Run a MONAI constructor; its configuration errors become a ``UserError`` that names the network."""
    try:
        return build()
    except (ValueError, AssertionError) as e:  # MONAI's checks of its arguments
        raise UserError(
            f"expected a configuration MONAI's {cls_name} accepts, got an error from it: {e}; "
            f"fix the model keyword (model_kwargs / --model-kwargs)"
        ) from e


def _view(encoder: Encoder, model: nn.Module) -> Encoder:
    """An encoder view of ``model``'s own modules, built on access rather than registered on the model.

    Registered, the view would list every shared parameter twice in the state dict (``net.*`` and
    ``encoder.*``). Only the training flag is copied: the shared modules already are in the model's mode.
    """
    encoder.training = model.training
    return encoder


# ----------------------------------------------------------------------------------------------------
# MONAI UNet
# ----------------------------------------------------------------------------------------------------


class MonaiUNetEncoder(Encoder):
    """The down path of a MONAI ``UNet``: every down layer's output, then the bottom layer's.

    MONAI nests the U-Net as ``Sequential(down, SkipConnection(<inner block>), up)`` down to the bottom layer;
    the view walks that chain. Map ``i < L`` has ``channels[i]`` channels at stride ``prod(strides[:i + 1])``
    (MONAI's first layer already has stride ``strides[0]``); the last map is the bottom, ``channels[-1]`` at
    the deepest stride.
    """

    def __init__(self, net: nn.Module, channels: list[int], strides: list[int]) -> None:
        from monai.networks.layers.simplelayers import SkipConnection

        super().__init__()
        downs: list[nn.Module] = []
        node = net.model
        while isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
            downs.append(node[0])
            node = node[1].submodule
        if len(downs) != len(strides):
            raise RuntimeError(
                "expected MONAI's UNet nested as Sequential(down, SkipConnection(...), up) with "
                f"{len(strides)} levels, got {len(downs)}; the installed MONAI builds it differently"
            )
        self.downs = nn.ModuleList(downs)
        self.bottom = node
        level = [math.prod(strides[: i + 1]) for i in range(len(strides))]
        self.out_channels = list(channels)
        self.strides = level + [level[-1]]  # the bottom layer has stride 1
        self.pad_multiple = level[-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats: list[Tensor] = []
        for down in self.downs:
            x = down(x)
            feats.append(x)
        feats.append(self.bottom(x))
        return feats


class MonaiUNet(SegmentationModel):
    """MONAI's ``UNet(spatial_dims=2, ...)`` (residual units, strided convs, PReLU, instance norm by default).

    The defaults are the issue #10 anchor, ``channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2),
    num_res_units=2``; the other keywords are MONAI's, with MONAI's defaults. ``pad_multiple`` is the product
    of the strides (16): MONAI's U-Net needs sides divisible by it, or its skip concatenations fail.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        channels: Sequence[int] = tuple(ANCHOR_UNET["channels"]),
        strides: Sequence[int] = tuple(ANCHOR_UNET["strides"]),
        num_res_units: int = 2,
        kernel_size: int = 3,
        up_kernel_size: int = 3,
        act: str | tuple = "PRELU",
        norm: str | tuple = "INSTANCE",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        from monai.networks.nets import UNet

        super().__init__()
        channels, strides = _int_list("channels", channels), _int_list("strides", strides)
        if len(channels) < 2 or len(strides) != len(channels) - 1:
            raise UserError(
                "expected len(strides) == len(channels) - 1 >= 1, got "
                f"channels={channels} strides={strides}; give one stride per down step "
                "(e.g. channels=[32, 64, 128], strides=[2, 2])"
            )
        self.in_channels, self.num_classes = in_channels, num_classes
        self.channels, self.strides = channels, strides
        self.net = _build(
            "UNet",
            lambda: UNet(
                spatial_dims=2,
                in_channels=in_channels,
                out_channels=num_classes,
                channels=channels,
                strides=strides,
                kernel_size=kernel_size,
                up_kernel_size=up_kernel_size,
                num_res_units=num_res_units,
                act=act,
                norm=norm,
                dropout=dropout,
                bias=bias,
            ),
        )
        self.pad_multiple = math.prod(strides)

    @property
    def encoder(self) -> MonaiUNetEncoder:
        """A view of the down path (``net``'s own modules, not a copy; see :class:`MonaiUNetEncoder`)."""
        return _view(MonaiUNetEncoder(self.net, self.channels, self.strides), self)

    def forward_padded(self, x: Tensor) -> Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------------------------------
# MONAI SwinUNETR
# ----------------------------------------------------------------------------------------------------


class SwinUNETREncoder(Encoder):
    """The encoder side of a MONAI ``SwinUNETR``: what its forward computes before the first decoder block.

    Maps, with ``F = feature_size``: ``encoder1(x)`` (F, stride 1), ``encoder2..4`` on the Swin stages 0-2
    (F, 2F, 4F at strides 2, 4, 8), the Swin stage-3 output (8F, stride 16, MONAI's skip without a conv block)
    and ``encoder10`` on the stage-4 output (16F, stride 32). Like MONAI's network it needs more than one
    stride-32 pixel (an input larger than 32 x 32, sides multiples of 32) for its instance norms.
    """

    def __init__(self, net: nn.Module, feature_size: int) -> None:
        super().__init__()
        # only the encoder side of `net` (its decoder blocks stay out of encoder.parameters())
        self.swinViT = net.swinViT
        self.convs = nn.ModuleList([net.encoder1, net.encoder2, net.encoder3, net.encoder4, net.encoder10])
        self.normalize = net.normalize
        c = feature_size
        self.out_channels = [c, c, 2 * c, 4 * c, 8 * c, 16 * c]
        self.strides = [1, 2, 4, 8, 16, 32]
        self.pad_multiple = 32

    def forward(self, x: Tensor) -> list[Tensor]:
        hidden = self.swinViT(x, self.normalize)
        e1, e2, e3, e4, e10 = self.convs
        return [e1(x), e2(hidden[0]), e3(hidden[1]), e4(hidden[2]), hidden[3], e10(hidden[4])]


class MonaiSwinUNETR(SegmentationModel):
    """MONAI's ``SwinUNETR(spatial_dims=2, ...)`` (Hatamizadeh et al. 2022): a Swin transformer encoder with a
    convolutional U-Net decoder, MONAI's defaults (``feature_size=24``, depths 2/2/2/2, heads 3/6/12/24,
    window 7, instance norm).

    ``pad_multiple`` is 32: the patch embedding (2x2) and four patch mergings halve the side five times, and
    MONAI rejects sides that are not multiples of 32. ``patch_size`` is not a keyword: MONAI's decoder
    upsamples by 2 at every step, so only 2 builds a network that runs. It needs ``einops`` at every forward
    (MONAI rearranges the stage outputs with it), checked at construction. Weight decay spares the Swin
    relative position bias tables as it spares the position embeddings of our models (the Swin recipe).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        feature_size: int = 24,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        norm_name: str | tuple = "instance",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        dropout_path_rate: float = 0.0,
        normalize: bool = True,
        use_checkpoint: bool = False,
        use_v2: bool = False,
    ) -> None:
        from monai.networks.nets import SwinUNETR

        super().__init__()
        if importlib.util.find_spec("einops") is None:
            raise UserError(
                "expected the einops package (MONAI's SwinUNETR rearranges tensors with it at every "
                "forward), got none installed; install it with `pip install einops` or "
                "`pip install 'medurwkv[swin]'`"
            )
        depths, num_heads = _int_list("depths", depths), _int_list("num_heads", num_heads)
        if len(depths) != 4 or len(num_heads) != 4:
            raise UserError(
                f"expected 4 Swin stages (depths and num_heads of length 4), got depths={depths} "
                f"num_heads={num_heads}; the decoder of MONAI's SwinUNETR has exactly 4 stages to meet"
            )
        self.in_channels, self.num_classes = in_channels, num_classes
        self.feature_size = feature_size
        self.pad_multiple = 32

        def build() -> nn.Module:
            return SwinUNETR(
                in_channels=in_channels,
                out_channels=num_classes,
                patch_size=2,
                depths=depths,
                num_heads=num_heads,
                window_size=window_size,
                feature_size=feature_size,
                norm_name=norm_name,
                drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                dropout_path_rate=dropout_path_rate,
                normalize=normalize,
                use_checkpoint=use_checkpoint,
                spatial_dims=2,
                use_v2=use_v2,
            )

        if torch.empty(()).device.type == "meta":
            # MONAI's SwinTransformer calls .item() on a linspace while it builds (drop-path rates), which
            # meta tensors cannot do; `medurwkv models` counts parameters on the meta device. Build on the CPU
            # (a few MB) and move the result to meta.
            with torch.device("cpu"):
                net = _build("SwinUNETR", build)
            self.net = net.to("meta")
        else:
            self.net = _build("SwinUNETR", build)

    @property
    def encoder(self) -> SwinUNETREncoder:
        """A view of the encoder side (``net``'s own modules, not a copy; see :class:`SwinUNETREncoder`)."""
        return _view(SwinUNETREncoder(self.net, self.feature_size), self)

    def forward_padded(self, x: Tensor) -> Tensor:
        """MONAI's forward; a 32 x 32 input is first zero-padded to 64 x 32 (then cropped back).

        At 32 x 32 the stride-32 bottleneck is a single pixel, where MONAI's instance norms (and batch norms
        at batch 1 in training) raise "expected more than 1 spatial element"; one more row of bottleneck
        pixels makes every input size work, as the model contract promises.
        """
        if x.shape[-2] == x.shape[-1] == self.pad_multiple:
            return self.net(F.pad(x, (0, 0, 0, self.pad_multiple)))[..., : self.pad_multiple, :]
        return self.net(x)

    def param_groups(
        self, lr: float, encoder_lr_scale: float = 1.0, weight_decay: float = 1e-4
    ) -> list[dict]:
        """As the base class (one decay / no-decay pair at ``lr``), with the relative position bias tables
        (2-D, so decayed by the ndim rule) moved to no-decay: they are position embeddings."""
        rpb = [p for n, p in self.named_parameters() if n.endswith("relative_position_bias_table")]
        ids = {id(p) for p in rpb}
        rest = [(n, p) for n, p in self.named_parameters() if id(p) not in ids]
        groups = split_decay_params(rest, lr, weight_decay)
        groups.append({"params": rpb, "lr": lr, "weight_decay": 0.0, "name": "no_decay_rel_pos_bias"})
        return [g for g in groups if g["params"]]


register_model(
    "monai_unet",
    MonaiUNet,
    default_kwargs=dict(in_channels=3, num_classes=2, **ANCHOR_UNET),
    description="MONAI's 2D UNet (residual units, channels 32-512, 4 stride-2 levels), baseline of issue #10",
)
register_model(
    "swin_unetr",
    MonaiSwinUNETR,
    default_kwargs=dict(in_channels=3, num_classes=2, feature_size=24),
    description="MONAI's 2D SwinUNETR (Swin transformer encoder, feature size 24, CNN decoder), baseline",
)
