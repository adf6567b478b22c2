"""Tests of the Bi-WKV operator: golden kernel outputs/gradients, chunked vs naive, stability, validation."""

from __future__ import annotations

import math

import pytest
import torch
from wkv_testing import err, leaf, random_inputs, rel

from medurwkv.ops import bi_wkv
from medurwkv.ops.bi_wkv import bi_wkv_naive
from medurwkv.ops.bi_wkv.chunked import bi_wkv_chunked

IMPLS = ("naive", "chunked")
KERNELS = {"ts32_eps1e-6": (32, 1e-6), "ts16_eps0": (16, 0.0), "ideal": (None, 0.0)}


def _inputs(B, T, C, *, wt=5.0, **kw):
    return random_inputs(B, T, C, wt=wt, **kw)


def _literal_row(w, u, k, v, t: int, tc: int, eps: float) -> torch.Tensor:
    """y[:, t, :] straight from the closed form of docs/vrwkv.md section 2.2 (float64, O(T) for one token)."""
    T = k.shape[1]
    s = (t // tc) * tc
    i = torch.arange(T, dtype=torch.float64)[None, :, None]
    ninf = torch.tensor(-math.inf, dtype=torch.float64)
    before, same_before, after = i < s, (i >= s) & (i < t), i > t
    ghost = (i > s) & (i <= t)
    terms = [
        torch.where(before, k - w * (t - i), ninf),
        torch.where(same_before, k - w * (t - i - 1), ninf),
        torch.where(after, k - w * (i - t), ninf),
    ]
    g_plus = torch.where(ghost, k + w * (t - i), ninf)
    g_minus = torch.where(ghost, k + w * (t - i + 1), ninf)
    e_self = u + k[:, t]
    no = torch.stack(
        [
            torch.where(i >= s, k + w * (t - i), ninf).amax(1),
            g_minus.amax(1),
            terms[0].amax(1),
            terms[1].amax(1),
            e_self,
        ]
    ).amax(0)
    coef = sum(torch.exp(e - no[:, None]) for e in terms)
    coef = coef + torch.exp(g_plus - no[:, None]) - torch.exp(g_minus - no[:, None])
    p_self = torch.exp(e_self - no)
    return ((coef * v).sum(1) + p_self * v[:, t]) / (coef.sum(1) + p_self + eps)


# ----------------------------------------------------------------------------------------------------------------
# golden kernel outputs and gradients
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_golden_outputs(golden, impl, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert any(c["tag"] == "large_k" for c in golden["cases"])
    for case in golden["cases"]:
        w, u, k, v = (case[n].to(dtype) for n in "wukv")
        for name, spec in golden["kernels"].items():
            y = bi_wkv(w, u, k, v, token_split=spec["token_split"], eps=spec["eps"], impl=impl)
            assert y.dtype == dtype and y.shape == k.shape
            diff = (y.double() - case[f"y_{name}"]).abs().max().item()
            assert diff < tol, (case["T"], case["tag"], name, diff)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_golden_gradients(golden, impl, dtype):
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert len(golden["grad_cases"]) >= 4
    for gc in golden["grad_cases"]:
        case = golden["cases"][gc["case_index"]]
        ins = [leaf(case[n], dtype) for n in "wukv"]
        y = bi_wkv(*ins, token_split=gc["token_split"], eps=gc["eps"], impl=impl)
        (y * gc["gy"].to(dtype)).sum().backward()
        for n, x in zip("wukv", ins):
            r = rel(x.grad, gc[f"d{n}"])
            assert r < tol, (gc["T"], gc["kernel"], n, r)


# ----------------------------------------------------------------------------------------------------------------
# chunked vs naive
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 2, 5, 31, 33, 197, 1000])
@pytest.mark.parametrize(
    "token_split,eps", [(32, 1e-6), (32, 0.0), (16, 1e-6), (16, 0.0), (None, 1e-6), (None, 0.0)]
)
def test_chunked_matches_naive(T, token_split, eps):
    B, C = (1, 2) if T >= 1000 else (2, 3)
    w, u, k, v = _inputs(B, T, C, wt=8.0, seed=T)
    gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ys, grads = {}, {}
    for impl in IMPLS:
        ins = [leaf(x, torch.float64) for x in (w, u, k, v)]
        ys[impl] = bi_wkv(*ins, token_split=token_split, eps=eps, impl=impl)
        grads[impl] = torch.autograd.grad((ys[impl] * gy).sum(), ins)
    assert err(ys["chunked"], ys["naive"]) < 1e-10
    for n, gc, gn in zip("wukv", grads["chunked"], grads["naive"]):
        assert err(gc, gn) < 1e-9, n
    y32 = bi_wkv(*(x.float() for x in (w, u, k, v)), token_split=token_split, eps=eps, impl="chunked")
    assert y32.dtype == torch.float32
    assert err(y32, ys["naive"]) < 1e-5


def test_chunked_blocking_and_tiling_do_not_change_the_result():
    # tiny scan blocks (3 levels of recursion) and one channel per tile vs the defaults
    w, u, k, v = _inputs(2, 197, 5, seed=3)
    gy = torch.randn(2, 197, 5, dtype=torch.float64)
    out = []
    for block, tile in ((32, 1 << 22), (3, 2 * 2 * 197)):
        ins = [leaf(x, torch.float64) for x in (w, u, k, v)]
        y = bi_wkv_chunked(*ins, 16, 1e-6, block, tile)
        out.append((y, *torch.autograd.grad((y * gy).sum(), ins)))
    for a, b in zip(*out):
        assert rel(a, b) < 1e-12


