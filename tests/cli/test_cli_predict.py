"""``medurwkv predict`` user errors: unreadable inputs, no inputs, wrong checkpoints -> exit 2, one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_testing import one_error_line
from PIL import Image

from medurwkv import create_model
from medurwkv.cli import main as cli
from medurwkv.engine.checkpoint import save_checkpoint


def tiny_ckpt(path: Path) -> Path:
    """A tiny random 1-channel binary U-Net checkpoint (fast to build and run)."""
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
    pre = {"in_channels": 1, "img_size": [16, 16], "normalize": "per_image", "num_classes": 2}
    return save_checkpoint(path, model, preprocess=pre, epoch=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_ckpt(tmp_path_factory.mktemp("ckpt") / "run" / "best.pt")


def good_and_bad(folder: Path) -> None:
    folder.mkdir()
    img = np.random.default_rng(0).integers(0, 256, (21, 17), dtype=np.uint8)
    Image.fromarray(img).save(folder / "good.png")
    (folder / "bad.png").write_bytes(np.random.default_rng(1).bytes(300))  # garbage bytes named .png


def test_unreadable_image_writes_the_good_one_and_exits_2(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good_and_bad(tmp_path / "in")
    out = tmp_path / "out"
    rc = cli(["predict", "--ckpt", str(ckpt), "--input", str(tmp_path / "in"), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 2
    line = one_error_line(captured.err, "predict")
    assert "bad.png" in line and "good.png" not in line
    assert "predicted 1 image(s)" in captured.out  # the summary is printed before the error
    lab = np.asarray(Image.open(out / "good.png"))
    assert lab.shape == (21, 17)
    assert not (out / "bad.png").exists()


def test_unreadable_image_subprocess(ckpt: Path, tmp_path: Path) -> None:
    good_and_bad(tmp_path / "in")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medurwkv.cli", "predict", "--ckpt", str(ckpt)]
    cmd += ["--input", str(tmp_path / "in" / "good.png"), str(tmp_path / "in" / "bad.png")]
    cmd += ["--out", str(out), "--quiet", "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "bad.png" in one_error_line(res.stderr, "predict")
    assert (out / "good.png").is_file() and (out / "good_overlay.png").is_file()


def test_no_inputs_found(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    rc = cli(
        ["predict", "--ckpt", str(ckpt), "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    assert "no image files" in one_error_line(capsys.readouterr().err, "predict")


@pytest.mark.parametrize("kind", ["text.pt", "missing.pt", "missing_dir", "folder_without_best", "text.onnx"])
def test_wrong_checkpoint(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img.png")
    ck = tmp_path / kind
    if kind.startswith("text"):
        ck.write_text("this is not a checkpoint\n")
    elif kind == "folder_without_best":
        ck.mkdir()
    rc = cli(
        ["predict", "--ckpt", str(ck), "--input", str(tmp_path / "img.png"), "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    line = one_error_line(capsys.readouterr().err, "predict")
    assert "expected a medurwkv checkpoint" in line and kind in line
    assert not (tmp_path / "o").exists()  # nothing was written


def test_onnx_without_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medurwkv.models.export import export_onnx

    model = create_model("unet", in_channels=1, num_classes=2, base_channels=2, depth=1)
    export_onnx(model, tmp_path / "raw.onnx", sample_shape=(1, 1, 8, 8), verify=False)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img.png")
    argv = ["predict", "--ckpt", str(tmp_path / "raw.onnx"), "--input", str(tmp_path / "img.png")]
    assert cli([*argv, "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys.readouterr().err, "predict")
    assert "no medurwkv metadata" in line and "medurwkv export" in line


def test_bad_window_is_a_user_error(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img.png")
    argv = [
        "predict",
        "--ckpt",
        str(ckpt),
        "--input",
        str(tmp_path / "img.png"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli([*argv, "--window", "4", "4", "4"]) == 2
    assert "--window N or --window H W" in one_error_line(capsys.readouterr().err, "predict")
