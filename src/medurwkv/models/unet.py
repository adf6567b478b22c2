"""Classic CNN U-Net baseline (Ronneberger et al., 2015) with same-size ("padded") convolutions.

Four down steps (double 3x3 conv + BN + ReLU, then 2x2 max-pool), a double-conv bottom, four up steps
(2x2 transposed conv, concat the skip, double conv) and a 1x1 head. With ``base_channels=64`` it has ~31 M
parameters, the size of the original network. Inputs of any size are zero-padded (bottom/right) to a multiple
of 16 and the logits are cropped back, so ``(B, in_channels, H, W) -> (B, num_classes, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import check_input
from .modules import split_decay_params
from .registry import register_model

__all__ = ["UNet", "DoubleConv"]


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


class UNet(nn.Module):
    """U-Net with ``depth`` pooling steps; channels ``base_channels * 2**i`` at level ``i``."""

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
        self.down = nn.ModuleList()
        prev = in_channels
        for w in widths[:-1]:
            self.down.append(DoubleConv(prev, w))
            prev = w
        self.bottom = DoubleConv(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2))
            self.up_conv.append(DoubleConv(2 * widths[i - 1], widths[i - 1]))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_channels)
        H, W = x.shape[-2:]
        m = self.pad_multiple
        x = F.pad(x, (0, (-W) % m, 0, (-H) % m))  # zero pad bottom/right -> multiples of 2**depth
        skips: list[Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)[..., :H, :W]  # (B, num_classes, H, W)

    # The baseline has no pretrained encoder: these keep the model API uniform with Med-URWKV.
    def pretrained_target(self) -> nn.Module:
        raise ValueError(
            "expected a model with a pretrained encoder, got 'unet' which has no official release"
        )

    def freeze_encoder(self, frozen: bool = True) -> None:
        """No-op: the U-Net is trained from scratch and has no pretrained encoder to freeze."""

    def param_groups(
        self, lr: float, encoder_lr_scale: float = 1.0, weight_decay: float = 1e-4
    ) -> list[dict]:
        """AdamW groups: decay on conv weights, none on BatchNorm parameters and biases."""
        return split_decay_params(self.named_parameters(), lr, weight_decay)


register_model(
    "unet",
    UNet,
    default_kwargs=dict(in_channels=3, num_classes=2, base_channels=64, depth=4),
    description="classic CNN U-Net baseline (Ronneberger et al. 2015, padded convs, BN), trained from scratch",
)
