"""Fused Triton Bi-WKV: forward and backward in one kernel launch each, the arithmetic of :mod:`.chunked`.

The formula is the kernel formula of ``docs/vrwkv.md`` ("Bi-WKV kernel arithmetic"): chunk length
``Tc = ceil(T / token_split)`` (``Tc = 1`` for the ideal form, ``token_split=None``), the in-chunk "ghost" terms,
and ``den + eps·e^{no_t}`` with the kernel's stabiliser ``no_t`` (section 2.3), held constant in the backward.
Written as in :mod:`.chunked`, with x = e^{k - m} v (numerator) or e^{k - m} (denominator) and m the per-(b, c)
maximum of k over T (so any key range is safe)::

    Lin(x)_t = e^{u} x_t + Σ_{s<=i<t} e^{-w(t-1-i)} x_i + Σ_{t<i<s+Tc} e^{-w(i-t)} x_i
             + (1 - e^{w}) Σ_{s<i<=t} e^{w(t-i)} x_i + e^{-w j} P_s + e^{-w(Tc-j)} F_s
    y_t = Lin(x_num)_t / (Lin(x_den)_t + eps·e^{no_t - m})

(s the chunk start of t, j = t - s, P_s / F_s the sums over all earlier / later chunks). Every sum is the
recurrence h_t = e^{a} h_{t-1} + x_t of the chunked path, multiplied by e^{±w} per step (never by e^{w·t}), so
the stability limits are the chunked path's (|w|·T up to about 60 in float32).

Kernel layout
-------------
One kernel, ``_bi_wkv_kernel``; each program owns ``BLOCK`` *lanes*, a lane being one (b, c) pair (lane
n = b·C + c, so the lanes of a program are consecutive channels, coalesced loads, and C need not be a multiple
of anything: the tail is masked). Numerator and denominator travel together as the two columns of (BLOCK, 2)
register tensors (``tl.join`` / ``tl.split``). Inside a program, sequential loops over T carry the recurrences in registers, in float32
whatever the input dtype:

Forward (one launch, grid ceil(B·C / BLOCK)):

1. loop over t: m = max_t k_t (the key shift);
2. loop t = 0 … T-1: in-chunk past sum, ghost sum and the earlier-chunks sum P (folded at each chunk start with
   step e^{-w·Tc}, as the chunked path's chunk-level scan), and the forward half of ``no_t``; writes the partial
   sums to the scratch ``part`` (2, B, T, C) and the partial stabiliser to ``nopart`` (B, T, C; eps > 0 only);
3. loop t = T-1 … 0: in-chunk future sum and the later-chunks sum F, the backward half of ``no_t``;
   y_t = num / den is written in v's dtype.

Backward (one launch, same grid, plus two tiny ``sum`` over B for dw and du):

1.-3. as the forward, additionally carrying the w-tangent of every recurrence (forward-mode: w is one scalar
   per lane, so d Lin(x)/dw is a second set of recurrences, written to ``tang`` (2, B, T, C) in loop 2); loop 3
   forms gN = gy / den, gD = -gN·y, accumulates dw = Σ_t <(gN, gD), d(num, den)/dw> and
   du = e^{u} Σ_t <(gN, gD), x>, and runs the reverse-direction half of the adjoint Lin^T (in-chunk past sum
   transposed, ghost sum transposed, earlier-chunks sum transposed); it overwrites ``part`` with that partial
   adjoint and ``tang`` with (gN, gD);
4. loop t = 0 … T-1: the forward-direction half of Lin^T (in-chunk future sum and later-chunks sum transposed),
   then dv = e^{k-m} gx_num and dk = e^{k-m} (v·gx_num + gx_den).

dw and du leave the kernel per lane, (B, C), and are summed over B with torch (deterministic, no atomics).
Scratch (float32): forward 2·B·T·C (``part``), backward 4·B·T·C (``part``, ``tang``), plus B·T·C (``nopart``)
when eps > 0. Each program reads back only what it wrote itself, at the same lanes and with the same layout, so
no synchronisation between programs is needed. The backward recomputes everything from the inputs; nothing but w, u, k, v is kept.

Triton is imported lazily and the kernel is built (``triton.jit``) on first use, once per interpreter mode: with
``TRITON_INTERPRET=1`` it runs in Triton's interpreter on CPU tensors (the tests do that), otherwise it is
compiled for CUDA tensors. Importing this module never needs Triton.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["bi_wkv_triton_backward", "bi_wkv_triton_forward", "triton_available"]

# Lanes ((b, c) pairs) per program: one warp, a full coalesced row of 32 consecutive channels.
BLOCK = 32
NUM_WARPS = 1
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KERNELS: dict[bool, Any] = {}
# ``triton.language``, bound on first use (the kernel body below looks it up here, as Triton's interpreter needs)
tl: Any = None


def triton_available() -> bool:
    """True when the ``triton`` package imports (never raises)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # any failure to import (missing, broken install) means "not available"
        return False
    return True


