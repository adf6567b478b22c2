"""``medurwkv export`` user errors: wrong checkpoint, output not .onnx -> exit 2, one line, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_testing import one_error_line

from medurwkv.cli import main as cli


@pytest.mark.parametrize("kind", ["x.pt", "missing.pt"])
def test_wrong_checkpoint(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if kind == "x.pt":
        (tmp_path / kind).write_text("not a checkpoint")
    assert cli(["export", "--ckpt", str(tmp_path / kind), "--out", str(tmp_path / "m.onnx")]) == 2
    line = one_error_line(capsys.readouterr().err, "export")
    assert "expected a medurwkv checkpoint" in line and kind in line
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*"))


def test_output_must_be_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["export", "--ckpt", str(tmp_path / "whatever.pt"), "--out", str(tmp_path / "m.pt")]) == 2
    assert "ending in .onnx" in one_error_line(capsys.readouterr().err, "export")
