from __future__ import annotations

import json

import numpy as np
import pytest
from data_synth import make_dataset, save, tiny_dataset

from medurwkv.data import DatasetCheckError, check_dataset, read_mask


def test_clean_dataset_is_ok_with_summary(tmp_path):
    root = tiny_dataset(tmp_path)
    (root / "spacing.csv").write_text(
        "id,spacing_mm\n" + "".join(f"{i.stem},0.1\n" for i in root.glob("images/*"))
    )
    report = check_dataset(root, progress=False)
    assert report.ok, report.format()
    assert report.errors == [] and report.warnings == []
    s = report.summary
    assert s["pairs"] == 8 and s["layout"] == "folder"
    assert s["sizes"] == {"24x32": 8} and s["channels"] == {"1": 8} and s["dtypes"] == {"uint8": 8}
    assert s["class_names"] == ["background", "head"]
    masks = np.stack([read_mask(p) for p in sorted((root / "masks").glob("*.png"))])
    assert s["class_pixel_fraction"]["head"] == pytest.approx(masks.mean())
    assert s["class_image_count"] == {"background": 8, "head": 8}
    assert s["spacing"]["with_spacing"] == 8
    text = report.format()
    assert "pairs: 8" in text and "OK: no errors" in text
    report.raise_for_errors()  # no exception when ok


def test_pairing_errors_name_files_and_hint(tmp_path):
    root = make_dataset(tmp_path / "d", ["a", "b", "c"])
    (root / "masks" / "b.png").rename(root / "masks" / "b_mask.png")
    save(root / "images" / "c.jpg", np.zeros((24, 32), np.uint8))
    report = check_dataset(root, progress=False)
    assert not report.ok
    joined = "\n".join(report.errors)
    assert "image images/b.png has no mask" in joined
    assert "mask masks/b_mask.png has no image" in joined and "rename to b.png" in joined
    assert "duplicate stem 'images/c'" in joined and "c.jpg" in joined
    with pytest.raises(DatasetCheckError, match="b_mask.png"):
        report.raise_for_errors()


def test_size_mismatch_unreadable_and_label_range(tmp_path):
    root = make_dataset(tmp_path / "d", ["a", "b", "c", "d"], labels={"background": 0, "lesion": 1})
    save(root / "masks" / "a.png", np.zeros((20, 32), np.uint8))
    (root / "images" / "b.png").write_bytes(b"\x89PNG garbage")
    save(root / "masks" / "c.png", np.array([[0, 1, 2]], np.uint8).repeat(24, 0).repeat(11, 1)[:, :32])
    report = check_dataset(root, progress=False)
    errors = "\n".join(report.errors)
    assert "size mismatch for 'a'" in errors and "24x32" in errors and "20x32" in errors
    assert "b.png" in errors and "cannot read image" in errors
    assert "masks/c.png has label values [2], expected 0..1" in errors
    assert len(report.errors) == 3
    # an explicit num_classes that disagrees with dataset.json is an error, not a crash
    report = check_dataset(root, num_classes=3, progress=False)
    assert not report.ok and "declares 2 classes" in report.errors[0]


def test_inferred_classes_and_grayscale_masks(tmp_path):
    root = make_dataset(tmp_path / "d", ["a", "b"])
    report = check_dataset(root, progress=False)
    assert report.ok and report.summary["num_classes"] == 2 and report.summary["classes_source"] == "inferred"
    ramp = (np.arange(24 * 32).reshape(24, 32) % 200).astype(np.uint8)  # anti-aliased / intensity mask
    save(root / "masks" / "b.png", ramp)
    report = check_dataset(root, progress=False)
    assert not report.ok and "look like grayscale intensities" in report.errors[0]


def test_duplicate_content_and_absent_class_warnings(tmp_path):
    root = make_dataset(tmp_path / "d", ["a", "b", "c"], labels={"background": 0, "x": 1, "y": 2})
    (root / "images" / "c.png").write_bytes((root / "images" / "a.png").read_bytes())
    report = check_dataset(root, progress=False)
    assert report.ok
    warnings = "\n".join(report.warnings)
    assert "identical image content: a, c" in warnings
    assert "class 2 ('y') never appears" in warnings


def test_missing_folder_is_reported_not_raised(tmp_path):
    report = check_dataset(tmp_path / "absent", progress=False)
    assert not report.ok and "does not exist" in report.errors[0]
    assert json.loads(json.dumps(report.to_dict()))["ok"] is False


def test_check_shared_dsb2018(shared_data_dir):
    report = check_dataset(shared_data_dir / "dsb2018-96", progress=False)
    assert report.ok, report.format()
    assert report.summary["pairs"] == 670 and report.summary["sizes"] == {"96x96": 670}
