"""Prepare recipes on tiny synthetic archives that copy each dataset's official layout and naming."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from data_synth import ellipse, hc18_archive, save
from PIL import Image

from medurwkv.data import check_dataset, discover, fill_outline, prepare, read_mask


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize(
    ("cy", "cx", "angle"),
    [(30, 40, 0.3), (8, 40, 0.0), (52, 40, 0.5), (30, 6, 1.0), (30, 75, 0.2), (5, 6, 0.7)],
    ids=["inside", "top", "bottom", "left", "right", "corner"],
)
def test_fill_outline_closes_contours_against_the_border(cy, cx, angle):
    filled, outline = ellipse((60, 80), cy, cx, 16, 24, angle)
    mask, method = fill_outline(outline)
    assert method == ("fill_holes" if (cy, cx) == (30, 40) else "border_closed")
    np.testing.assert_array_equal(mask, filled)


def test_fill_outline_with_a_gap_uses_the_fitted_ellipse():
    filled, outline = ellipse((60, 80), 30, 40, 16, 24, 0.3)
    ys, xs = np.nonzero(outline)
    gap = outline.copy()
    gap[ys[:6], xs[:6]] = False  # open the contour
    mask, method = fill_outline(gap)
    assert method == "ellipse_fit" and dice(mask, filled) > 0.97
    with pytest.raises(ValueError, match="empty"):
        fill_outline(np.zeros((5, 5), bool))


def test_prepare_hc18_from_zip(tmp_path):
    archive, truth = hc18_archive(tmp_path / "src")
    res = prepare(
        "hc18",
        [archive, tmp_path / "src" / "training_set_pixel_size_and_HC.csv"],
        tmp_path / "out",
        progress=False,
    )
    assert res.count == 4
    assert any("001_HC" in n and "border_closed" in n for n in res.notes)
    assert any("skipped 1 images" in n for n in res.notes)
    out = tmp_path / "out"
    for sid, filled in truth.items():
        np.testing.assert_array_equal(read_mask(out / "masks" / f"{sid}.png").astype(bool), filled)
        assert (out / "images" / f"{sid}.png").read_bytes() == (
            tmp_path / "src" / "training_set" / f"{sid}.png"
        ).read_bytes()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "head": 1} and meta["numTraining"] == 4
    index = discover(out)
    assert index.spacing["000_2HC"] == pytest.approx(0.2) and index.class_names == ["background", "head"]
    assert check_dataset(out, progress=False).ok
    with pytest.raises(FileExistsError, match="not empty"):
        prepare("hc18", archive, out, progress=False)
    assert prepare("hc18", archive, out, overwrite=True, progress=False).count == 4


def test_prepare_isic2018_and_2017(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "isic18"
    subsets = {
        "Training": ["ISIC_0000000", "ISIC_0000001"],
        "Validation": ["ISIC_0012255"],
        "Test": ["ISIC_0036309"],
    }
    masks = {}
    for subset, ids in subsets.items():
        for sid in ids:
            save(
                src / f"ISIC2018_Task1-2_{subset}_Input" / f"{sid}.jpg",
                rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
            )
            m = (rng.random((20, 30)) > 0.6).astype(np.uint8) * 255
            masks[sid] = m > 0
            save(src / f"ISIC2018_Task1_{subset}_GroundTruth" / f"{sid}_segmentation.png", m)
    (src / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("cc-by-nc")
    # the official data comes as one zip per folder
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        with zipfile.ZipFile(src / f"{folder.name}.zip", "w") as zf:
            for f in folder.iterdir():
                zf.write(f, f"{folder.name}/{f.name}")
    res = prepare("isic2018", sorted(src.glob("*.zip")), tmp_path / "out18", progress=False)
    assert res.count == 4 and res.subsets == {
        "train": subsets["Training"],
        "val": ["ISIC_0012255"],
        "test": ["ISIC_0036309"],
    }
    for sid, m in masks.items():
        np.testing.assert_array_equal(read_mask(tmp_path / "out18" / "masks" / f"{sid}.png").astype(bool), m)
    assert json.loads((tmp_path / "out18" / "dataset.json").read_text())["subsets"]["val"] == ["ISIC_0012255"]

    src17 = tmp_path / "isic17"
    for subset in ("Training", "Validation", "Test_v2"):
        sid = f"ISIC_00{len(subset):05d}"
        save(
            src17 / f"ISIC-2017_{subset}_Data" / f"{sid}.jpg",
            rng.integers(0, 256, (12, 14, 3), dtype=np.uint8),
        )
        save(src17 / f"ISIC-2017_{subset}_Data" / f"{sid}_superpixels.png", np.zeros((12, 14, 3), np.uint8))
        save(
            src17 / f"ISIC-2017_{subset}_Part1_GroundTruth" / f"{sid}_segmentation.png",
            np.full((12, 14), 255, np.uint8),
        )
    res = prepare("isic2017", src17, tmp_path / "out17", progress=False)
    assert res.count == 3 and sorted(res.subsets) == ["test", "train", "val"]
    assert sorted(p.name for p in (tmp_path / "out17" / "images").iterdir()) == [
        "ISIC_0000007.jpg",
        "ISIC_0000008.jpg",
        "ISIC_0000010.jpg",
    ]
    assert check_dataset(tmp_path / "out17", progress=False).ok


def test_prepare_busi_unions_extra_masks(tmp_path):
    root = tmp_path / "Dataset_BUSI_with_GT"
    a = np.zeros((20, 20), np.uint8)
    a[2:6, 2:6] = 255
    b = np.zeros((20, 20), np.uint8)
    b[10:15, 10:15] = 255
    for cls in ("benign", "malignant", "normal"):
        save(root / cls / f"{cls} (1).png", np.full((20, 20, 3), 90, np.uint8))
        save(root / cls / f"{cls} (1)_mask.png", a if cls != "normal" else np.zeros_like(a))
    save(root / "benign" / "benign (12).png", np.full((20, 20, 3), 40, np.uint8))
    save(root / "benign" / "benign (12)_mask.png", np.repeat(a[..., None], 3, axis=2))  # some masks are RGB
    save(root / "benign" / "benign (12)_mask_1.png", b)
    res = prepare("busi", root, tmp_path / "out", progress=False)
    assert res.count == 4
    assert res.subsets == {
        "benign": ["benign_001", "benign_012"],
        "malignant": ["malignant_001"],
        "normal": ["normal_001"],
    }
    union = read_mask(tmp_path / "out" / "masks" / "benign_012.png").astype(bool)
    np.testing.assert_array_equal(union, (a > 0) | (b > 0))
    assert read_mask(tmp_path / "out" / "masks" / "normal_001.png").max() == 0
    assert check_dataset(tmp_path / "out", progress=False).ok


def test_prepare_kvasir_thresholds_jpeg_masks(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    rng = np.random.default_rng(2)
    truth = {}
    for sid in ("cju0qkwl35piu0993l0dewei2", "cju0roawvklrq0799vmjorwfv"):
        m = np.zeros((40, 48), np.uint8)
        m[8 : 8 + rng.integers(10, 25), 10:30] = 255
        truth[sid] = m > 0
        save(root / "images" / f"{sid}.jpg", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        save(root / "masks" / f"{sid}.jpg", np.repeat(m[..., None], 3, axis=2), quality=75)
    # the JPEG masks really are lossy: grey levels appear around the edges
    assert len(np.unique(np.asarray(Image.open(root / "masks" / f"{sid}.jpg")))) > 2
    (root / "kavsir_bboxes.json").write_text("{}")
    res = prepare("kvasir-seg", root, tmp_path / "out", progress=False)
    assert res.count == 2
    for sid, m in truth.items():
        raw = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{sid}.png"))
        assert set(np.unique(raw)) <= {0, 255}
        assert dice(raw > 0, m) > 0.98


def test_prepare_glas_instances_and_subsets(tmp_path):
    root = tmp_path / "Warwick QU Dataset (Released 2016_07_08)"
    inst = np.zeros((16, 16), np.uint8)
    inst[1:5, 1:5], inst[8:12, 8:14] = 1, 7
    for name in ("train_1", "train_2", "testA_1", "testB_1"):
        save(root / f"{name}.bmp", np.full((16, 16, 3), 128, np.uint8))
        save(root / f"{name}_anno.bmp", inst)
    (root / "Grade.csv").write_text("name,patient ID,GlaS,grade (Sirinukunwattana et al. 2015)\n")
    res = prepare("glas", root, tmp_path / "out", progress=False)
    assert res.count == 4 and res.subsets == {
        "testA": ["testA_1"],
        "testB": ["testB_1"],
        "train": ["train_1", "train_2"],
    }
    np.testing.assert_array_equal(
        read_mask(tmp_path / "out" / "masks" / "train_2.png"), (inst > 0).astype(int)
    )
    assert (tmp_path / "out" / "Grade.csv").is_file() and (
        tmp_path / "out" / "images" / "testA_1.bmp"
    ).is_file()


def test_prepare_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unknown dataset recipe 'foo'"):
        prepare("foo", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="no HC18 annotations"):
        prepare("hc18", tmp_path / "empty", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # no half-written output blocks the next attempt
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="read-only"):
            prepare("hc18", tmp_path / "empty", locked / "out", progress=False)
        assert not (locked / "out").exists()
    finally:
        locked.chmod(0o755)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.png", b"x")
    with pytest.raises(ValueError, match="unsafe member"):
        prepare("hc18", evil, tmp_path / "out2", progress=False)
    (tmp_path / "bad.zip").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a valid zip"):
        prepare("hc18", tmp_path / "bad.zip", tmp_path / "out3", progress=False)