def _interpreting() -> bool:
    import triton

    return bool(triton.knobs.runtime.interpret)


def _kernel() -> Any:
    """The jitted kernel for the current mode (compiled or interpreter), built once per mode."""
    import triton
    import triton.language as tl

    mode = _interpreting()
    if mode not in _KERNELS:
        globals()["tl"] = tl
        _KERNELS[mode] = triton.jit(_bi_wkv_kernel)
    return _KERNELS[mode]


# ----------------------------------------------------------------------------------------------------------------
# the kernel (a plain function here; ``_kernel()`` wraps it with triton.jit on first use)
# ----------------------------------------------------------------------------------------------------------------
def _bi_wkv_kernel(
    w_ptr,
    u_ptr,
    k_ptr,
    v_ptr,
    gy_ptr,
    y_ptr,
    dk_ptr,
    dv_ptr,
    dw_ptr,
    du_ptr,
    part_ptr,
    tang_ptr,
    nopart_ptr,
    T,
    C,
    NL,
    NTC,
    TC,
    eps,
    HAS_EPS: tl.constexpr,
    BACKWARD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) lanes: n = b·C + c
    mask = n < NL
    c = n % C
    base = (n // C).to(tl.int64) * T * C + c  # offset of (b, 0, c) in (B, T, C)
    col = tl.arange(0, 2)[None, :]  # (1, 2): column 0 numerator, column 1 denominator
    soff = col.to(tl.int64) * NTC  # (1, 2): offset of each half in the (2, B, T, C) scratch buffers
    mask2 = mask[:, None] & (col < 2)  # (BLOCK, 2)

    w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)  # (BLOCK,)
    u = tl.load(u_ptr + c, mask=mask, other=0.0).to(tl.float32)
    zero2 = tl.full([BLOCK, 2], 0.0, tl.float32)
    w2 = w[:, None] + zero2  # (BLOCK, 2): per-lane constants, broadcast once (not at every step)
    emw = tl.exp(-w2)
    ew = tl.exp(w2)
    eu = tl.exp(u)[:, None] + zero2
    tcf = TC * 1.0
    etc = tl.exp(-w2 * tcf)  # chunk-level step e^{-w·Tc}
    # ghost factor 1 - e^{w} = -expm1(w): Taylor series for small |w| (cancellation), exp otherwise
    em1 = w2 * (
        1.0 + w2 * (0.5 + w2 * (1.0 / 6 + w2 * (1.0 / 24 + w2 * (1.0 / 120 + w2 * (1.0 / 720 + w2 / 5040)))))
    )
    ghost = -tl.where(tl.abs(w2) < 0.25, em1, ew - 1.0)
    wpos = tl.maximum(w, 0.0)
    ninf = tl.full([BLOCK], float("-inf"), tl.float32)

    # ---- loop 1: key shift m (BLOCK,)
    m = ninf
    for t in range(0, T):
        kt = tl.load(k_ptr + base + t * C, mask=mask, other=0.0).to(tl.float32)
        m = tl.maximum(m, kt)

    # ---- loop 2: t ascending. hq: in-chunk past sum (inclusive), hg: ghost sum, pp: earlier chunks (at s);
    # dq, dg, dp: their w-tangents (backward only). Stabiliser (q_i = k_i - w i, p_i = k_i + w i): qin =
    # max_{s<i<=t} q_i, qs = q_s, pin = max_{s<=i<=t} p_i, pearl = max_{i<s} p_i.
    hq = zero2
    hg = zero2
    pp = zero2
    dq = zero2
    dg = zero2
    dp = zero2
    qin = ninf
    qs = ninf
    pin = ninf
    pearl = ninf
    for t in range(0, T):
        o = base + t * C  # (BLOCK,)
        o2 = o[:, None] + soff  # (BLOCK, 2)
        kt = tl.load(k_ptr + o, mask=mask, other=0.0).to(tl.float32)
        vt = tl.load(v_ptr + o, mask=mask, other=0.0).to(tl.float32)
        xd = tl.exp(kt - m)
        x = tl.join(xd * vt, xd)  # (BLOCK, 2): numerator and denominator inputs  # (2, BLOCK)
        j = t % TC
        jf = j * 1.0
        start = j == 0
        # at a chunk start, fold the finished chunk into the earlier-chunks sum (chunk total e^{-w} hq_last)
        if BACKWARD:
            dp = tl.where(start, etc * (dp - tcf * pp) + emw * (dq - hq), dp)
        pp = tl.where(start, etc * pp + emw * hq, pp)
        past = tl.where(start, 0.0, hq)  # Σ_{s<=i<t} e^{-w(t-1-i)} x_i
        if BACKWARD:
            dpast = tl.where(start, 0.0, dq)
            dq = tl.where(start, 0.0, emw * (dq - hq))
            dg = tl.where(start, 0.0, ew * (dg + hg))
        hq = tl.where(start, x, emw * hq + x)
        hg = tl.where(start, 0.0, ew * hg + x)
        epj = tl.exp(-w2 * jf)
        tl.store(part_ptr + o2, eu * x + past + ghost * hg + epj * pp, mask=mask2)
        if BACKWARD:
            dtot = dpast - ew * hg + ghost * dg + epj * (dp - jf * pp)
            tl.store(tang_ptr + o2, dtot, mask=mask2)
        if HAS_EPS:
            wt = w * (t * 1.0)
            q = kt - wt
            pearl = tl.where(start, tl.maximum(pearl, pin), pearl)
            pin = tl.where(start, ninf, pin)
            qin = tl.where(start, ninf, tl.maximum(qin, q))
            qs = tl.where(start, q, qs)
            plus = tl.maximum(qin + wpos, qs)
            minus = tl.maximum(pin + w, pearl)
            pin = tl.maximum(pin, kt + wt)
            nf = tl.maximum(tl.maximum(plus + wt, minus - wt), u + kt)
            tl.store(nopart_ptr + o, nf, mask=mask)

    # ---- loop 3: t descending. hr: in-chunk future sum (inclusive), ff: later chunks (at s + Tc); dr, df:
    # tangents. Backward: rq (in-chunk past sum transposed), rg (ghost transposed), gp (earlier chunks
    # transposed) run over (gN, gD).
    hr = zero2
    ff = zero2
    dr = zero2
    df = zero2
    rq = zero2
    rg = zero2
    gp = zero2
    qrev = ninf  # max_{i>t} q_i
    dw_acc = tl.full([BLOCK], 0.0, tl.float32)
    du_acc = tl.full([BLOCK], 0.0, tl.float32)
    for tt in range(0, T):
        t = T - 1 - tt
        o = base + t * C
        o2 = o[:, None] + soff  # (BLOCK, 2)
        kt = tl.load(k_ptr + o, mask=mask, other=0.0).to(tl.float32)
        vt = tl.load(v_ptr + o, mask=mask, other=0.0).to(tl.float32)
        xd = tl.exp(kt - m)
        x = tl.join(xd * vt, xd)  # (BLOCK, 2): numerator and denominator inputs
        j = t % TC
        jf = j * 1.0
        fold = (j == TC - 1) & (t < T - 1)  # last position of a chunk that has a next chunk
        if BACKWARD:
            df = tl.where(fold, etc * (df - tcf * ff) + dr, df)
            dr = tl.where(fold, 0.0, dr)
        ff = tl.where(fold, etc * ff + hr, ff)
        hr = tl.where(fold, 0.0, hr)
        efj = tl.exp(-w2 * (tcf - jf))
        tot = tl.load(part_ptr + o2, mask=mask2, other=1.0) + emw * hr + efj * ff
        if BACKWARD:
            dtot = tl.load(tang_ptr + o2, mask=mask2, other=0.0)
            dr = emw * (dr - hr)
            dtot += dr + efj * (df - (tcf - jf) * ff)
        hr = emw * hr + x
        num, den = tl.split(tot)  # (BLOCK,) each
        if HAS_EPS:
            wt = w * (t * 1.0)
            no = tl.maximum(tl.load(nopart_ptr + o, mask=mask, other=0.0), qrev + wt)
            qrev = tl.maximum(qrev, kt - wt)
            den += eps * tl.exp(no - m)
        y = num / den
        if BACKWARD:
            gn = tl.load(gy_ptr + o, mask=mask, other=0.0).to(tl.float32) / den
            g = tl.join(gn, -gn * y)  # (BLOCK, 2): (gN, gD)
            a, b = tl.split(g * dtot)
            dw_acc += a + b
            a, b = tl.split(g * x)
            du_acc += a + b
            gp = tl.where(fold, etc * gp + rq, gp)
            rq = tl.where(fold, 0.0, rq)
            rg = tl.where(fold, 0.0, rg)
            gx = eu * g + rq + efj * gp
            rq = emw * rq + g
            rg = ew * rg + g
            gx += tl.where(j == 0, 0.0, ghost * rg)
            tl.store(part_ptr + o2, gx, mask=mask2)
            tl.store(tang_ptr + o2, g, mask=mask2)
        else:
            tl.store(y_ptr + o, y.to(y_ptr.dtype.element_ty), mask=mask)

    # ---- loop 4 (backward): t ascending. sq: in-chunk future sum transposed, gf: later chunks transposed.
    if BACKWARD:
        sq = zero2
        gf = zero2
        for t in range(0, T):
            o = base + t * C
            o2 = o[:, None] + soff
            j = t % TC
            start = j == 0
            g = tl.load(tang_ptr + o2, mask=mask2, other=0.0)
            gf = tl.where(start, etc * gf + emw * sq, gf)
            gx = tl.load(part_ptr + o2, mask=mask2, other=0.0) + tl.where(start, 0.0, emw * sq)
            gx += tl.exp(-w2 * (j * 1.0)) * gf
            sq = tl.where(start, g, emw * sq + g)
            kt = tl.load(k_ptr + o, mask=mask, other=0.0).to(tl.float32)
            vt = tl.load(v_ptr + o, mask=mask, other=0.0).to(tl.float32)
            xd = tl.exp(kt - m)
            gxn, gxd = tl.split(gx)
            tl.store(dv_ptr + o, (xd * gxn).to(dv_ptr.dtype.element_ty), mask=mask)
            tl.store(dk_ptr + o, (xd * (vt * gxn + gxd)).to(dk_ptr.dtype.element_ty), mask=mask)
        tl.store(dw_ptr + n, dw_acc, mask=mask)
        tl.store(du_ptr + n, tl.exp(u) * du_acc, mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------
def _check(w: Tensor, u: Tensor, k: Tensor, v: Tensor, gy: Tensor | None) -> None:
    if not triton_available():
        raise RuntimeError(
            "expected the triton package for impl='triton', found none; install it (pip install triton) "
            "or use impl='chunked'"
        )
    named = [("w", w), ("u", u), ("k", k), ("v", v)] + ([("gy", gy)] if gy is not None else [])
    for name, x in named:
        if x.dtype not in _DTYPES:
            raise ValueError(
                f"expected {name} in float32, float16 or bfloat16, got {x.dtype}; "
                "use impl='chunked' for float64 (the Triton kernel accumulates in float32)"
            )
    if k.ndim != 3 or v.shape != k.shape or (gy is not None and gy.shape != k.shape):
        shapes = ", ".join(f"{n}: {tuple(x.shape)}" for n, x in named)
        raise ValueError(f"expected k, v (and gy) of one shape (B, T, C), got {shapes}")
    C = k.shape[-1]
    if w.shape != (C,) or u.shape != (C,):
        raise ValueError(f"expected w and u of shape ({C},), got {tuple(w.shape)} and {tuple(u.shape)}")
    devices = {x.device for _, x in named}
    if len(devices) != 1:
        raise ValueError(f"expected all inputs on one device, got {sorted(str(d) for d in devices)}")
    if k.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"expected CUDA tensors for the compiled Triton kernel, got {k.device}; use impl='chunked' on "
            "the CPU (or set TRITON_INTERPRET=1 before the first call to run Triton's interpreter)"
        )


