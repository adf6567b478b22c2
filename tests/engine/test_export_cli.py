"""``medurwkv export``: ONNX with embedded preprocessing; ``predict --ckpt model.onnx`` equals PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from medurwkv import create_model
from medurwkv.cli import main as cli
from medurwkv.engine.checkpoint import save_checkpoint
from medurwkv.engine.onnx_metadata import ONNX_METADATA_KEY, read_onnx_metadata
from medurwkv.engine.predict import Segmenter


def tiny_ckpt(path: Path, *, in_channels: int = 3, img_size=(24, 20)) -> Path:
    torch.manual_seed(0)
    model = create_model("unet", in_channels=in_channels, num_classes=3, base_channels=4, depth=2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    pre = {
        "in_channels": in_channels,
        "img_size": list(img_size) if img_size else None,
        "normalize": "imagenet",
        "num_classes": 3,
        "class_names": ["background", "a", "b"],
    }
    return save_checkpoint(path, model, preprocess=pre, epoch=1)


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (37, 29, 3), dtype=np.uint8),
        rng.integers(0, 256, (18, 45, 3), dtype=np.uint8),
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("export")
    ckpt = tiny_ckpt(d / "run" / "best.pt")
    rc = cli(["export", "--ckpt", str(d / "run"), "--format", "onnx", "--out", str(d / "model.onnx")])
    assert rc == 0
    return ckpt, d / "model.onnx"


def test_export_embeds_metadata(exported: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, onnx_path = exported
    meta = read_onnx_metadata(onnx_path)
    stored = torch.load(ckpt, weights_only=False)
    assert meta is not None and meta["preprocess"] == stored["preprocess"]
    assert meta["model"] == json.loads(json.dumps(stored["model"]))
    assert meta["dynamic"] is True and meta["pad_multiple"] == 4 and meta["input_size"] == [24, 20]
    keys = [p.key for p in onnx.load(str(onnx_path)).metadata_props]
    assert keys.count(ONNX_METADATA_KEY) == 1
    assert not [p for p in onnx_path.parent.iterdir() if p.name.startswith(".")]  # temporaries removed


@pytest.mark.parametrize("kwargs", [{}, {"native": True}, {"tta": True}, {"window": 16}])
def test_onnx_predict_equals_torch(exported: tuple[Path, Path], kwargs: dict) -> None:
    ckpt, onnx_path = exported
    seg_t, seg_o = Segmenter.from_checkpoint(ckpt), Segmenter.from_checkpoint(onnx_path)
    assert (
        seg_o.backend == "onnx" and seg_o.fixed_size is None and seg_o.class_names == ["background", "a", "b"]
    )
    for img in images():
        lab_t, p_t = seg_t.predict(img, return_probs=True, **kwargs)
        lab_o, p_o = seg_o.predict(img, return_probs=True, **kwargs)
        assert p_o.shape == (3, *img.shape[:2])
        np.testing.assert_allclose(p_o, p_t, atol=1e-4)
        assert (lab_o == lab_t).mean() > 0.999  # argmax may flip only on exact ties
    batch = np.stack([images()[0]] * 3)
    np.testing.assert_allclose(
        seg_o.predict(batch, return_probs=True)[1], seg_t.predict(batch, return_probs=True)[1], atol=1e-4
    )


def test_predict_cli_with_onnx(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, onnx_path = exported
    folder = tmp_path / "in"
    folder.mkdir()
    for i, img in enumerate(images()):
        Image.fromarray(img).save(folder / f"im{i}.png")
    for src, out in ((onnx_path, tmp_path / "o_onnx"), (ckpt, tmp_path / "o_torch")):
        assert (
            cli(
                [
                    "predict",
                    "--ckpt",
                    str(src),
                    "--input",
                    str(folder / "*.png"),
                    "--out",
                    str(out),
                    "--save-probs",
                    "--quiet",
                ]
            )
            == 0
        )
    for i, img in enumerate(images()):
        a = np.load(tmp_path / "o_onnx" / f"im{i}_probs.npy")
        b = np.load(tmp_path / "o_torch" / f"im{i}_probs.npy")
        np.testing.assert_allclose(a, b, atol=1e-4)
        assert np.asarray(Image.open(tmp_path / "o_onnx" / f"im{i}.png")).shape == img.shape[:2]
        assert not (tmp_path / "o_onnx" / f"im{i}_255.png").exists()  # 3 classes: no binary variant


def test_static_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tiny_ckpt(tmp_path / "m.pt", in_channels=1, img_size=None)
    out = tmp_path / "s.onnx"
    assert cli(["export", "--ckpt", str(ckpt), "--out", str(out), "--static", "--size", "16", "12"]) == 0
    text = capsys.readouterr().out
    assert "max |logits diff|" in text and "fixed input" in text
    seg_o, seg_t = Segmenter.from_checkpoint(out), Segmenter.from_checkpoint(ckpt)
    assert seg_o.fixed_size == (16, 12)
    img = np.random.default_rng(1).integers(0, 256, (40, 30), dtype=np.uint8)
    # no img_size: the fixed-size model slides windows of its own size at native resolution
    assert seg_o.resolve_mode() == ("window", (16, 12))
    _, p_o = seg_o.predict(img, return_probs=True)
    _, p_t = seg_t.predict(img, return_probs=True, window=(16, 12))
    np.testing.assert_allclose(p_o, p_t, atol=1e-4)
    with pytest.raises(ValueError, match="fixed input size"):
        seg_o.predict(img, window=20)


def test_onnx_without_metadata_is_rejected(tmp_path: Path) -> None:
    from medurwkv.models.export import export_onnx

    model = create_model("unet", in_channels=1, num_classes=2, base_channels=2, depth=1)
    export_onnx(model, tmp_path / "raw.onnx", sample_shape=(1, 1, 8, 8), verify=False)
    with pytest.raises(ValueError, match="no medurwkv metadata"):
        Segmenter.from_checkpoint(tmp_path / "raw.onnx")
    pre = {"in_channels": 1, "normalize": "per_image", "num_classes": 2}
    seg = Segmenter.from_checkpoint(tmp_path / "raw.onnx", preprocess=pre)
    assert seg.predict(np.zeros((9, 11), np.uint8)).shape == (9, 11)
