"""ONNX export of the models (tiny configs), checked against PyTorch with onnxruntime."""

from __future__ import annotations

import pytest
import torch

from medurwkv.models import QUICK_OVERRIDES, create_model
from medurwkv.models.export import export_onnx, run_onnx

_SMALL_DECODER = dict(decoder_dim=32, decoder_depths=[1, 1, 1], bottleneck_depth=1)
TINY = {name: {**QUICK_OVERRIDES[name], **_SMALL_DECODER} for name in ("med_urwkv_t", "med_urwkv_t_pure")}


def _perturb_bn(model: torch.nn.Module) -> None:
    # Non-trivial BatchNorm statistics, so that eval-mode normalisation is really exercised by the export.
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)


@pytest.mark.parametrize("name", list(TINY))
def test_static_export_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **TINY[name])
    _perturb_bn(model)
    path = tmp_path / f"{name}.onnx"
    report = export_onnx(model, path, sample_shape=(1, 3, 64, 96), dynamic=False)
    assert report["ok"] and report["max_abs_diff"] <= 1e-4
    assert report["bi_wkv"] == "scan" and path.is_file()
    # A fresh input of the exported (odd-free) shape: still within 1e-4; the model is back in its old mode.
    x = torch.randn(1, 3, 64, 96)
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    out = run_onnx(path, x)
    assert out.shape == (1, 3, 64, 96)
    assert abs(out - ref).max() <= 1e-4
    # Static means static: another size is rejected by onnxruntime, not silently mis-computed.
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises its own exception types
        run_onnx(path, torch.randn(1, 3, 96, 96))


def test_dynamic_export_of_the_adapter_model_works_at_other_sizes(tmp_path):
    # The pad step pads at every size while tracing (also by 0), so no input size is baked into the graph: the
    # adapter model's dynamic export passes the second-shape check and runs at a third, odd size. (Before the
    # pad step was written once, Med-URWKV skipped a zero pad while tracing and this export was refused.)
    torch.manual_seed(0)
    model = create_model("med_urwkv_t", **TINY["med_urwkv_t"])
    _perturb_bn(model)
    path = tmp_path / "dyn.onnx"
    report = export_onnx(model, path, sample_shape=(1, 3, 64, 64), dynamic=True)
    assert report["ok"] and report["max_abs_diff_second"] <= 1e-4
    model.eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        ref = model(x).numpy()
    out = run_onnx(path, x)
    assert out.shape == ref.shape and abs(out - ref).max() <= 1e-4


def test_unet_dynamic_export_two_sizes(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet", base_channels=4, in_channels=1, num_classes=2)
    _perturb_bn(model)
    path = tmp_path / "unet.onnx"
    report = export_onnx(model, path, sample_shape=(1, 1, 64, 96), dynamic=True)
    assert report["ok"] and report["max_abs_diff_second"] <= 1e-4
    model.eval()
    for shape in [(2, 1, 97, 131), (1, 1, 32, 48)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x).numpy()
        out = run_onnx(path, x)
        assert out.shape == ref.shape and abs(out - ref).max() <= 1e-4
