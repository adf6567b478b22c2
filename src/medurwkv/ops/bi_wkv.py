"""Bi-WKV: the bidirectional WKV operator of Vision-RWKV (v1), exactly as the official CUDA kernel computes it.

See ``shared/spec/vrwkv.md`` §3. Channels are independent. For one channel with decay ``w`` and bonus ``u``
(both already divided by the token count T) and kernel chunk size ``Tc = ceil(T / token_split)``, with
``s = floor(t / Tc) * Tc`` the start of the chunk of token ``t``::

    num_t = Σ_{i<s}     e^{k_i - w(t-i)}   v_i          # earlier chunks
          + Σ_{s≤i<t}   e^{k_i - w(t-i-1)} v_i          # same chunk, before t
          + Σ_{i>t}     e^{k_i - w(i-t)}   v_i          # after t
          + Σ_{s<i≤t}  (e^{k_i + w(t-i)} - e^{k_i + w(t-i+1)}) v_i   # "ghost" terms of the kernel
          + e^{u + k_t} v_t
    den_t = the same with v ≡ 1
    y_t   = num_t / (den_t + eps · e^{no_t})

where ``no_t`` is the kernel's running-max stabiliser (§3.2). ``token_split=None`` gives the artefact-free
"ideal" form (one token per chunk).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ._wkv_chunked import bi_wkv_chunked
from ._wkv_scan import bi_wkv_scan

__all__ = ["bi_wkv", "bi_wkv_naive"]

_IMPLS = ("auto", "naive", "chunked", "scan")

# Naive reference: elements of each (B, rows, T, C_block) temporary (bounds its memory).
_NAIVE_BLOCK_ELEMS = 1 << 18


def _validate(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, token_split: int | None, eps: float, impl: str
) -> None:
    for name, x in (("w", w), ("u", u), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise ValueError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(
                f"expected {name} to have a floating-point dtype, got {x.dtype}; cast it with .float()"
            )
    if k.ndim != 3:
        raise ValueError(
            f"expected k of shape (B, T, C), got shape {tuple(k.shape)}; flatten the token grid to (B, H*W, C)"
        )
    # Under torch.jit.trace (legacy ONNX export) every size is a traced tensor and comparing sizes would only
    # emit TracerWarnings (the check already ran eagerly when the model was tested): check the ranks only.
    tracing = torch.jit.is_tracing()
    if (v.ndim != 3) if tracing else (v.shape != k.shape):
        raise ValueError(f"expected v of the same shape as k {tuple(k.shape)}, got {tuple(v.shape)}")
    C = k.shape[-1]
    for name, x in (("w", w), ("u", u)):
        if x.ndim != 1 or (not tracing and x.shape[0] != C):
            raise ValueError(
                f"expected {name} of shape (C,) = ({C},) matching k.shape[-1], got shape {tuple(x.shape)}; "
                "pass the per-channel parameter divided by T as a 1-D tensor"
            )
    devices = {x.device for x in (w, u, k, v)}
    if len(devices) != 1:
        raise ValueError(
            f"expected w, u, k, v on one device, got w:{w.device} u:{u.device} k:{k.device} v:{v.device}; "
            "move them with .to(device)"
        )
    if impl not in _IMPLS:
        raise ValueError(f"expected impl in {_IMPLS}, got {impl!r}")
    if token_split is not None and (
        isinstance(token_split, bool) or not isinstance(token_split, numbers.Integral) or token_split < 1
    ):
        raise ValueError(f"expected token_split to be None or an int >= 1, got {token_split!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"expected eps to be a finite float >= 0, got {eps!r}")


def _is_exporting() -> bool:
    """True while torch.onnx / torch.export / torch.jit.trace records a graph (``impl="auto"`` then picks "scan")."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def _chunk_len(T: int, token_split: int | None) -> int:
    """Kernel chunk length Tc (1 for the ideal form)."""
    return 1 if token_split is None else max(1, math.ceil(T / token_split))


