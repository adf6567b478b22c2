"""``medurwkv train`` user errors: exit code 2, one line ``medurwkv train: error: ...`` on stderr, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_testing import one_error_line

from medurwkv.cli import main
from medurwkv.engine.train import TrainingDiverged
from medurwkv.errors import UserError


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
