"""Mixed precision (autocast) with the Bi-WKV computed in float32: the operator, the tiny Med-URWKV-T, ``fit``.

The trainer (``engine/train_loop.py``) supports autocast on any device: ``amp=None`` means "on for CUDA, off on
the CPU", ``amp=True`` turns it on for the CPU too (bfloat16, or float16 with a CPU GradScaler). Every test runs
on the CPU in bfloat16; the same tests run on CUDA in bfloat16 and float16 (GradScaler) and skip with a reason
where CUDA is absent (``benchmarks/gpu_check.sh`` runs them on a GPU machine).

How "the WKV runs in float32" is checked: a ``TorchDispatchMode`` records every aten op executed inside each
``bi_wkv`` call (forward and backward). Below autocast, it sees the ops as they really run. Except for the casts
and pure data movement, no op may read or write a float16/bfloat16 tensor; and the result must be the float32
result rounded once to the caller's dtype (a computation in half precision would be off by far more than one
rounding). The chunked path is one custom op (``medurwkv::bi_wkv``) called with float32 inputs. The Triton
path (CUDA) hands half-precision k, v to that op as they are and accumulates in float32 inside the kernels,
which the dispatcher does not see: there, the numerical check is what tests the float32 accumulation.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_testing import make_disks, read_metrics
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import medurwkv.models.layers as layers
from medurwkv import create_model
from medurwkv.engine.config import TrainConfig
from medurwkv.engine.distributed import DistInfo
from medurwkv.engine.train import fit
from medurwkv.engine.train_loop import build_trainer
from medurwkv.models import QUICK_OVERRIDES
from medurwkv.ops import bi_wkv

_NO_CUDA = (
    "needs a CUDA device (torch.cuda.is_available() is False); benchmarks/gpu_check.sh runs it on a GPU"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=_NO_CUDA)

# (device, autocast dtype): the CPU case always runs; the CUDA cases need a GPU
CASES = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=needs_cuda),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=needs_cuda),
]

_QUICK = QUICK_OVERRIDES["med_urwkv_t"]
# stochastic depth draws random numbers in the activation dtype: off, so that float32 and AMP runs drop the same
TINY_URWKV = {**_QUICK, "encoder_overrides": {**_QUICK["encoder_overrides"], "drop_path_rate": 0.0}}

# aten ops that only cast, move, allocate or fill data (their half-precision tensors are the caller's, e.g. the
# gradient buffers autograd allocates in the inputs' dtype, not the WKV's arithmetic)
_DATA_MOVEMENT = {
    "_to_copy",
    "copy_",
    "copy",
    "detach",
    "alias",
    "view",
    "_unsafe_view",
    "reshape",
    "clone",
    "contiguous",
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "zeros_like",
    "zeros",
    "new_zeros",
    "zero_",
    "fill_",
    "full",
    "new_full",
    "t",
    "transpose",
    "permute",
    "expand",
    "slice",
    "select",
    "unsqueeze",
    "squeeze",
    "as_strided",
}
_WIDE = (torch.float32, torch.float64)


class WkvPrecisionRecorder(TorchDispatchMode):
    """Records, for every aten op run while active, whether it computed on a half-precision tensor.

    ``computed``: names of the arithmetic ops seen; ``low``: ``(op, dtype)`` of those that read or wrote a
    float16/bfloat16 tensor; ``upcasts``: how many casts from half precision to float32/float64 ran; ``fused``:
    the Triton custom-op calls (``medurwkv::bi_wkv*`` with a Triton ``impl``), whose inside the dispatcher
    does not see.
    """

    def __init__(self) -> None:
        super().__init__()
        self.computed: list[str] = []
        self.low: list[tuple[str, torch.dtype]] = []
        self.upcasts = 0
        self.fused: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor) and t.is_floating_point()]
        outs = [t for t in tree_leaves(out) if isinstance(t, Tensor) and t.is_floating_point()]
        if name == "_to_copy" and ins and outs and ins[0].dtype not in _WIDE and outs[0].dtype in _WIDE:
            self.upcasts += 1
        if func.namespace == "medurwkv" and any(isinstance(a, str) and a.startswith("triton") for a in args):
            # the fused Triton kernels read half-precision k, v as they are and accumulate in float32 inside
            # (invisible here): the numerical check of the result covers them
            self.fused.append(name)
        elif name not in _DATA_MOVEMENT and (ins or outs):
            self.computed.append(name)
            self.low += [(name, t.dtype) for t in ins + outs if t.dtype not in _WIDE]
        return out


@contextmanager
def record_wkv(monkeypatch: pytest.MonkeyPatch):
    """Route the models' ``bi_wkv`` calls (``models/layers.py``) through a recorder; yields the list of calls,
    each ``{"v": dtype of v, "y": dtype of the result, "rec": WkvPrecisionRecorder}`` (forward only)."""
    calls: list[dict[str, Any]] = []
    original = layers.bi_wkv

    def recorded(w: Tensor, u: Tensor, k: Tensor, v: Tensor, **kw: Any) -> Tensor:
        rec = WkvPrecisionRecorder()
        with rec:
            y = original(w, u, k, v, **kw)
        calls.append({"v": v.dtype, "y": y.dtype, "rec": rec})
        return y

    monkeypatch.setattr(layers, "bi_wkv", recorded)
    yield calls


def _assert_wide(rec: WkvPrecisionRecorder, device: str, where: str) -> None:
    assert not rec.low, f"{where}: expected every Bi-WKV op in float32, got half-precision ops {rec.low[:8]}"
    if device == "cpu":  # the chunked path (custom op or aten ops): the recorder must have seen it compute
        assert rec.computed, f"{where}: expected the chunked computation in float32, saw no op"
    else:
        assert rec.computed or rec.fused, f"{where}: expected the Bi-WKV computation, saw no op"


def _inputs(device: str, B: int = 2, T: int = 197, C: int = 24, seed: int = 0) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(C, generator=g) * 8 - 5) / T  # official init range of spatial_decay: [-5, 3]
    u = (torch.rand(C, generator=g) - 0.5) / T
    k, v, gy = (torch.randn(B, T, C, generator=g) for _ in range(3))
    return tuple(x.to(device) for x in (w, u, k, v, gy))


# ------------------------------------------------------------------------------------------- the operator


@pytest.mark.parametrize("device, dtype", CASES)
def test_bi_wkv_under_autocast_computes_in_float32(device: str, dtype: torch.dtype):
    w, u, k32, v32, gy32 = _inputs(device)
    # half-precision activations (as nn.Linear gives them under autocast), float32 decay/bonus (parameters / T)
    k, v, gy = (x.to(dtype).requires_grad_(x is not gy32) for x in (k32, v32, gy32))
    rec = WkvPrecisionRecorder()
    with torch.autocast(device, dtype=dtype), rec:
        y = bi_wkv(w, u, k, v)
    assert y.dtype == dtype, f"expected the result in the caller's dtype {dtype}, got {y.dtype}"
    _assert_wide(rec, device, "forward")
    assert rec.upcasts >= 2 or device != "cpu", "expected k and v cast to float32 before the computation"
    back = WkvPrecisionRecorder()
    with back:
        y.backward(gy)
    _assert_wide(back, device, "backward")
    assert k.grad.dtype == v.grad.dtype == dtype

    # the float32 computation on the same (rounded) inputs, rounded once: at most one rounding step apart
    kr, vr = (x.detach().float().requires_grad_(True) for x in (k, v))
    ref = bi_wkv(w, u, kr, vr)
    ref.backward(gy.float())
    tol = dict(rtol=torch.finfo(dtype).eps, atol=1e-6)
    torch.testing.assert_close(y.float(), ref.to(dtype).float(), **tol)
    torch.testing.assert_close(k.grad.float(), kr.grad.to(dtype).float(), **tol)
    torch.testing.assert_close(v.grad.float(), vr.grad.to(dtype).float(), **tol)
    assert ref.abs().max() > 0.1  # not a comparison of zeros


# ------------------------------------------------------------------------------------------- the model


def _loss_and_grads(
    model: torch.nn.Module, x: Tensor, target: Tensor, device: str, dtype: torch.dtype | None
) -> tuple[float, Tensor]:
    """Cross-entropy of one forward pass (autocast ``dtype``, or float32 when None) and the flat gradient."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = model(x)  # (B, K, H, W)
    assert logits.dtype == (dtype or torch.float32)
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    # float16 gradients underflow without loss scaling: scale and unscale, as GradScaler does
    scale = 2.0**12 if dtype == torch.float16 else 1.0
    (loss * scale).backward()
    grads = torch.cat([p.grad.flatten() / scale for p in model.parameters() if p.grad is not None])
    return loss.item(), grads.float()


