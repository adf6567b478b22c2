"""engine/report.py on volume evaluations (engine/metrics3d summaries): a real tiny run on the shared
msd-hippocampus, and hand-written summaries for the table formatting, legend and volume preprocessing."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from medurwkv.engine import report
from medurwkv.engine.metrics import MetricAccumulator, write_outputs
from medurwkv.engine.visualize import GT_PALETTE, PRED_PALETTE, palette_hex, save_case_thumbnails, save_png


def f4(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def css(rgb) -> str:
    # written out here rather than through palette_hex, so that a wrong conversion fails the test
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def section(doc: str, split: str) -> str:
    """The HTML of one split's block (from its heading to the next split or the learning curves)."""
    start = doc.index(f"<h3 id='split-{split}'>")
    ends = [i for i in (doc.find("<h3 id='split-", start + 1), doc.find("id='training'", start)) if i > 0]
    return doc[start : min(ends)]


def chip(palette, label: int, what: str, name: str) -> str:
    return f"<span class='chip' style='background:{css(palette[label])}' title='{what}: {name}'></span>{name}"


# ---------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def volume_run(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny training on 4 hippocampus volumes; fit evaluates best.pt on val and test (about 10 s)."""
    from medurwkv.engine.train import fit

    tmp = tmp_path_factory.mktemp("volume_report")
    fit(
        data=shared_data_dir / "msd-hippocampus",
        out=tmp / "run",
        model="unet",
        model_kwargs={"base_channels": 8},
        img_size=32,
        epochs=1,
        limit=4,
        batch_size=8,
        num_workers=0,
        progress=False,
        tensorboard=False,
        split_file=tmp / "split.json",  # the shared dataset folder is read-only
    )
    return tmp / "run"


def test_report_of_a_hippocampus_volume_run(volume_run: Path):
    doc = report.build_report(volume_run).read_text()
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
    assert len(pngs) == 1 + 2 * (1 + 3)  # learning curves; per split: per-case histogram + 3 cases
    for split in ("test", "val"):
        d = volume_run / "eval" / split
        s = json.loads((d / "summary.json").read_text())
        assert s["format"] == report.VOLUME_METRICS_FORMAT and s["n_cases"] == 4
        # headline card: the TransUNet number, labelled as such
        card = re.search(
            rf"<div class='l'>Dice · {split} \(([^)]*)\)</div><div class='v' id='dice-{split}'>([0-9.]+)</div>",
            doc,
        )
        assert card and card.group(2) == f4(s["headline"]["value"])
        assert card.group(1) == "mean over classes of the per-class mean, 4 volumes"
        sec = section(doc, split)
        assert "then over the classes Anterior, Posterior; TransUNet / Synapse protocol): " in sec
        assert f"<span class='dice'>{f4(s['headline']['value'])}</span>" in sec
        assert f"<b>4 volumes</b> · {html.escape(s['evaluation']['mode_description'])}</p>" in sec
        assert "<th>HD95 (mm) mean ± std</th><th>ASSD (mm) mean ± std</th>" in sec
        for name in ("Anterior", "Posterior"):
            g = s["classes"][name]
            m, sd = g["mean_over_cases"], g["std_over_cases"]
            want = (
                f"<tr><td class='l'>{name}</td>"
                + "".join(f"<td>{f4(m[k])} ± {f4(sd[k])}</td>" for k in ("dice", "iou", "hd95", "assd"))
                + f"<td>{f4(g['pooled']['dice'])}</td><td>{f4(g['pooled']['iou'])}</td><td>4</td>"
                f"<td>{g['n_undefined']['hd95']} / {g['n_undefined']['assd']}</td>"
                f"<td>{g['n_both_empty']} / {g['n_gt_empty']} / {g['n_pred_empty']}</td></tr>"
            )
            assert want in sec
        g = s["mean"]
        want = (
            "<tr class='mean'><td class='l'>mean</td>"
            + "".join(f"<td>{f4(g['mean_over_cases'][k])}</td>" for k in ("dice", "iou", "hd95", "assd"))
            + f"<td>{f4(g['pooled']['dice'])}</td>"
        )
        assert want in sec and f4(g["mean_over_cases"]["dice"]) == f4(s["headline"]["value"])
        assert sec.index("<td class='l'>Anterior</td>") < sec.index("<td class='l'>mean</td>")
        # legend: one chip per foreground class, in the colours overlay() draws them with
        for c, name in ((1, "Anterior"), (2, "Posterior")):
            assert chip(PRED_PALETTE, c, "prediction", name) in sec
            assert chip(GT_PALETTE, c, "ground truth", name) in sec
        assert "title='prediction: background'" not in sec  # background is never drawn
        # the thumbnails evaluate wrote, embedded byte for byte, captioned with the case and its Dice
        per_case: dict[str, list[float]] = {}
        with (d / "per_case.csv").open(newline="") as f:
            for r in csv.DictReader(f):
                per_case.setdefault(r["case_id"], []).append(float(r["dice"]))
        files = sorted((d / "cases").glob("*.png"))
        assert len(files) == 3
        for p in files:
            kind, case = p.stem.split("_", 1)
            img = re.search(
                rf'<img class="case" alt="{kind} case {case}" src="data:image/png;base64,([^"]+)">', sec
            )
            assert img and base64.b64decode(img.group(1)) == p.read_bytes()
            dice = per_case[case]
            assert f"<b>{kind}</b>: case {case}, busiest slice — Dice {f4(sum(dice) / len(dice))} (" in sec
    # the resolved slicing of the run (slices/index.json = the checkpoint's preprocess["volume"])
    spec = json.loads((volume_run / "slices" / "index.json").read_text())["spec"]
    assert (
        f"<th class='l'>slice axis</th><td class='l'>{spec['axis']} (array axis; configured: auto)</td>"
        in doc
    )
    assert "<th class='l'>intensity · MRI</th><td class='l'>zscore: (x − mean) / std per volume</td>" in doc
    assert doc.index("id='volume-preprocessing'") > doc.index("id='config'")
    h = report.headline_dice(volume_run)
    s = json.loads((volume_run / "eval" / "test" / "summary.json").read_text())
    assert h["split"] == "test" and h["value"] == s["headline"]["value"]
    assert h["n_cases"] == 4 and h["n_images"] is None
    assert h["statistic"] == "mean over classes of the per-class mean over 4 volumes"


