"""`medurwkv data ...` user errors: exit code 2, one line `medurwkv data CMD: error: ...` on stderr, no traceback.

The full report of `data check` stays on stdout; stderr carries only the one-line summary.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_testing import one_error_line
from PIL import Image

from medurwkv.cli import main
from medurwkv.data import load_split, make_split, save_split
from medurwkv.errors import UserError


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _dataset(root: Path, masks: dict[str, np.ndarray], labels: dict | None = None) -> Path:
    """images/<id>.png (gray noise) + masks/<id>.png as given [+ dataset.json with ``labels``]."""
    rng = np.random.default_rng(0)
    for sample_id, mask in masks.items():
        _save(root / "images" / f"{sample_id}.png", rng.integers(0, 256, mask.shape, dtype=np.uint8))
        _save(root / "masks" / f"{sample_id}.png", mask.astype(np.uint8))
    if labels is not None:
        (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    return root


def _mask(*values: int) -> np.ndarray:
    """(16, 16) uint8 mask holding exactly ``values``, in vertical bands."""
    band = np.repeat(np.arange(len(values)), -(-16 // len(values)))[:16]
    return np.asarray(values, np.uint8)[band][None, :].repeat(16, 0)


def _binary(n: int) -> dict[str, np.ndarray]:
    return {f"case{k}": _mask(0, 255) for k in range(n)}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_data_without_subcommand_prints_help_and_exits_2(capsys):
    code, out, _ = run(capsys, "data")
    assert code == 2 and "check" in out and "prepare" in out


def test_check_missing_folder(tmp_path, capsys):
    code, out, err = run(capsys, "data", "check", str(tmp_path / "nowhere"), "--no-progress")
    assert code == 2
    line = one_error_line(err, "data check")
    assert "nowhere does not exist" in line and "images/ and masks/" in line
    assert "FAILED" in out  # the report itself is on stdout


def test_check_missing_folder_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "medurwkv.cli", "data", "check", str(tmp_path / "nowhere"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "does not exist" in one_error_line(proc.stderr, "data check")


def test_check_unreadable_image_names_the_file(tmp_path, capsys):
    root = _dataset(tmp_path / "d", _binary(2))
    (root / "images" / "x.png").write_bytes(b"this is not a png")
    _save(root / "masks" / "x.png", _mask(0, 255))
    code, out, err = run(capsys, "data", "check", str(root), "--no-progress")
    assert code == 2
    line = one_error_line(err, "data check")
    assert "images/x.png" in line and "cannot read image" in line
    assert "x.png" in out


def test_check_stray_label_without_dataset_json_names_each_file(tmp_path, capsys):
    masks = _binary(5)
    masks["case1"] = _mask(0, 1, 7)
    masks["case3"] = _mask(0, 7)
    root = _dataset(tmp_path / "d", masks)
    code, out, err = run(capsys, "data", "check", str(root), "--no-progress")
    assert code == 2
    line = one_error_line(err, "data check")
    assert "2 errors" in line and "report above" in line
    report_lines = [s for s in out.splitlines() if "label values" in s]
    assert len(report_lines) == 2, out
    assert any("masks/case1.png has label values [7]" in s for s in report_lines)
    assert any("masks/case3.png has label values [7]" in s for s in report_lines)
    for s in report_lines:
        assert "fix the mask" in s and "dataset.json" in s
    for clean in ("case0", "case2", "case4"):
        assert f"masks/{clean}.png" not in out


def test_check_values_outside_dataset_json_name_each_file(tmp_path, capsys):
    masks = _binary(4)
    masks["case0"] = _mask(0, 1, 2)
    masks["case2"] = _mask(0, 9)
    root = _dataset(tmp_path / "d", masks, labels={"background": 0, "lesion": 1})
    code, out, err = run(
        capsys, "data", "check", str(root), "--no-progress", "--json", str(tmp_path / "r.json")
    )
    assert code == 2
    one_error_line(err, "data check")
    assert "masks/case0.png has label values [2], expected 0..1" in out
    assert "masks/case2.png has label values [9], expected 0..1" in out
    assert "masks/case1.png" not in out and "masks/case3.png" not in out
    report = json.loads((tmp_path / "r.json").read_text())  # --json is written before the error
    assert report["ok"] is False and len(report["errors"]) == 2


def test_check_contiguous_labels_without_dataset_json_pass(tmp_path, capsys):
    masks = _binary(3)
    masks["case1"] = _mask(0, 1, 2)
    root = _dataset(tmp_path / "d", masks)
    code, out, err = run(capsys, "data", "check", str(root), "--no-progress")
    assert code == 0 and err == ""
    assert "classes (inferred): 3 ['background', 'class_1', 'class_2']" in out


def test_check_strict_turns_warnings_into_exit_2(tmp_path, capsys):
    masks = {"case0": _mask(0, 255), "case1": _mask(0, 255)}
    root = _dataset(tmp_path / "d", masks)
    (root / "images" / "case1.png").write_bytes((root / "images" / "case0.png").read_bytes())  # duplicate
    assert run(capsys, "data", "check", str(root), "--no-progress")[0] == 0
    code, _, err = run(capsys, "data", "check", str(root), "--no-progress", "--strict")
    assert code == 2 and "--strict: 1 warning(s)" in one_error_line(err, "data check")


def test_empty_dataset_folder(tmp_path, capsys):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    code, _, err = run(capsys, "data", "check", str(root), "--no-progress")
    assert code == 2 and "no image/mask pairs found" in one_error_line(err, "data check")
    code, _, err = run(capsys, "data", "split", str(root))
    assert code == 2 and "expected image/mask pairs to split" in one_error_line(err, "data split")


def test_not_a_dataset_folder(tmp_path, capsys):
    (tmp_path / "raw" / "pictures").mkdir(parents=True)
    code, _, err = run(capsys, "data", "split", str(tmp_path / "raw"))
    assert code == 2 and "is not a dataset folder" in one_error_line(err, "data split")


def test_split_bad_group_regex(tmp_path, capsys):
    root = _dataset(tmp_path / "d", _binary(4))
    code, _, err = run(capsys, "data", "split", str(root), "--group", "(unclosed")
    assert code == 2
    assert "not a valid regular expression" in one_error_line(err, "data split")
    code, _, err = run(capsys, "data", "split", str(root), "--group", "^case")
    assert code == 2 and "exactly one capture group" in one_error_line(err, "data split")
    assert not (root / "splits.json").exists()


def test_split_fold_without_folds_writes_nothing(tmp_path, capsys):
    root = _dataset(tmp_path / "d", _binary(6))
    code, _, err = run(capsys, "data", "split", str(root), "--fold", "1")
    assert code == 2 and "--fold 1 needs --folds K" in one_error_line(err, "data split")
    code, _, err = run(capsys, "data", "split", str(root), "--folds", "2", "--fold", "2")
    assert code == 2 and "out of range" in one_error_line(err, "data split")
    assert not (root / "splits.json").exists()


def test_split_force_replaces_the_file_atomically(tmp_path, capsys):
    root = _dataset(tmp_path / "d", _binary(6))
    assert run(capsys, "data", "split", str(root), "--seed", "1")[0] == 0
    assert run(capsys, "data", "split", str(root), "--seed", "2", "--force")[0] == 0
    assert load_split(root / "splits.json").seed == 2
    assert sorted(p.name for p in root.iterdir()) == ["images", "masks", "splits.json"]  # no temp file left


def test_bad_split_files_are_user_errors(tmp_path):
    ids = [f"case{k}" for k in range(6)]
    path = save_split(make_split(ids, val=0.2, test=0.2), tmp_path / "splits.json")
    doc = json.loads(path.read_text())
    doc["train"] = doc["train"][:-1]  # a hand edit
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="fails its checksum"):
        load_split(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_split(path)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UserError, match="not a medurwkv split file"):
        load_split(path)


def test_prepare_unknown_recipe(tmp_path, capsys):
    code, _, err = run(capsys, "data", "prepare", "nope", str(tmp_path), str(tmp_path / "out"))
    assert code == 2 and "unknown dataset recipe 'nope'" in one_error_line(err, "data prepare")


@pytest.fixture
def empty_server(http_server):
    """The local HTTP server of tests/conftest.py serving an empty folder: every file is a 404."""
    return http_server[0]


def test_fetch_failed_download(empty_server, tmp_path, capsys):
    url = f"{empty_server}/training_set.zip"
    argv = ["data", "fetch", "hc18", str(tmp_path / "hc18"), "--url", url, "--csv-url", "none"]
    code, _, err = run(capsys, *argv, "--download-dir", str(tmp_path / "dl"), "--no-progress")
    assert code == 2
    line = one_error_line(err, "data fetch")
    assert url in line and "404" in line
    assert "by hand" in line and "medurwkv data prepare hc18" in line  # how to fix it
    assert not (tmp_path / "hc18").exists()
    assert not list((tmp_path / "dl").iterdir())  # no partial download left
