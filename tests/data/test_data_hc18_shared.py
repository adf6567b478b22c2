"""HC18 outline filling vs the shared filled masks: a handful of pairs, including the border cases."""

from __future__ import annotations

import numpy as np

from medurwkv.data import auto_group, discover, prepare, read_mask

# the four ellipses cut by the image border, one that touches it but is closed, and ordinary frames
BORDER = ["186_HC", "346_HC", "628_2HC", "787_HC"]
OTHERS = ["352_2HC", "000_HC", "010_2HC", "392_HC"]


def test_prepare_hc18_reproduces_shared_masks(shared_data_dir, tmp_path):
    hc18 = shared_data_dir / "hc18"
    src = tmp_path / "training_set"
    src.mkdir()
    for sid in BORDER + OTHERS:
        (src / f"{sid}.png").symlink_to(hc18 / "images" / f"{sid}.png")
        (src / f"{sid}_Annotation.png").symlink_to(hc18 / "outlines" / f"{sid}_Annotation.png")
    res = prepare(
        "hc18", [src, hc18 / "training_set_pixel_size_and_HC.csv"], tmp_path / "out", progress=False
    )
    assert res.count == len(BORDER + OTHERS)
    for sid in BORDER + OTHERS:
        ref = read_mask(hc18 / "masks" / f"{sid}.png").astype(bool)
        got = read_mask(tmp_path / "out" / "masks" / f"{sid}.png").astype(bool)
        if sid in OTHERS:
            np.testing.assert_array_equal(got, ref, err_msg=sid)
        else:
            # the shared reference for border cases is another group's pre-filled annotation
            dice = 2 * (got & ref).sum() / (got.sum() + ref.sum())
            assert dice > 0.999, (sid, dice)
            assert got.sum() > 50 * (got & ~ref).sum()
    index = discover(tmp_path / "out")
    assert index.spacing["000_HC"] == 0.069135804


def test_discover_shared_hc18(shared_data_dir):
    index = discover(shared_data_dir / "hc18")
    assert len(index) == 999 and index.layout == "folder"
    assert auto_group(index.ids) == r"^(\d{3})_"
    assert all(v is not None and v > 0 for v in index.spacing.values())
    assert index.metadata["000_HC"]["head circumference (mm)"] == 44.3