# ---------------------------------------------------------------- hand-written summaries


def _zero(**kw: int) -> dict[str, int]:
    return {m: kw.get(m, 0) for m in ("dice", "iou", "hd95", "assd")}


# 3 cases; "tumour" is absent from two of them (one predicted anyway) and missed in the third, so its
# distances are undefined in every case: mean and std null
SUMMARY = {
    "format": "medurwkv-volume-metrics-v1",
    "n_cases": 3,
    "num_classes": 3,
    "class_names": ["background", "liver", "tumour"],
    "evaluated_classes": ["liver", "tumour"],
    "include_background": False,
    "distance_unit": "voxel",
    "headline": {"metric": "dice", "statistic": "mean_over_cases", "over": "mean", "value": 0.6166666666},
    "std_ddof": 0,
    "surface_connectivity": 6,
    "classes": {
        "liver": {
            "mean_over_cases": {"dice": 0.9, "iou": 0.8181818, "hd95": 2.5, "assd": 0.75},
            "std_over_cases": {"dice": 0.05, "iou": 0.0625, "hd95": 1.25, "assd": 0.125},
            "median_over_cases": {"dice": 0.9, "iou": 0.8181818, "hd95": 2.0, "assd": 0.7},
            "pooled": {"dice": 0.91, "iou": 0.834},
            "n_cases": 3,
            "n_undefined": _zero(),
            "n_both_empty": 0,
            "n_gt_empty": 0,
            "n_pred_empty": 0,
        },
        "tumour": {
            "mean_over_cases": {"dice": 1 / 3, "iou": 1 / 3, "hd95": None, "assd": None},
            "std_over_cases": {"dice": 0.4714045, "iou": 0.4714045, "hd95": None, "assd": None},
            "median_over_cases": {"dice": 0.0, "iou": 0.0, "hd95": None, "assd": None},
            "pooled": {"dice": 0.0, "iou": 0.0},
            "n_cases": 3,
            "n_undefined": _zero(hd95=3, assd=3),
            "n_both_empty": 1,
            "n_gt_empty": 1,
            "n_pred_empty": 1,
        },
    },
    "mean": {
        "mean_over_cases": {"dice": 0.6166666666, "iou": 0.5757575, "hd95": 2.5, "assd": 0.75},
        "pooled": {"dice": 0.455, "iou": 0.417},
        "n_classes": 2,
        "n_classes_undefined": _zero(hd95=1, assd=1),
    },
    "evaluation": {
        "checkpoint": "run/best.pt",
        "mode": "volume slices",
        "mode_description": "resize to 64x64; volumes: slices along array axis 2, 2.5D: 1 neighbour slice(s)",
        "split": "test",
        "tta": False,
    },
}
CT_SPEC = {
    "axis": 2,
    "context": 1,
    "channel_names": ["CT"],
    "intensity": [{"scheme": "ct", "lower": -100.0, "upper": 240.5, "mean": 52.25, "std": 31.0, "voxels": 9}],
    "format": "medurwkv-volume-slices-v1",
    "median_spacing": [0.75, 0.75, 3.0],
}