@pytest.mark.parametrize("device, dtype", CASES)
def test_tiny_med_urwkv_amp_close_to_float32(
    device: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
):
    torch.manual_seed(0)
    model = create_model("med_urwkv_t", in_channels=1, num_classes=2, **TINY_URWKV).to(device).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 64, 64, generator=g).to(device)
    target = (torch.rand(2, 64, 64, generator=g) > 0.5).long().to(device)
    # BatchNorm running statistics change with every training-mode pass; restore them for the second run
    state = {k: t.clone() for k, t in model.state_dict().items()}
    loss32, g32 = _loss_and_grads(model, x, target, device, None)
    model.load_state_dict(state)
    with record_wkv(monkeypatch) as calls:
        loss_amp, g_amp = _loss_and_grads(model, x, target, device, dtype)

    assert calls, "expected the model to call bi_wkv"
    for i, c in enumerate(calls):
        assert c["v"] == c["y"] == dtype, f"call {i}: expected v and the result in {dtype}, got {c}"
        _assert_wide(c["rec"], device, f"bi_wkv call {i}")
    assert math.isfinite(loss_amp) and torch.isfinite(g_amp).all()
    # state tolerance: half precision carries 3 (bf16) or 4 (fp16) significant digits through every layer
    assert loss_amp == pytest.approx(loss32, rel=2e-2)
    rel = ((g_amp - g32).norm() / g32.norm()).item()
    assert rel < (0.1 if dtype == torch.bfloat16 else 0.03), f"gradient relative L2 difference {rel:.3g}"


