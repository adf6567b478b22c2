"""Error measures and random inputs shared by tests/ops/test_bi_wkv*.py."""

from __future__ import annotations

import torch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (per tensor, as the golden README defines it)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max(max|b|, 1): relative for O(1) and larger tensors, absolute for (near-)zero ones."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1.0)).item()


def leaf(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A fresh leaf copy of x in ``dtype`` that requires grad (never aliases x)."""
    return x.detach().to(dtype).clone().requires_grad_()


def random_inputs(B, T, C, *, wt, krange=6.0, seed=0, dtype=torch.float64):
    """Random (w, u, k, v) with w·T in [-wt, wt] and keys spread over ``krange``."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(C, generator=g, dtype=torch.float64) * 2 - 1) * wt / T
    u = torch.randn(C, generator=g, dtype=torch.float64) / T
    k = (torch.rand(B, T, C, generator=g, dtype=torch.float64) - 0.5) * krange
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (w, u, k, v)]
