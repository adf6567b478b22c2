"""Fast Bi-WKV: O(T) time and memory, built from blocked first-order scans, with a hand-written backward.

Notation (one channel; ``docs/vrwkv.md``, "Bi-WKV kernel arithmetic"). Tc is the kernel chunk length, s the
chunk start of token t, j = t - s its offset in the chunk. With x_i = e^{k_i - m} v_i (numerator) or e^{k_i - m}
(denominator), where m is the per-(b, c) maximum of k over T, the kernel's sums are a linear operator ``Lin``
applied to x::

    Lin(x)_t = e^{u} x_t                                          # self
             + Σ_{s<=i<t} e^{-w(t-1-i)} x_i                        # same chunk, before t (distance |t-i|-1)
             + Σ_{t<i<s+Tc} e^{-w(i-t)} x_i                        # same chunk, after t
             + (1 - e^{w}) Σ_{s<i<=t} e^{w(t-i)} x_i               # the kernel's "ghost" terms
             + e^{-w j}      · Σ_{i<s}      e^{-w(s-i)} x_i        # all earlier chunks
             + e^{-w(Tc-j)}  · Σ_{i>=s+Tc}  e^{-w(i-s-Tc)} x_i     # all later chunks

and y = Lin(x_num) / (Lin(x_den) + eps·e^{no - m}). The in-chunk sums are scans over rows of Tc tokens, the
two chunk-level sums are scans (step e^{-w·Tc}) over the chunk totals. The ideal form is Tc = 1.

Every scan is the recurrence h_t = e^{a} h_{t-1} + x_t (or its reverse). It is evaluated blocked: a Python loop
over the L <= ``BLOCK`` positions of a block advances all blocks at once (one vectorised op per position), block
totals are scanned recursively with step e^{a·L}, then one broadcast pass adds the carries. No Python loop runs
over T; the loop count is O(L·log_L T).

Numerical stability (float32 and float64): the recurrences multiply by e^{a} per step exactly like the official
kernel, never by e^{a·t} for large t, and every input is scaled by e^{k - m} <= 1, so any key range is safe
(tokens more than ~88 (float32) below the per-(b, c) key maximum underflow to zero, which only drops terms that
are negligible next to the maximum's). Decaying scans (w > 0) cannot overflow. Growing scans (w < 0, or the ghost
scan for w > 0) reach at most e^{|w|·T} (≈ e^{10} for the official init, where |spatial_decay| <= 5) times the
true sums, so the path is safe for |w|·T up to about 60 in float32 (several hundred in float64); e^{u} must
not overflow either (|u| is tiny after the division by T). The kernel formula itself is ill-conditioned when
|w|·Tc is large (the ghost terms cancel part of the denominator), which does not happen for
token_split >= 16 and |w|·T <= 10.

The backward does not use autograd: ``Lin`` is linear, its adjoint has the same structure (in-chunk and
chunk-level scans run in the opposite direction), and d/da <g, S_a x> = <S_a^T g, e^{a} h_{t-1}> gives dw.
``no`` (the kernel stabiliser) is held constant in the backward, as in the golden gradients.
Only first-order gradients are provided (``once_differentiable``).

Channels are processed in tiles of bounded size (``TILE_ELEMS``); each tile is laid out position-in-chunk first,
(Tc, rows, chunks, C_tile), so that every step of a scan touches one contiguous slab, and scratch buffers are
reused across tiles. The backward recomputes the forward intermediates of each tile; only the inputs and ``no``
are kept between forward and backward, so the memory is O(B·T·C) with a small constant.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# Longest block of the blocked scans (the Python loop runs over at most this many positions per level).
BLOCK = 32
# Channel tile size, in elements of the (2B, T, C_tile) working tensors (bounds the working set; measured on CPU).
TILE_ELEMS = 1 << 22
_NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------------------------
# scans (along dim 0, so that each step of the Python loop touches one contiguous slab)
# ----------------------------------------------------------------------------------------------------------------
def _block_layout(n: int, block: int) -> tuple[int, int]:
    """Number of blocks and block length for a sequence of n, with minimal padding."""
    if n <= block:
        return 1, n
    nb = -(-n // block)
    return nb, -(-n // nb)


class _Workspace:
    """Named scratch buffers reused across channel tiles (fresh multi-MB tensors cost page faults each time)."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self.bufs: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        n = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=self.dtype, device=self.device)
            self.bufs[name] = buf
        return buf[:n].view(shape)


