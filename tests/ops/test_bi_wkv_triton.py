"""The fused Triton Bi-WKV kernels, run in Triton's interpreter on CPU tensors, against the naive reference.

``TRITON_INTERPRET=1`` is set per test (``monkeypatch``); :mod:`medurwkv.ops.bi_wkv.triton` builds its kernel on
first use once per mode, so this works alone and when the whole suite runs in one process, whatever imported
the module before. The interpreter runs every kernel op as a numpy call (about 6 ms per token forward and
11 ms backward for one program, whatever the number of lanes), so the shapes are small and T = 1024 appears
once.

Error measure (``wkv_testing.err``): max|a - b| / max(max|b|, 1) per tensor, i.e. relative for the O(1) and
larger outputs and gradients, absolute for gradients that are (near) zero (du and dk at T = 1 with eps = 0).
Float32 target: 1e-5 (asserted for y and all four gradients). float16 / bfloat16 inputs: the reference runs on
the same rounded inputs in float64; tolerance 2e-3 (float16) and 1.6e-2 (bfloat16): a few units of the output's
rounding (2^-11 and 2^-8), since the kernel accumulates in float32 and rounds only the results.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from wkv_testing import err, leaf, random_inputs

from medurwkv.ops.bi_wkv.naive import bi_wkv_naive
from medurwkv.ops.bi_wkv.triton import bi_wkv_triton_backward, bi_wkv_triton_forward, triton_available

F32_TOL = 1e-5


@pytest.fixture
def interp(monkeypatch):
    """Triton's interpreter for this test; a missing triton fails in CI and skips (with the reason) elsewhere."""
    if not triton_available():
        msg = "expected the triton package (CI pins it) to test the Triton Bi-WKV kernels, found none"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(msg)
        pytest.skip(msg)
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _block(B: int, C: int) -> int:
    """One program for all B·C lanes (the interpreter's cost is per program and token, not per lane)."""
    return 1 << max(0, (B * C - 1).bit_length())


def _reference(w, u, k, v, token_split, eps, gy):
    """y and (dw, du, dk, dv) of the naive reference in float64 (autograd)."""
    ins = [leaf(x, torch.float64) for x in (w, u, k, v)]
    y = bi_wkv_naive(*ins, token_split, eps)
    return y.detach(), torch.autograd.grad((y * gy.double()).sum(), ins)


def _compare(w, u, k, v, gy, token_split, eps, tol, block=None):
    """Runs the Triton forward and backward on the given tensors and checks them against the reference."""
    B, T, C = k.shape
    block = block or _block(B, C)
    y = bi_wkv_triton_forward(w, u, k, v, token_split, eps, block=block)
    grads = bi_wkv_triton_backward(w, u, k, v, token_split, eps, gy, block=block)
    assert y.dtype == v.dtype and y.shape == k.shape
    ref_y, ref_g = _reference(w, u, k, v, token_split, eps, gy)
    errors = {"y": err(y, ref_y)}
    for name, g, rg, x in zip("wukv", grads, ref_g, (w, u, k, v)):
        assert g.dtype == x.dtype and g.shape == x.shape, name
        errors[f"d{name}"] = err(g, rg)
    assert max(errors.values()) < tol, (T, token_split, eps, errors)


def _inputs(B, T, C, seed, **kw):
    w, u, k, v = random_inputs(B, T, C, wt=8.0, seed=seed, dtype=torch.float32, **kw)
    gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(seed + 1))
    return w, u, k, v, gy


# every official variant at the edge lengths: T = 1, T <= token_split (one token per chunk), T = token_split ± 1
# (a partial last chunk), T = 197 (Tc = 7 / 13 with a partial last chunk) and the ideal form; C = 5 is not a
# multiple of the block (16 lanes for B·C = 10)
CASES = [
    (1, 32, 1e-6),
    (1, None, 0.0),
    (2, 16, 0.0),
    (2, None, 1e-6),
    (31, 32, 1e-6),
    (31, 16, 0.0),
    (32, 32, 0.0),
    (32, None, 1e-6),
    (33, 32, 1e-6),
    (33, 16, 0.0),
    (33, None, 0.0),
    (197, 32, 1e-6),
]


@pytest.mark.parametrize("T,token_split,eps", CASES)
def test_matches_naive(interp, T, token_split, eps):
    _compare(*_inputs(2, T, 5, seed=T), token_split, eps, F32_TOL)


def test_matches_naive_long(interp):
    # T = 1024: Tc = 64 with 16 chunks, eps > 0 (every part of the stabiliser)
    w, u, k, v, gy = _inputs(2, 1024, 3, seed=11)
    _compare(w, u, k, v, gy, 16, 1e-6, F32_TOL)


