"""Export-friendly Bi-WKV: plain differentiable tensor ops that trace with symbolic shapes (ONNX opset 17).

Used for ONNX export and tracing (``bi_wkv(..., impl="scan")``, chosen by ``impl="auto"`` while exporting).
It computes exactly the kernel formula of ``docs/vrwkv.md``, like :mod:`.chunked`, but with no custom
``autograd.Function``, no in-place op, no Python loop or branch that depends on T or on tensor values: the token
count T, the kernel chunk length Tc, the number of chunks and every padding amount are computed from ``k.shape``
with integer arithmetic that the exporters record symbolically, so one exported graph serves every T.

Notation (one channel; ``docs/vrwkv.md``). With x_i = e^{k_i - m} v_i (numerator) or e^{k_i - m}
(denominator), m the per-(b, c) maximum of k over T, and s the kernel chunk start of token t::

    Lin(x)_t = e^{u} x_t + P_t + F_t + (e^{w} - 1) (Cb_t - G_t)
    P_t  = Σ_{i<t}      e^{-w(t-i)} x_i        # every earlier token, distance t - i
    F_t  = Σ_{i>t}      e^{-w(i-t)} x_i        # every later token, distance i - t
    Cb_t = Σ_{s<=i<t}   e^{-w(t-i)} x_i        # same chunk, before t: turns e^{-w(t-i)} into e^{-w(t-i-1)}
    G_t  = Σ_{s<i<=t}   e^{ w(t-i)} x_i        # the kernel's "ghost" terms, with weight (1 - e^{w})

and y = Lin(x_num) / (Lin(x_den) + eps·e^{no - m}). (Expanding Cb and G gives the four sums of the kernel formula.)

Layout. The sequence is padded (with x = 0, i.e. no contribution) and viewed as (rows, N, L, C): N compute
chunks of L tokens, where N is a Python constant and only L is symbolic (nested symbolic divisions such as
ceil(T / ceil(T / 32)) defeat torch.export's shape solver). With a token_split, N·g >= token_split kernel chunks
of Tc = ceil(T / token_split) tokens (g = ceil(token_split / COMPUTE_CHUNKS) per compute chunk, so g = 1 and
L = Tc for the official 16 and 32; chunks past T are all padding, as in the kernel); the ideal form
(token_split None) has no in-chunk terms, N = COMPUTE_CHUNKS and L = ceil(T / N). Inside a compute chunk P and
F come from two cumsums of x·e^{±w l} (l < L); across compute chunks they are matmuls with (C, N, N)
triangular matrices e^{-w·L·|n - n'|} (each entry exponentiated directly, distances capped at T). Cb and G
reuse the same cumsums when g = 1 (local cumsums on a (rows, N, g, Tc, C) view otherwise). The in-chunk
exclusive and reverse sums are formed by subtraction (cp - yp, tot - cf): the rounding error is about float eps
times the chunk's own terms, each of which also enters the denominator of the token with a weight within
e^{2|w|L} of the one used (|w|·L <= ~2|w|·T / token_split; exact when L = 1), so the error relative to y stays
a few eps (measured: as accurate as :mod:`.chunked` in float32, ~1e-15 in float64). e^{w} - 1 is formed from
tanh for small |w| (ONNX has no Expm1).

Stabiliser ``no_t`` (only used when eps > 0), computed exactly; with q_i = k_i - w i and p_i = k_i + w i::

    no_t = max( w t + max_{i>=s} q_i,                   # whole chunk of t and every later chunk
                w (t+1) + max_{s<i<=t} q_i,             # needed only for w > 0 (dominated by the first if w <= 0)
                -w t + max_{i<s} p_i,                   # every earlier chunk
                -w (t-1) + max_{s<=i<t} p_i,            # needed only for w < 0 ...
                u + k_t )
    ... and then max_{s<=i<t} may be widened to the whole chunk: for w < 0 its extra terms (i >= t) are below
    the first line's terms for the same i, so the maximum is unchanged.

So only chunk-level maxima (prefix/suffix over the N chunk rows via an (N, N) mask; inside a row of g kernel
chunks by doubling) and one in-chunk prefix maximum (used by the w > 0 channels) are needed. ONNX has no cummax;
prefix maxima over symbolic lengths use a fixed number ``MAX_DOUBLING`` of doubling (Hillis-Steele) steps,
max(h, h shifted by 2^j), blocked: static shifts inside sub-blocks of 16 tokens, gather-based shifts over the
sub-block maxima. This is exact for runs of up to 2^MAX_DOUBLING tokens (Tc <= 65 536 with a token_split,
T <= 32·65 536 for the ideal form); longer runs would under-estimate ``no_t``, i.e. slightly shrink the eps term.
``no_t`` and k's maximum m are detached: ``no_t`` is held constant in the backward, as in the golden gradients
(exact for eps = 0), and y does not depend on m at all.

Numerical range: every x carries the factor e^{k - m} <= 1, so any key range is safe. The position factors reach
e^{|w|·T} (cross-chunk matrices) and e^{|w|·L}; float32 overflows at e^{88}, and a local key more than ~87 - |w|·T
below m underflows, which is negligible next to the maximum's term (weight >= e^{-|w|·T}) while |w|·T <= ~40
(tested at |w|·T = ±10 and ±30; the official init has |w|·T <= 5). Cost: O(T·C) memory and time, about 15
elementwise passes over (2B, T, C), plus about 20 over (B, T, C) for the stabiliser when eps > 0: the forward
takes 1.5x (ideal form) to 3x (token_split 32, eps > 0) the time of :mod:`.chunked` on one CPU thread (its
autograd backward is about as fast as the chunked one), which is why it is only the default while exporting or
tracing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bi_wkv_scan", "COMPUTE_CHUNKS", "MAX_DOUBLING"]

# Compute chunks per sequence (bounds the (C, N, N) cross-chunk matrices and the (B, N, N, C) masked maxima).
COMPUTE_CHUNKS = 32
# Doubling steps of the in-chunk prefix maxima: exact for runs of up to 2**MAX_DOUBLING tokens.
MAX_DOUBLING = 16
_NEG_INF = float("-inf")
# Sub-block length of the blocked running max (a power of two) and its log2.
_SUB = 16
_SUB_LOG2 = 4


def _ceil_div(a, b):
    """ceil(a / b) for Python ints, SymInts (torch.export) and traced 0-d tensors (legacy ONNX exporter)."""
    return (a + (b - 1)) // b


def _cap(x: Tensor, bound) -> Tensor:
    """min(x, bound) for an int tensor x and a Python int, SymInt or traced 0-d tensor bound."""
    return torch.minimum(x, x.new_ones(()) * bound)


def _to_grid(x: Tensor, n, length, fill: float) -> Tensor:
    """(R, T, C) -> (R, n, length, C) with the n·length - T padded tail set to ``fill``.

    Padding by a gather with clamped indices keeps the padding amount symbolic (F.pad would need Python ints).
    """
    T = x.shape[1]
    idx = torch.arange(n * length, device=x.device)  # (Tp,)
    g = x.index_select(1, _cap(idx, T - 1))
    g = torch.where((idx < T)[None, :, None], g, torch.full((), fill, dtype=x.dtype, device=x.device))
    return g.reshape(x.shape[0], n, length, x.shape[2])


def _from_grid(y: Tensor, T) -> Tensor:
    """(R, n, length, C) -> (R, T, C): drops the padded tail."""
    return y.reshape(y.shape[0], y.shape[1] * y.shape[2], y.shape[3])[:, :T]


def _shift(x: Tensor, forward: bool, fill: float) -> Tensor:
    """Shift by one along dim -2 (forward: out[l] = x[l-1]; backward: out[l] = x[l+1]), ``fill`` at the free end."""
    if forward:
        return F.pad(x[..., :-1, :], (0, 0, 1, 0), value=fill)
    return F.pad(x[..., 1:, :], (0, 0, 0, 1), value=fill)


def _positions(length, like: Tensor) -> Tensor:
    """(length, 1) positions 0..length-1 in the dtype of ``like``."""
    return torch.arange(length, device=like.device).to(like.dtype)[:, None]


def _expm1(w: Tensor) -> Tensor:
    """e^{w} - 1 to full relative precision with ops every exporter has (ONNX has no Expm1)."""
    is_small = w.abs() < 0.5
    # e^w - 1 = 2 tanh(w/2) / (1 - tanh(w/2)); w is masked so that large |w| gives no inf (nor nan gradients)
    th = torch.tanh(0.5 * torch.where(is_small, w, torch.zeros_like(w)))
    return torch.where(is_small, 2.0 * th / (1.0 - th), torch.exp(w) - 1.0)


# ----------------------------------------------------------------------------------------------------------------
# linear part
# ----------------------------------------------------------------------------------------------------------------
def _cross_chunk(tot: Tensor, w: Tensor, length, T, future: bool) -> Tensor:
    """Σ over strictly earlier (or later) chunks n' of e^{-w·length·|n - n'|} tot[n'], for tot (R, N, C)."""
    n = tot.shape[1]
    a = torch.arange(n, device=tot.device)
    d = (a[None, :] - a[:, None]) if future else (a[:, None] - a[None, :])  # (N, N): n' - n or n - n'
    # Clamped at 0 (masked entries stay finite, and so do their gradients) and at T: chunks that hold real tokens
    # are less than T apart, larger distances only pair a real chunk with an all-padding one, whose e^{|w|·n·L}
    # could overflow (n·L may be far above T for small T) and give inf·0 = nan.
    dist = _cap(d.clamp(min=0) * length, T).to(tot.dtype)
    zero = torch.zeros((), dtype=tot.dtype, device=tot.device)
    mat = torch.where(d > 0, torch.exp(-w[:, None, None] * dist), zero)  # (C, N, N)
    out = torch.matmul(mat, tot.permute(2, 1, 0))  # (C, N, R)
    return out.permute(2, 1, 0)


def _lin(x: Tensor, w: Tensor, u: Tensor, T, tc, g: int | None) -> Tensor:
    """Lin(x) on the grid x (R, N, L, C) (zero in the padded tail). ``g`` kernel chunks of ``tc`` per compute chunk
    (L = g·tc), or ``g`` None for the ideal form."""
    R, n, L, C = x.shape
    lpos = _positions(L, x)  # (L, 1)
    e_plus = torch.exp(w * lpos)  # (L, C): e^{w l}
    e_minus = torch.exp(-w * lpos)  # (L, C): e^{-w l}
    yp = x * e_plus  # (R, N, L, C)
    yf = x * e_minus
    cp = torch.cumsum(yp, dim=2)  # Σ_{l'<=l} e^{w l'} x_l'
    cf = torch.cumsum(yf, dim=2)  # Σ_{l'<=l} e^{-w l'} x_l'
    tot_f = cf[:, :, -1]  # (R, N, C)
    q_p = _cross_chunk(cp[:, :, -1], w, L, T, future=False)  # (R, N, C): earlier chunks, referenced to l = 0
    q_f = _cross_chunk(tot_f, w, L, T, future=True)  # later chunks
    ex_p = cp - yp  # Σ_{l'<l}: exclusive/reverse in-chunk sums by subtraction (module docstring)
    fut_in = (tot_f + q_f)[:, :, None] - cf  # Σ_{l'>l} e^{-w l'} x_l' + later chunks
    if g == 1:  # the kernel chunk is the compute chunk: fold Cb into P and G into F (fewer passes)
        # P + (e^w - 1) Cb = e^{-w l} (e^w ex_p + q_p);  F - (e^w - 1) G = e^{w l} (fut_in - (e^w - 1) (cf - x_0)).
        # (ex_p and cf - x_0 are exactly 0 in one-token chunks, where |w| may be large: e^w times no rounding error)
        past = e_minus * (torch.exp(w) * ex_p + q_p[:, :, None])
        fut = e_plus * (fut_in - _expm1(w) * (cf - x[:, :, :1]))
        return torch.exp(u) * x + past + fut
    past = e_minus * (ex_p + q_p[:, :, None])  # P = e^{-w l} (Σ_{l'<l} e^{w l'} x_l' + earlier chunks)
    out = torch.exp(u) * x + past + e_plus * fut_in  # + F
    if g is None:  # ideal form: every kernel chunk is one token, no in-chunk terms
        return out
    # g > 1 kernel chunks per compute chunk: Cb and G on the (R, N, g, Tc, C) view, chunk-local positions j
    x5 = x.reshape(R, n, g, tc, C)
    jpos = _positions(tc, x)
    ep5, em5 = torch.exp(w * jpos), torch.exp(-w * jpos)  # (Tc, C)
    y5p, y5f = x5 * ep5, x5 * em5
    cb = em5 * (torch.cumsum(y5p, dim=3) - y5p)
    ghost = ep5 * (torch.cumsum(y5f, dim=3) - x5[:, :, :, :1])
    return out + _expm1(w) * (cb - ghost).reshape(R, n, L, C)


# ----------------------------------------------------------------------------------------------------------------
# stabiliser
# ----------------------------------------------------------------------------------------------------------------
def _doubling(x: Tensor, reverse: bool, steps: int) -> Tensor:
    """Inclusive running max along dim -2 of x (..., M, C) by ``steps`` doubling steps (exact for M <= 2**steps).

    Each step is max(h, h shifted by 2^j); the shift is a gather with a validity mask so that M may be symbolic."""
    M = x.shape[-2]
    dim = x.ndim - 2
    idx = torch.arange(M, device=x.device)
    ninf = torch.full((), _NEG_INF, dtype=x.dtype, device=x.device)
    for j in range(steps):  # a fixed count: it does not depend on T
        sh = 1 << j
        src = idx + sh if reverse else idx - sh
        valid = (src < M) if reverse else (src >= 0)
        src = _cap(src, M - 1) if reverse else src.clamp(min=0)
        moved = torch.where(valid[:, None], x.index_select(dim, src), ninf)
        x = torch.maximum(x, moved)
    return x


def _cummax_rows(x: Tensor, reverse: bool, steps: int) -> Tensor:
    """Inclusive running max along dim -2 of x (..., M, C), exact for M <= 2**steps.

    Blocked to cut the work of long doubling sequences: the rows are padded to sub-blocks of ``_SUB`` tokens,
    which are scanned by log2(_SUB) static shifts; only the (M / _SUB) sub-block totals go through the remaining
    steps - log2(_SUB) gather-based doubling steps (about 3x faster than doubling over all of M)."""
    if steps <= _SUB_LOG2:
        return _doubling(x, reverse, steps)
    *lead, M, C = x.shape
    nb = _ceil_div(M, _SUB)
    idx = torch.arange(nb * _SUB, device=x.device)
    ninf = torch.full((), _NEG_INF, dtype=x.dtype, device=x.device)
    xp = torch.where((idx < M)[:, None], x.index_select(x.ndim - 2, _cap(idx, M - 1)), ninf)  # -inf tail
    h = xp.reshape(*lead, nb, _SUB, C)
    for j in range(_SUB_LOG2):  # static shifts inside the sub-blocks
        sh = 1 << j
        moved = (
            F.pad(h[..., sh:, :], (0, 0, 0, sh), value=_NEG_INF)
            if reverse
            else F.pad(h[..., :-sh, :], (0, 0, sh, 0), value=_NEG_INF)
        )
        h = torch.maximum(h, moved)
    tot = h[..., 0, :] if reverse else h[..., -1, :]  # (..., nb, C): sub-block maxima
    carry = _shift(_doubling(tot, reverse, steps - _SUB_LOG2), not reverse, _NEG_INF)  # strictly before/after
    out = torch.maximum(h, carry[..., None, :]).reshape(*lead, nb * _SUB, C)
    return out[..., :M, :]


def _cummax_grid(x: Tensor, reverse: bool, exclusive: bool, steps: int) -> Tensor:
    """Running max of x (B, N, M, C) along the flattened (N, M) order (rows of M, N <= COMPUTE_CHUNKS rows)."""
    inner = _cummax_rows(x, reverse, steps)  # inclusive within each row
    rowmax = inner[:, :, 0] if reverse else inner[:, :, -1]  # (B, N, C)
    n = x.shape[1]
    a = torch.arange(n, device=x.device)
    # (N, N): row n' strictly after (reverse) or before row n
    mask = (a[None, :] > a[:, None]) if reverse else (a[None, :] < a[:, None])
    ninf = torch.full((), _NEG_INF, dtype=x.dtype, device=x.device)
    cross = torch.where(mask[None, :, :, None], rowmax[:, None, :, :], ninf).amax(2)  # (B, N, C)
    if exclusive:
        inner = _shift(inner, not reverse, _NEG_INF)
    return torch.maximum(inner, cross[:, :, None])


def _stabiliser(k: Tensor, w: Tensor, u: Tensor, n, L, tc, g: int | None) -> Tensor:
    """The kernel's running-max stabiliser no_t, exactly, on the grid (B, N, L, C). Inputs detached."""
    B, T, C = k.shape
    kg = _to_grid(k, n, L, _NEG_INF)  # (B, N, L, C); -inf keys in the padded tail
    # (N, L, 1) token index t, built by broadcasting: reshaping an arange makes torch.export guard on L != 1
    pos = torch.arange(n, device=k.device)[:, None] * L + torch.arange(L, device=k.device)
    pos = pos.to(k.dtype)[..., None]
    wt = w * pos  # (N, L, C)
    q = kg - wt  # k_i - w i
    p = kg + wt  # k_i + w i
    ninf = torch.full((), _NEG_INF, dtype=k.dtype, device=k.device)
    if g is None:  # ideal form: kernel chunks are single tokens
        a1 = wt + _cummax_grid(q, reverse=True, exclusive=False, steps=MAX_DOUBLING)  # max_{i>=t} q_i
        a3 = -wt + _cummax_grid(p, reverse=False, exclusive=True, steps=MAX_DOUBLING)  # max_{i<t} p_i
        return torch.maximum(torch.maximum(a1, a3), u + kg)
    q5 = q.reshape(B, n, g, tc, C)
    p5 = p.reshape(B, n, g, tc, C)
    wt5 = wt.reshape(n, g, tc, C)
    cq = q5.amax(3)  # (B, N, g, C): per kernel chunk
    cp = p5.amax(3)
    gsteps = max(0, math.ceil(math.log2(g)))  # g is a Python int (from token_split), not derived from T
    # the chunk of t and every later chunk; every earlier chunk
    a1 = wt5 + _cummax_grid(cq, reverse=True, exclusive=False, steps=gsteps)[:, :, :, None]
    a3 = -wt5 + _cummax_grid(cp, reverse=False, exclusive=True, steps=gsteps)[:, :, :, None]
    # w < 0: same chunk before t, widened to the whole chunk (exact, see the module docstring)
    a4 = torch.where(w < 0, (w - wt5) + cp[:, :, :, None], ninf)
    # w > 0: max_{s<i<=t} q_i, an in-chunk prefix max with the chunk start excluded
    jj = torch.arange(tc, device=k.device)[:, None]  # (Tc, 1)
    qin = torch.where(jj == 0, ninf, q5)
    a2 = torch.where(w > 0, (wt5 + w) + _cummax_rows(qin, reverse=False, steps=MAX_DOUBLING), ninf)
    no = torch.maximum(torch.maximum(a1, a3), torch.maximum(a2, a4))
    return torch.maximum(no.reshape(B, n, L, C), u + kg)


# ----------------------------------------------------------------------------------------------------------------
# public entry
# ----------------------------------------------------------------------------------------------------------------
def bi_wkv_scan(w: Tensor, u: Tensor, k: Tensor, v: Tensor, token_split: int | None, eps: float) -> Tensor:
    """Export-friendly Bi-WKV on tensors of one floating dtype (see the module docstring); autograd-differentiable.

    w, u: (C,); k, v: (B, T, C) with T >= 1; returns (B, T, C). ``token_split`` and ``eps`` are Python
    constants (they select the graph); T may be symbolic.
    """
    B, T, C = k.shape
    # The number of compute chunks n is a Python constant and only the chunk length L is symbolic (nested symbolic
    # divisions such as ceil(T / ceil(T / 32)) defeat torch.export's shape solver). Chunks past T are all padding.
    if token_split is None:
        g, tc = None, 1
        n = COMPUTE_CHUNKS
        L = _ceil_div(T, COMPUTE_CHUNKS)
    else:
        # g kernel chunks per compute chunk (1 for token_split <= 32), n compute chunks
        g = -(-int(token_split) // COMPUTE_CHUNKS)
        n = -(-int(token_split) // g)
        tc = _ceil_div(T, int(token_split))  # the kernel's chunk length ceil(T / token_split)
        L = g * tc
    m = k.detach().amax(1, keepdim=True)  # (B, 1, C): every e^{k - m} <= 1; y does not depend on m
    z = torch.exp(k - m)  # (B, T, C)
    x = torch.cat([z * v, z], dim=0)  # (2B, T, C): numerator and denominator inputs
    lin = _from_grid(_lin(_to_grid(x, n, L, 0.0), w, u, T, tc, g), T)  # (2B, T, C)
    num, den = lin[:B], lin[B:]
    if eps:
        # built from detached inputs: held constant in the backward (no no_grad block: it would be traced)
        no = _from_grid(_stabiliser(k.detach(), w.detach(), u.detach(), n, L, tc, g), T)
        den = den + eps * torch.exp(no - m)
    return num / den
