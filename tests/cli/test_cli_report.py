"""``medurwkv report`` user errors: a folder that is not a run, a missing folder -> exit 2, one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_testing import one_error_line

from medurwkv.cli import main as cli


def test_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    assert cli(["report", str(tmp_path / "photos")]) == 2
    line = one_error_line(capsys.readouterr().err, "report")
    assert "photos" in line and "config.yaml" in line
    assert not (tmp_path / "photos" / "report.html").exists()


def test_missing_folder_subprocess(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "medurwkv.cli", "report", str(tmp_path / "nope")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "not a directory" in one_error_line(res.stderr, "report")


def test_a_run_with_only_metrics_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(
        "epoch,train_loss,val_loss,val_dice,lr,epoch_time_s\n0,1.0,0.9,0.5,0.001,3\n"
    )
    assert cli(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and "headline Dice" in capsys.readouterr().out