def test_several_programs_and_lanes_across_batches(interp):
    # block 4 for B·C = 15 lanes: 4 programs, lanes of one program span two batch items, a masked tail
    w, u, k, v, gy = _inputs(3, 33, 5, seed=4)
    _compare(w, u, k, v, gy, 4, 1e-6, F32_TOL, block=4)


@pytest.mark.parametrize("wt", [-10.0, 10.0])
def test_large_key_range_and_strong_decay(interp, wt):
    T, C = 197, 4
    w, u, k, v, gy = _inputs(2, T, C, seed=7, krange=2.0)
    w = torch.full((C,), wt / T)
    k[0, ::13] += 70.0  # key range along T above 100
    k[1, 50:60] -= 60.0
    assert (k.amax() - k.amin()).item() > 100
    _compare(w, u, k, v, gy, 32, 1e-6, F32_TOL)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_inputs(interp, dtype, tol):
    w, u, k, v, gy = (x.to(dtype) for x in _inputs(2, 33, 5, seed=9))
    _compare(w, u, k, v, gy, 32, 1e-6, tol)


def test_non_contiguous_inputs(interp):
    w, u, k, v, gy = _inputs(2, 9, 4, seed=2)
    kt, vt, gt = (x.transpose(0, 1).contiguous().transpose(0, 1) for x in (k, v, gy))  # (B, T, C) views
    assert not kt.is_contiguous()
    y = bi_wkv_triton_forward(w, u, kt, vt, 4, 1e-6, block=8)
    assert torch.equal(y, bi_wkv_triton_forward(w, u, k, v, 4, 1e-6, block=8))
    for a, b in zip(
        bi_wkv_triton_backward(w, u, kt, vt, 4, 1e-6, gt, block=8),
        bi_wkv_triton_backward(w, u, k, v, 4, 1e-6, gy, block=8),
    ):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------------
# golden kernel outputs and gradients (official kernel arithmetic, float64 references)
# ----------------------------------------------------------------------------------------------------------------
# the interpreter is slow (about 6 ms per token forward): T = 1, 33, 196 (Tc = 7, the VRWKV-T case) and the
# large-key case; the longer golden cases are covered by the chunked path's tests and test_matches_naive_long
GOLDEN_FORWARD_T = (1, 33, 196)


def test_golden_outputs(interp, golden):
    cases = [c for c in golden["cases"] if c["T"] in GOLDEN_FORWARD_T or c["tag"] == "large_k"]
    assert len(cases) == 4
    for case in cases:
        w, u, k, v = (case[n].float() for n in "wukv")
        for name, spec in golden["kernels"].items():
            y = bi_wkv_triton_forward(
                w, u, k, v, spec["token_split"], spec["eps"], block=_block(*k.shape[::2])
            )
            e = err(y, case[f"y_{name}"])
            assert e < F32_TOL, (case["T"], case["tag"], name, e)


def test_golden_gradients(interp, golden):
    grad_cases = golden["grad_cases"]
    assert {gc["T"] for gc in grad_cases} >= {33, 196} and len(grad_cases) >= 4
    # both T = 33 cases, and T = 196 for the (16, 0) kernel (the other one costs another 2 s in the interpreter)
    chosen = [gc for gc in grad_cases if gc["T"] == 33 or gc["kernel"] == "ts16_eps0"]
    for gc in chosen:
        case = golden["cases"][gc["case_index"]]
        w, u, k, v = (case[n].float() for n in "wukv")
        grads = bi_wkv_triton_backward(
            w, u, k, v, gc["token_split"], gc["eps"], gc["gy"].float(), block=_block(*k.shape[::2])
        )
        for n, g in zip("wukv", grads):
            e = err(g, gc[f"d{n}"])
            assert e < F32_TOL, (gc["T"], gc["kernel"], n, e)


# ----------------------------------------------------------------------------------------------------------------
# availability and input checks
# ----------------------------------------------------------------------------------------------------------------
def test_triton_available_never_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes ``import triton`` raise ImportError
    assert triton_available() is False


def test_rejects_float64_and_mismatched_shapes(interp):
    w, u, k, v, gy = _inputs(1, 4, 3, seed=0)
    with pytest.raises(ValueError, match="float64"):
        bi_wkv_triton_forward(w.double(), u, k, v, 32, 0.0)
    with pytest.raises(ValueError, match=r"expected k, v \(and gy\) of one shape"):
        bi_wkv_triton_backward(w, u, k, v, 32, 0.0, gy[:, :2])
    with pytest.raises(ValueError, match=r"expected w and u of shape \(3,\)"):
        bi_wkv_triton_forward(w[:2], u, k, v, 32, 0.0)


def test_cpu_tensors_need_the_interpreter(interp, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    w, u, k, v, _ = _inputs(1, 4, 3, seed=0)
    with pytest.raises(ValueError, match="expected CUDA tensors"):
        bi_wkv_triton_forward(w, u, k, v, 32, 0.0)