def _volume_run(root: Path, *, spec: dict | None = None) -> Path:
    run = root / "run"
    d = run / "eval" / "test"
    (d / "cases").mkdir(parents=True)
    (run / "config.yaml").write_text("model: unet\nslice_axis: auto\ncontext_slices: 1\nintensity: ct\n")
    (d / "summary.json").write_text(json.dumps(SUMMARY))
    rows = [
        ("case 1", "liver", 0.95),
        ("case 1", "tumour", 1.0),
        ("case 2", "liver", 0.85),
        ("case 2", "tumour", 0.0),
    ]
    (d / "per_case.csv").write_text(
        "case_id,class_index,class_name,dice\n" + "".join(f"{c},1,{n},{v}\n" for c, n, v in rows)
    )
    save_png(
        d / "cases" / "best_case_1.png", np.full((8, 8, 3), 90, np.uint8)
    )  # file name: safe_id("case 1")
    if spec is not None:
        (run / "slices").mkdir()
        (run / "slices" / "index.json").write_text(json.dumps({"spec": spec, "cases": {}}))
    return run


def test_volume_table_formatting(tmp_path: Path):
    run = _volume_run(tmp_path)
    doc = report.build_report(run).read_text()
    sec = section(doc, "test")
    assert "<th>HD95 (voxel) mean ± std</th><th>ASSD (voxel) mean ± std</th>" in sec
    assert (
        "<tr><td class='l'>liver</td><td>0.9000 ± 0.0500</td><td>0.8182 ± 0.0625</td><td>2.5000 ± 1.2500</td>"
        "<td>0.7500 ± 0.1250</td><td>0.9100</td><td>0.8340</td><td>3</td><td>0 / 0</td><td>0 / 0 / 0</td></tr>"
    ) in sec
    # undefined in every case: one n/a (not "n/a ± n/a"), counted, with the empty-structure split
    assert (
        "<tr><td class='l'>tumour</td><td>0.3333 ± 0.4714</td><td>0.3333 ± 0.4714</td><td>n/a</td><td>n/a</td>"
        "<td>0.0000</td><td>0.0000</td><td>3</td><td>3 / 3</td><td>1 / 1 / 1</td></tr>"
    ) in sec
    assert (
        "<tr class='mean'><td class='l'>mean</td><td>0.6167</td><td>0.5758</td><td>2.5000</td><td>0.7500</td>"
        "<td>0.4550</td><td>0.4170</td><td>3</td><td>1 / 1 classes left out</td><td>—</td></tr>"
    ) in sec
    assert "<span class='dice'>0.6167</span>" in sec and "id='dice-test'>0.6167</div>" in doc
    assert "<b>3 volumes</b> · resize to 64x64; volumes: slices along array axis 2" in sec
    assert "mode_description" not in sec  # shown once, as the line above
    assert "checkpoint: run/best.pt" in sec
    # the one thumbnail, matched to its case through the file-name-safe id
    assert "<b>best</b>: case case 1, busiest slice — Dice 0.9750 (liver 0.9500 · tumour 1.0000)" in sec
    assert (
        chip(PRED_PALETTE, 2, "prediction", "tumour") in sec
        and chip(GT_PALETTE, 1, "ground truth", "liver") in sec
    )
    # no slice cache: the configured values
    assert (
        "<th class='l'>slice_axis</th><th class='l'>context_slices</th><th class='l'>intensity</th></tr>"
        "<tr><td class='l'>auto</td><td class='l'>1</td><td class='l'>ct</td></tr>"
    ) in doc
    h = report.headline_dice(run)
    assert h["value"] == pytest.approx(0.6166666666) and h["n_cases"] == 3 and h["n_images"] is None


