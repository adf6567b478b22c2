"""Real data: tiny Med-URWKV-T trained from scratch on a 60-image, exam-grouped HC18 subset (CPU, 1 thread).

One module fixture runs ``medurwkv train`` in a subprocess, kills it with SIGKILL after a few epochs, resumes it
with ``fit(resume=...)``, which then evaluates best.pt on val and test at the original 800x540 resolution and
writes the report. The two tests check (1) that it learned: the validation Dice is far above the best constant
prediction, and (2) that kill -> resume -> evaluate produced a complete, consistent run folder.

Chance level: every HC18 mask contains a head, so predicting all background scores Dice 0 and predicting all
foreground scores ``2f / (1 + f)`` per image (``f`` = head fraction of the image), about 0.39 on this validation
set. The threshold is ``max(0.65, all-foreground + 0.25)``; this configuration reaches ~0.79 at 64x64 after 10
epochs (~1 min), and a model that only learned a centred blob stays near 0.5-0.6.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from engine_testing import read_metrics
from PIL import Image

from medurwkv.engine.checkpoint import load_checkpoint
from medurwkv.engine.train import fit
from medurwkv.models import QUICK_OVERRIDES

EPOCHS = 10
TINY_URWKV = QUICK_OVERRIDES["med_urwkv_t"]  # the tiny Med-URWKV-T shared by tests and --quick


def hc18_subset(src: Path, dst: Path, n_min: int = 60) -> list[str]:
    """Whole exams only (frames of one exam share the 3-digit prefix): every 8th exam until >= n_min images."""
    ids = sorted(p.stem for p in (src / "images").glob("*.png"))
    exams = sorted({i[:3] for i in ids})
    chosen: list[str] = []
    for e in exams[::8]:
        chosen += [i for i in ids if i.startswith(e + "_")]
        if len(chosen) >= n_min:
            break
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True)
        for i in chosen:
            shutil.copy(src / sub / f"{i}.png", dst / sub / f"{i}.png")
    shutil.copy(src / "training_set_pixel_size_and_HC.csv", dst)  # pixel spacing -> HD95 in mm
    return chosen


def foreground_dice_all_foreground(mask_dir: Path, ids: list[str]) -> float:
    """Per-image mean Dice of predicting every pixel as head: 2f / (1 + f)."""
    fs = np.array([(np.asarray(Image.open(mask_dir / f"{i}.png")) > 0).mean() for i in ids])
    return float(np.mean(2 * fs / (1 + fs)))


@pytest.fixture(scope="module")
def hc18_run(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    src = shared_data_dir / "hc18"
    if not src.is_dir():
        pytest.fail(f"expected HC18 at {src}")
    root = tmp_path_factory.mktemp("hc18")
    data = root / "hc18_subset"
    ids = hc18_subset(src, data)
    run = root / "run"
    args = [
        "--data", str(data), "--out", str(run), "--model", "med_urwkv_t", "--model-kwargs", json.dumps(TINY_URWKV),
        "--pretrained", "false",
        "--img-size", "64", "--epochs", str(EPOCHS), "--batch-size", "8", "--lr", "3e-3", "--warmup-epochs", "0.5",
        "--no-augment", "--val-fraction", "0.2", "--test-fraction", "0.2", "--num-workers", "0", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medurwkv.cli", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # kill (no warning, no cleanup) as soon as 3 epochs are logged: in the middle of the run
    deadline = time.monotonic() + 400
    metrics = run / "metrics.csv"
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (
                metrics.is_file()
                and len(metrics.read_text().splitlines()) >= 4
                and (run / "last.pt").is_file()
            ):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"training ended before it was killed:\n{out[-3000:]}"
    killed_epoch = load_checkpoint(run / "last.pt")["epoch"]

    result = fit(resume=run, progress=False)
    return {"data": data, "ids": ids, "run": run, "killed_epoch": killed_epoch, "result": result, "log": out}


def test_hc18_learns_far_above_chance(hc18_run: dict):
    run, data = hc18_run["run"], hc18_run["data"]
    split = load_checkpoint(run / "best.pt")["split"]
    assert split["created"] and split["path"] == str(data / "splits.json")
    exams = {k: {i[:3] for i in split[k]} for k in ("train", "val", "test")}
    assert not (exams["train"] & exams["val"]) and not (exams["train"] & exams["test"])  # exam-grouped
    all_fg = foreground_dice_all_foreground(data / "masks", split["val"])
    threshold = max(0.65, all_fg + 0.25)
    rows = read_metrics(run / "metrics.csv")
    best_val = max(float(r["val_dice"]) for r in rows)
    # the evaluation of best.pt at the original resolution (800x540), per-image mean foreground Dice
    val = json.loads((run / "eval" / "val" / "summary.json").read_text())
    test = json.loads((run / "eval" / "test" / "summary.json").read_text())
    all_fg_test = foreground_dice_all_foreground(data / "masks", split["test"])
    print(
        f"HC18 subset: val Dice {val['headline']['value']:.4f} (training size {best_val:.4f}), test Dice "
        f"{test['headline']['value']:.4f}; all-foreground {all_fg:.4f} / {all_fg_test:.4f}, all-background 0"
    )
    assert best_val > threshold
    assert val["headline"]["value"] > threshold
    assert test["headline"]["value"] > max(0.6, all_fg_test + 0.2)
    assert float(rows[0]["val_dice"]) < best_val  # it rose during training
    assert val["distance_unit"] == "mm"  # HC18 pixel spacing reached the evaluation


def test_hc18_kill_resume_evaluate(hc18_run: dict):
    run, result = hc18_run["run"], hc18_run["result"]
    k = hc18_run["killed_epoch"]
    assert 1 <= k < EPOCHS
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))  # no gap, no duplicate
    steps = [int(r["global_step"]) for r in rows]
    assert steps == [steps[0] * (e + 1) for e in range(EPOCHS)]
    log = (run / "train.log").read_text()
    assert f"resume: continuing after epoch {k}/{EPOCHS}" in log
    assert log.count("training run") == 1 and log.count("resuming run") == 1
    assert result.epochs_completed == EPOCHS
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == result.best_epoch
    assert best["best_metric"] == pytest.approx(max(float(r["val_dice"]) for r in rows), abs=1e-7)
    for name in ("val", "test"):
        summary = json.loads((run / "eval" / name / "summary.json").read_text())
        assert summary["n_images"] == len(best["split"][name])
        assert summary["evaluation"]["epoch"] == best["epoch"]
        assert (run / "eval" / name / "per_image.csv").is_file()
    assert result.eval["val"]["headline"]["value"] == pytest.approx(
        json.loads((run / "eval" / "val" / "summary.json").read_text())["headline"]["value"]
    )
    assert result.report is not None and result.report.is_file()
