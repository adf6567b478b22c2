"""``medurwkv train`` user errors: exit code 2, one line ``medurwkv train: error: ...`` on stderr, no traceback."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_testing import one_error_line
from PIL import Image

from medurwkv.cli import main
from medurwkv.engine.train import TrainingDiverged
from medurwkv.errors import UserError
from medurwkv.models import QUICK_OVERRIDES, get_model_entry, registry


def test_missing_data_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    missing = tmp_path / "no_such_data"
    rc = main(["train", "--data", str(missing), "--out", str(tmp_path / "run"), "--no-progress"])
    line = one_error_line(capsys.readouterr().err, "train")
    assert rc == 2 and str(missing) in line and "does not exist" in line


def test_bad_value_in_yaml_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: many\n")
    rc = main(["train", "--config", str(cfg), "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    line = one_error_line(capsys.readouterr().err, "train")
    assert rc == 2 and "epochs" in line and "'many'" in line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_unknown_yaml_key_and_missing_out_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epoch: 3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "did you mean 'epochs'" in one_error_line(capsys.readouterr().err, "train")
    assert main(["train", "--data", str(tmp_path)]) == 2
    assert "--out RUN_DIR" in one_error_line(capsys.readouterr().err, "train")


def test_resume_of_a_folder_without_a_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "last.pt missing" in one_error_line(capsys.readouterr().err, "train")


def test_training_diverged_is_a_user_error_and_says_what_to_do():
    assert issubclass(TrainingDiverged, UserError) and issubclass(TrainingDiverged, FloatingPointError)


def test_subprocess_missing_data_folder(tmp_path: Path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medurwkv.cli",
            "train",
            "--data",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr, "train")


def test_missing_release_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    """The default --pretrained auto wants med_urwkv_t's official release: neither in the (empty) cache nor
    downloadable (its URL moved to a closed local port), training stops with one line saying how to go on."""
    entry = get_model_entry("med_urwkv_t")
    with socket.socket() as s:  # bound then closed: the connection is refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/{entry.pretrained.file}"
    moved = dataclasses.replace(entry, pretrained=dataclasses.replace(entry.pretrained, url=url))
    monkeypatch.setitem(registry._REGISTRY, "med_urwkv_t", moved)
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDURWKV_CACHE", str(cache))
    data = tmp_path / "disks"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for i in range(4):
        img = np.random.default_rng(i).integers(0, 256, (16, 16), dtype=np.uint8)
        Image.fromarray(img).save(data / "images" / f"c{i}.png")
        Image.fromarray(((img > 128) * 255).astype(np.uint8)).save(data / "masks" / f"c{i}.png")
    run = tmp_path / "run"
    kwargs = json.dumps(QUICK_OVERRIDES["med_urwkv_t"])
    rc = main(["train", "--data", str(data), "--out", str(run), "--model-kwargs", kwargs, "--no-progress"])
    line = one_error_line(capsys.readouterr().err, "train")
    assert rc == 2
    assert url in line and str(cache / entry.pretrained.file) in line
    assert "--pretrained PATH" in line and "--pretrained false to train from scratch" in line
    assert not run.exists() and not (data / "splits.json").exists()
