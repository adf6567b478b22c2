"""The `medurwkv data ...` CLI (`medurwkv.cli.data`), called in-process through `medurwkv.cli.main`.

User errors exit with 2 (one line on stderr), see tests/cli/test_cli_data.py for the error policy itself.
"""

from __future__ import annotations

import json
import stat

from data_synth import hc18_archive, tiny_dataset

from medurwkv.cli import main
from medurwkv.data import load_split


def run_cli(*argv: str) -> int:
    return main(list(argv))


def test_data_without_subcommand_prints_help(capsys):
    assert run_cli("data") == 2
    assert "check" in capsys.readouterr().out


def test_check_ok_and_failing(tmp_path, capsys):
    root = tiny_dataset(tmp_path)
    assert run_cli("data", "check", str(root), "--no-progress", "--json", str(tmp_path / "r.json")) == 0
    out = capsys.readouterr().out
    assert "pairs: 8" in out and "OK" in out
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True
    (root / "masks" / "001_HC.png").unlink()
    assert run_cli("data", "check", str(root), "--no-progress") == 2
    assert "images/001_HC.png has no mask" in capsys.readouterr().out


def test_split_writes_frozen_file_and_folds(tmp_path, capsys):
    root = tiny_dataset(tmp_path)
    assert run_cli("data", "split", str(root), "--test", "0.25", "--seed", "3") == 0
    path = root / "splits.json"
    split = load_split(path)
    assert split.seed == 3 and split.group == r"^(\d{3})_"
    assert "wrote" in capsys.readouterr().out
    assert run_cli("data", "split", str(root)) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        run_cli("data", "split", str(root), "--folds", "2", "--fold", "1", "--group", "none", "--force") == 0
    )
    out = capsys.readouterr().out
    assert "fold 1:" in out and "<-- --fold" in out
    assert len(load_split(path).folds) == 2 and load_split(path).group is None


def test_split_read_only_folder_suggests_out(tmp_path, capsys):
    root = tiny_dataset(tmp_path)
    mode = root.stat().st_mode
    root.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        assert run_cli("data", "split", str(root)) == 2
        assert "--out" in capsys.readouterr().err
        out = tmp_path / "my_split.json"
        assert run_cli("data", "split", str(root), "--out", str(out)) == 0
        assert out.is_file()
    finally:
        root.chmod(mode)


def test_prepare_cli(tmp_path, capsys):
    archive, _ = hc18_archive(tmp_path / "src")
    csv = tmp_path / "src" / "training_set_pixel_size_and_HC.csv"
    assert (
        run_cli("data", "prepare", "hc18", str(archive), str(csv), str(tmp_path / "out"), "--no-progress")
        == 0
    )
    out = capsys.readouterr().out
    assert "prepared 4 image/mask pairs" in out and "OK: no errors" in out
    assert run_cli("data", "prepare", "hc18", str(archive), str(tmp_path / "out")) == 2
    assert "not empty" in capsys.readouterr().err
    assert run_cli("data", "prepare", "nope", str(archive), str(tmp_path / "o2")) == 2
