"""Tests of engine/report.py on synthetic run directories (full, partial, empty) and of the CLI wiring."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medurwkv.cli import main as cli
from medurwkv.engine import report
from medurwkv.engine.metrics import MetricAccumulator, write_outputs
from medurwkv.engine.visualize import save_case_thumbnails

REPO = Path(__file__).resolve().parents[2]

CONFIG = """\
model:
  name: med_urwkv_tiny
  kwargs: {num_classes: 2, in_channels: 3}
data: /data/hc18
epochs: 4
batch_size: 8
img_size: [96, 96]
lr: 0.0003
"""


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.int64)


def make_run(root: Path, *, config=True, log=True, splits=("test", "val"), n_images=9, seed=0) -> Path:
    """A synthetic run dir written through the real metrics / visualize code paths (as evaluate would)."""
    run = root / "run1"
    run.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    if config:
        (run / "config.yaml").write_text(CONFIG)
    if log:
        lines = ["epoch,train_loss,val_loss,val_dice,lr,epoch_time_s"]
        for e in range(4):
            lines.append(
                f"{e},{1.0 / (e + 1):.4f},{1.2 / (e + 1):.4f},{0.5 + 0.1 * e:.4f},{3e-4 * 0.7**e:.6g},12.5"
            )
        (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    for split in splits:
        d = run / "eval" / split
        acc = MetricAccumulator(2)
        images, preds, gts = {}, {}, {}
        for i in range(n_images):
            cid = f"{split}_{i:03d}"
            gt = _disc((64, 64), 32, 32, 14)
            pred = _disc((64, 64), 32 + int(rng.integers(0, 12)), 32, int(rng.integers(8, 16)))
            images[cid] = (rng.normal(1000, 200, (64, 64)) + 800 * gt).astype(np.uint16)
            preds[cid], gts[cid] = pred, gt
            acc.add(cid, pred, gt, spacing=0.2)
        paths = write_outputs(acc, d)
        summary = json.loads(paths["summary_json"].read_text())
        summary["evaluation"] = {"checkpoint": "run1/best.pt", "mode": "resize", "tta": False}
        paths["summary_json"].write_text(json.dumps(summary))  # evaluate adds this provenance block
        save_case_thumbnails(d / "cases", acc.per_image_rows(), images, preds, gts)
    return run


def _embedded_pngs(doc: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)]


def test_full_report(tmp_path):
    run = make_run(tmp_path)
    path = report.build_report(run)
    assert path == run / "report.html"
    doc = path.read_text()
    for section in ("id='evaluation'", "id='training'", "id='config'", "Split: test", "Split: val"):
        assert section in doc
    pngs = _embedded_pngs(doc)
    # learning curves + 2 histograms + 3 cases per split
    assert len(pngs) == 1 + 2 + 6
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    # self-contained: every src / href is a data URI, no external stylesheet or script
    assert not re.search(r"(src|href)=[\"'](?!data:)", doc)
    assert "<script" not in doc and "<link" not in doc
    # headline Dice = the test split's per-image mean, shown prominently first
    s = json.loads((run / "eval" / "test" / "summary.json").read_text())
    want = f"{s['headline']['value']:.4f}"
    m = re.search(r"<div class='v' id='dice-test'>([0-9.]+)</div>", doc)
    assert m and m.group(1) == want
    assert doc.index("id='dice-test'") < doc.index("id='dice-val'") < doc.index("id='evaluation'")
    assert "med_urwkv_tiny" in doc and "best val_dice" in doc and "0.8000 (epoch 3)" in doc
    assert "pooled" in doc and "mm" in doc
    assert "checkpoint: run1/best.pt" in doc
    for kind in ("best", "median", "worst"):
        assert f"<b>{kind}</b>: test_" in doc


def test_partial_runs(tmp_path):
    only_cfg = make_run(tmp_path / "a", log=False, splits=())
    doc = report.build_report(only_cfg).read_text()
    assert "not evaluated yet" in doc and "no metrics.csv yet" in doc and "med_urwkv_tiny" in doc
    assert _embedded_pngs(doc) == []

    trained = make_run(tmp_path / "b", splits=())
    doc = report.build_report(trained).read_text()
    assert "not evaluated yet" in doc
    h = report.headline_dice(trained)
    assert h["source"] == "training" and h["epoch"] == 3 and h["value"] == pytest.approx(0.8)
    assert "id='dice-training'>0.8000<" in doc

    empty = tmp_path / "c"
    empty.mkdir()
    doc = report.build_report(empty, tmp_path / "out" / "r.html").read_text()
    assert "no config.yaml" in doc and "not evaluated yet" in doc
    assert report.headline_dice(empty) is None

    # an eval split without cases / summary.json (only the Markdown) still renders
    run = make_run(tmp_path / "d", splits=("test",))
    shutil.rmtree(run / "eval" / "test" / "cases")
    (run / "eval" / "test" / "summary.json").unlink()
    doc = report.build_report(run).read_text()
    assert "no overlay thumbnails" in doc and "| metric |" in doc
    assert len(_embedded_pngs(doc)) == 2  # curves + histogram


def test_metrics_csv_with_missing_cells(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.csv").write_text(
        "epoch,train_loss,val_loss,val_dice,lr,epoch_time_s,note\n0,1.0,,,0.001,3,x\n"
    )
    cols = report.read_training_log(run / "metrics.csv")
    assert "note" not in cols and math.isnan(cols["val_dice"][0])
    doc = report.build_report(run).read_text()
    assert len(_embedded_pngs(doc)) == 1


def test_cli(tmp_path, capsys):
    run = make_run(tmp_path, splits=("val",))
    assert cli(["report", str(run)]) == 0
    out = capsys.readouterr().out
    s = json.loads((run / "eval" / "val" / "summary.json").read_text())
    assert f"headline Dice (val, per-image mean over 9 images): {s['headline']['value']:.4f}" in out
    assert (run / "report.html").is_file()
    assert cli(["report", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(tmp_path):
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        msg = "no chromium on PATH (Debian package 'chromium'; .ci/run installs it)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(msg)
        pytest.skip(msg)
    path = report.build_report(make_run(tmp_path, n_images=3))
    shot = tmp_path / "shot.png"
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "screenshot_report.sh"), str(path), str(shot), "1000,1400"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert res.returncode == 0, res.stderr
    from PIL import Image

    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[:2] == (1400, 1000)
    assert im.std() > 10  # something was drawn, not a blank page
