"""``medurwkv pretrain``: user errors before any work (exit 2, one line ``medurwkv pretrain: error: ...``), the
options from YAML and flags, and a tiny end-to-end run on real Kvasir-SEG images whose encoder.pt ``train`` and
``report`` take (or refuse, naming both models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_testing import one_error_line

from medurwkv.cli import build_parser, main
from medurwkv.engine.pretrain import PretrainConfig, pretrain_options
from medurwkv.models import QUICK_OVERRIDES

TINY = ["--model", "med_urwkv_t", "--model-kwargs", json.dumps(QUICK_OVERRIDES["med_urwkv_t"])]
QUIET = ["--num-workers", "0", "--no-progress", "--no-tensorboard"]


def copy_images(src: Path, dst: Path, n: int) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir())[:n]:
        shutil.copyfile(p, dst / p.name)
    return dst


@pytest.fixture
def kvasir(shared_data_dir: Path, tmp_path: Path) -> Path:
    return copy_images(shared_data_dir / "kvasir-seg" / "images", tmp_path / "kvasir", 4)


def test_bad_inputs_are_refused_before_any_work(
    kvasir: Path, shared_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    broken = copy_images(kvasir, tmp_path / "broken", 2)
    (broken / "not_an_image.png").write_bytes(b"this is not a PNG file")
    first = sorted(kvasir.iterdir())[0]
    (broken / "truncated.jpg").write_bytes(first.read_bytes()[:300])
    cases = [  # (arguments, what the one line must say)
        (["--data", str(tmp_path / "missing")], ["missing", "does not exist"]),
        (["--data", str(empty)], ["expected image files", "got none", "sub/"]),
        (["--data", str(broken)], ["2 of 4 images that cannot be read", "not_an_image.png", "truncated.jpg"]),
        (["--data", str(shared_data_dir / "msd-hippocampus")], ["3D volumes", "export 2D slices"]),
        (["--data", str(kvasir), "--model", "unet"], ["expected a model with a VRWKV encoder, got 'unet'"]),
        (["--data", str(kvasir), "--mask-patch", "24"], ["patch stride 16 px", "got 24; use 16 or 32"]),
        (
            ["--data", str(kvasir), "--img-size", "48"],
            ["multiple of --mask-patch 32", "got 48x48", "--img-size 64,64"],
        ),
        (["--data", str(kvasir), "--mask-ratio", "1.5"], ["expected mask_ratio in (0, 1)", "--mask-ratio"]),
        (
            ["--data", str(kvasir), "--img-size", "32", "--mask-ratio", "0.5"],
            ["mask some but not all of the 1"],
        ),
    ]
    for args, expected in cases:
        out = tmp_path / "run"
        rc = main(["pretrain", *args, "--out", str(out), *QUIET])
        line = one_error_line(capsys.readouterr().err, "pretrain")
        assert rc == 2 and all(e in line for e in expected), (args, line)
        assert not out.exists(), args  # nothing was written


def test_options_come_from_yaml_then_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    y = tmp_path / "p.yaml"
    y.write_text("data: scans\nmask_ratio: 0.5\nepochs: 7\nimg_size: [64, 96]\naugment: 0\n")
    args = build_parser().parse_args(["pretrain", "--config", str(y), "--epochs", "3", "--data", "a", "b"])
    names = {o.name for o in pretrain_options()}
    given = {k: v for k, v in vars(args).items() if k in names}
    assert given == {"epochs": 3, "data": ["a", "b"]}  # flags not given do not mask YAML values
    cfg = PretrainConfig.from_dict({**PretrainConfig.load_yaml(y), **given})
    assert (cfg.data, cfg.mask_ratio, cfg.epochs, cfg.img_hw, cfg.augment) == (
        ["a", "b"],
        0.5,
        3,
        (64, 96),
        0.0,
    )
    y.write_text("mask_ration: 0.5\n")
    assert main(["pretrain", "--config", str(y), "--data", "a", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean 'mask_ratio'" in one_error_line(capsys.readouterr().err, "pretrain")
    assert main(["pretrain", "--data", "a"]) == 2
    assert "--out RUN_DIR" in one_error_line(capsys.readouterr().err, "pretrain")


def test_pretrain_then_report_and_train_with_the_encoder(
    kvasir: Path, shared_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(kvasir), "--out", str(run), *TINY, *QUIET]
    rc = main([*args, "--img-size", "64", "--mask-patch", "16", "--batch-size", "2", "--epochs", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and f"encoder: {run / 'encoder.pt'} (1 epochs, 4 images seen" in out
    assert "fine-tune: medurwkv train" in out and "--normalize per_image" in out
    assert "--freeze-encoder-epochs 0" in out  # an encoder pretrained here is not frozen
    assert all(
        (run / f).is_file() for f in ("encoder.pt", "last.pt", "preview.png", "metrics.csv", "report.html")
    )
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    assert main(args) == 2  # the run folder is taken
    assert "already holds a run" in one_error_line(capsys.readouterr().err, "pretrain")

    # a gray dataset: the RGB encoder does not fit, and the error names both sides and the fix
    seg = tmp_path / "seg"
    copy_images(shared_data_dir / "hc18" / "images", seg / "images", 6)
    copy_images(shared_data_dir / "hc18" / "masks", seg / "masks", 6)
    train = ["train", "--data", str(seg), "--out", str(tmp_path / "ft"), *TINY, *QUIET, "--img-size", "64"]
    assert main([*train, "--pretrained", str(run / "encoder.pt"), "--epochs", "1", "--no-eval-test"]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert (
        "encoder.pt was pretrained for med_urwkv_t (in_channels=3), got med_urwkv_t (in_channels=1)" in line
    )
    assert "--in-channels 3" in line
