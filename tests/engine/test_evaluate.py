"""``evaluate``: metrics at the original resolution, split resolution, output files, run-folder defaults."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medurwkv import create_model
from medurwkv.cli import main as cli
from medurwkv.data.split import make_split, save_split
from medurwkv.engine.checkpoint import save_checkpoint
from medurwkv.engine.evaluation import evaluate
from medurwkv.engine.metrics import image_metrics
from medurwkv.engine.predict import Segmenter


class Pointwise(nn.Module):
    """logits = (0, 10 * x): foreground exactly where the (per-image normalised) pixel is above the mean."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.pad_multiple = 1, 2, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 10.0 * x], dim=1)  # (B, 2, H, W)


def ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def make_dataset(root: Path, n: int = 6, spacing: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """images/ (bright ellipse on noise, odd sizes) and masks/ (a shifted ellipse) [+ spacing.csv]."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cases = {}
    for k in range(n):
        h, w = 31 + 2 * k, 45 - k
        blob = ellipse(h, w, h / 2, w / 2, h / 4, w / 4 + k % 3)
        img = (np.where(blob, 190, 50) + rng.integers(-20, 21, (h, w))).astype(np.uint8)
        gt = ellipse(h, w, h / 2 + k - 2, w / 2 + 1, h / 4 + 1, w / 4).astype(np.uint8)
        cid = f"case{k:02d}"
        Image.fromarray(img).save(root / "images" / f"{cid}.png")
        Image.fromarray(gt * 255).save(root / "masks" / f"{cid}.png")
        cases[cid] = (img, gt.astype(np.int64))
    # an empty case: constant image (no pixel above the mean -> empty prediction) and an empty mask
    img = np.full((20, 24), 90, np.uint8)
    Image.fromarray(img).save(root / "images" / "empty.png")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(root / "masks" / "empty.png")
    cases["empty"] = (img, np.zeros((20, 24), np.int64))
    if spacing:
        lines = ["id,spacing_mm"] + [f"{cid},{0.1 + 0.05 * i:.2f}" for i, cid in enumerate(sorted(cases))]
        (root / "spacing.csv").write_text("\n".join(lines) + "\n")
    return cases


def spacing_of(root: Path) -> dict[str, float]:
    with open(root / "spacing.csv") as f:
        return {r["id"]: float(r["spacing_mm"]) for r in csv.DictReader(f)}


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def pointwise_segmenter() -> Segmenter:
    pre = {"in_channels": 1, "img_size": None, "normalize": "per_image", "num_classes": 2}
    return Segmenter.from_model(Pointwise(), pre)


def tiny_unet_run(run: Path, **state) -> Path:
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
    pre = {
        "in_channels": 1,
        "img_size": [16, 16],
        "normalize": "per_image",
        "num_classes": 2,
        "class_names": ["background", "blob"],
    }
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: unet\n")
    return save_checkpoint(run / "best.pt", model, preprocess=pre, epoch=2, **state)


def test_metrics_match_direct_computation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cases = make_dataset(data)
    sp = spacing_of(data)
    out = tmp_path / "eval"
    summary = evaluate(pointwise_segmenter(), data, split="all", out_dir=out, progress=False, verbose=False)
    rows = read_csv(out / "per_image.csv")
    assert sorted(rows) == sorted(cases)
    expected_dice = []
    for cid, (img, gt) in cases.items():
        pred = (img.astype(np.float64) > img.mean()).astype(np.int64)  # what the pointwise model must predict
        m = image_metrics(pred, gt, 2, spacing=sp[cid])[1]
        expected_dice.append(m["dice"])
        r = rows[cid]
        assert r["distance_unit"] == "mm"
        for key in ("dice", "iou", "precision", "recall", "hd95", "assd"):
            assert float(r[f"{key}_foreground"]) == pytest.approx(m[key], abs=1e-9), (cid, key)
        assert int(r["tp_foreground"]) == int(((pred == 1) & (gt == 1)).sum())
    assert rows["empty"]["dice_foreground"] == "1.0" and float(rows["empty"]["hd95_foreground"]) == 0.0
    assert min(expected_dice[:-1]) > 0.3 and max(expected_dice[:-1]) < 0.99  # non-trivial numbers
    assert summary["headline"]["value"] == pytest.approx(float(np.mean(expected_dice)), abs=1e-12)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["headline"]["value"] == pytest.approx(summary["headline"]["value"])
    assert on_disk["evaluation"]["split"] == "all" and on_disk["evaluation"]["mode"] == "native"
    assert on_disk["distance_unit"] == "mm"
    assert "Dice" in (out / "summary.md").read_text()
    cases_png = sorted(p.name.split("_")[0] for p in (out / "cases").glob("*.png"))
    assert cases_png == ["best", "median", "worst"]
    best = next((out / "cases").glob("best_*.png"))
    assert best.name == "best_empty.png"  # Dice 1 beats every partial overlap


def test_split_file_and_ids(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cases = make_dataset(data, spacing=False)
    split = make_split(sorted(cases), val=0.2, test=0.3, seed=1)
    save_split(split, data / "splits.json")
    seg = pointwise_segmenter()
    s = evaluate(
        seg, data, split="test", out_dir=tmp_path / "t", progress=False, verbose=False, thumbnails=False
    )
    assert sorted(read_csv(tmp_path / "t" / "per_image.csv")) == sorted(split.test)
    assert s["distance_unit"] == "px" and s["evaluation"]["checksum"] == split.checksum
    assert s["n_images"] == len(split.test)
    s = evaluate(
        seg, data, ids=["case01", "case03"], split="val", out=tmp_path / "v", progress=False, verbose=False
    )
    assert sorted(read_csv(tmp_path / "v" / "per_image.csv")) == ["case01", "case03"]
    (data / "splits.json").unlink()
    with pytest.raises(FileNotFoundError, match="split all"):
        evaluate(seg, data, split="test", out_dir=tmp_path / "x", progress=False, verbose=False)
    with pytest.raises(ValueError, match="out_dir"):
        evaluate(seg, data, split="all", progress=False, verbose=False)  # not in a run folder, no out


def test_run_folder_defaults_checkpoint_split_and_report(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cases = make_dataset(data)
    rec = {
        "path": "somewhere/splits.json",
        "checksum": "abc",
        "fold": None,
        "train": ["case00"],
        "val": ["case01", "case02"],
        "test": ["case03", "case04", "empty"],
    }
    ckpt = tiny_unet_run(tmp_path / "run", train_config={"data": str(data)}, split=rec)
    summary = evaluate(tmp_path / "run", data, split="test", progress=False, verbose=False)
    out = tmp_path / "run" / "eval" / "test"
    rows = read_csv(out / "per_image.csv")
    assert sorted(rows) == ["case03", "case04", "empty"]
    assert summary["evaluation"]["split_source"] == "checkpoint"
    assert summary["evaluation"]["checkpoint"] == str(ckpt) and summary["evaluation"]["mode"] == "resize"
    # numbers equal Segmenter predictions scored directly at the original size
    seg = Segmenter.from_checkpoint(ckpt)
    sp = spacing_of(data)
    for cid in rows:
        img, gt = cases[cid]
        pred = seg.predict(img)
        assert pred.shape == gt.shape
        m = image_metrics(pred, gt, 2, spacing=sp[cid])[1]
        assert float(rows[cid]["dice_blob"]) == pytest.approx(m["dice"], abs=1e-9)
    assert len(list((out / "cases").glob("*.png"))) >= 1
    try:
        import medurwkv.engine.report  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        assert (tmp_path / "run" / "report.html").is_file()


def test_evaluate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    make_dataset(data, n=3)
    tiny_unet_run(tmp_path / "run")
    rc = cli(
        [
            "evaluate",
            "--ckpt",
            str(tmp_path / "run" / "best.pt"),
            "--data",
            str(data),
            "--split",
            "all",
            "--tta",
            "--quiet",
            "--no-report",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "headline Dice" in text and "| class | metric |" in text
    s = json.loads((tmp_path / "run" / "eval" / "all" / "summary.json").read_text())
    assert s["n_images"] == 4 and s["evaluation"]["tta"] is True
    assert math.isfinite(s["headline"]["value"])
    assert not (tmp_path / "run" / "report.html").exists()
    rc = cli(["evaluate", "--ckpt", str(tmp_path / "run"), "--data", str(data), "--split", "test", "--quiet"])
    assert rc == 2 and "split" in capsys.readouterr().err