# ------------------------------------------------------------------------------------------- the trainer


@pytest.mark.parametrize(
    "device, amp, amp_dtype, expect_amp, expect_scaler",
    [
        pytest.param("cpu", None, "float16", False, False, id="cpu-default-off"),
        pytest.param("cpu", True, "bfloat16", True, False, id="cpu-bf16"),
        pytest.param("cpu", True, "float16", True, True, id="cpu-fp16-scaler"),
        pytest.param("cuda", None, "float16", True, True, id="cuda-default-fp16", marks=needs_cuda),
        pytest.param("cuda", True, "bfloat16", True, False, id="cuda-bf16", marks=needs_cuda),
    ],
)
def test_trainer_amp_policy(
    device: str, amp: bool | None, amp_dtype: str, expect_amp: bool, expect_scaler: bool
):
    cfg = TrainConfig(
        model="unet", model_kwargs={"base_channels": 4, "depth": 2}, amp=amp, amp_dtype=amp_dtype
    )
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
    lines: list[str] = []
    tr = build_trainer(cfg, model, 2, torch.device(device), DistInfo(), lines.append)
    assert tr.use_amp is expect_amp and tr.scaler.is_enabled() is expect_scaler
    assert any("WKV runs in fp32" in ln for ln in lines) is expect_amp, lines


@pytest.mark.parametrize("device, dtype", CASES)
def test_fit_one_epoch_with_amp(
    device: str, dtype: torch.dtype, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    data = make_disks(tmp_path / "disks", n=12, size=32)
    name = "bfloat16" if dtype == torch.bfloat16 else "float16"
    with record_wkv(monkeypatch) as calls:
        r = fit(
            data=data,
            out=tmp_path / "run",
            model="med_urwkv_t",
            model_kwargs=TINY_URWKV,
            pretrained=False,  # from scratch: no test downloads the official release
            device=device,
            amp=True,
            amp_dtype=name,
            epochs=1,
            batch_size=2,
            img_size=32,
            limit=4,  # 4 training images: two full batches (BatchNorm needs 2+ values per channel)
            num_workers=0,
            progress=False,
            eval_test=False,
            tensorboard=False,
        )
    log = (tmp_path / "run" / "train.log").read_text()
    scaled = " + GradScaler" if dtype == torch.float16 else ""
    assert f"mixed precision: autocast {name}{scaled} (WKV runs in fp32)" in log
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert len(rows) == 1 and all(math.isfinite(float(rows[0][k])) for k in ("train_loss", "val_loss"))
    assert r.epochs_completed == 1
    # training and validation passes both ran under autocast, each bi_wkv call in float32
    assert len(calls) >= 8, f"expected bi_wkv calls from training and validation, got {len(calls)}"
    for i, c in enumerate(calls):
        assert c["v"] == c["y"] == dtype, f"call {i}: expected v and the result in {dtype}, got {c}"
        _assert_wide(c["rec"], device, f"bi_wkv call {i} during fit")
