"""The torch.library custom ops (medurwkv::bi_wkv, medurwkv::ms_deform_attn and their backward ops): opcheck
on the schemas, fake implementations and autograd registrations; values and gradients against the references."""

from __future__ import annotations

import pytest
import torch
from test_msda import SHAPES, make_inputs, reference_msda
from wkv_testing import err, leaf, random_inputs

import medurwkv.ops  # noqa: F401 - registers the ops
from medurwkv.ops.bi_wkv import bi_wkv_naive
from medurwkv.ops.msda import ms_deform_attn_pytorch

KERNELS = [(32, 1e-6), (16, 0.0), (None, 1e-6), (4, 1e-6)]


def _op_args(dtype, T=9, token_split=4, eps=1e-6, impl="chunked", seed=0):
    w, u, k, v = random_inputs(2, T, 3, wt=5.0, seed=seed, dtype=dtype)
    return tuple(leaf(x, dtype) for x in (w, u, k, v)) + (token_split, eps, impl)


def test_the_ops_are_registered_at_import():
    for name in ("bi_wkv", "bi_wkv_backward", "ms_deform_attn", "ms_deform_attn_backward"):
        assert hasattr(torch.ops.medurwkv, name), name
    schema = str(torch.ops.medurwkv.bi_wkv.default._schema)
    assert "SymInt? token_split, float eps, str impl) -> (Tensor, Tensor)" in schema