def test_gradcheck_chunked_small():
    w, u, k, v = (leaf(x, torch.float64) for x in _inputs(1, 11, 2, seed=5))
    # eps = 0: the held-constant stabiliser is then exact, so the analytic gradient is the true one
    assert torch.autograd.gradcheck(lambda *a: bi_wkv(*a, token_split=4, eps=0.0), (w, u, k, v))


# ----------------------------------------------------------------------------------------------------------------
# numerical stability
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wt", [-10.0, 10.0])
def test_large_key_range_and_strong_decay(wt):
    T, C = 197, 4
    w, u, k, v = _inputs(1, T, C, wt=1.0, krange=2.0, seed=7)
    w = torch.full((C,), wt / T, dtype=torch.float64)
    k[0, ::13] += 70.0  # key range along T > 100
    k[0, 50:60] -= 60.0
    assert (k.amax() - k.amin()).item() > 100
    ref = bi_wkv(w, u, k, v, token_split=32, eps=1e-6, impl="naive")
    assert torch.isfinite(ref).all()
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        ins = [leaf(x, dtype) for x in (w, u, k, v)]
        y = bi_wkv(*ins, token_split=32, eps=1e-6, impl="chunked")
        y.sum().backward()
        assert torch.isfinite(y).all() and all(torch.isfinite(x.grad).all() for x in ins)
        assert rel(y, ref) < tol, dtype


def test_long_sequence_65536():
    T, C = 65536, 3
    w, u, k, v = _inputs(1, T, C, seed=11)
    w = torch.tensor([-10.0, 0.5, 10.0], dtype=torch.float64) / T
    k[0, ::977] += 60.0  # spikes: key range > 100
    k[0, 5000:5100] -= 70.0
    y64 = bi_wkv(w, u, k, v, token_split=32, eps=1e-6)
    y32 = bi_wkv(w.float(), u.float(), k.float(), v.float(), token_split=32, eps=1e-6)
    assert torch.isfinite(y32).all()
    assert rel(y32, y64) < 1e-5
    tc = math.ceil(T / 32)
    for t in (0, 1, tc - 1, tc, 5050, 33333, T - 1):
        ref = _literal_row(w, u, k, v, t, tc, 1e-6)
        assert (y64[:, t] - ref).abs().max().item() < 1e-10 * ref.abs().max().item() + 1e-12, t


def test_literal_rows_agree_with_naive():
    # the O(T) row formula used above is itself checked against the naive reference
    w, u, k, v = _inputs(2, 40, 3, wt=6.0, seed=13)
    y = bi_wkv(w, u, k, v, token_split=16, eps=1e-6, impl="naive")
    for t in (0, 2, 3, 39):
        assert torch.allclose(_literal_row(w, u, k, v, t, 3, 1e-6), y[:, t], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", IMPLS)
def test_low_precision_inputs_keep_their_dtype(dtype, impl):
    w, u, k, v = _inputs(2, 33, 4, dtype=dtype)
    ins = [leaf(x, dtype) for x in (w, u, k, v)]
    y = bi_wkv(*ins, impl=impl)
    assert y.dtype == dtype
    ref = bi_wkv(*(x.detach().float() for x in (w, u, k, v)), impl=impl)
    assert (y.float() - ref).abs().max().item() < 2e-2
    y.float().sum().backward()
    assert all(x.grad.dtype == dtype for x in ins)


def test_mixed_dtypes_compute_in_float64_and_return_dtype_of_v():
    w, u, k, v = _inputs(1, 9, 2)
    y = bi_wkv(w.float(), u.float(), k, v.float())
    assert y.dtype == torch.float32
    ref = bi_wkv(w.float().double(), u.float().double(), k, v.float().double())
    assert (y.double() - ref).abs().max().item() < 1e-6


def test_empty_sequence():
    w, u, k, v = _inputs(2, 1, 3)
    y = bi_wkv(w, u, k[:, :0], v[:, :0])
    assert y.shape == (2, 0, 3)


# ----------------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------------
def _ok():
    return _inputs(2, 5, 3, dtype=torch.float32)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: (a[0][:2], *a[1:]), r"expected w of shape \(C,\)"),
        (lambda a: (a[0], a[1][None], *a[2:]), r"expected u of shape \(C,\)"),
        (lambda a: (a[0], a[1], a[2][0], a[3]), r"expected k of shape \(B, T, C\)"),
        (lambda a: (*a[:3], a[3][:, :4]), r"expected v of the same shape as k"),
        (lambda a: (*a[:3], a[3].long()), r"expected v to have a floating-point dtype"),
        (lambda a: (a[0].int(), *a[1:]), r"expected w to have a floating-point dtype"),
        (lambda a: (a[0].to("meta"), *a[1:]), r"expected w, u, k, v on one device"),
        (lambda a: (a[0].tolist(), *a[1:]), r"expected w to be a torch.Tensor"),
    ],
)
def test_validation_of_tensors(mutate, match):
    with pytest.raises(ValueError, match=match):
        bi_wkv(*mutate(_ok()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"impl": "cuda"}, r"expected impl in .*, got 'cuda'"),
        ({"token_split": 0}, r"expected token_split to be None or an int >= 1, got 0"),
        ({"token_split": 2.5}, r"expected token_split to be None or an int >= 1, got 2.5"),
        ({"eps": -1.0}, r"expected eps to be a finite float >= 0, got -1.0"),
    ],
)
def test_validation_of_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bi_wkv(*_ok(), **kwargs)


def test_naive_is_exported_and_differentiable():
    w, u, k, v = (leaf(x, torch.float64) for x in _inputs(1, 7, 2))
    y = bi_wkv_naive(w, u, k, v, 4, 0.0)
    y.sum().backward()
    assert k.grad is not None and torch.isfinite(k.grad).all()
