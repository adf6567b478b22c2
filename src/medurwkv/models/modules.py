"""Shared model pieces: optimizer parameter groups, a differentiable Haar DWT, and the Med-URWKV-dagger
modules FAWA and MSCF (``docs/models.md``: the paper publishes only their names; the internals are ours).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pywt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["split_decay_params", "NO_DECAY_NAMES", "HaarDWT", "HaarIDWT", "FAWA", "MSCF"]

# Parameter-name fragments that get no weight decay: RWKV decay/bonus/token-shift mix vectors, positional and
# level embeddings, layer scales and injector gammas. Every tensor with ndim <= 1 (norm weights, biases) is
# also excluded.
NO_DECAY_NAMES = ("pos_embed", "level_embed", "spatial_decay", "spatial_first", "spatial_mix", "gamma")


def split_decay_params(
    named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float, *, tag: str = ""
) -> list[dict]:
    """Split parameters into a decayed and a non-decayed AdamW group (empty groups are dropped).

    Frozen parameters are kept (a frozen encoder is usually unfrozen later and must already be in the optimizer;
    AdamW skips parameters whose ``.grad`` is None).
    """
    decay, no_decay = [], []
    for name, p in named_params:
        if p.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": f"{tag}decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{tag}no_decay"},
    ]
    return [g for g in groups if g["params"]]


def _haar_kernels(wavelet: str = "haar") -> tuple[Tensor, Tensor]:
    """(4, 2, 2) analysis (correlation) and synthesis (transposed-conv) kernels, sub-band order LL, LH, HL, HH.

    Built from PyWavelets' filter bank so that the sub-bands equal ``pywt.dwt2(x, wavelet, 'periodization')``'s
    (cA, (cH, cV, cD)): pywt convolves with ``dec_*`` and keeps odd samples, i.e. it correlates with the
    reversed filters at even offsets; the first kernel index runs over rows (H).
    """
    dec_lo, dec_hi, rec_lo, rec_hi = pywt.Wavelet(wavelet).filter_bank
    if len(dec_lo) != 2:
        raise ValueError(f"expected a 2-tap wavelet such as 'haar', got {wavelet!r} with {len(dec_lo)} taps")
    lo, hi = torch.tensor(dec_lo[::-1]), torch.tensor(dec_hi[::-1])
    rlo, rhi = torch.tensor(rec_lo), torch.tensor(rec_hi)
    pairs = ((0, 0), (1, 0), (0, 1), (1, 1))  # (row filter, column filter): LL, LH (cH), HL (cV), HH (cD)
    ana = torch.stack([torch.outer((lo, hi)[r], (lo, hi)[c]) for r, c in pairs])
    syn = torch.stack([torch.outer((rlo, rhi)[r], (rlo, rhi)[c]) for r, c in pairs])
    return ana.float(), syn.float()


class HaarDWT(nn.Module):
    """One-level 2D Haar DWT as a fixed depthwise stride-2 conv: (B, C, H, W) -> (B, C, 4, H/2, W/2).

    Sub-band order on dim 2: LL, LH, HL, HH (pywt's cA, cH, cV, cD). H and W must be even.
    """

    def __init__(self, wavelet: str = "haar") -> None:
        super().__init__()
        ana, _ = _haar_kernels(wavelet)
        self.register_buffer("kernel", ana[:, None], persistent=False)  # (4, 1, 2, 2)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        if H % 2 or W % 2:
            raise ValueError(f"expected even H and W for the Haar DWT, got {H}x{W}")
        weight = self.kernel.to(x.dtype).repeat(C, 1, 1, 1)  # (4C, 1, 2, 2): 4 sub-bands per input channel
        y = F.conv2d(x, weight, stride=2, groups=C)  # (B, 4C, H/2, W/2)
        return y.reshape(B, C, 4, H // 2, W // 2)


class HaarIDWT(nn.Module):
    """Inverse of :class:`HaarDWT` as a fixed depthwise stride-2 transposed conv: (B, C, 4, h, w) -> (B, C, 2h, 2w)."""

    def __init__(self, wavelet: str = "haar") -> None:
        super().__init__()
        _, syn = _haar_kernels(wavelet)
        self.register_buffer("kernel", syn[:, None], persistent=False)  # (4, 1, 2, 2)

    def forward(self, y: Tensor) -> Tensor:
        B, C, _, h, w = y.shape
        weight = self.kernel.to(y.dtype).repeat(C, 1, 1, 1)  # (4C, 1, 2, 2): 4 inputs -> 1 output per channel
        return F.conv_transpose2d(y.reshape(B, 4 * C, h, w), weight, stride=2, groups=C)


class FAWA(nn.Module):
    """Frequency-Aware Wavelet Attention (our design for Med-URWKV-dagger).

    ``x (B, C, H, W)`` -> Haar DWT -> the three high-frequency sub-bands (LH, HL, HH; 3C channels) go through
    1x1 conv -> BN -> ReLU -> 3x3 conv -> one spatial logit map ``a (B, 1, H/2, W/2)``; the high-frequency
    sub-bands are re-weighted by ``g = 2·sigmoid(a)`` (so ``g = 1`` leaves them unchanged; ``g`` in (0, 2) damps
    or sharpens edges locally), LL passes unchanged, and the inverse DWT gives back ``(B, C, H, W)``.
    """

    def __init__(self, dim: int, reduction: int = 4, wavelet: str = "haar") -> None:
        super().__init__()
        hidden = max(8, dim // reduction)
        self.dwt, self.idwt = HaarDWT(wavelet), HaarIDWT(wavelet)
        self.attn = nn.Sequential(
            nn.Conv2d(3 * dim, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        bands = self.dwt(x)  # (B, C, 4, H/2, W/2)
        high = bands[:, :, 1:]  # (B, C, 3, H/2, W/2)
        gate = 2.0 * torch.sigmoid(self.attn(high.reshape(B, 3 * C, H // 2, W // 2)))  # (B, 1, H/2, W/2)
        bands = torch.cat([bands[:, :, :1], high * gate[:, :, None]], dim=2)
        return self.idwt(bands)  # (B, C, H, W)


class MSCF(nn.Module):
    """Multi-Scale Channel Fusion (our design for Med-URWKV-dagger).

    Every level's map is average-pooled to a channel descriptor; the descriptors of all levels are concatenated
    and fused by a 2-layer MLP (ΣC -> ΣC/r -> Σ_{weighted levels} C), whose output gives per-level channel
    weights ``2·sigmoid(z)`` (1 = unchanged) applied to the first ``n_weighted`` maps (the skips). The remaining
    maps (the bottleneck input) only contribute context.
    """

    def __init__(self, dims: Sequence[int], n_weighted: int | None = None, reduction: int = 4) -> None:
        super().__init__()
        self.dims = [int(d) for d in dims]
        self.n_weighted = len(self.dims) - 1 if n_weighted is None else int(n_weighted)
        total, out = sum(self.dims), sum(self.dims[: self.n_weighted])
        hidden = max(8, total // reduction)
        self.fc1 = nn.Linear(total, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        if [f.shape[1] for f in feats] != self.dims:
            raise ValueError(f"expected maps with channels {self.dims}, got {[f.shape[1] for f in feats]}")
        desc = torch.cat([f.mean(dim=(2, 3)) for f in feats], dim=1)  # (B, ΣC)
        z = 2.0 * torch.sigmoid(self.fc2(F.relu(self.fc1(desc))))  # (B, Σ_weighted C)
        weights = torch.split(z, self.dims[: self.n_weighted], dim=1)
        out = [f * w[:, :, None, None] for f, w in zip(feats, weights)]
        return out + list(feats[self.n_weighted :])
