"""``ops.lean_linear``: mix_linear and squared_relu_linear keep only their arguments for the backward, and give
the values and gradients of the plain ops."""

from __future__ import annotations

import pytest
import torch
from saved import saved_bytes

from medurwkv.ops import mix_linear, squared_relu_linear
from medurwkv.ops.lean_linear import mix_linear_reference, squared_relu_linear_reference


def _squared_relu_args(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, 9, 16, generator=g, dtype=dtype)  # (B, T, Hd), about half of it negative
    a[0, 0, :4] = 0.0  # the kink of the ReLU
    return a, torch.randn(5, 16, generator=g, dtype=dtype)  # weight (C, Hd)


def _mix_args(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, xx = (torch.randn(2, 9, 6, generator=g, dtype=dtype) for _ in range(2))  # (B, T, C)
    mix = torch.rand(1, 1, 6, generator=g, dtype=dtype)  # as a block's spatial_mix_k
    return x, xx, mix, torch.randn(5, 6, generator=g, dtype=dtype)  # weight (C_out, C)


OPS = {
    "squared_relu_linear": (squared_relu_linear, squared_relu_linear_reference, _squared_relu_args),
    "mix_linear": (mix_linear, mix_linear_reference, _mix_args),
}


def _run(fn, args, gy=None):
    leaves = [t.clone().requires_grad_(True) for t in args]
    y = fn(*leaves)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=y.dtype) if gy is None else gy
    (y * gy).sum().backward()
    return y, [t.grad for t in leaves]


@pytest.mark.parametrize("name", OPS)
def test_values_and_gradients_match_the_plain_ops(name):
    fn, ref, make = OPS[name]
    args = make()
    y, grads = _run(fn, args)
    y_ref, grads_ref = _run(ref, args)
    assert torch.equal(y, y_ref)  # the same forward ops
    for got, want in zip(grads, grads_ref):
        assert got.shape == want.shape and want.abs().max() > 0.1
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


def test_no_gradient_through_the_flat_half_of_the_relu():
    a, w = _squared_relu_args()
    _, (ga, _) = _run(squared_relu_linear, (a, w))
    assert (ga[a <= 0] == 0).all()


@pytest.mark.parametrize("name", OPS)
def test_gradcheck_float64(name):
    fn, _, make = OPS[name]
    args = make(torch.float64, seed=1)
    if name == "squared_relu_linear":  # keep finite differences away from the kink at 0
        args = (torch.where(args[0] >= 0, args[0] + 0.05, args[0] - 0.05), args[1])
    leaves = tuple(t.requires_grad_(True) for t in args)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


def test_only_the_arguments_are_kept_for_the_backward():
    a, w = (t.requires_grad_(True) for t in _squared_relu_args())
    assert saved_bytes(lambda: squared_relu_linear(a, w)) == a.nbytes + w.nbytes
    # the plain ops keep relu(a) (for the ReLU and the square) and relu(a)² (for the product)
    assert saved_bytes(lambda: squared_relu_linear_reference(a, w)) == 2 * a.nbytes + w.nbytes
    x, xx, mix, w = (t.requires_grad_(True) for t in _mix_args())
    kept = x.nbytes + xx.nbytes + mix.nbytes + w.nbytes
    assert saved_bytes(lambda: mix_linear(x, xx, mix, w)) == kept
    # the plain ops keep the mixed input too (and 1 - mix)
    assert saved_bytes(lambda: mix_linear_reference(x, xx, mix, w)) == kept + x.nbytes + mix.nbytes


@pytest.mark.parametrize("name", OPS)
def test_without_gradient_it_is_the_plain_function(name):
    fn, ref, make = OPS[name]
    args = make()
    assert fn(*args).grad_fn is None  # nothing requires a gradient
    leaves = [t.requires_grad_(True) for t in args]
    with torch.no_grad():
        assert torch.equal(fn(*leaves), ref(*leaves))


@pytest.mark.parametrize("name", OPS)
def test_autocast_gradients_have_the_input_dtypes(name):
    # Under autocast the forward's product runs in bfloat16; the backward returns float32 gradients for the
    # float32 inputs, close to what autograd gives for the plain ops under the same autocast.
    fn, ref, make = OPS[name]
    args = make()
    out = {}
    for key, f in (("lean", fn), ("plain", ref)):
        leaves = [t.clone().requires_grad_(True) for t in args]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = f(*leaves)
        assert y.dtype == torch.bfloat16
        (y.float() * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        assert all(t.grad.dtype == torch.float32 for t in leaves)
        out[key] = [t.grad for t in leaves]
    for lean, plain in zip(out["lean"], out["plain"]):
        assert torch.allclose(lean, plain, rtol=2e-2, atol=2e-2 * plain.abs().max().item())
