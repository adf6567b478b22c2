"""Tests of the export-friendly Bi-WKV (``impl="scan"``): golden kernel values, naive reference, stabiliser,
numerical range, the doubling running max, the ``impl="auto"`` dispatch and ONNX export with a dynamic T."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest
import torch
from wkv_testing import err, leaf, random_inputs, rel

from medurwkv.ops import bi_wkv
from medurwkv.ops.bi_wkv.chunked import bi_wkv_chunked
from medurwkv.ops.bi_wkv.scan import _cummax_rows, _doubling, bi_wkv_scan

# the module itself (the package attribute medurwkv.ops.bi_wkv is the function)
bi_wkv_mod = importlib.import_module("medurwkv.ops.bi_wkv")

KERNEL_OPTIONS = [(32, 1e-6), (32, 0.0), (16, 1e-6), (16, 0.0), (None, 1e-6), (None, 0.0)]


def _inputs(B, T, C, *, wt=8.0, **kw):
    return random_inputs(B, T, C, wt=wt, **kw)


def _value_and_grads(ins, gy, **kw):
    leaves = [leaf(x, torch.float64) for x in ins]
    y = bi_wkv(*leaves, **kw)
    return (y, *torch.autograd.grad((y * gy).sum(), leaves))


# ----------------------------------------------------------------------------------------------------------------
# exactness
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scan_golden_outputs(golden, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for case in golden["cases"]:
        w, u, k, v = (case[n].to(dtype) for n in "wukv")
        for name, spec in golden["kernels"].items():
            y = bi_wkv(w, u, k, v, token_split=spec["token_split"], eps=spec["eps"], impl="scan")
            assert y.dtype == dtype and y.shape == k.shape
            diff = (y.double() - case[f"y_{name}"]).abs().max().item()
            assert diff < tol, (case["T"], case["tag"], name, diff)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scan_golden_gradients(golden, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for gc in golden["grad_cases"]:
        case = golden["cases"][gc["case_index"]]
        ins = [leaf(case[n], dtype) for n in "wukv"]
        y = bi_wkv(*ins, token_split=gc["token_split"], eps=gc["eps"], impl="scan")
        (y * gc["gy"].to(dtype)).sum().backward()
        for n, x in zip("wukv", ins):
            r = rel(x.grad, gc[f"d{n}"])
            assert r < tol, (gc["T"], gc["kernel"], n, r)


@pytest.mark.parametrize("T", [1, 2, 5, 31, 33, 197, 1000])
@pytest.mark.parametrize("token_split,eps", KERNEL_OPTIONS)
def test_scan_matches_naive(T, token_split, eps):
    B, C = (1, 2) if T >= 1000 else (2, 3)
    ins = _inputs(B, T, C, seed=T)
    gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _value_and_grads(ins, gy, token_split=token_split, eps=eps, impl="naive")
    got = _value_and_grads(ins, gy, token_split=token_split, eps=eps, impl="scan")
    for n, a, b in zip("ywukv", got, ref):
        assert err(a, b) < 1e-12, n
    y32 = bi_wkv(*(x.float() for x in ins), token_split=token_split, eps=eps, impl="scan")
    assert y32.dtype == torch.float32
    assert err(y32, ref[0]) < 1e-5


@pytest.mark.parametrize("token_split", [1, 3, 16, 32, 33, 64, 100, None])
@pytest.mark.parametrize("T", [1, 5, 33, 97, 200])
def test_scan_stabiliser_is_exact(T, token_split):
    # eps = 1 makes the eps·e^{no_t} term as large as the sums, so any error in no_t shows in y; both signs of w
    # (w > 0 needs the in-chunk prefix max, w < 0 the widened chunk max); token_split 33/64/100 put several
    # kernel chunks in one compute chunk.
    ins = _inputs(2, T, 4, wt=8.0, seed=100 + T)
    ins[0] = torch.tensor([-8.0, -0.5, 0.5, 8.0], dtype=torch.float64) / T
    # token_split < 8 with |w|·T = 8: the kernel formula itself is ill-conditioned (ghost terms cancel)
    tol = 1e-10 if token_split is not None and token_split < 8 else 1e-12
    for eps in (1.0, 1e-6):
        y = bi_wkv(*ins, token_split=token_split, eps=eps, impl="scan")
        ref = bi_wkv(*ins, token_split=token_split, eps=eps, impl="naive")
        assert err(y, ref) < tol, eps


@pytest.mark.parametrize("wt", [-30.0, -10.0, 10.0, 30.0])
@pytest.mark.parametrize("T", [1, 2, 5, 197, 1000])
def test_scan_strong_decay_and_large_key_range(wt, T):
    C = 4
    ins = _inputs(1, T, C, wt=1.0, krange=2.0, seed=7)
    ins[0] = torch.full((C,), wt / T, dtype=torch.float64)
    ins[2][0, ::13] += 70.0  # key range along T > 100
    ins[2][0, T // 4 : T // 4 + 10] -= 60.0
    assert T < 13 or (ins[2].amax() - ins[2].amin()).item() > 100
    for token_split, eps in ((32, 1e-6), (16, 0.0), (None, 1e-6)):
        ref = bi_wkv(*ins, token_split=token_split, eps=eps, impl="naive")
        assert torch.isfinite(ref).all()
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            leaves = [leaf(x, dtype) for x in ins]
            y = bi_wkv(*leaves, token_split=token_split, eps=eps, impl="scan")
            y.sum().backward()
            assert torch.isfinite(y).all() and all(torch.isfinite(x.grad).all() for x in leaves)
            assert rel(y, ref) < tol, (token_split, dtype)


def test_scan_long_sequence_matches_chunked():
    T, C = 20001, 3  # not a multiple of 32: Tc = 626, the last chunk is short
    ins = _inputs(1, T, C, seed=11)
    ins[0] = torch.tensor([-10.0, 0.5, 10.0], dtype=torch.float64) / T
    ins[2][0, ::977] += 60.0
    ins[2][0, 5000:5100] -= 70.0
    for token_split in (32, None):
        ref = bi_wkv_chunked(*ins, token_split, 1e-6)
        assert rel(bi_wkv_scan(*ins, token_split, 1e-6), ref) < 1e-12
        y32 = bi_wkv_scan(*(x.float() for x in ins), token_split, 1e-6)
        assert rel(y32, ref) < 1e-5


def test_scan_low_precision_inputs_keep_their_dtype():
    ins = [leaf(x, torch.bfloat16) for x in _inputs(2, 33, 4)]
    y = bi_wkv(*ins, impl="scan")
    assert y.dtype == torch.bfloat16
    ref = bi_wkv(*(x.detach().float() for x in ins), impl="chunked")
    assert (y.float() - ref).abs().max().item() < 2e-2
    y.float().sum().backward()
    assert all(x.grad.dtype == torch.bfloat16 for x in ins)


# ----------------------------------------------------------------------------------------------------------------
# running max by doubling (ONNX has no cummax)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("M", [1, 2, 7, 16, 17, 100, 512])
def test_running_max_matches_cummax(M, reverse):
    x = torch.randn(2, 3, M, 5, dtype=torch.float64)
    x[..., M // 3, :] = float("-inf")  # -inf entries (padding) are neutral
    ref = (x.flip(2).cummax(2).values.flip(2)) if reverse else x.cummax(2).values
    for fn in (_doubling, _cummax_rows):
        assert torch.equal(fn(x, reverse, 9), ref), fn.__name__  # 2**9 = 512 >= M: exact


def test_running_max_is_only_exact_up_to_two_to_the_steps():
    # documents the limit of the fixed step count: 2**5 = 32 < 100 positions
    x = torch.zeros(1, 1, 100, 1, dtype=torch.float64)
    x[0, 0, 0, 0] = 1.0
    assert _cummax_rows(x, False, 7)[0, 0, -1, 0] == 1.0
    assert _cummax_rows(x, False, 5)[0, 0, -1, 0] == 0.0


# ----------------------------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def scan_calls(monkeypatch) -> list:
    calls: list = []

    def spy(*args):
        calls.append(tuple(args[2].shape))
        return bi_wkv_scan(*args)

    monkeypatch.setattr(bi_wkv_mod, "bi_wkv_scan", spy)
    return calls


def test_auto_is_chunked_in_eager_mode(scan_calls):
    w, u, k, v = _inputs(1, 40, 3, dtype=torch.float32)
    y = bi_wkv(w, u, k, v)
    assert scan_calls == []
    assert torch.equal(y, bi_wkv(w, u, k, v, impl="chunked"))
    assert rel(bi_wkv(w, u, k, v, impl="scan"), y) < 1e-5 and len(scan_calls) == 1


@pytest.mark.parametrize("flag", ["torch.onnx.is_in_onnx_export", "torch.compiler.is_exporting"])
def test_auto_is_scan_while_exporting(scan_calls, monkeypatch, flag):
    mod, name = flag.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(mod), name, lambda: True)
    w, u, k, v = _inputs(1, 40, 3, dtype=torch.float32)
    bi_wkv(w, u, k, v)
    assert scan_calls == [(1, 40, 3)]


def test_auto_is_scan_under_jit_trace_and_the_trace_is_T_dynamic(scan_calls):
    w, u = _inputs(1, 64, 3, dtype=torch.float32)[:2]

    def f(k, v):
        return bi_wkv(w, u, k, v, token_split=16, eps=1e-6)

    k, v = _inputs(2, 64, 3, seed=1, dtype=torch.float32)[2:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace itself is deprecated
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no value-dependent Python decisions
        traced = torch.jit.trace(f, (k, v), check_trace=False)
    assert [tuple(s) for s in scan_calls] == [(2, 64, 3)]
    assert "PythonOp" not in str(traced.graph)  # no custom autograd.Function
    k2, v2 = _inputs(1, 100, 3, seed=2, dtype=torch.float32)[2:]  # another T and Tc = 7 instead of 4
    assert rel(traced(k2, v2), f(k2, v2)) < 1e-5


def test_scan_is_an_accepted_impl_and_others_are_not():
    w, u, k, v = _inputs(2, 5, 3, dtype=torch.float32)
    assert bi_wkv(w, u, k, v, impl="scan").shape == (2, 5, 3)
    with pytest.raises(ValueError, match=r"expected impl in \(.*'scan'\), got 'onnx'"):
        bi_wkv(w, u, k, v, impl="onnx")


# ----------------------------------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------------------------------
class _TinyWKV(torch.nn.Module):
    """Linear -> Bi-WKV with the model's w = decay / T, u = first / T (T from the input shape)."""

    def __init__(self, token_split: int | None, eps: float, C: int = 8) -> None:
        super().__init__()
        self.token_split, self.eps = token_split, eps
        self.kv = torch.nn.Linear(C, 2 * C)
        self.decay = torch.nn.Parameter(torch.linspace(-5.0, 3.0, C))  # the fancy-init range: both signs
        self.first = torch.nn.Parameter(torch.randn(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        k, v = self.kv(x).chunk(2, dim=-1)
        return bi_wkv(self.decay / T, self.first / T, 3.0 * k, v, token_split=self.token_split, eps=self.eps)


def _ort_session(path: Path):
    import onnxruntime as ort  # a dev dependency: missing, the test fails rather than skips

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _check_other_sizes(model: torch.nn.Module, path: Path, sizes) -> None:
    import onnx

    graph = onnx.load(str(path)).graph
    assert all(node.domain in ("", "ai.onnx") for node in graph.node)  # standard ops only
    sess = _ort_session(path)
    gen = torch.Generator().manual_seed(5)
    for B, T in sizes:
        x = torch.randn(B, T, 8, generator=gen)
        with torch.no_grad():
            ref = model(x)  # eager: impl="auto" is the chunked path here
        out = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
        assert out.shape == (B, T, 8)
        assert (out - ref).abs().max().item() < 1e-4, (B, T)


@pytest.mark.parametrize("token_split,eps", [(16, 0.0), (None, 0.0), (32, 1e-6)])
def test_onnx_export_legacy_is_dynamic_in_batch_and_T(tmp_path, token_split, eps):
    torch.manual_seed(0)
    model = _TinyWKV(token_split, eps).eval()
    path = tmp_path / "wkv.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based ONNX export"
        warnings.simplefilter("error", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            model,
            (torch.randn(2, 64, 8),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}},
            opset_version=17,
            dynamo=False,
        )
    # exported at T = 64 (Tc = 4 / 2 for token_split 16 / 32); T = 100 is no multiple of the split and has
    # Tc = 7 / 4; T = 257 leaves empty kernel chunks; T = 1 has |w| = |decay| (large position factors)
    _check_other_sizes(model, path, [(1, 100), (3, 257), (1, 1)])


@pytest.mark.slow
def test_onnx_export_dynamo_is_dynamic_in_batch_and_T(tmp_path):
    torch.manual_seed(0)
    model = _TinyWKV(32, 1e-6).eval()
    batch, tokens = torch.export.Dim("B", min=1, max=64), torch.export.Dim("T", min=2, max=1 << 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (torch.randn(2, 64, 8),),
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes=({0: batch, 1: tokens},),
            opset_version=18,  # the dynamo exporter's own minimum; 17 is only reached by conversion
            dynamo=True,
        )
    path = tmp_path / "wkv_dynamo.onnx"
    program.save(str(path))
    _check_other_sizes(model, path, [(1, 100), (3, 257), (2, 7)])
