"""Segmenter and ``medurwkv predict``: input forms, sizes, modes (resize, native, window, TTA), CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from medurwkv import create_model
from medurwkv.cli import main as cli
from medurwkv.data.transforms import preprocess_image
from medurwkv.engine.checkpoint import save_checkpoint
from medurwkv.engine.predict import Segmenter, predict_paths
from medurwkv.engine.predict_io import collect_inputs


def tiny_unet_ckpt(
    path: Path, *, in_channels: int = 1, num_classes: int = 2, img_size=None, seed: int = 0
) -> Path:
    """A tiny random U-Net checkpoint (depth 2 pads to multiples of 4); BN running stats made non-trivial."""
    torch.manual_seed(seed)
    model = create_model("unet", in_channels=in_channels, num_classes=num_classes, base_channels=4, depth=2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    pre = {
        "in_channels": in_channels,
        "img_size": img_size,
        "normalize": "per_image",
        "num_classes": num_classes,
        "class_names": ["background"] + [f"c{k}" for k in range(1, num_classes)],
    }
    return save_checkpoint(path, model, preprocess=pre, epoch=3)


class Pointwise(nn.Module):
    """logits = (0, 10 * x): foreground exactly where the normalised pixel is > 0 (flip/shift equivariant)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.pad_multiple = 1, 2, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 10.0 * x], dim=1)  # (B, 2, H, W)


def pointwise_segmenter(img_size=None) -> Segmenter:
    pre = {"in_channels": 1, "img_size": img_size, "normalize": "per_image", "num_classes": 2}
    return Segmenter.from_model(Pointwise(), pre)


def blob_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 image: noisy background ~40, a bright ellipse ~200 (no pixel equals the mean)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h * 0.45) / (h * 0.3)) ** 2 + ((xx - w * 0.55) / (w * 0.25)) ** 2 <= 1
    img = np.where(inside, 200, 40) + rng.integers(-15, 16, (h, w))
    return img.astype(np.uint8)


# ------------------------------------------------------------------------------------------------------------
# Python API


def test_predict_input_forms_and_odd_sizes(tmp_path: Path) -> None:
    seg = Segmenter.from_checkpoint(tiny_unet_ckpt(tmp_path / "run" / "best.pt", img_size=[16, 16]))
    assert seg.backend == "torch" and seg.img_size == (16, 16) and seg.num_classes == 2
    for h, w in [(37, 51), (5, 3), (16, 16), (64, 9)]:
        img = blob_image(h, w)
        labels = seg.predict(img)
        assert labels.shape == (h, w) and labels.dtype == np.int64
        labels2, probs = seg.predict(img, return_probs=True)
        assert probs.shape == (2, h, w) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(labels2, probs.argmax(0))
        np.testing.assert_array_equal(labels, labels2)

    # RGB image to a 1-channel model (luma rule), (H, W, C) and a batch (N, H, W, C) give the same labels
    rgb = np.stack([blob_image(21, 30, seed=s) for s in (1, 2, 3)], axis=-1)
    single = seg.predict(rgb)
    batch = seg.predict(np.stack([rgb, rgb[::-1].copy()]), batch_size=2)
    assert single.shape == (21, 30) and batch.shape == (2, 21, 30)
    np.testing.assert_array_equal(batch[0], single)
    # (N, H, W) gray batch, torch tensors (C, H, W), list of different sizes, and a path
    gray = np.stack([blob_image(19, 23, seed=s) for s in range(3)])
    out = seg.predict(gray, batch_size=2)
    assert out.shape == (3, 19, 23)
    for i in range(3):
        np.testing.assert_array_equal(out[i], seg.predict(gray[i]))
    t = torch.from_numpy(rgb).permute(2, 0, 1)
    np.testing.assert_array_equal(seg.predict(t), single)
    lst = seg.predict([gray[0], rgb], return_probs=True)
    assert [a.shape for a in lst[0]] == [(19, 23), (21, 30)] and lst[1][1].shape == (2, 21, 30)
    p = tmp_path / "img.png"
    Image.fromarray(gray[1]).save(p)
    np.testing.assert_array_equal(seg.predict(p), out[1])
    np.testing.assert_array_equal(seg.predict([str(p)])[0], out[1])


