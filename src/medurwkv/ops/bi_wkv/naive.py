"""O(T²) reference of the Bi-WKV kernel formula (``docs/vrwkv.md``, "Bi-WKV kernel arithmetic").

Every output token sums over every key token with the exact kernel weights written out term by term, so this
module is the readable definition that the O(T) paths (:mod:`.chunked`, :mod:`.scan`) are tested against.
Differentiable by autograd; memory is bounded by blocking over query rows and channels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bi_wkv_naive"]

# Elements of each (B, rows, T, C_block) temporary (bounds the reference's memory).
_NAIVE_BLOCK_ELEMS = 1 << 18


def _chunk_len(T: int, token_split: int | None) -> int:
    """Kernel chunk length Tc (1 for the ideal form)."""
    return 1 if token_split is None else max(1, math.ceil(T / token_split))


def bi_wkv_naive(w: Tensor, u: Tensor, k: Tensor, v: Tensor, token_split: int | None, eps: float) -> Tensor:
    """O(T²) reference of the kernel formula, blocked over query rows and channels; differentiable by autograd.

    Inputs must already share one floating dtype. ``no_t`` is detached (held constant in the backward), as in
    the golden gradients; this is exact for ``eps = 0``.
    """
    B, T, C = k.shape
    tc = _chunk_len(T, token_split)
    # every temporary is (B, rows, T, channels): bound it by blocking rows first, then channels
    rb = max(1, min(T, _NAIVE_BLOCK_ELEMS // max(1, B * T)))
    cb = max(1, min(C, _NAIVE_BLOCK_ELEMS // max(1, B * rb * T)))
    rows = [_naive_rows(w, u, k, v, t0, min(T, t0 + rb), tc, eps, cb) for t0 in range(0, T, rb)]
    return torch.cat(rows, dim=1) if len(rows) > 1 else rows[0]


def _naive_rows(w, u, k, v, t0: int, t1: int, tc: int, eps: float, cb: int) -> Tensor:
    """Rows t0 <= t < t1 of the naive reference: (B, t1 - t0, C)."""
    T, C = k.shape[1], k.shape[2]
    dev, dt = k.device, k.dtype
    t = torch.arange(t0, t1, device=dev)[:, None]  # (R, 1) query index
    i = torch.arange(T, device=dev)[None, :]  # (1, T) key index
    s = (t // tc) * tc  # (R, 1) chunk start of t
    d = (t - i).to(dt)  # (R, T) signed distance
    diag = i == t
    ghost = (i > s) & (i <= t)  # the kernel's in-chunk correction terms
    in_chunk_upto_t = (i >= s) & (i <= t)
    # Exponent multiplier of w in the main term: -|t-i| except for earlier tokens of the same chunk (-(|t-i|-1)).
    m_main = torch.where(i > t, d, torch.where(i < s, -d, -(d - 1)))  # (R, T)
    neg_inf = float("-inf")
    outs = []
    for c0 in range(0, C, cb):
        c1 = min(C, c0 + cb)
        wc = w[c0:c1]  # (Cb,)
        ki = k[:, None, :, c0:c1]  # (B, 1, T, Cb): indexed by key position i
        vi = v[:, None, :, c0:c1]
        kt, vt = k[:, t0:t1, c0:c1], v[:, t0:t1, c0:c1]  # (B, R, Cb): the query tokens themselves
        e_main = (ki + wc * m_main[..., None]).masked_fill(diag[..., None], neg_inf)  # (B, R, T, Cb)
        e_p = ki + wc * d[..., None]  # k_i + w (t - i)
        e_rp = e_p.masked_fill(~ghost[..., None], neg_inf)
        e_rm = (ki + wc * (d + 1)[..., None]).masked_fill(~ghost[..., None], neg_inf)
        e_self = u[c0:c1] + kt  # (B, R, Cb)
        no = torch.stack(
            [
                e_main.amax(2),
                e_p.masked_fill(~in_chunk_upto_t[..., None], neg_inf).amax(2),
                e_rm.amax(2),
                e_self,
            ]
        ).amax(0)  # (B, R, Cb)
        no = no.detach()
        nb = no[:, :, None, :]
        coef = torch.exp(e_main - nb) + torch.exp(e_rp - nb) - torch.exp(e_rm - nb)  # (B, R, T, Cb)
        p_self = torch.exp(e_self - no)  # (B, R, Cb)
        num = (coef * vi).sum(2) + p_self * vt
        den = coef.sum(2) + p_self + eps
        outs.append(num / den)
    return torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
