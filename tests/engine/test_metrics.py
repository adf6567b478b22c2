"""Tests of engine/metrics.py: definitions, empty-mask policy, per-image vs pooled, units, MONAI agreement."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from medurwkv.engine.metrics import (
    MetricAccumulator,
    image_metrics,
    read_per_image_csv,
    summary_markdown,
    surface_distances,
    write_outputs,
)


def _blobs(rng: np.random.Generator, shape: tuple[int, int], k: int, sigma: float = 3.0) -> np.ndarray:
    """Smooth random label map with k classes (connected regions, realistic boundaries)."""
    x = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return np.digitize(x, np.quantile(x, np.linspace(0, 1, k + 1)[1:-1])).astype(np.int64)


def _square(shape, r0, c0, size) -> np.ndarray:
    m = np.zeros(shape, dtype=np.int64)
    m[r0 : r0 + size, c0 : c0 + size] = 1
    return m


# ------------------------------------------------------------------ definitions


def test_overlap_metrics_from_hand_counts():
    # gt: 4x4 square (16 px); pred: same square shifted right by 1 -> TP = 12, FP = 4, FN = 4
    gt = _square((10, 10), 2, 2, 4)
    pred = _square((10, 10), 2, 3, 4)
    m = image_metrics(pred, gt, num_classes=2)[1]
    assert m["dice"] == pytest.approx(2 * 12 / (2 * 12 + 4 + 4))
    assert m["iou"] == pytest.approx(12 / (12 + 4 + 4))
    assert m["precision"] == pytest.approx(12 / 16)
    assert m["recall"] == pytest.approx(12 / 16)


def test_distances_single_pixels_and_spacing():
    # one pixel each, (0, 0) and (3, 4): every surface distance is 5 px; with spacing (2, 1) sqrt(6^2 + 4^2)
    pred = np.zeros((8, 8), dtype=np.int64)
    gt = np.zeros((8, 8), dtype=np.int64)
    pred[0, 0] = 1
    gt[3, 4] = 1
    m = image_metrics(pred, gt, 2)[1]
    assert m["hd95"] == pytest.approx(5.0)
    assert m["assd"] == pytest.approx(5.0)
    m = image_metrics(pred, gt, 2, spacing=(2.0, 1.0))[1]
    assert m["hd95"] == pytest.approx(math.sqrt(52.0))
    m = image_metrics(pred, gt, 2, spacing=0.5)[1]
    assert m["assd"] == pytest.approx(2.5)


def test_identical_masks_give_perfect_scores():
    rng = np.random.default_rng(1)
    lab = _blobs(rng, (40, 50), 3)
    for c, m in image_metrics(lab, lab, 3, class_names=["bg", "a", "b"]).items():
        assert c in ("a", "b")
        assert m == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "hd95": 0.0, "assd": 0.0}


def test_include_background_and_keys():
    gt = _square((10, 10), 2, 2, 4)
    res = image_metrics(gt, gt, 2, include_background=True)
    assert set(res) == {0, 1}


# ------------------------------------------------------------------ empty-mask policy


def test_empty_mask_policy_per_image():
    empty = np.zeros((12, 12), dtype=np.int64)
    sq = _square((12, 12), 3, 3, 5)
    both = image_metrics(empty, empty, 2)[1]
    assert both == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "hd95": 0.0, "assd": 0.0}
    fp_only = image_metrics(sq, empty, 2)[1]  # gt empty, pred not
    assert (fp_only["dice"], fp_only["iou"], fp_only["precision"], fp_only["recall"]) == (0.0, 0.0, 0.0, 1.0)
    assert math.isnan(fp_only["hd95"]) and math.isnan(fp_only["assd"])
    fn_only = image_metrics(empty, sq, 2)[1]  # pred empty, gt not
    assert (fn_only["dice"], fn_only["iou"], fn_only["precision"], fn_only["recall"]) == (0.0, 0.0, 1.0, 0.0)
    assert math.isnan(fn_only["hd95"]) and math.isnan(fn_only["assd"])


def test_empty_mask_policy_in_summary():
    sq = _square((12, 12), 3, 3, 5)
    shifted = _square((12, 12), 3, 5, 5)
    empty = np.zeros_like(sq)
    acc = MetricAccumulator(2)
    hd_a = acc.add("a", shifted, sq)["foreground"]["hd95"]
    acc.add("b", empty, sq)  # undefined distances
    acc.add("c", empty, empty)  # both empty: dice 1, hd 0
    s = acc.summary()
    fg = s["classes"]["foreground"]
    assert fg["n_undefined"] == {"hd95": 1, "assd": 1}
    # mean over the defined images only: a (hd_a) and c (0)
    assert fg["per_image_mean"]["hd95"] == pytest.approx((hd_a + 0.0) / 2)
    d_a = 2 * 15 / (2 * 15 + 10 + 10)  # 5x5 squares shifted by 2 columns: TP 15, FP 10, FN 10
    assert fg["per_image_mean"]["dice"] == pytest.approx((d_a + 0.0 + 1.0) / 3)
    assert fg["per_image_std"]["dice"] == pytest.approx(np.std([d_a, 0.0, 1.0]))
    assert "both_empty" in s["empty_mask_policy"] and "one_empty" in s["empty_mask_policy"]
    json.dumps(s, allow_nan=False)  # NaN never leaks into the JSON


def test_all_undefined_distances_are_null():
    acc = MetricAccumulator(2)
    acc.add("x", np.zeros((6, 6), int), _square((6, 6), 1, 1, 2))
    s = acc.summary()
    assert s["classes"]["foreground"]["per_image_mean"]["hd95"] is None
    assert s["mean"]["n_undefined"]["hd95"] == 1


# ------------------------------------------------------------------ per-image vs pooled, units, class mean


def test_pooled_differs_from_per_image_mean_and_matches_brute_force():
    rng = np.random.default_rng(2)
    acc = MetricAccumulator(3, ["bg", "liver", "tumour"])
    tp = np.zeros(3)
    fp = np.zeros(3)
    fn = np.zeros(3)
    dices = {1: [], 2: []}
    for i, shape in enumerate([(16, 16), (40, 30), (64, 64)]):
        g, p = _blobs(rng, shape, 3), _blobs(rng, shape, 3)
        acc.add(f"img{i}", p, g)
        for c in (1, 2):
            t, f_p, f_n = (
                np.sum((p == c) & (g == c)),
                np.sum((p == c) & (g != c)),
                np.sum((p != c) & (g == c)),
            )
            tp[c] += t
            fp[c] += f_p
            fn[c] += f_n
            dices[c].append(2 * t / (2 * t + f_p + f_n))
    s = acc.summary()
    for c, name in ((1, "liver"), (2, "tumour")):
        cls = s["classes"][name]
        assert cls["pooled"]["dice"] == pytest.approx(2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]))
        assert cls["pooled"]["recall"] == pytest.approx(tp[c] / (tp[c] + fn[c]))
        assert cls["per_image_mean"]["dice"] == pytest.approx(np.mean(dices[c]))
        assert cls["pooled"]["dice"] != pytest.approx(cls["per_image_mean"]["dice"], abs=1e-9)
    # class mean: per image the mean over classes, then mean over images; pooled: mean of per-class pooled
    per_img = [(dices[1][i] + dices[2][i]) / 2 for i in range(3)]
    assert s["mean"]["per_image_mean"]["dice"] == pytest.approx(np.mean(per_img))
    assert s["mean"]["per_image_std"]["dice"] == pytest.approx(np.std(per_img))
    assert s["headline"]["value"] == pytest.approx(np.mean(per_img))
    assert s["mean"]["pooled"]["dice"] == pytest.approx(
        np.mean([s["classes"]["liver"]["pooled"]["dice"], s["classes"]["tumour"]["pooled"]["dice"]])
    )
    rows = acc.per_image_rows()
    assert [r["id"] for r in rows] == ["img0", "img1", "img2"]
    assert rows[1]["dice_liver"] == pytest.approx(dices[1][1])
    assert rows[1]["dice_mean"] == pytest.approx(per_img[1])


def test_distance_unit_mm_only_when_every_image_has_spacing():
    gt = _square((20, 20), 4, 4, 8)
    pred = _square((20, 20), 4, 7, 8)
    px = image_metrics(pred, gt, 2)[1]["hd95"]
    acc = MetricAccumulator(2)
    acc.add("a", pred, gt, spacing=0.5)
    acc.add("b", pred, gt, spacing=0.5)
    s = acc.summary()
    assert s["distance_unit"] == "mm"
    assert s["classes"]["foreground"]["per_image_mean"]["hd95"] == pytest.approx(0.5 * px)
    acc.add("c", pred, gt)  # no spacing -> the whole split falls back to pixels
    s = acc.summary()
    assert s["distance_unit"] == "px"
    assert s["classes"]["foreground"]["per_image_mean"]["hd95"] == pytest.approx(px)
    assert all(r["distance_unit"] == "px" for r in acc.per_image_rows())


# ------------------------------------------------------------------ MONAI agreement


def _onehot(lab: np.ndarray, k: int) -> torch.Tensor:
    return torch.from_numpy(np.eye(k, dtype=np.float32)[lab].transpose(2, 0, 1)[None].copy())


CASES = [
    ((32, 32), 2, None, 0),
    ((40, 56), 3, 0.7, 1),
    ((64, 48), 4, (0.5, 1.3), 2),
    ((50, 50), 2, (1.0, 0.25), 3),
    ((24, 72), 3, None, 4),
]


@pytest.mark.parametrize(("shape", "k", "spacing", "seed"), CASES)
def test_agreement_with_monai(shape, k, spacing, seed):
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
    )
    from monai.metrics.utils import get_edge_surface_distance

    rng = np.random.default_rng(seed)
    gt = _blobs(rng, shape, k, sigma=rng.uniform(1.5, 4))
    pred = _blobs(rng, shape, k, sigma=rng.uniform(1.5, 4))
    ours = image_metrics(pred, gt, k, spacing)
    yp, yt = _onehot(pred, k), _onehot(gt, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's own deprecation notices
        hd = compute_hausdorff_distance(yp, yt, percentile=95, directed=False, spacing=spacing)[0]
        asd = compute_average_surface_distance(yp, yt, symmetric=True, spacing=spacing)[0]
        dice = compute_dice(yp, yt, include_background=False)[0]
        iou = compute_iou(yp, yt, include_background=False)[0]
        for c in range(1, k):
            m = ours[c]
            assert m["dice"] == pytest.approx(float(dice[c - 1]), abs=1e-6)
            assert m["iou"] == pytest.approx(float(iou[c - 1]), abs=1e-6)
            assert m["assd"] == pytest.approx(float(asd[c - 1]), rel=1e-6, abs=1e-6)
            # MONAI takes the percentile in float32 (torch.quantile), whose index arithmetic is off by ~1e-7
            # of the number of surface pixels; compare the full pipeline at 1e-5 relative ...
            assert m["hd95"] == pytest.approx(float(hd[c - 1]), rel=1e-5)
            # ... and MONAI's own surface distances, reduced in float64, to 1e-6
            _, dists, _ = get_edge_surface_distance(
                torch.from_numpy(pred == c), torch.from_numpy(gt == c), spacing=spacing, symmetric=True
            )
            d_pg, d_gp = (d.double().numpy() for d in dists)
            ref = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
            assert m["hd95"] == pytest.approx(ref, rel=1e-6, abs=1e-6)
            mine = surface_distances(pred == c, gt == c, spacing)
            np.testing.assert_allclose(np.sort(mine[0]), np.sort(d_pg), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(np.sort(mine[1]), np.sort(d_gp), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ outputs and validation


def test_write_outputs_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    acc = MetricAccumulator(2)
    for i in range(4):
        g = _blobs(rng, (24, 24), 2)
        acc.add(f"case/{i}", _blobs(rng, (24, 24), 2), g, spacing=0.3)
    acc.add("empty_pred", np.zeros((24, 24), int), _square((24, 24), 2, 2, 6), spacing=0.3)
    paths = write_outputs(acc, tmp_path / "eval" / "test", prefix="")
    assert {p.name for p in paths.values()} == {"per_image.csv", "summary.json", "summary.md"}
    s = json.loads(paths["summary_json"].read_text())
    assert s == acc.summary()
    assert s["distance_unit"] == "mm" and s["n_images"] == 5
    rows = read_per_image_csv(paths["per_image"])
    assert len(rows) == 5
    for r, orig in zip(rows, acc.per_image_rows()):
        assert r["id"] == orig["id"]
        assert r["dice_mean"] == pytest.approx(orig["dice_mean"])
        assert (math.isnan(r["hd95_foreground"]) and math.isnan(orig["hd95_foreground"])) or r[
            "hd95_foreground"
        ] == pytest.approx(orig["hd95_foreground"])
    with paths["per_image"].open() as f:
        header = next(csv.reader(f))
    assert header[:4] == ["id", "spacing_row", "spacing_col", "distance_unit"]
    assert "tp_foreground" in header
    md = paths["summary_md"].read_text()
    assert "| metric |" in md and "per-image mean ± std" in md and "pooled" in md
    assert f"{s['headline']['value']:.4f}" in md
    assert "| foreground | hd95 |" in md and "| mm |" in md
    assert summary_markdown(s, title="T").startswith("# T")


def test_input_validation():
    a = np.zeros((8, 8), dtype=np.int64)
    with pytest.raises(ValueError, match="num_classes"):
        image_metrics(a + 2, a, 2)
    with pytest.raises(ValueError, match="same shape"):
        image_metrics(a, np.zeros((8, 9), int), 2)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        image_metrics(np.zeros((2, 8, 8), int), np.zeros((2, 8, 8), int), 2)
    with pytest.raises(ValueError, match="spacing"):
        image_metrics(a, a, 2, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="spacing"):
        image_metrics(a, a, 2, spacing=-1.0)
    acc = MetricAccumulator(2)
    acc.add("x", a, a)
    with pytest.raises(ValueError, match="twice"):
        acc.add("x", a, a)
    with pytest.raises(ValueError, match="add"):
        MetricAccumulator(2).summary()
    with pytest.raises(ValueError, match="class_names"):
        MetricAccumulator(3, ["bg", "a"])
    # bool and float-with-integer-values maps are accepted
    assert image_metrics(a.astype(bool), a.astype(np.float32), 2)[1]["dice"] == 1.0