def _chunk_len(T: int, token_split: int | None) -> int:
    return 1 if token_split is None else max(1, math.ceil(T / token_split))


def _launch(w, u, k, v, token_split, eps, gy, block, num_warps):
    """Runs the kernel; returns y (forward) or (dw, du, dk, dv) (backward, ``gy`` given)."""
    _check(w, u, k, v, gy)
    backward = gy is not None
    B, T, C = k.shape
    w, u, k, v = (x.contiguous() for x in (w, u, k, v))
    gy = gy.contiguous() if backward else None
    y = torch.empty_like(v) if not backward else None
    if backward:
        dk, dv = torch.empty_like(k), torch.empty_like(v)
    if k.numel() == 0:
        if not backward:
            return y
        return torch.zeros_like(w), torch.zeros_like(u), dk, dv
    nl, ntc = B * C, B * T * C
    f32 = dict(dtype=torch.float32, device=k.device)
    part = torch.empty(2 * ntc, **f32)  # (2, B, T, C): partial sums, then (backward) the partial adjoint
    tang = torch.empty(2 * ntc, **f32) if backward else part  # (2, B, T, C): tangents, then (gN, gD)
    nopart = torch.empty(ntc, **f32) if eps else part  # (B, T, C): forward half of the stabiliser
    dwp = torch.empty(nl, **f32) if backward else part  # (B·C,) per-lane dw, du
    dup = torch.empty(nl, **f32) if backward else part
    out = y if not backward else dk
    grid = (-(-nl // block),)
    # Triton launches on the current CUDA device: make it the inputs' one (a no-op for CPU / the interpreter)
    with torch.cuda.device(k.device) if k.device.type == "cuda" else contextlib.nullcontext():
        _kernel()[grid](
            w, u, k, v,
            gy if backward else v,
            out, dk if backward else out, dv if backward else out,
            dwp, dup, part, tang, nopart,
            T, C, nl, ntc, _chunk_len(T, token_split), float(eps),
            HAS_EPS=bool(eps), BACKWARD=backward, BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    if not backward:
        return y
    dw = dwp.view(B, C).sum(0).to(w.dtype)
    du = dup.view(B, C).sum(0).to(u.dtype)
    return dw, du, dk, dv


def bi_wkv_triton_forward(
    w: Tensor,
    u: Tensor,
    k: Tensor,
    v: Tensor,
    token_split: int | None,
    eps: float,
    *,
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
) -> Tensor:
    """Bi-WKV forward (one kernel launch): w, u (C,); k, v (B, T, C) on one device; returns y (B, T, C) in v's dtype.

    Same arithmetic as :func:`medurwkv.ops.bi_wkv.chunked.bi_wkv_chunked` (``docs/vrwkv.md``), float32 inside.
    ``block`` (lanes per program, a power of two) and ``num_warps`` change only the speed.
    """
    return _launch(w, u, k, v, token_split, eps, None, block, num_warps)


def bi_wkv_triton_backward(
    w: Tensor,
    u: Tensor,
    k: Tensor,
    v: Tensor,
    token_split: int | None,
    eps: float,
    gy: Tensor,
    *,
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dw, du, dk, dv) of <gy, y> (one kernel launch, recomputing the forward from the inputs).

    ``no_t`` is held constant (as in :mod:`.chunked` and the golden gradients); each gradient is in the dtype of
    its input.
    """
    return _launch(w, u, k, v, token_split, eps, gy, block, num_warps)
