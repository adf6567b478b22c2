"""Stray label values: without dataset.json labels must be contiguous 0..K-1; every offending mask is named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_synth import make_dataset, save

from medurwkv.data import DatasetCheckError, check_dataset, discover
from medurwkv.data.index import contiguous_classes
from medurwkv.errors import UserError

IDS = ["a", "b", "c", "d", "e"]


def _labels(values: list[int], size: tuple[int, int] = (24, 32)) -> np.ndarray:
    """A (H, W) uint8 label map holding exactly ``values`` (in horizontal bands)."""
    h, w = size
    band = np.repeat(np.arange(len(values)), -(-w // len(values)))[:w]  # (W,) band index per column
    return np.asarray(values, np.uint8)[band][None, :].repeat(h, 0)


def _stray_dataset(tmp_path, stray: dict[str, list[int]], labels: dict | None = None):
    """Five 0/255 binary masks (read as {0, 1}); the ids in ``stray`` get those label values instead."""
    root = make_dataset(tmp_path / "d", IDS, labels=labels)
    for sample_id, values in stray.items():
        save(root / "masks" / f"{sample_id}.png", _labels(values))
    return root


def _errors_naming(report, name: str) -> list[str]:
    return [e for e in report.errors if f"masks/{name}.png" in e]


@pytest.mark.parametrize(
    "values, expected",
    [
        ({0, 1}, (2, [])),
        ({0, 1, 2}, (3, [])),
        ({0}, (2, [])),  # background only: still binary
        ({1}, (2, [])),  # all foreground: class 0 may be absent
        ({0, 1, 7}, (2, [7])),
        ({0, 2}, (2, [2])),
        ({0, 1, 2, 5, 9}, (3, [5, 9])),
    ],
)
def test_contiguous_classes(values, expected):
    assert contiguous_classes(values) == expected


def test_stray_value_without_dataset_json_names_each_file(tmp_path):
    root = _stray_dataset(tmp_path, {"b": [0, 1, 7], "d": [0, 7]})
    report = check_dataset(root, progress=False)
    assert not report.ok
    assert len(report.errors) == 2, report.format()
    for name in ("b", "d"):
        (msg,) = _errors_naming(report, name)
        assert "label values [7]" in msg
        assert "fix the mask" in msg and "dataset.json" in msg
        assert "{0, 1, 7}" in msg  # what the masks hold, so the user sees why 7 breaks contiguity
    for name in ("a", "c", "e"):
        assert not _errors_naming(report, name)
    # the dataset stays binary (7 is not a class), the stray value is still counted in the summary
    assert report.summary["num_classes"] == 2 and report.summary["class_names"] == [
        "background",
        "foreground",
    ]
    assert report.summary["class_image_count"]["value_7"] == 2
    with pytest.raises(DatasetCheckError, match="masks/b.png") as info:
        report.raise_for_errors()
    assert "masks/d.png" in str(info.value) and "masks/a.png" not in str(info.value)


def test_several_stray_values_are_listed_per_file(tmp_path):
    # 0/255 binary masks plus masks holding 3 and 200: a gap after 1, so 3 and 200 both break the rule
    root = _stray_dataset(tmp_path, {"a": [0, 1, 3], "c": [0, 200], "e": [0, 1, 3, 200]})
    report = check_dataset(root, progress=False)
    assert len(report.errors) == 3, report.format()
    assert "label values [3]" in _errors_naming(report, "a")[0]
    assert "label values [200]" in _errors_naming(report, "c")[0]
    assert "label values [3, 200]" in _errors_naming(report, "e")[0]
    assert not _errors_naming(report, "b") and not _errors_naming(report, "d")


def test_contiguous_labels_without_dataset_json_stay_a_k_class_dataset(tmp_path):
    root = _stray_dataset(tmp_path, {"a": [0, 1, 2], "c": [0, 2], "e": [0, 1]})
    report = check_dataset(root, progress=False)
    assert report.ok, report.format()
    assert report.summary["num_classes"] == 3
    assert report.summary["class_names"] == ["background", "class_1", "class_2"]
    assert report.index is not None and report.index.num_classes == 3


def test_binary_0_255_masks_read_as_two_classes(tmp_path):
    root = make_dataset(tmp_path / "d", IDS)  # 0/255 disks, no dataset.json
    report = check_dataset(root, progress=False)
    assert report.ok and report.summary["num_classes"] == 2
    assert set(report.summary["class_pixel_fraction"]) == {"background", "foreground"}


def test_values_outside_dataset_json_labels_name_each_file(tmp_path):
    root = _stray_dataset(tmp_path, {"b": [0, 1, 2], "e": [0, 5]}, labels={"background": 0, "lesion": 1})
    report = check_dataset(root, progress=False)
    assert len(report.errors) == 2, report.format()
    assert "masks/b.png has label values [2], expected 0..1" in _errors_naming(report, "b")[0]
    assert "masks/e.png has label values [5], expected 0..1" in _errors_naming(report, "e")[0]
    for name in ("a", "c", "d"):
        assert not _errors_naming(report, name)


def test_dataset_json_makes_non_contiguous_values_legal(tmp_path):
    # the fix the error suggests: declare the classes (here 0..7) in dataset.json
    root = _stray_dataset(tmp_path, {"b": [0, 1, 7]})
    labels = {"background": 0, **{f"c{k}": k for k in range(1, 8)}}
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    report = check_dataset(root, progress=False)
    assert report.ok, report.format()
    assert report.summary["num_classes"] == 8


def test_lazy_class_inference_applies_the_same_rule(tmp_path):
    root = _stray_dataset(tmp_path, {"b": [0, 1, 7], "d": [0, 7]})
    index = discover(root)
    with pytest.raises(UserError, match="label values") as info:
        index.num_classes  # noqa: B018 (the property scans the masks)
    text = str(info.value)
    assert "b.png" in text and "d.png" in text and "a.png" not in text and "dataset.json" in text
    assert discover(make_dataset(tmp_path / "ok", ["x", "y"])).num_classes == 2


def test_training_refuses_a_dataset_with_stray_labels(tmp_path):
    from medurwkv.engine.train import fit

    root = _stray_dataset(tmp_path, {"c": [0, 1, 7]})
    with pytest.raises(DatasetCheckError, match="masks/c.png") as info:
        fit(data=root, out=tmp_path / "run", epochs=1, model="unet", progress=False, tensorboard=False)
    assert "masks/a.png" not in str(info.value)
    assert not (tmp_path / "run" / "last.pt").exists()
