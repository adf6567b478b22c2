"""CUDA-only checks: training on a GPU (AMP bf16/fp16), SyncBatchNorm under a 1-process NCCL group, and the Triton
Bi-WKV against the chunked path on CUDA tensors (forward and all four gradients).

Every test here skips with a reason where CUDA is absent; ``benchmarks/gpu_check.sh`` runs them on a GPU machine
(the AMP tests with the WKV-in-float32 check are in ``test_amp.py``).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_testing import make_disks, read_metrics
from torch import Tensor

import medurwkv.models.layers as layers
from medurwkv import create_model
from medurwkv.engine.checkpoint import load_model
from medurwkv.engine.config import TrainConfig
from medurwkv.engine.distributed import DistInfo
from medurwkv.engine.train import fit
from medurwkv.engine.train_loop import build_trainer
from medurwkv.models import QUICK_OVERRIDES
from medurwkv.ops import bi_wkv
from medurwkv.ops.bi_wkv import bi_wkv_naive

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (torch.cuda.is_available() is False); benchmarks/gpu_check.sh runs it on a GPU",
)

_QUICK = QUICK_OVERRIDES["med_urwkv_t"]
# no stochastic depth: two runs of the same weights must compute the same function
TINY_URWKV = {**_QUICK, "encoder_overrides": {**_QUICK["encoder_overrides"], "drop_path_rate": 0.0}}


def _need_triton() -> None:
    from medurwkv.ops.bi_wkv.triton import triton_available

    if not triton_available():
        pytest.skip(
            "needs Triton (import triton failed); the CUDA wheels of torch ship it: pip install triton"
        )


# ------------------------------------------------------------------------------------------- training on CUDA


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_fit_on_cuda_with_amp_and_reload_on_cpu(amp_dtype: str, tmp_path: Path):
    data = make_disks(tmp_path / "disks", n=12, size=32)
    r = fit(
        data=data,
        out=tmp_path / "run",
        model="med_urwkv_t",
        model_kwargs=TINY_URWKV,
        pretrained=False,  # from scratch: no test downloads the official release
        device="cuda",
        amp=True,
        amp_dtype=amp_dtype,
        epochs=2,
        batch_size=2,
        img_size=32,
        limit=4,  # 4 training images: two full batches per epoch
        num_workers=0,
        progress=False,
        eval_test=False,
        tensorboard=False,
    )
    assert r.epochs_completed == 2
    log = (tmp_path / "run" / "train.log").read_text()
    assert "on cuda" in log and f"mixed precision: autocast {amp_dtype}" in log
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert all(math.isfinite(float(row[k])) for row in rows for k in ("train_loss", "val_loss", "val_dice"))

    # a checkpoint written on the GPU serves on the CPU: same logits (float32, no autocast) on both devices
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    gpu, _ = load_model(r.best_checkpoint, device="cuda")
    cpu, _ = load_model(r.best_checkpoint, device="cpu")
    with torch.no_grad():
        a, b = gpu(x.cuda()).cpu(), cpu(x)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)  # cuDNN may use TF32 convolutions


def _batch(seed: int, n: int = 4, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 1, size, size, generator=g),
        "mask": (torch.rand(n, size, size, generator=g) > 0.6).long(),
        "id": [f"case{seed}_{i}" for i in range(n)],
    }


def _three_steps(info: DistInfo, amp: bool) -> tuple[list[float], Any, list[str]]:
    """Three optimizer steps of the tiny Med-URWKV-T on cuda:0 under ``info``: the losses (sums over the
    batch), the trainer and its log lines."""
    cfg = TrainConfig(
        model="med_urwkv_t", model_kwargs=TINY_URWKV, pretrained=False, sync_bn=True, amp=amp, lr=1e-3
    )
    torch.manual_seed(0)
    model = create_model("med_urwkv_t", in_channels=1, num_classes=2, **TINY_URWKV)
    lines: list[str] = []
    tr = build_trainer(cfg, model, 3, torch.device("cuda", 0), info, lines.append)
    tr.set_frozen(False, 0, lines.append)
    losses = [tr._step(_batch(s), f"step {s}", 0)[0] for s in range(3)]
    return losses, tr, lines


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp-fp16"])
def test_sync_batchnorm_and_ddp_with_one_nccl_process(amp: bool, tmp_path: Path):
    """SyncBatchNorm + DDP over an NCCL group of one process computes what plain BatchNorm does.

    ``fit`` (and ``torchrun --nproc_per_node 1``) treat WORLD_SIZE=1 as a single process, without DDP: the
    group is therefore started here and the trainer is given a distributed ``DistInfo`` directly.
    """
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("needs NCCL (torch.distributed.is_nccl_available() is False)")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        info = DistInfo(rank=0, world_size=1, local_rank=0, enabled=True, backend="nccl")
        got, tr, lines = _three_steps(info, amp)
        assert any("SyncBatchNorm" in ln for ln in lines), lines
        n_sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in tr.model.modules())
        assert n_sync > 0, "expected the tiny Med-URWKV-T's BatchNorms converted to SyncBatchNorm"
        assert isinstance(tr.train_module, torch.nn.parallel.DistributedDataParallel)
    finally:
        dist.destroy_process_group()
    ref, ref_tr, _ = _three_steps(DistInfo(), amp)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in ref_tr.model.modules())
    assert all(math.isfinite(x) for x in got)
    # same data, same initial weights: one process's SyncBN statistics are the batch's own (cuDNN/atomics noise)
    assert got == pytest.approx(ref, rel=1e-3 if amp else 1e-4)


# ------------------------------------------------------------------------------------------- Triton Bi-WKV


def _wkv_inputs(B: int, T: int, C: int, dtype: torch.dtype, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(C, generator=g) * 8 - 5) / T  # official init range of spatial_decay: [-5, 3]
    u = (torch.rand(C, generator=g) - 0.5) / T
    k = torch.randn(B, T, C, generator=g) * 3
    v = torch.randn(B, T, C, generator=g)
    return [w.cuda(), u.cuda(), k.cuda().to(dtype), v.cuda().to(dtype)]


def _fwd_bwd(impl: str, ins: list[Tensor], gy: Tensor, token_split: int | None, eps: float) -> list[Tensor]:
    leaves = [x.detach().clone().requires_grad_(True) for x in ins]
    if impl == "naive":
        y = bi_wkv_naive(*(x.double() for x in leaves), token_split, eps).to(ins[3].dtype)
    else:
        y = bi_wkv(*leaves, token_split=token_split, eps=eps, impl=impl)
    y.backward(gy)
    return [y.detach()] + [x.grad for x in leaves]


_NAMES = ("y", "dw", "du", "dk", "dv")


@pytest.mark.parametrize(
    "B, T, C, token_split, eps",
    [
        (1, 1, 5, 32, 1e-6),
        (2, 33, 7, 32, 1e-6),
        (2, 197, 64, 16, 0.0),
        (2, 1024, 192, 32, 1e-6),
        (1, 4097, 130, None, 1e-6),
        (1, 65536, 8, 32, 1e-6),
    ],
)
def test_triton_matches_chunked_on_cuda_float32(B: int, T: int, C: int, token_split: int | None, eps: float):
    _need_triton()
    ins = _wkv_inputs(B, T, C, torch.float32)
    gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(9)).cuda()
    tri = _fwd_bwd("triton", ins, gy, token_split, eps)
    ref = _fwd_bwd("chunked", ins, gy, token_split, eps)
    # Two float32 evaluations of one formula: ~1e-5 of the largest value; the per-step scans of the longest
    # sequences and the (C,) parameter gradients (sums over B·T terms) are allowed more rounding.
    tol = 1e-5 if T <= 4097 else 1e-4
    for name, a, b, c in zip(_NAMES, tri, ref, _errs_scale(ins, gy)):
        assert a.dtype == b.dtype and a.device.type == "cuda", name
        err = _rel_err(a, b, c)
        assert err < (10 * tol if name in ("dw", "du") else tol), f"{name}: max error {err:.3g} of max |ref|"
    if T <= 197:  # the O(T²) reference itself (float64) where it is cheap
        naive = _fwd_bwd("naive", ins, gy, token_split, eps)
        for name, a, b, c in zip(_NAMES, tri, naive, _errs_scale(ins, gy)):
            err = _rel_err(a, b, c)
            assert err < 1e-4, f"{name} vs naive: {err:.3g}"


def _errs_scale(ins: list[Tensor], gy: Tensor) -> list[float]:
    """A floor for the error scale of y, dw, du, dk, dv: where a result is tiny by cancellation (T = 1: y ≈ v,
    so du and dk are of the order of eps), its error is judged against the size of what entered it."""
    g = gy.abs().max().item()
    return [ins[3].abs().max().item(), g, g, g, g]


def _rel_err(a: Tensor, b: Tensor, floor: float) -> float:
    """max |a - b| over max(max |b|, floor)."""
    return ((a.double() - b.double()).abs().max() / max(b.abs().max().item(), floor)).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_half_inputs_on_cuda(dtype: torch.dtype):
    _need_triton()
    ins = _wkv_inputs(2, 1024, 96, dtype)
    gy = torch.randn(2, 1024, 96, generator=torch.Generator().manual_seed(3)).cuda().to(dtype)
    tri = _fwd_bwd("triton", ins, gy, 32, 1e-6)
    ref = _fwd_bwd("chunked", ins, gy, 32, 1e-6)
    for name, a, b in zip(_NAMES, tri, ref):
        assert a.dtype == b.dtype, f"{name}: expected {b.dtype}, got {a.dtype}"
        # both compute in float32 and round once: a few roundings of the dtype apart at most
        err = ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
        assert err < 4 * torch.finfo(dtype).eps, f"{name}: {err:.3g}"


def test_auto_picks_triton_on_cuda_without_warning():
    _need_triton()
    ins = _wkv_inputs(2, 300, 40, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the fallback to the chunked path warns so
        auto = bi_wkv(*ins, impl="auto")
        tri = bi_wkv(*ins, impl="triton")
    assert torch.equal(auto, tri)


def test_compiled_bi_wkv_has_no_graph_break_on_cuda():
    _need_triton()
    ins = [x.requires_grad_(True) for x in _wkv_inputs(2, 256, 32, torch.float32)]
    fn = torch.compile(lambda w, u, k, v: bi_wkv(w, u, k, v).square().sum(), fullgraph=True)
    loss = fn(*ins)
    grads = torch.autograd.grad(loss, ins)
    eager = [x.detach().clone().requires_grad_(True) for x in ins]
    ref_loss = bi_wkv(*eager).square().sum()
    ref = torch.autograd.grad(ref_loss, eager)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_tiny_model_triton_matches_chunked_on_cuda(monkeypatch: pytest.MonkeyPatch):
    """The whole tiny Med-URWKV-T, forward and backward, with every Bi-WKV call on Triton vs chunked."""
    _need_triton()
    original = layers.bi_wkv
    torch.manual_seed(0)
    model = create_model("med_urwkv_t", in_channels=1, num_classes=2, **TINY_URWKV).cuda().eval()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2)).cuda()
    out = {}
    for impl in ("triton", "chunked"):
        monkeypatch.setattr(layers, "bi_wkv", lambda *a, _i=impl, **kw: original(*a, **kw, impl=_i))
        model.zero_grad(set_to_none=True)
        y = model(x)
        y.square().mean().backward()
        out[impl] = (
            y.detach(),
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]),
        )
    torch.testing.assert_close(out["triton"][0], out["chunked"][0], rtol=1e-4, atol=1e-5)
    g_t, g_c = out["triton"][1], out["chunked"][1]
    assert ((g_t - g_c).norm() / g_c.norm()).item() < 1e-4
