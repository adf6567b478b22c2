from __future__ import annotations

import json

import numpy as np
import pytest
from data_synth import HC18_LIKE_IDS, make_dataset, save, tiny_dataset
from PIL import Image

from medurwkv.data import check_dataset, discover


def test_discover_folder_layout_with_dataset_json(tmp_path):
    root = tiny_dataset(tmp_path)
    index = discover(root)
    assert index.layout == "folder"
    assert index.ids == sorted(HC18_LIKE_IDS)
    assert index.num_classes == 2 and index.class_names == ["background", "head"]
    assert index.classes_source == "dataset.json"
    assert index.image_path("001_HC") == root / "images" / "001_HC.png"
    assert index.mask_paths["001_HC"] == root / "masks" / "001_HC.png"
    assert index.spacing == {i: None for i in index.ids}
    assert index.load_mask("001_HC").max() == 1
    assert index.load_image("001_HC").shape == (24, 32)


def test_alternative_schema_and_inference(tmp_path):
    root = make_dataset(tmp_path / "a", ["x", "y"])
    (root / "dataset.json").write_text(json.dumps({"num_classes": 3, "class_names": ["bg", "a", "b"]}))
    index = discover(root)
    assert (index.num_classes, index.class_names) == (3, ["bg", "a", "b"])

    root = make_dataset(tmp_path / "b", ["x", "y"])  # no dataset.json: binary 0/255 masks -> 2 classes
    index = discover(root)
    assert not index.classes_known
    assert index.class_names == ["background", "foreground"] and index.classes_source == "inferred"

    save(root / "masks" / "y.png", np.array([[0, 1], [2, 3]], np.uint8).repeat(12, 0).repeat(16, 1))
    assert discover(root).num_classes == 4
    assert discover(root, num_classes=5).class_names == ["background"] + [f"class_{k}" for k in range(1, 5)]


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"labels": {"background": 0, "a": 2}}, "exactly 0..1"),
        ({"labels": {"background": 0, "a": [1, 2]}}, "region"),
        ({"labels": {"background": 0, "a": 0}}, "share value 0"),
        ({"num_classes": 2, "class_names": ["x"]}, "list of 2 names"),
    ],
)
def test_invalid_dataset_json(tmp_path, meta, match):
    root = make_dataset(tmp_path / "d", ["x"])
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match):
        discover(root)


def test_broken_json_and_conflicting_num_classes(tmp_path):
    root = tiny_dataset(tmp_path)
    with pytest.raises(ValueError, match="declares 2 classes"):
        discover(root, num_classes=3)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        discover(root)


def test_unrecognised_folder_and_missing(tmp_path):
    (tmp_path / "stuff" / "pictures").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"images/ and masks/.*pictures/.*prepare"):
        discover(tmp_path / "stuff")
    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "nope")


def test_unpaired_duplicates_and_ignored_are_recorded(tmp_path):
    root = make_dataset(tmp_path / "d", ["a", "b", "c"])
    (root / "masks" / "c.png").unlink()
    save(root / "masks" / "zzz.png", np.zeros((24, 32), np.uint8))
    save(root / "images" / "a.jpg", np.zeros((24, 32), np.uint8))
    (root / "images" / "notes.txt").write_text("x")
    (root / "images" / ".DS_Store").write_text("x")
    index = discover(root)
    assert index.ids == ["a", "b"]
    assert [p.name for p in index.unpaired_images] == ["c.png"]
    assert [p.name for p in index.unpaired_masks] == ["zzz.png"]
    assert {k: sorted(p.name for p in v) for k, v in index.duplicate_stems.items()} == {
        "images/a": ["a.jpg", "a.png"]
    }
    assert [p.name for p in index.ignored_files] == ["notes.txt"]


def test_spacing_csv_generic_and_hc18(tmp_path):
    root = make_dataset(tmp_path / "d", ["000_HC", "001_HC", "002_HC"])
    (root / "spacing.csv").write_text("id,spacing_mm\n000_HC,0.5\n001_HC.png,0.25\n")
    index = discover(root)
    assert index.spacing == {"000_HC": 0.5, "001_HC": 0.25, "002_HC": None}

    (root / "spacing.csv").unlink()
    (root / "training_set_pixel_size_and_HC.csv").write_text(
        "filename,pixel size(mm),head circumference (mm)\n000_HC.png,0.069135804,44.3\n002_HC.png,0.1,60\n"
    )
    index = discover(root)
    assert index.spacing == {"000_HC": 0.069135804, "001_HC": None, "002_HC": 0.1}
    assert index.metadata["000_HC"] == {"head circumference (mm)": 44.3}

    (root / "spacing.csv").write_text("id,spacing_mm\n000_HC,abc\n")
    with pytest.raises(ValueError, match=r"spacing.csv:2.*not a number"):
        discover(root)


def test_nnunet_layout_multichannel(tmp_path):
    root = tmp_path / "Dataset001_Toy"
    rng = np.random.default_rng(0)
    for case in ("case_a", "case_b"):
        for ch in range(2):
            save(root / "imagesTr" / f"{case}_{ch:04d}.png", rng.integers(0, 256, (10, 12), dtype=np.uint8))
        save(root / "labelsTr" / f"{case}.png", (rng.random((10, 12)) > 0.5).astype(np.uint8) * 2)
    save(root / "imagesTr" / "case_c_0000.png", np.zeros((10, 12), np.uint8))  # no label
    meta = {
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": 2,
        "file_ending": ".png",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    index = discover(root)
    assert index.layout == "nnunet"
    assert index.ids == ["case_a", "case_b"]
    assert index.channel_names == ["T1", "T2"]
    assert index.class_names == ["background", "a", "b"]
    assert [p.name for p in index.image_paths["case_a"]] == ["case_a_0000.png", "case_a_0001.png"]
    img = index.load_image("case_a")
    assert img.shape == (10, 12, 2)
    np.testing.assert_array_equal(img[..., 1], np.asarray(Image.open(index.image_paths["case_a"][1])))
    assert set(np.unique(index.load_mask("case_b"))) <= {0, 2}
    assert [p.name for p in index.unpaired_images] == ["case_c_0000.png"]
    report = check_dataset(root, progress=False)
    assert report.errors == [
        "image imagesTr/case_c_0000.png has no mask: expected labelsTr/case_c.png (or another supported "
        "extension) with the same stem; add the mask or move the image out of imagesTr/"
    ]
    assert report.summary["channels"] == {"2": 2} and report.summary["num_classes"] == 3