def bi_wkv_naive(w: Tensor, u: Tensor, k: Tensor, v: Tensor, token_split: int | None, eps: float) -> Tensor:
    """O(T²) reference of spec §3.4, blocked over query rows and channels; differentiable by autograd.

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


def bi_wkv(
    w: Tensor,
    u: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    token_split: int | None = 32,
    eps: float = 1e-6,
    impl: str = "auto",
) -> Tensor:
    """Bidirectional WKV of Vision-RWKV, matching the official chunked CUDA kernel (spec §3.2).

    Args:
        w: (C,) per-channel decay, already divided by T (``spatial_decay / T``); may be negative.
        u: (C,) per-channel bonus, already divided by T (``spatial_first / T``).
        k: (B, T, C) keys.
        v: (B, T, C) values.
        token_split: the kernel's chunk count (32 for the ImageNet checkpoints, 16 for the ADE20K adapter
            checkpoints); ``None`` computes the artefact-free "ideal" form (one token per chunk).
        eps: the kernel's EPS, added to the stabilised denominator (``den + eps·e^{no_t}``); 1e-6 or 0.
        impl: ``"chunked"`` (fast O(T) path with a hand-written backward; uses a custom autograd Function and
            Python loops sized by T, so it cannot be exported), ``"scan"`` (O(T) export-friendly path: plain
            differentiable tensor ops, shapes derived symbolically from ``k.shape``, so one ONNX graph serves
            every T; slower than "chunked"), ``"naive"`` (O(T²) reference, differentiated by autograd) or
            ``"auto"``: ``"scan"`` while a graph is being recorded (``torch.onnx.is_in_onnx_export()``,
            ``torch.compiler.is_exporting()`` or ``torch.jit.is_tracing()``), else ``"chunked"``.

    Returns:
        (B, T, C) tensor in the dtype of ``v``. The computation runs in float32 (float64 if any input is
        float64); half/bfloat16 inputs are upcast and the result is cast back.

    Gradients: first order, for all four inputs. The kernel's stabiliser ``no_t`` is held constant, exactly as
    in the reference gradients (this is exact for ``eps = 0``).

    Numerical stability (all implementations): keys are shifted by their per-(b, c) maximum, so any key range
    is safe. The chunked path multiplies by e^{±w} per step like the kernel, so its intermediate sums stay
    within e^{|w|·T} of the true ones: safe for |w|·T up to about 60 in float32; the scan path uses position
    factors up to e^{|w|·T} directly: safe for |w|·T up to about 40 in float32. The official init has
    |w|·T <= 5; the tests cover ±10, T up to 65 536 and key ranges > 100. With ``token_split`` < ~8 and a
    large |w|·T, the kernel formula itself is ill-conditioned: its in-chunk "ghost" terms cancel part of the
    denominator. No implementation can fix that.

    Raises:
        ValueError: on wrong shapes, non-floating dtypes, mixed devices, unknown ``impl``, ``token_split < 1``
            or a negative ``eps``.
    """
    _validate(w, u, k, v, token_split, eps, impl)
    if not torch.jit.is_tracing() and k.numel() == 0:  # (a traced numel() would only emit a TracerWarning)
        return torch.zeros_like(v)
    cdt = torch.float64 if torch.float64 in {w.dtype, u.dtype, k.dtype, v.dtype} else torch.float32
    w_, u_, k_, v_ = (x.to(cdt) for x in (w, u, k, v))
    ts = None if token_split is None else int(token_split)
    if impl == "auto":
        impl = "scan" if _is_exporting() else "chunked"
    if impl == "naive":
        y = bi_wkv_naive(w_, u_, k_, v_, ts, float(eps))
    elif impl == "scan":
        y = bi_wkv_scan(w_, u_, k_, v_, ts, float(eps))
    else:
        y = bi_wkv_chunked(w_, u_, k_, v_, ts, float(eps))
    return y.to(v.dtype)