def _scan(
    x: Tensor,
    a: Tensor | None,
    reverse: bool,
    block: int,
    skip_first: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """Inclusive scan along dim 0 of ``x`` (n, M, C) into ``out`` (or a new tensor); ``x`` is not modified.

    ``a`` (C,): linear scan h_t = e^{a} h_{t-1} + x_t (reverse: h_t = e^{a} h_{t+1} + x_t).
    ``a`` None: running max h_t = max(h_{t-1}, x_t) (reverse: max(h_{t+1}, x_t)).
    ``skip_first`` (forward only): x_0 is treated as the neutral element (0, or -inf for the max).
    """
    n, M, C = x.shape
    is_max = a is None
    nb, L = _block_layout(n, block)
    if nb * L == n:
        h = torch.empty_like(x) if out is None else out
    else:  # padding at the end is neutral in both directions: it follows every real position
        h = torch.empty(nb * L, M, C, dtype=x.dtype, device=x.device)
        h[:n] = x
        h[n:] = _NEG_INF if is_max else 0.0
        x = h
    xb = x.view(nb, L, M, C)
    hb = h.view(nb, L, M, C)
    ea = None if is_max else torch.exp(a)
    order = range(L - 1, -1, -1) if reverse else range(L)
    prev = None
    for j in order:  # one vectorised op per block position, all blocks at once
        if prev is None:
            if xb is not hb:
                hb[:, j] = xb[:, j]
            if skip_first:
                hb[0, 0] = _NEG_INF if is_max else 0.0
        elif is_max:
            torch.maximum(xb[:, j], hb[:, prev], out=hb[:, j])
        else:
            torch.addcmul(xb[:, j], hb[:, prev], ea, out=hb[:, j])
        prev = j
    if nb > 1:
        tot = hb[:, 0 if reverse else L - 1]  # (nb, M, C) block totals (contiguous slab)
        carry = _scan(tot, None if is_max else a * L, reverse, block)  # inclusive over blocks
        if is_max:
            if reverse:
                torch.maximum(hb[:-1], carry[1:, None], out=hb[:-1])
            else:
                torch.maximum(hb[1:], carry[:-1, None], out=hb[1:])
        else:
            j = torch.arange(L, device=x.device, dtype=x.dtype)[:, None, None]  # (L, 1, 1)
            if reverse:  # position j is L - j steps before the next block's first position
                hb[:-1].addcmul_(carry[1:, None], torch.exp(a * (L - j)))
            else:  # position j is j + 1 steps after the previous block's last position
                hb[1:].addcmul_(carry[:-1, None], torch.exp(a * (j + 1)))
    if nb * L == n:
        return h
    if out is None:
        return h[:n]
    return out.copy_(h[:n])


def _shifted(x: Tensor, forward: bool, fill: float = 0.0, out: Tensor | None = None) -> Tensor:
    """out[t] = x[t-1] (forward) or x[t+1] (backward) along dim 0, ``fill`` at the free end."""
    out = torch.empty_like(x) if out is None else out
    if forward:
        out[1:] = x[:-1]
        out[0] = fill
    else:
        out[:-1] = x[1:]
        out[-1] = fill
    return out


def _chunk_scan(z: Tensor, a: Tensor | None, reverse: bool, block: int) -> Tensor:
    """Exclusive scan over the chunk axis of z (R, N, C) (step factor e^{a}); returns (R, N, C)."""
    zt = z.transpose(0, 1).contiguous()  # (N, R, C): chunk axis first
    h = _shifted(_scan(zt, a, reverse, block), not reverse, _NEG_INF if a is None else 0.0)
    return h.transpose(0, 1)


def _dot(a: Tensor, b: Tensor, tmp: Tensor) -> Tensor:
    """Σ over every dim but the last (channels) of a·b, using ``tmp`` (same numel) as scratch."""
    prod = torch.mul(a, b, out=tmp.view(-1)[: a.numel()].view(a.shape))
    return prod.view(-1, a.shape[-1]).sum(0)


# ----------------------------------------------------------------------------------------------------------------
# the linear operator, its adjoint and its w-derivative; tile layout (Tc, R, N, C): position in chunk first
# ----------------------------------------------------------------------------------------------------------------
class _Geom:
    """Chunk geometry and per-channel factors shared by the forward and the backward of one tile."""

    def __init__(self, w: Tensor, u: Tensor, T: int, token_split: int | None, block: int) -> None:
        self.T = T
        self.tc = 1 if token_split is None else max(1, math.ceil(T / token_split))
        self.n_chunks = -(-T // self.tc)
        self.tp = self.n_chunks * self.tc
        self.block = block
        self.w, self.u = w, u
        self.emw = torch.exp(-w)
        self.eu = torch.exp(u)
        self.ghost = -torch.expm1(w)  # 1 - e^{w}
        j = torch.arange(self.tc, device=w.device, dtype=w.dtype)[:, None, None, None]  # (Tc, 1, 1, 1)
        self.j = j
        self.ep = torch.exp(-w * j)  # (Tc, 1, 1, C): e^{-w j}
        self.ef = torch.exp(-w * (self.tc - j))  # (Tc, 1, 1, C): e^{-w (Tc - j)}

    def to_tile(self, src: Tensor, fill: float, out: Tensor) -> Tensor:
        """(B, T, Ct) (any strides) -> ``out`` (Tc, B, N, Ct), ``fill`` in the padded tail."""
        B, T, C = src.shape
        tc = self.tc
        o = out.permute(1, 2, 0, 3)  # (B, N, Tc, Ct) view
        nf, rem = divmod(T, tc)
        if nf:
            o[:, :nf] = src[:, : nf * tc].view(B, nf, tc, C)
        if rem:
            o[:, nf, :rem] = src[:, nf * tc :]
            o[:, nf, rem:] = fill
        return out

    def from_tile(self, t: Tensor, dst: Tensor) -> None:
        """Inverse of ``to_tile``: writes the real positions of t (Tc, B, N, Ct) into dst (B, T, Ct)."""
        B, T, C = dst.shape
        tc = self.tc
        o = t.permute(1, 2, 0, 3)
        nf, rem = divmod(T, tc)
        if nf:
            dst[:, : nf * tc].view(B, nf, tc, C).copy_(o[:, :nf])
        if rem:
            dst[:, nf * tc :] = o[:, nf, :rem]


def _lin(x: Tensor, g: _Geom, ws: _Workspace) -> tuple[Tensor, tuple]:
    """tot = Lin(x) for x (Tc, R, N, C) (zero in the padded tail); also returns the intermediates dw needs."""
    tc, R, nc, C = x.shape
    blk = g.block
    x3 = x.view(tc, R * nc, C)
    tot = torch.mul(x, g.eu, out=ws.get("tot", x.shape))
    tot3 = tot.view(tc, R * nc, C)
    hq = _scan(x3, -g.w, False, blk, out=ws.get("hq", x3.shape))  # Σ_{s<=i<=t} e^{-w(t-i)} x_i
    hr = _scan(x3, -g.w, True, blk, out=ws.get("hr", x3.shape))  # Σ_{t<=i<s+Tc} e^{-w(i-t)} x_i
    tot3[1:] += hq[:-1]
    tot3[:-1].addcmul_(hr[1:], g.emw)
    hg = None
    if tc > 1:
        hg = _scan(
            x3, g.w, False, blk, skip_first=True, out=ws.get("hg", x3.shape)
        )  # Σ_{s<i<=t} e^{w(t-i)} x_i
        tot3.addcmul_(hg, g.ghost)
    zp = (hq[-1] * g.emw).view(R, nc, C)  # chunk sums referenced to the next chunk's start
    zf = hr[0].view(R, nc, C)  # chunk sums referenced to their own start
    p = _chunk_scan(zp, -g.w * tc, False, blk)  # Σ_{i<s} e^{-w(s-i)} x_i
    f = _chunk_scan(zf, -g.w * tc, True, blk)  # Σ_{i>=s+Tc} e^{-w(i-s-Tc)} x_i
    tot.addcmul_(p[None], g.ep)
    tot.addcmul_(f[None], g.ef)
    return tot, (hq, hr, hg, zp, p, f)


def _lin_adjoint_and_dw(
    gt: Tensor, x: Tensor, parts: tuple, g: _Geom, ws: _Workspace
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns Lin^T(gt) (Tc, R, N, C), d<gt, Lin(x)>/dw and d<gt, Lin(x)>/du (both (C,)).

    Uses (and overwrites) the buffers of ``parts``.
    """
    tc, R, nc, C = gt.shape
    blk = g.block
    hq, hr, hg, zp, p, f = parts
    g3 = gt.view(tc, R * nc, C)
    shape3 = g3.shape
    tmp = ws.get("tmp", shape3)
    rq = _scan(g3, -g.w, True, blk, out=ws.get("rq", shape3))  # S^T of the in-chunk past scan
    sq = _scan(g3, -g.w, False, blk, out=ws.get("sq", shape3))  # S^T of the in-chunk future scan
    g_p = rq[0].view(R, nc, C)  # Σ_j e^{-w j} gt_j
    g_f = (sq[-1] * g.emw).view(R, nc, C)  # Σ_j e^{-w(Tc-j)} gt_j
    g_zp = _chunk_scan(g_p, -g.w * tc, True, blk)  # adjoint of the earlier-chunks scan
    g_zf = _chunk_scan(g_f, -g.w * tc, False, blk)  # adjoint of the later-chunks scan
    # adjoints flowing into hq and hr (they also feed the chunk totals zp and zf)
    a_q = _shifted(rq, False, out=ws.get("a_q", shape3))
    a_q.view(tc, R, nc, C).addcmul_(g_zp[None], g.ef)
    a_r = _shifted(sq, True, out=rq)  # rq is dead from here on
    a_r *= g.emw
    a_r.view(tc, R, nc, C).addcmul_(g_zf[None], g.ep)
    gx = torch.mul(g3, g.eu, out=sq)  # sq is dead from here on
    gx += a_q
    gx += a_r
    # dw, term by term: through the scans (<S^T gbar, e^{a} h_prev>), then the explicit factors
    dw = -g.emw * _dot(a_q[1:], hq[:-1], tmp)
    a_r += g3  # the explicit e^{-w} of the in-chunk future term has the same partner hr_{t+1}
    dw -= g.emw * _dot(a_r[:-1], hr[1:], tmp)
    if tc > 1:
        a_g = _scan(g3, g.w, True, blk, out=a_q)  # a_q is dead from here on
        a_g *= g.ghost
        gx[1:] += a_g[1:]  # the ghost sum skips the chunk start
        ew = torch.exp(g.w)
        a_g[1:] -= g3[:-1]  # both ghost terms pair with hg: e^{w}(<a_g_{t+1}, hg_t> - <gt_t, hg_t>)
        dw += ew * (_dot(a_g[1:], hg[:-1], tmp) - (g3[-1] * hg[-1]).sum(0))
    dw -= (g_zp * zp).sum((0, 1))
    dw -= tc * torch.exp(-g.w * tc) * ((g_zp * p).sum((0, 1)) + (g_zf * f).sum((0, 1)))
    if nc > 1:
        t4 = tmp.view(gt.shape)
        dw -= (torch.mul(gt, g.j * g.ep, out=t4).sum(0) * p).sum((0, 1))
        dw -= (torch.mul(gt, (tc - g.j) * g.ef, out=t4).sum(0) * f).sum((0, 1))
    du = g.eu * _dot(gt, x, tmp)
    return gx.view(tc, R, nc, C), dw, du


# ----------------------------------------------------------------------------------------------------------------
# stabiliser
# ----------------------------------------------------------------------------------------------------------------
def _stabiliser(kt: Tensor, g: _Geom, ws: _Workspace, out: Tensor) -> Tensor:
    """The kernel's running-max stabiliser no_t, exactly, from running-max scans, into ``out``.

    kt: keys in tile layout (Tc, B, N, C), -inf in the padded tail. With q_i = k_i - w i and p_i = k_i + w i:
    no_t = max( w t + max(q_s, max_{s<i<=t} q_i + max(w, 0), max_{i>t} q_i),
                -w t + max(max_{s<=i<t} p_i + w, max_{i<s} p_i),   u + k_t ).
    """
    tc, B, nc, C = kt.shape
    blk, w = g.block, g.w
    pos = torch.arange(g.tp, device=kt.device, dtype=kt.dtype).view(nc, tc).t()  # (Tc, N): token index
    wt = w * pos[:, None, :, None]  # (Tc, 1, N, C): w·t
    shape3 = (tc, B * nc, C)
    q = torch.sub(kt, wt, out=ws.get("s_q", kt.shape))
    q3 = q.view(shape3)
    # terms with +w t
    plus = _scan(q3, None, False, blk, skip_first=True, out=out.view(shape3))  # max_{s<i<=t} q_i
    plus += w.clamp(min=0)
    torch.maximum(plus, q3[:1], out=plus)  # q_s
    q_rev = _scan(q3, None, True, blk, out=ws.get("s_a", shape3))  # max_{t<=i<s+Tc} q_i
    torch.maximum(plus[:-1], q_rev[1:], out=plus[:-1])
    plus = plus.view(tc, B, nc, C)
    later = _chunk_scan(q_rev[0].view(B, nc, C), None, True, blk)  # max over later chunks
    torch.maximum(plus, later[None], out=plus)
    plus += wt
    # terms with -w t
    p = torch.add(kt, wt, out=q)
    p_in = _scan(q3, None, False, blk, out=ws.get("s_b", shape3))  # max_{s<=i<=t} p_i
    earlier = _chunk_scan(p_in[-1].view(B, nc, C), None, False, blk)  # max over earlier chunks
    minus = _shifted(p_in, True, _NEG_INF, out=q_rev).view(tc, B, nc, C)
    minus += w
    torch.maximum(minus, earlier[None], out=minus)
    minus -= wt
    torch.maximum(plus, minus, out=plus)
    torch.add(kt, g.u, out=p)
    return torch.maximum(plus, p, out=plus)


# ----------------------------------------------------------------------------------------------------------------
# one channel tile
# ----------------------------------------------------------------------------------------------------------------
def _tile_forward(w, u, k, v, token_split, eps, block, ws, no=None):
    """Forward of one channel tile (k, v: (B, T, Ct) views) in workspace ``ws``.

    Returns y (tile layout, a workspace buffer), the stabiliser (a new tensor, or the given ``no``) and what the
    backward needs."""
    B, T, C = k.shape
    g = _Geom(w, u, T, token_split, block)
    tshape = (g.tc, B, g.n_chunks, C)
    kt = g.to_tile(k, _NEG_INF, ws.get("kt", tshape))  # (Tc, B, N, Ct)
    vt = g.to_tile(v, 0.0, ws.get("vt", tshape))
    # (1, B, 1, Ct): every e^{k - m} <= 1 (reduce over the leading dim first: strided reductions are slow)
    m = kt.view(g.tc, -1).amax(0).view(B, g.n_chunks, C).amax(1)[None, :, None, :]
    kk = torch.sub(kt, m, out=ws.get("kk", tshape)).exp_()  # exactly 0 in the padded tail
    x = ws.get("x", (g.tc, 2 * B, g.n_chunks, C))
    torch.mul(kk, vt, out=x[:, :B])
    x[:, B:] = kk
    if eps and no is None:
        no = _stabiliser(kt, g, ws, torch.empty(tshape, dtype=k.dtype, device=k.device))
    tot, parts = _lin(x, g, ws)
    num, den = tot[:, :B], tot[:, B:]
    if eps:
        den.add_(torch.sub(no, m, out=kt).exp_(), alpha=eps)  # kt is dead from here on
    y = torch.div(num, den, out=ws.get("y", tshape))  # the padded tail may hold garbage; it is never read
    return y, no, (g, kk, vt, x, parts, den)


def _tile_backward(gy, w, u, k, v, token_split, eps, block, ws, no):
    y, _, (g, kk, vt, x, parts, den) = _tile_forward(w, u, k, v, token_split, eps, block, ws, no)
    B = k.shape[0]
    gt = ws.get("gt", x.shape)  # (Tc, 2B, N, Ct): gradients of the numerator and denominator sums
    gnum = g.to_tile(gy, 0.0, gt[:, :B])
    gnum /= den
    rem = g.T - (g.n_chunks - 1) * g.tc
    gnum[rem:, :, -1] = 0.0  # padded tail (den may be 0 there)
    torch.mul(gnum, y, out=gt[:, B:]).neg_()
    gx, dw, du = _lin_adjoint_and_dw(gt, x, parts, g, ws)
    gxn, gxd = gx[:, :B], gx[:, B:]
    gv = torch.mul(kk, gxn, out=ws.get("hq", kk.shape))  # hq, hr are dead after the adjoint
    gk = torch.mul(kk, gxd, out=ws.get("hr", kk.shape)).addcmul_(gv, vt)
    return dw, du, gk, gv, g


def _tiles(C: int, per_channel: int, tile_elems: int) -> list[tuple[int, int]]:
    ct = max(1, min(C, tile_elems // max(1, per_channel)))
    n = -(-C // ct)
    ct = -(-C // n)  # balance the tiles
    return [(c0, min(C, c0 + ct)) for c0 in range(0, C, ct)]


def _forward_tiles(w, u, k, v, token_split, eps, block, tile_elems):
    """y (B, T, C), the tiles [(c0, c1), ...] and each tile's stabiliser (tile layout; None when eps == 0)."""
    B, T, C = k.shape
    tiles = _tiles(C, 2 * B * T, tile_elems)
    y = k.new_empty((B, T, C))
    nos = []
    ws = _Workspace(k.dtype, k.device)
    for a, b in tiles:
        yt, no, (g, *_) = _tile_forward(w[a:b], u[a:b], k[..., a:b], v[..., a:b], token_split, eps, block, ws)
        g.from_tile(yt, y[..., a:b])
        nos.append(no)
    return y, tiles, nos


def _backward_tiles(gy, w, u, k, v, token_split, eps, block, tiles, nos):
    """(dw, du, dk, dv) from the tiles' stabilisers ``nos`` (tile layout, or None: recomputed per tile)."""
    dw, du, dk, dv = torch.empty_like(w), torch.empty_like(u), torch.empty_like(k), torch.empty_like(v)
    ws = _Workspace(k.dtype, k.device)
    for (a, b), no in zip(tiles, nos):
        gw, gu, gk, gv, g = _tile_backward(
            gy[..., a:b], w[a:b], u[a:b], k[..., a:b], v[..., a:b], token_split, eps, block, ws, no
        )
        dw[a:b] = gw
        du[a:b] = gu
        g.from_tile(gk, dk[..., a:b])
        g.from_tile(gv, dv[..., a:b])
    return dw, du, dk, dv


class _BiWKVChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, u, k, v, token_split, eps, block, tile_elems):  # noqa: D102
        y, tiles, nos = _forward_tiles(w, u, k, v, token_split, eps, block, tile_elems)
        ctx.save_for_backward(w, u, k, v)
        ctx.nos = nos  # the stabiliser is constant in the backward: keep it rather than recompute it
        ctx.cfg = (token_split, eps, block, tiles)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):  # noqa: D102
        w, u, k, v = ctx.saved_tensors
        token_split, eps, block, tiles = ctx.cfg
        return (
            *_backward_tiles(gy, w, u, k, v, token_split, eps, block, tiles, ctx.nos),
            None,
            None,
            None,
            None,
        )


def bi_wkv_chunked(
    w: Tensor,
    u: Tensor,
    k: Tensor,
    v: Tensor,
    token_split: int | None,
    eps: float,
    block: int = BLOCK,
    tile_elems: int = TILE_ELEMS,
) -> Tensor:
    """Fast Bi-WKV on tensors of one floating dtype (see the module docstring); first-order differentiable.

    w, u: (C,); k, v: (B, T, C); returns (B, T, C). ``block`` (scan block length) and ``tile_elems`` (channel
    tile size) change only the speed and memory, never the result (tests use small values to exercise them).
    """
    return _BiWKVChunked.apply(w, u, k, v, token_split, eps, block, tile_elems)


# ----------------------------------------------------------------------------------------------------------------
# pure functions (no autograd): what the ``medurwkv::bi_wkv`` custom op runs (``ops/bi_wkv/op.py``)
# ----------------------------------------------------------------------------------------------------------------
def bi_wkv_chunked_forward_with_stabiliser(
    w: Tensor,
    u: Tensor,
    k: Tensor,
    v: Tensor,
    token_split: int | None,
    eps: float,
    block: int = BLOCK,
    tile_elems: int = TILE_ELEMS,
) -> tuple[Tensor, Tensor]:
    """y (B, T, C) and the kernel stabiliser no (B, T, C) (an empty (0,) tensor when eps == 0: unused).

    Passing ``no`` to :func:`bi_wkv_chunked_backward` saves recomputing it (about a tenth of the backward)."""
    y, tiles, nos = _forward_tiles(w, u, k, v, token_split, eps, block, tile_elems)
    if not eps:
        return y, k.new_empty((0,))
    no = torch.empty_like(k)
    for (a, b), no_t in zip(tiles, nos):
        _Geom(w[a:b], u[a:b], k.shape[1], token_split, block).from_tile(no_t, no[..., a:b])
    return y, no


def bi_wkv_chunked_forward(
    w: Tensor,
    u: Tensor,
    k: Tensor,
    v: Tensor,
    token_split: int | None,
    eps: float,
    block: int = BLOCK,
    tile_elems: int = TILE_ELEMS,
) -> Tensor:
    """The chunked Bi-WKV forward as a plain function (no autograd graph): w, u (C,), k, v (B, T, C) -> y."""
    return _forward_tiles(w, u, k, v, token_split, eps, block, tile_elems)[0]


def bi_wkv_chunked_backward(
    w: Tensor,
    u: Tensor,
    k: Tensor,
    v: Tensor,
    token_split: int | None,
    eps: float,
    gy: Tensor,
    block: int = BLOCK,
    tile_elems: int = TILE_ELEMS,
    no: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dw, du, dk, dv) of <gy, y> for the chunked Bi-WKV, recomputing the forward per tile.

    ``no`` (B, T, C): the stabiliser from :func:`bi_wkv_chunked_forward_with_stabiliser` (held constant);
    None or empty: recomputed. ``block`` and ``tile_elems`` must not change the result (they never do)."""
    B, T, C = k.shape
    tiles = _tiles(C, 2 * B * T, tile_elems)
    nos: list[Tensor | None] = [None] * len(tiles)
    if eps and no is not None and no.numel():
        for i, (a, b) in enumerate(tiles):
            g = _Geom(w[a:b], u[a:b], T, token_split, block)
            # +inf in the padded tail: there den becomes inf and y exactly 0 (never NaN, whatever Lin gives)
            nos[i] = g.to_tile(no[..., a:b], math.inf, k.new_empty((g.tc, B, g.n_chunks, b - a)))
    return _backward_tiles(gy, w, u, k, v, token_split, eps, block, tiles, nos)