def test_volume_preprocessing_from_the_slice_cache(tmp_path: Path):
    doc = report.build_report(_volume_run(tmp_path, spec=CT_SPEC)).read_text()
    sec = doc[doc.index("id='volume-preprocessing'") :]
    assert "<td class='l'>2 (array axis; configured: auto)</td>" in sec
    assert "<td class='l'>1 neighbour slice(s) each side (3 slice(s) per channel, 2.5D)</td>" in sec
    assert "<td class='l'>3 = 1 channel(s) × 3 slice(s)</td>" in sec
    assert "<td class='l'>0.75 × 0.75 × 3 mm</td>" in sec
    assert "<th class='l'>intensity · CT</th><td class='l'>ct: clip to [-100, 240.5]" in sec
    assert "then (x − 52.25) / 31</td>" in sec
    # a spec of an unknown format is not trusted
    (tmp_path / "run" / "slices" / "index.json").write_text(json.dumps({"spec": {**CT_SPEC, "format": "x"}}))
    doc = report.build_report(tmp_path / "run").read_text()
    assert "<th class='l'>slice_axis</th>" in doc and "configured: auto" not in doc


def test_volume_split_without_summary_json(tmp_path: Path):
    run = _volume_run(tmp_path)
    d = run / "eval" / "test"
    (d / "summary.json").unlink()
    (d / "summary.md").write_text("| class | Dice |\n")
    doc = report.build_report(run).read_text()
    # per_case.csv alone: the mean of the per-case class means, (0.975 + 0.425) / 2
    assert "id='dice-test'>0.7000</div>" in doc
    assert "volumes" in report.headline_dice(run)["statistic"]
    assert "<pre>| class | Dice |" in doc and "busiest slice" in doc
    assert "prediction (class 1)" in doc  # no class names without summary.json: the generic legend


def test_image_report_legend_and_no_volume_section(tmp_path: Path):
    """2D evaluations get the class legend too; nothing volume-specific appears."""
    run = tmp_path / "run2d"
    d = run / "eval" / "val"
    run.mkdir()
    (run / "config.yaml").write_text("model: unet\nslice_axis: auto\n")
    acc = MetricAccumulator(3, ["background", "cup", "disc"])
    yy, xx = np.mgrid[:24, :24]
    images, preds, gts = {}, {}, {}
    for i in range(3):
        gt = ((yy - 12) ** 2 + (xx - 12) ** 2 < 36).astype(np.int64) + ((yy - 12) ** 2 + (xx - 12) ** 2 < 9)
        pred = np.roll(gt, i, axis=1)
        images[f"im{i}"], preds[f"im{i}"], gts[f"im{i}"] = np.full((24, 24), 100, np.uint8), pred, gt
        acc.add(f"im{i}", pred, gt)
    write_outputs(acc, d)
    save_case_thumbnails(d / "cases", acc.per_image_rows(), images, preds, gts)
    doc = report.build_report(run).read_text()
    for c, name in ((1, "cup"), (2, "disc")):
        assert (
            chip(PRED_PALETTE, c, "prediction", name) in doc
            and chip(GT_PALETTE, c, "ground truth", name) in doc
        )
    assert "ranked by per-image Dice" in doc and "busiest slice" not in doc
    assert "volume-preprocessing" not in doc and "volume-metrics" not in doc
    assert re.search(r"Dice · val \(per-image mean, 3 images\)</div><div class='v' id='dice-val'>", doc)


def test_palette_hex_cycles_like_overlay():
    assert palette_hex(PRED_PALETTE, 1) == "#ff2828" and palette_hex(GT_PALETTE, 2) == "#00dcff"
    n = len(PRED_PALETTE) - 1
    assert palette_hex(PRED_PALETTE, 1 + n) == palette_hex(PRED_PALETTE, 1)
    assert palette_hex(GT_PALETTE, 2 + 2 * n) == css(GT_PALETTE[2])
