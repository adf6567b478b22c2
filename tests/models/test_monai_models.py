"""The MONAI baselines (issue #10): ``monai_unet`` and ``swin_unetr`` are MONAI's networks, exactly, behind
the model contract (any size, encoder view, model_spec, own weights, export, training through the engine)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR, UNet
from PIL import Image

from medurwkv.engine.benchmark import model_table
from medurwkv.engine.checkpoint import load_checkpoint, load_model
from medurwkv.engine.train import fit
from medurwkv.errors import UserError
from medurwkv.models import QUICK_OVERRIDES, create_model, get_model_entry, list_models, monai_models
from medurwkv.models.export import export_onnx, run_onnx

BASELINES = ["monai_unet", "swin_unetr"]


def _tiny(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return create_model(name, **{**QUICK_OVERRIDES[name], **kw})


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registered_with_the_anchor_configuration_and_no_release():
    assert set(BASELINES) <= set(list_models())
    unet = get_model_entry("monai_unet")
    assert unet.default_kwargs == dict(
        in_channels=3, num_classes=2, channels=[32, 64, 128, 256, 512], strides=[2, 2, 2, 2], num_res_units=2
    )
    assert get_model_entry("swin_unetr").default_kwargs["feature_size"] == 24
    for name in BASELINES:
        assert get_model_entry(name).pretrained is None
        with pytest.raises(UserError, match="has none; pass pretrained=PATH"):
            create_model(name, pretrained=True, **QUICK_OVERRIDES[name])


# ----------------------------------------------------------------------------------------------------
# The networks are MONAI's, exactly
# ----------------------------------------------------------------------------------------------------


def test_monai_unet_is_monais_unet_of_the_anchor_configuration():
    torch.manual_seed(0)
    model = create_model("monai_unet", in_channels=1, num_classes=2).eval()
    direct = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=(32, 64, 128, 256, 512),
        strides=(2, 2, 2, 2),
        num_res_units=2,
    ).eval()
    assert _n_params(model) == _n_params(direct) == 6_495_321
    assert model.pad_multiple == 16
    # Same keys and shapes (strict load), then the same function: MONAI's net on the zero-padded input,
    # cropped.
    direct.load_state_dict({k.removeprefix("net."): v for k, v in model.state_dict().items()}, strict=True)
    x = torch.randn(2, 1, 50, 70)
    with torch.no_grad():
        y = model(x)
        ref = direct(F.pad(x, (0, 10, 0, 14)))[..., :50, :70]  # 50 x 70 -> 64 x 80
    assert y.shape == (2, 2, 50, 70)
    assert torch.equal(y, ref)


def test_swin_unetr_is_monais_2d_swin_unetr_and_pads_to_32():
    torch.manual_seed(0)
    model = create_model("swin_unetr", in_channels=1, num_classes=2).eval()
    direct = SwinUNETR(in_channels=1, out_channels=2, feature_size=24, spatial_dims=2).eval()
    assert _n_params(model) == _n_params(direct) == 6_302_228
    assert model.pad_multiple == 32
    direct.load_state_dict({k.removeprefix("net."): v for k, v in model.state_dict().items()}, strict=True)
    x = torch.randn(1, 1, 50, 70)
    with torch.no_grad():
        with pytest.raises(ValueError, match="divisible by 2\\*\\*5"):  # why the model pads: MONAI refuses 50
            direct(x)
        y = model(x)
        ref = direct(F.pad(x, (0, 26, 0, 14)))[..., :50, :70]  # 50 x 70 -> 64 x 96
    assert y.shape == (1, 2, 50, 70)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("train", [False, True])
def test_swin_unetr_runs_inputs_of_one_bottleneck_pixel(train):
    # Padded to 32 x 32, the stride-32 bottleneck would be one pixel, where MONAI's instance norm raises; the
    # model pads such inputs to 64 x 32, in training (the engine's small crops) and in inference.
    model = _tiny("swin_unetr", in_channels=1, num_classes=2).train(train)
    x = torch.randn(2, 1, 20, 30)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        model.net(F.pad(x, (0, 2, 0, 12)))
    with torch.no_grad():
        y = model(x)
        ref = model.net(F.pad(x, (0, 2, 0, 44)))[..., :20, :30]
    assert y.shape == (2, 2, 20, 30) and torch.equal(y, ref)


def _hooked(module: torch.nn.Module, store: list) -> None:
    module.register_forward_hook(lambda m, i, o: store.append(o))


@pytest.mark.parametrize("name", BASELINES)
def test_encoder_view_returns_the_maps_of_monais_forward(name):
    model = _tiny(name, in_channels=1, num_classes=3).eval()
    net = model.net
    seen: list = []
    if name == "monai_unet":
        enc = model.encoder
        for m in [*enc.downs, enc.bottom]:
            _hooked(m, seen)
    else:
        for m in (net.encoder1, net.encoder2, net.encoder3, net.encoder4, net.encoder10):
            _hooked(m, seen)
        _hooked(net.swinViT, seen)
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        model(x)
        maps = model.encoder(x)
    if (
        name == "swin_unetr"
    ):  # forward order: swinViT, encoder1-4, encoder10; the view's: enc1-4, stage 3, enc10
        hidden, convs = seen[0], seen[1:6]
        seen = [*convs[:4], hidden[3], convs[4]]
    expected = seen[: len(maps)]
    assert len(maps) == len(expected) == len(model.encoder.out_channels)
    for got, want in zip(maps, expected):
        assert torch.equal(got, want)
    assert [f.shape[1] for f in maps] == model.encoder.out_channels
    assert [96 // f.shape[-1] for f in maps] == model.encoder.strides
    # A view, not a copy: the state dict lists each tensor once, under MONAI's own names behind `net.`; the
    # view holds the encoder side only (a proper subset: the decoder and the head stay out).
    assert all(k.startswith("net.") for k in model.state_dict())
    own = {id(p) for p in model.parameters()}
    assert {id(p) for p in model.encoder.parameters()} < own


# ----------------------------------------------------------------------------------------------------
# Contract details: no pretrained part, optimiser groups, configuration errors
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
def test_nothing_to_freeze_and_every_parameter_in_one_group(name):
    model = _tiny(name)
    assert model.pretrained_target() is None
    model.freeze_encoder(True)  # documented no-op: nothing pretrained to keep
    assert not model.encoder_frozen and all(p.requires_grad for p in model.parameters())
    groups = model.param_groups(1e-3, encoder_lr_scale=0.1, weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    assert {g["lr"] for g in groups} == {1e-3}  # no encoder scale without a pretrained encoder
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for n, p in model.named_parameters():
        spared = p.ndim <= 1 or n.endswith("relative_position_bias_table")
        assert (id(p) not in decayed) == spared, n
    if name == "swin_unetr":
        assert any(n.endswith("relative_position_bias_table") for n, _ in model.named_parameters())


def test_configuration_errors_are_user_errors():
    with pytest.raises(UserError, match=r"len\(strides\) == len\(channels\) - 1"):
        create_model("monai_unet", channels=[4, 8, 16], strides=[2])
    with pytest.raises(UserError, match="strides as a list of positive ints"):
        create_model("monai_unet", channels=[4, 8], strides=[1.5])
    with pytest.raises(UserError, match="MONAI's SwinUNETR.*divisible by 12"):
        create_model("swin_unetr", feature_size=16)
    with pytest.raises(UserError, match="4 Swin stages"):
        create_model("swin_unetr", feature_size=12, depths=[1, 1, 1])


def test_swin_unetr_without_einops_says_how_to_install_it(monkeypatch):
    find_spec = monai_models.importlib.util.find_spec
    monkeypatch.setattr(
        monai_models.importlib.util, "find_spec", lambda n, *a: None if n == "einops" else find_spec(n, *a)
    )
    with pytest.raises(UserError, match=r"einops.*pip install 'medurwkv\[swin\]'"):
        create_model("swin_unetr", **QUICK_OVERRIDES["swin_unetr"])


def test_parameters_count_on_the_meta_device_for_the_models_table():
    # `medurwkv models` builds every model on the meta device; MONAI's SwinTransformer needs a real device
    # for one step of its construction, which the model works around.
    with torch.device("meta"):
        meta = create_model("swin_unetr")
    assert all(p.is_meta for p in meta.parameters())
    assert _n_params(meta) == _n_params(create_model("swin_unetr"))
    rows = {r["name"]: r for r in model_table("*_un*")}
    assert rows["monai_unet"]["params"] == 6_496_473  # 3 input channels (the table's default config)
    assert rows["swin_unetr"]["params"] == _n_params(meta)


# ----------------------------------------------------------------------------------------------------
# Own weights, export, training through the engine
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
def test_pretrained_path_loads_your_own_weights(name, tmp_path):
    src = _tiny(name, seed=1, in_channels=1).eval()
    path = tmp_path / "own.pth"
    torch.save(src.state_dict(), path)
    loaded = create_model(name, pretrained=str(path), in_channels=1, **QUICK_OVERRIDES[name]).eval()
    x = torch.randn(1, 1, 40, 33)
    with torch.no_grad():
        assert torch.equal(loaded(x), src(x))
    # A state dict of MONAI's network itself (trained with MONAI) goes into `net`.
    other = _tiny(name, seed=2, in_channels=1).eval()
    other.net.load_state_dict(src.net.state_dict())
    with torch.no_grad():
        assert torch.equal(other(x), src(x))


def test_monai_unet_exports_one_size_dynamic_onnx_graph(tmp_path):
    model = _tiny("monai_unet", in_channels=1, num_classes=2)
    path = tmp_path / "unet.onnx"
    report = export_onnx(model, path, sample_shape=(1, 1, 64, 64), dynamic=True)
    assert report["ok"] and report["max_abs_diff_second"] <= 1e-4
    x = torch.randn(2, 1, 50, 70)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    out = run_onnx(path, x)
    assert out.shape == (2, 2, 50, 70) and np.abs(out - ref).max() <= 1e-4


def test_swin_unetr_exports_static_onnx_only(tmp_path):
    model = _tiny("swin_unetr", in_channels=1, num_classes=2)
    # MONAI computes its window partitions and shift masks from Python ints, so a traced graph keeps the
    # traced size: a dynamic export is refused (and its file removed) by the second-shape check.
    with pytest.raises(RuntimeError, match="expected a size-dynamic graph"):
        export_onnx(model, tmp_path / "dyn.onnx", sample_shape=(1, 1, 64, 64), dynamic=True)
    assert not (tmp_path / "dyn.onnx").exists()
    path = tmp_path / "static.onnx"
    report = export_onnx(model, path, sample_shape=(1, 1, 64, 64), dynamic=False)
    assert report["ok"] and report["max_abs_diff"] <= 1e-4
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    assert np.abs(run_onnx(path, x) - ref).max() <= 1e-4


def _disks(root: Path, n: int = 12, size: int = 32) -> Path:
    """Gray images with a bright disk on noise, 0/255 masks (the engine tests' synthetic set, smaller)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(0.15 * size, 0.3 * size) ** 2
        img = (rng.normal(80, 20, (size, size)) + 90 * m).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"case{i:03d}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(root / "masks" / f"case{i:03d}.png")
    return root


@pytest.mark.parametrize("name", BASELINES)
def test_one_epoch_through_the_engine_and_back_from_the_checkpoint(name, tmp_path):
    data = _disks(tmp_path / "disks")
    net = _tiny(name, in_channels=1, num_classes=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    r = fit(
        data=data,
        out=tmp_path / "run",
        net=net,
        epochs=1,
        img_size=32,
        batch_size=4,
        num_workers=0,
        progress=False,
        eval_test=False,
        tensorboard=False,
        deterministic=True,
    )
    row = r.history[0]
    assert r.epochs_completed == 1
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_dice"])
    ck = load_checkpoint(r.last_checkpoint)
    assert ck["model"] == {"name": name, "kwargs": net.model_spec["kwargs"]}
    loaded, _ = load_model(r.last_checkpoint)
    assert any(not torch.equal(before[k], v) for k, v in loaded.state_dict().items())  # it trained
    x = torch.randn(1, 1, 45, 37)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