def test_run_folder_loads_best_pt(tmp_path: Path) -> None:
    tiny_unet_ckpt(tmp_path / "run" / "best.pt", seed=0)
    tiny_unet_ckpt(tmp_path / "run" / "last.pt", seed=1)
    seg = Segmenter.from_checkpoint(tmp_path / "run")
    assert seg.source == tmp_path / "run" / "best.pt"
    assert seg.checkpoint_info["epoch"] == 3 and "state_dict" not in seg.checkpoint_info
    with pytest.raises(FileNotFoundError, match="best.pt"):
        Segmenter.from_checkpoint(tmp_path)


def test_resize_mode_matches_manual_pipeline(tmp_path: Path) -> None:
    """Default with img_size: resize (training's val transform) -> model -> softmax -> bilinear back."""
    path = tiny_unet_ckpt(tmp_path / "m.pt", img_size=[24, 20])
    seg = Segmenter.from_checkpoint(path)
    img = blob_image(33, 47)
    _, probs = seg.predict(img, return_probs=True)
    x = preprocess_image(img, in_channels=1, normalize="per_image", img_size=(24, 20))
    with torch.no_grad():
        ref = torch.softmax(seg.model(x[None]), 1)
    ref = F.interpolate(ref, size=(33, 47), mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    # native: the model sees the full-resolution image instead
    _, nat = seg.predict(img, return_probs=True, native=True)
    x = preprocess_image(img, in_channels=1, normalize="per_image")
    with torch.no_grad():
        ref = torch.softmax(seg.model(x[None]), 1)[0].numpy()
    np.testing.assert_allclose(nat, ref, atol=1e-6)
    assert seg.resolve_mode() == ("resize", (24, 20))
    assert seg.resolve_mode(native=True) == ("native", None)
    assert seg.resolve_mode(window=16) == ("window", (16, 16))


def test_pointwise_model_predicts_threshold_exactly() -> None:
    seg = pointwise_segmenter()
    img = blob_image(45, 38)
    expected = (img.astype(np.float64) > img.mean()).astype(np.int64)
    np.testing.assert_array_equal(seg.predict(img), expected)


def test_tta_and_sliding_window_agree_with_plain_inference() -> None:
    seg = pointwise_segmenter()  # flip- and shift-equivariant: TTA and windows must not change anything
    img = blob_image(53, 61)
    _, plain = seg.predict(img, return_probs=True)
    _, tta = seg.predict(img, return_probs=True, tta=True)
    np.testing.assert_allclose(tta, plain, atol=1e-6)
    for window, overlap in [(16, 0.25), ((20, 12), 0.5), (64, 0.25)]:
        _, win = seg.predict(img, return_probs=True, window=window, overlap=overlap, batch_size=3)
        assert win.shape == plain.shape
        np.testing.assert_allclose(win, plain, atol=1e-5)
        _, both = seg.predict(img, return_probs=True, window=window, tta=True)
        np.testing.assert_allclose(both, plain, atol=1e-5)


def test_tta_and_window_on_a_unet_stay_close(tmp_path: Path) -> None:
    """A real (not equivariant) net: TTA / windows differ a little, but must stay valid and mostly agree."""
    seg = Segmenter.from_checkpoint(tiny_unet_ckpt(tmp_path / "m.pt"))
    img = blob_image(48, 56)
    lab, plain = seg.predict(img, return_probs=True)
    for kwargs in ({"tta": True}, {"window": 32, "overlap": 0.5}):
        lab2, probs = seg.predict(img, return_probs=True, **kwargs)
        assert probs.shape == plain.shape
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
        assert np.abs(probs - plain).mean() < 0.2
        assert (lab2 == lab).mean() > 0.5


def test_channel_mismatch_names_the_image(tmp_path: Path) -> None:
    seg = Segmenter.from_checkpoint(tiny_unet_ckpt(tmp_path / "m.pt", in_channels=3))
    p = tmp_path / "five.tif"
    tifffile.imwrite(p, np.zeros((12, 10, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    with pytest.raises(ValueError, match=r"five\.tif.*5 channels"):
        seg.predict(p)
    with pytest.raises(ValueError, match="window"):
        seg.predict(np.zeros((8, 8), np.uint8), window=(1, 2, 3))


# ------------------------------------------------------------------------------------------------------------
# predict_paths and the CLI


def write_inputs(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    good = {"a": blob_image(37, 51, 0), "b": blob_image(20, 33, 1)}
    Image.fromarray(good["a"]).save(folder / "a.png")
    Image.fromarray(np.stack([good["b"]] * 3, -1)).save(folder / "b.jpg", quality=100)
    good["b"] = np.asarray(Image.open(folder / "b.jpg").convert("RGB"))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    tifffile.imwrite(folder / "five.tif", np.zeros((9, 7, 5), np.uint8), photometric="minisblack")
    (folder / "notes.txt").write_text("ignored: not an image")
    return good


def test_predict_cli_folder_with_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tiny_unet_ckpt(tmp_path / "run" / "best.pt", img_size=[16, 16])
    good = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    rc = cli(
        [
            "predict",
            "--ckpt",
            str(ckpt),
            "--input",
            str(tmp_path / "in"),
            str(tmp_path / "missing.png"),
            "--out",
            str(out),
            "--save-probs",
            "--batch-size",
            "3",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert (
        rc == 2
    )  # some inputs failed: a user error (one line naming each), after the good ones were written
    for name in ("broken.png", "five.tif", "missing.png"):
        assert name in err
    assert "5 channels" in err
    seg = Segmenter.from_checkpoint(ckpt)
    for stem, img in good.items():
        lab = np.asarray(Image.open(out / f"{stem}.png"))
        assert lab.dtype == np.uint8 and lab.shape == img.shape[:2]
        np.testing.assert_array_equal(lab, seg.predict(img))
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / f"{stem}_255.png")), lab.astype(np.uint8) * 255
        )
        ov = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert ov.shape == (*img.shape[:2], 3)
        probs = np.load(out / f"{stem}_probs.npy")
        assert probs.shape == (2, *img.shape[:2]) and probs.dtype == np.float32
        np.testing.assert_array_equal(probs.argmax(0), lab)
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temporary files left behind
    assert not [n for n in names if n.startswith(("broken", "five", "notes"))]


def test_predict_paths_api_glob_and_name_clash(tmp_path: Path) -> None:
    seg = pointwise_segmenter(img_size=None)
    folder = tmp_path / "in"
    folder.mkdir()
    img = blob_image(17, 13)
    Image.fromarray(img).save(folder / "x.png")
    Image.fromarray(img).save(folder / "x.bmp")
    paths, problems = collect_inputs([str(folder / "*.png"), str(folder / "*.bmp"), str(folder / "*.gif")])
    assert [p.name for p in paths] == ["x.png", "x.bmp"] and len(problems) == 1
    summary = predict_paths(seg, [folder], tmp_path / "out", overlay=False, progress=False)
    assert summary.ok and summary.n_ok == 2
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["x_bmp.png", "x_bmp_255.png", "x_png.png", "x_png_255.png"]
    lab = np.asarray(Image.open(tmp_path / "out" / "x_png.png"))
    np.testing.assert_array_equal(lab, (img > img.mean()).astype(np.uint8))


def test_predict_cli_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.pt").write_bytes(b"garbage")
    rc = cli(
        ["predict", "--ckpt", str(tmp_path / "x.pt"), "--input", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert rc == 2 and "x.pt" in capsys.readouterr().err


class FailsOnWidth13(Pointwise):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 13:
            raise RuntimeError("simulated inference failure")
        return super().forward(x)


def test_inference_failure_is_isolated_to_its_image(tmp_path: Path) -> None:
    pre = {"in_channels": 1, "img_size": None, "normalize": "per_image", "num_classes": 2}
    seg = Segmenter.from_model(FailsOnWidth13(), pre)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, w in (("a", 11), ("b", 13), ("c", 11)):
        Image.fromarray(blob_image(9, w)).save(folder / f"{name}.png")
    summary = predict_paths(seg, folder, tmp_path / "out", batch_size=3, progress=False)
    assert [Path(n).name for n, _ in summary.failed] == ["b.png"]
    assert "simulated inference failure" in summary.failed[0][1]
    assert sorted(Path(p).name for p in summary.outputs) == ["a.png", "c.png"]
    assert (tmp_path / "out" / "c_overlay.png").is_file() and not (tmp_path / "out" / "b.png").exists()
