"""``medurwkv demo`` user errors go to stderr (one line, exit 2), never to stdout; it never downloads unasked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medurwkv.cli import main
from medurwkv.pipeline import DATA_ENV, DEMO_TRAINING, DemoConfig


def _no_data_env(tmp_path: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != DATA_ENV}
    return {**env, "MEDURWKV_CACHE": str(tmp_path / "cache")}


def test_demo_without_data_or_download_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("MEDURWKV_CACHE", str(tmp_path / "cache"))
    rc = main(["demo", "--out", str(tmp_path / "demo")])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("medurwkv demo: error: ") and "--download" in lines[0]
    assert "Traceback" not in err and "error" not in out
    assert not (tmp_path / "cache" / "downloads").exists()


def test_demo_bad_training_option_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--model-kwargs", "{not json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medurwkv demo: error: ") and "--model-kwargs" in err and len(err.splitlines()) == 1


def test_demo_training_options_come_from_train_config():
    cfg = DemoConfig().with_options(epochs=1, img_size=64, out="x")
    assert cfg.out == "x" and cfg.train.epochs == 1 and cfg.train.img_size == 64
    assert cfg.train.lr == 3e-4 and DemoConfig().train.epochs == DEMO_TRAINING["epochs"]
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        DemoConfig().with_options(epoch=1)


def test_demo_subprocess_without_data(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "medurwkv.cli", "demo", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        env=_no_data_env(tmp_path),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("medurwkv demo: error: ") and len(proc.stderr.splitlines()) == 1
    assert "Traceback" not in proc.stderr