@pytest.mark.parametrize("token_split,eps", [(4, 1e-6), (None, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck_bi_wkv(token_split, eps, dtype):
    # schema, fake tensor (shapes/dtypes/strides of the fake vs the real outputs, also with dynamic shapes in
    # AOT dispatch) and the autograd registration; both the saved-stabiliser (eps > 0) and the empty case
    args = _op_args(dtype, token_split=token_split, eps=eps)
    torch.library.opcheck(torch.ops.medurwkv.bi_wkv.default, args)


def test_opcheck_bi_wkv_backward():
    w, u, k, v, ts, eps, impl = _op_args(torch.float64)
    y, no = torch.ops.medurwkv.bi_wkv(w, u, k, v, ts, eps, impl)
    assert no.shape == k.shape  # eps > 0: the stabiliser is kept for the backward
    gy = torch.randn_like(k)
    args = (gy, *(x.detach() for x in (w, u, k, v, no)), ts, eps, impl)
    torch.library.opcheck(torch.ops.medurwkv.bi_wkv_backward.default, args)
    # an empty stabiliser is recomputed, with the same result
    got = torch.ops.medurwkv.bi_wkv_backward(*args[:5], k.new_empty(0), ts, eps, impl)
    ref = torch.ops.medurwkv.bi_wkv_backward(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


@pytest.mark.parametrize("T", [1, 2, 31, 33])
@pytest.mark.parametrize("token_split,eps", KERNELS)
def test_bi_wkv_op_matches_naive(T, token_split, eps):
    w, u, k, v = random_inputs(2, T, 3, wt=8.0, seed=T)
    gy = torch.randn(2, T, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ins = [leaf(x, torch.float64) for x in (w, u, k, v)]
    y, _ = torch.ops.medurwkv.bi_wkv(*ins, token_split, eps, "chunked")
    got = (y, *torch.autograd.grad((y * gy).sum(), ins))
    ins = [leaf(x, torch.float64) for x in (w, u, k, v)]
    y_ref = bi_wkv_naive(*ins, token_split, eps)
    ref = (y_ref, *torch.autograd.grad((y_ref * gy).sum(), ins))
    for name, a, b in zip(("y", "dw", "du", "dk", "dv"), got, ref):
        assert err(a, b) < 1e-10, name


def test_bi_wkv_op_casts_low_precision_and_keeps_dtypes():
    # The op itself computes in float32 for half inputs (the fallback path relies on it), returns y in v's
    # dtype and each gradient in its input's dtype.
    w, u, k, v = random_inputs(1, 20, 4, wt=5.0, dtype=torch.float32)
    ins = [leaf(w, torch.float32), leaf(u, torch.float32), leaf(k, torch.bfloat16), leaf(v, torch.bfloat16)]
    y, no = torch.ops.medurwkv.bi_wkv(*ins, 32, 1e-6, "chunked")
    assert y.dtype == torch.bfloat16 and no.dtype == torch.float32
    y.float().sum().backward()
    assert [x.grad.dtype for x in ins] == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16]
    ref = bi_wkv_naive(w, u, k.bfloat16().float(), v.bfloat16().float(), 32, 1e-6)
    assert err(y, ref) < 1e-2


def test_bi_wkv_op_rejects_unknown_impl():
    with pytest.raises(ValueError, match=r"expected impl in .*got 'cuda'"):
        torch.ops.medurwkv.bi_wkv(*_op_args(torch.float64)[:6], "cuda")


# ----------------------------------------------------------------------------------------------------------------
# multi-scale deformable attention
# ----------------------------------------------------------------------------------------------------------------
def _flat(shapes):
    return [n for hw in shapes for n in hw]


def test_opcheck_ms_deform_attn():
    value, starts, loc, attn = make_inputs(torch.float64, B=1, Lq=3, M=2, Dh=2, P=2)
    args = tuple(x.requires_grad_() for x in (value, loc, attn))
    torch.library.opcheck(
        torch.ops.medurwkv.ms_deform_attn.default, (args[0], _flat(SHAPES), starts, args[1], args[2])
    )


def test_opcheck_ms_deform_attn_backward():
    value, starts, loc, attn = make_inputs(torch.float64, B=1, Lq=3, M=2, Dh=2, P=2)
    grad = torch.randn(1, 3, 4, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.medurwkv.ms_deform_attn_backward.default, (grad, value, _flat(SHAPES), starts, loc, attn)
    )


def test_ms_deform_attn_op_matches_reference_forward_and_backward():
    value, starts, loc, attn = make_inputs(torch.float64, lead=3)  # a leading non-level token: starts matter
    ins = [x.clone().requires_grad_() for x in (value, loc, attn)]
    out = torch.ops.medurwkv.ms_deform_attn(ins[0], _flat(SHAPES), starts, ins[1], ins[2])
    g = torch.randn_like(out)
    got = (out, *torch.autograd.grad((out * g).sum(), ins))
    ref_ins = [x.clone().requires_grad_() for x in (value, loc, attn)]
    ref_out = reference_msda(ref_ins[0], SHAPES, starts, ref_ins[1], ref_ins[2])
    ref = (ref_out, *torch.autograd.grad((ref_out * g).sum(), ref_ins))
    for name, a, b in zip(("out", "d_value", "d_loc", "d_attn"), got, ref):
        assert (a - b).abs().max().item() < 1e-10, name
        assert b.abs().max().item() > 1e-3, name  # not a comparison of two zero tensors


def test_ms_deform_attn_uses_the_op_only_under_torch_compile(monkeypatch):
    """Eager and export run the plain ops (eager training keeps its pre-op numbers bit for bit; exporters cannot
    translate a custom op); only torch.compile goes through medurwkv::ms_deform_attn."""
    from medurwkv.ops import msda

    value, starts, loc, attn = make_inputs(torch.float32)
    calls = []
    monkeypatch.setattr(
        msda,
        "msda_op",
        lambda *a: (
            calls.append("op") or msda.ms_deform_attn_pytorch(a[0], msda._pairs(a[1]), a[2], a[3], a[4])
        ),
    )
    plain = ms_deform_attn_pytorch(value, SHAPES, starts, loc, attn)
    assert torch.equal(msda.ms_deform_attn(value, SHAPES, starts, loc, attn), plain)
    assert calls == []  # eager: plain ops
    with monkeypatch.context() as m:
        m.setattr(torch.compiler, "is_exporting", lambda: True)
        assert torch.equal(msda.ms_deform_attn(value, SHAPES, starts, loc, attn), plain)
    assert calls == []  # export: plain ops
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(msda.ms_deform_attn(value, SHAPES, starts, loc, attn), plain)
    assert calls == ["op"]  # compile: the custom op
