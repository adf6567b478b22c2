"""Tests of engine/visualize.py: display normalisation, overlays, palettes, PNG writing, case thumbnails."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medurwkv.engine.visualize import (
    GT_PALETTE,
    MASK_PALETTE,
    PRED_PALETTE,
    colorize_mask,
    overlay,
    safe_id,
    save_case_thumbnails,
    save_png,
    select_cases,
    to_display,
)


def _square(shape, r0, c0, size, label=1):
    m = np.zeros(shape, dtype=np.int64)
    m[r0 : r0 + size, c0 : c0 + size] = label
    return m


def test_to_display_dtypes():
    u16 = np.linspace(1000, 60000, 64 * 64).reshape(64, 64).astype(np.uint16)
    d = to_display(u16)
    assert d.shape == (64, 64, 3) and d.dtype == np.uint8
    assert d.min() == 0 and d.max() == 255  # stretched, percentiles clip the extremes
    assert np.array_equal(d[..., 0], d[..., 2])
    f = np.random.default_rng(0).normal(size=(10, 12)).astype(np.float32)
    assert to_display(f).shape == (10, 12, 3)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert np.array_equal(to_display(rgb), rgb)  # uint8 untouched
    rgba = np.concatenate([rgb, np.full((5, 6, 1), 255, np.uint8)], axis=-1)
    assert np.array_equal(to_display(rgba), rgb)
    assert to_display(np.full((4, 4), 7.5)).max() == 0  # constant image -> black, no division by zero
    nan_img = np.ones((4, 4))
    nan_img[0, 0] = np.nan
    assert to_display(nan_img).dtype == np.uint8
    with pytest.raises(ValueError, match="channels"):
        to_display(np.zeros((3, 8, 8)))


def test_overlay_contour_colours():
    img = np.zeros((32, 32), dtype=np.uint8)
    gt = _square((32, 32), 4, 4, 10)
    pred = _square((32, 32), 18, 18, 10)
    out = overlay(img, pred, gt, mode="contour", thickness=1)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert tuple(out[4, 4]) == tuple(GT_PALETTE[1])  # gt outline corner
    assert tuple(out[18, 18]) == tuple(PRED_PALETTE[1])  # pred outline corner
    assert tuple(out[22, 22]) == (0, 0, 0)  # contour mode leaves the inside untouched
    assert tuple(out[0, 31]) == (0, 0, 0)
    # where both outlines coincide the prediction is on top
    same = overlay(img, gt, gt, thickness=1)
    assert tuple(same[4, 4]) == tuple(PRED_PALETTE[1])


def test_overlay_fill_and_multiclass():
    img = np.full((30, 30), 100, dtype=np.uint8)
    pred = _square((30, 30), 2, 2, 10, label=1) + _square((30, 30), 16, 16, 10, label=2)
    out = overlay(img, pred, None, alpha=0.5, mode="fill", thickness=1)
    inside1 = 0.5 * 100 + 0.5 * PRED_PALETTE[1].astype(float)
    inside2 = 0.5 * 100 + 0.5 * PRED_PALETTE[2].astype(float)
    np.testing.assert_allclose(out[6, 6], np.round(inside1), atol=1)
    np.testing.assert_allclose(out[20, 20], np.round(inside2), atol=1)
    assert tuple(out[28, 28]) == (100, 100, 100)
    only_gt = overlay(img, None, pred, thickness=1)
    assert tuple(only_gt[16, 16]) == tuple(GT_PALETTE[2])
    assert tuple(only_gt[6, 6]) == (100, 100, 100)


def test_overlay_default_thickness_and_errors():
    big = np.zeros((900, 600), dtype=np.uint16)
    gt = _square((900, 600), 100, 100, 300)
    out = overlay(big, None, gt)
    # default thickness for a 900 px image is 3 px: row 102 is still outline, row 103 not
    assert tuple(out[102, 250]) == tuple(GT_PALETTE[1])
    assert tuple(out[103, 250]) == (0, 0, 0)
    with pytest.raises(ValueError, match="mode"):
        overlay(big, gt, mode="dots")
    with pytest.raises(ValueError, match="shape"):
        overlay(big, np.zeros((10, 10), int))


def test_colorize_mask():
    m = np.array([[0, 1], [2, 10]])
    c = colorize_mask(m)
    assert c.shape == (2, 2, 3) and c.dtype == np.uint8
    assert tuple(c[0, 0]) == (0, 0, 0)
    assert tuple(c[0, 1]) == tuple(MASK_PALETTE[1])
    assert tuple(c[1, 0]) == tuple(MASK_PALETTE[2])
    assert tuple(c[1, 1]) == tuple(MASK_PALETTE[1])  # label 10 cycles past the 9 colours
    with pytest.raises(ValueError):
        colorize_mask(np.zeros((2, 2, 2), int))


def test_save_png_roundtrip(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    p = save_png(tmp_path / "a" / "b.png", rgb)
    assert np.array_equal(np.asarray(Image.open(p)), rgb)
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(np.asarray(Image.open(save_png(tmp_path / "g.png", gray))), gray)
    f = save_png(tmp_path / "f.png", np.linspace(0, 1, 20).reshape(4, 5))
    assert np.asarray(Image.open(f)).max() == 255


def test_select_cases():
    rows = [{"id": str(i), "dice_mean": d} for i, d in enumerate([0.5, float("nan"), 0.9, 0.1, 0.7])]
    # sorted finite values: 0.1 (id 3), 0.5 (id 0), 0.7 (id 4), 0.9 (id 2) -> lower median is 0.5 (id 0)
    assert select_cases(rows) == {"worst": "3", "median": "0", "best": "2"}
    assert select_cases([{"id": "x", "dice_mean": float("nan")}]) == {}
    assert select_cases([{"id": "only", "dice_mean": 0.3}]) == {
        "best": "only",
        "median": "only",
        "worst": "only",
    }


def test_save_case_thumbnails(tmp_path):
    rng = np.random.default_rng(2)
    ids = ["a b", "c", "d"]
    images = {i: rng.integers(0, 4000, (700, 350)).astype(np.uint16) for i in ids}
    gts = {i: _square((700, 350), 100, 100, 200) for i in ids}
    preds = {i: _square((700, 350), 100 + 20 * k, 100, 200) for k, i in enumerate(ids)}
    rows = [{"id": "a b", "dice_mean": 1.0}, {"id": "c", "dice_mean": 0.9}, {"id": "d", "dice_mean": 0.8}]
    out = tmp_path / "cases"
    out.mkdir()
    (out / "best_stale.png").write_bytes(b"old")
    written = save_case_thumbnails(out, rows, images, lambda i: preds[i], gts, max_side=256)
    assert sorted(p.name for p in out.iterdir()) == ["best_a_b.png", "median_c.png", "worst_d.png"]
    assert written["best"].name == "best_a_b.png"
    im = np.asarray(Image.open(written["worst"]))
    assert im.shape == (256, 128, 3)
    assert safe_id("../x/y z") == "x_y_z"
    # small overlays are enlarged by an integer factor with nearest neighbour: 60 px -> x5 = 300 px
    small = {"s": np.zeros((60, 40), np.uint8)}
    p = save_case_thumbnails(out, [{"id": "s", "dice_mean": 0.5}], small, {"s": _square((60, 40), 5, 5, 9)})[
        "best"
    ]
    big = np.asarray(Image.open(p))
    assert big.shape == (300, 200, 3)
    ref = overlay(small["s"], _square((60, 40), 5, 5, 9))
    assert np.array_equal(big[::5, ::5], ref)
