"""``medurwkv evaluate`` user errors: wrong checkpoint, missing dataset -> exit 2, one line, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_testing import one_error_line
from PIL import Image

from medurwkv.cli import main as cli


def tiny_dataset(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        Image.fromarray(np.full((12, 10), 40 * (i + 1), np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(np.zeros((12, 10), np.uint8)).save(root / "masks" / f"c{i}.png")
    return root


@pytest.mark.parametrize("kind", ["x.pt", "missing.pt"])
def test_wrong_checkpoint(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_dataset(tmp_path / "data")
    ck = tmp_path / kind
    if kind == "x.pt":
        ck.write_text("not a checkpoint")
    rc = cli(
        ["evaluate", "--ckpt", str(ck), "--data", str(data), "--split", "all", "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    line = one_error_line(capsys.readouterr().err, "evaluate")
    assert "expected a medurwkv checkpoint" in line and kind in line


def test_wrong_checkpoint_subprocess(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    (tmp_path / "x.pt").write_bytes(b"\x00garbage\xff")
    cmd = [sys.executable, "-m", "medurwkv.cli", "evaluate", "--ckpt", str(tmp_path / "x.pt")]
    cmd += ["--data", str(data), "--split", "all", "--out", str(tmp_path / "o"), "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "x.pt" in one_error_line(res.stderr, "evaluate")
