"""Classic CNN U-Net baseline (Ronneberger et al., 2015) with same-size ("padded") convolutions.

Four down steps (double 3x3 conv + BN + ReLU, then 2x2 max-pool), a double-conv bottom, four up steps
(2x2 transposed conv, concat the skip, double conv) and a 1x1 head. With ``base_channels=64`` it has ~31 M
parameters, the size of the original network. Inputs of any size are zero-padded (bottom/right) to a multiple
of 16 and the logits are cropped back (``SegmentationModel.forward``), so
``(B, in_channels, H, W) -> (B, num_classes, H, W)``. It has no pretrained release; ``create_model("unet",
pretrained=PATH)`` loads your own weights (``docs/models.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Encoder, SegmentationModel
from .registry import register_model

__all__ = ["UNet", "UNetEncoder", "DoubleConv"]


class DoubleConv(nn.Sequential):
    """(3x3 conv, BatchNorm, ReLU) x 2; the convs have no bias because BatchNorm follows them."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class UNetEncoder(Encoder):
    """The contracting path: ``len(widths)`` double convs, each followed by a 2x2 max-pool except the last.

    ``forward`` returns the skip maps (before pooling), ``widths[i]`` channels at stride ``2**i``. Its blocks are
    children ``"0"``, ``"1"``, ... so that, registered as the U-Net's ``down``, the keys stay ``down.{i}.*``.
    """

    def __init__(self, in_channels: int, widths: list[int]) -> None:
        super().__init__()
        prev = in_channels
        for i, w in enumerate(widths):
            self.add_module(str(i), DoubleConv(prev, w))
            prev = w
        self.out_channels = list(widths)
        self.strides = [2**i for i in range(len(widths))]
        self.pad_multiple = 2 ** len(widths)  # the U-Net's bottom pools once more

    def forward(self, x: Tensor) -> list[Tensor]:
        skips: list[Tensor] = []
        for i, block in enumerate(self.children()):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return skips  # (B, widths[i], H / 2**i, W / 2**i)


class UNet(SegmentationModel):
    """U-Net with ``depth`` pooling steps; channels ``base_channels * 2**i`` at level ``i``.

    ``encoder`` is the contracting path (:class:`UNetEncoder`, registered as ``down``); the bottom, the up path
    and the head form the decoder side. It has no pretrained part: ``pretrained_target()`` is None and
    ``freeze_encoder()`` is a no-op.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        base_channels: int = 64,
        depth: int = 4,
    ) -> None:
        super().__init__()
        if base_channels < 1 or depth < 1:
            raise ValueError(f"expected base_channels >= 1 and depth >= 1, got {base_channels}, {depth}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.pad_multiple = 2**depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = UNetEncoder(in_channels, widths[:-1])
        self.bottom = DoubleConv(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2))
            self.up_conv.append(DoubleConv(2 * widths[i - 1], widths[i - 1]))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    @property
    def encoder(self) -> UNetEncoder:  # registered as `down`: checkpoints keep their down.{i}.* keys
        return self.down

    def forward_padded(self, x: Tensor) -> Tensor:
        """``(B, in_channels, Hp, Wp)``, Hp and Wp multiples of ``2**depth`` -> ``(B, num_classes, Hp, Wp)``."""
        skips = self.down(x)
        x = self.bottom(F.max_pool2d(skips[-1], 2))
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


register_model(
    "unet",
    UNet,
    default_kwargs=dict(in_channels=3, num_classes=2, base_channels=64, depth=4),
    description="classic CNN U-Net baseline (Ronneberger et al. 2015, padded convs, BN), trained from scratch",
)
