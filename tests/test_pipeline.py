"""The main job end to end, shortened: a few HC18 images, one epoch, a tiny Med-URWKV-T."""

from __future__ import annotations

import json

import pytest

from medurwkv.models import QUICK_OVERRIDES
from medurwkv.pipeline import DATA_ENV, locate_hc18, run_demo

TINY = QUICK_OVERRIDES["med_urwkv_t"]


def test_demo_pipeline_end_to_end(shared_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(shared_data_dir))
    res = run_demo(
        out=str(tmp_path / "demo"),
        img_size=64,
        epochs=1,
        batch_size=4,
        limit=6,
        num_workers=0,
        model_kwargs=TINY,
        progress=False,
    )
    assert res.data_dir == shared_data_dir / "hc18"
    split = json.loads(res.split_file.read_text())
    # Exam-grouped: no 3-digit exam prefix appears in two splits.
    exams = {name: {i[:3] for i in split[name]} for name in ("train", "val", "test")}
    assert not (exams["train"] & exams["test"]) and not (exams["train"] & exams["val"])
    assert res.checkpoint.is_file() and res.report is not None and res.report.is_file()
    masks = sorted(res.predictions.glob("*_HC.png")) + sorted(res.predictions.glob("*HC.png"))
    assert len({p.name for p in masks}) == 6
    assert res.test_dice is not None and 0.0 <= res.test_dice <= 1.0
    html = res.report.read_text()
    assert f"{res.test_dice:.4f}"[:5] in html  # the headline Dice is on the page
    summary = json.loads((res.run_dir / "eval" / "test" / "summary.json").read_text())
    assert summary["headline"]["value"] == pytest.approx(res.test_dice)


def test_demo_never_downloads_silently(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("MEDURWKV_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="--download"):
        locate_hc18(None, download=False)


def test_demo_rejects_env_without_hc18(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hc18"):
        locate_hc18(None)
