"""Volumes end to end through the command line, on the real MSD Hippocampus volumes (``../shared/data``):
``data split`` -> ``train`` (2.5D, tiny budget) -> ``evaluate`` -> ``predict`` (checkpoint and ONNX) ->
``report``; and ``train`` refusing every kind of bad volume dataset before it trains, naming the case."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_testing import one_error_line

from medurwkv.cli import main

CASES = ("hippocampus_001", "hippocampus_003")
TRAIN_FLAGS = [
    "--model", "unet", "--model-kwargs", '{"base_channels": 8}', "--img-size", "32", "--epochs", "2",
    "--limit", "3", "--batch-size", "8", "--num-workers", "0", "--no-progress", "--no-tensorboard",
]  # fmt: skip


@pytest.fixture(scope="module")
def hippo_run(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny 2.5D training on the shared Hippocampus volumes, made through the CLI."""
    data = shared_data_dir / "msd-hippocampus"
    tmp = tmp_path_factory.mktemp("hippo_cli")
    split = tmp / "splits.json"
    assert main(["data", "split", str(data), "--out", str(split)]) == 0
    run = tmp / "run"
    rc = main(["train", "--data", str(data), "--out", str(run), "--split-file", str(split), "--context-slices", "1"]
              + TRAIN_FLAGS)  # fmt: skip
    assert rc == 0
    return {"data": data, "run": run, "split": split, "tmp": tmp}


def test_split_is_by_case(hippo_run):
    doc = json.loads(hippo_run["split"].read_text())
    train, val, test = (set(doc[k]) for k in ("train", "val", "test"))
    assert len(train | val | test) == 260 and not (train & val or train & test or val & test)
    assert all(i.startswith("hippocampus_") and "#" not in i for i in train)  # case ids, not slices


def test_train_stores_the_volume_preprocessing_and_scores_volumes(hippo_run):
    import torch

    run = hippo_run["run"]
    pre = torch.load(run / "best.pt", map_location="cpu", weights_only=False)["preprocess"]
    vol = pre["volume"]
    assert vol["axis"] == 2 and vol["context"] == 1 and vol["channel_names"] == ["MRI"]
    assert vol["intensity"] == [{"scheme": "zscore"}]
    assert pre["in_channels"] == 3 and pre["normalize"] == "none"  # 1 channel x (2 * 1 + 1) slices
    assert sorted(p.name for p in (run / "slices").glob("*_image.npy")) == sorted(
        f"{c}_image.npy" for c in json.loads((run / "slices" / "index.json").read_text())["cases"]
    )
    summary = json.loads((run / "eval" / "test" / "summary.json").read_text())
    assert summary["format"] == "medurwkv-volume-metrics-v1" and summary["n_cases"] == 3
    assert summary["distance_unit"] == "mm" and summary["evaluated_classes"] == ["Anterior", "Posterior"]
    html = (run / "report.html").read_text()
    assert "Anterior" in html and "Posterior" in html


def test_evaluate_writes_per_case_per_class_metrics(hippo_run, capsys):
    out = hippo_run["tmp"] / "eval_val"
    rc = main(["evaluate", "--ckpt", str(hippo_run["run"]), "--data", str(hippo_run["data"]), "--split", "val",
               "--out", str(out), "--no-report"])  # fmt: skip
    assert rc == 0
    rows = (out / "per_case.csv").read_text().splitlines()
    val = json.loads(hippo_run["split"].read_text())["val"]
    assert len(rows) == 1 + 2 * len(val)  # header + (case, class) rows for every val case
    assert "mean over classes of the mean over" in capsys.readouterr().out
    assert len(list((out / "cases").glob("*.png"))) >= 1


def _assert_same_geometry(pred: Path, src: Path) -> np.ndarray:
    p, s = nib.load(str(pred)), nib.load(str(src))
    assert p.shape == s.shape and np.array_equal(p.affine, s.affine)
    assert np.array_equal(p.header.get_qform(), s.header.get_qform())
    assert np.array_equal(p.header.get_sform(), s.header.get_sform())
    assert p.header.get_zooms() == s.header.get_zooms() and p.get_data_dtype() == np.uint8
    labels = np.asarray(p.dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2}
    return labels


def test_predict_writes_nifti_with_the_input_geometry_from_checkpoint_and_onnx(hippo_run):
    images = hippo_run["data"] / "imagesTr"
    inputs = [str(images / f"{c}.nii.gz") for c in CASES]
    out = hippo_run["tmp"] / "preds"
    assert (
        main(["predict", "--ckpt", str(hippo_run["run"]), "--input", *inputs, "--out", str(out), "--quiet"])
        == 0
    )
    labels = {c: _assert_same_geometry(out / f"{c}.nii.gz", images / f"{c}.nii.gz") for c in CASES}

    onnx = hippo_run["tmp"] / "model.onnx"
    assert main(["export", "--ckpt", str(hippo_run["run"]), "--out", str(onnx)]) == 0
    out_onnx = hippo_run["tmp"] / "preds_onnx"
    assert main(["predict", "--ckpt", str(onnx), "--input", *inputs, "--out", str(out_onnx), "--quiet"]) == 0
    for c in CASES:
        got = _assert_same_geometry(out_onnx / f"{c}.nii.gz", images / f"{c}.nii.gz")
        # float differences between onnxruntime and torch may flip a voxel whose classes tie
        assert np.mean(got != labels[c]) < 1e-3


def test_predict_refuses_2d_only_options_and_names_a_bad_case(hippo_run, capsys):
    src = hippo_run["data"] / "imagesTr" / f"{CASES[0]}.nii.gz"
    rc = main(["predict", "--ckpt", str(hippo_run["run"]), "--input", str(src), "--out",
               str(hippo_run["tmp"] / "x"), "--native"])  # fmt: skip
    assert rc == 2 and "--native" in one_error_line(capsys.readouterr().err, "predict")
    bad = hippo_run["tmp"] / "bad_in"
    bad.mkdir()
    shutil.copy(src, bad / "good.nii.gz")
    (bad / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    out = hippo_run["tmp"] / "bad_out"
    rc = main(["predict", "--ckpt", str(hippo_run["run"]), "--input", str(bad), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    line = captured.err.strip().splitlines()[-1]
    assert rc == 2 and "broken" in line and "1 of 2 input(s) failed" in line
    assert (out / "good.nii.gz").is_file() and not (out / "broken.nii.gz").exists()


def test_report_command_on_the_volume_run(hippo_run, capsys):
    assert main(["report", str(hippo_run["run"])]) == 0
    assert "Anterior" in (hippo_run["run"] / "report.html").read_text()


def test_target_spacing_trains_at_one_scale_and_predicts_on_the_input_grid(hippo_run, capsys):
    import torch

    run = hippo_run["tmp"] / "run_spacing"
    flags = [f for f in TRAIN_FLAGS]
    flags[flags.index("--epochs") + 1] = "1"
    rc = main(["train", "--data", str(hippo_run["data"]), "--out", str(run), "--split-file", str(hippo_run["split"]),
               "--target-spacing", "1.5", "--no-eval-test", *flags])  # fmt: skip
    assert rc == 0
    spec = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["preprocess"]["volume"]
    assert spec["target_spacing"] == 1.5 and spec["axis"] == 2
    case = json.loads((run / "slices" / "index.json").read_text())["cases"]
    first = next(iter(case))
    src = nib.load(str(hippo_run["data"] / "imagesTr" / f"{first}.nii.gz"))
    cached = np.load(run / "slices" / f"{first}_image.npy", mmap_mode="r")  # (C, X, Y, Z)
    # 1 mm voxels resampled to 1.5 mm in-plane (X, Y); Z, the slice axis, keeps its slices
    expected = (1, round(src.shape[0] / 1.5), round(src.shape[1] / 1.5), src.shape[2])
    assert cached.shape == expected
    out = hippo_run["tmp"] / "preds_spacing"
    image = hippo_run["data"] / "imagesTr" / f"{CASES[0]}.nii.gz"
    assert (
        main(["predict", "--ckpt", str(run / "last.pt"), "--input", str(image), "--out", str(out), "--quiet"])
        == 0
    )
    _assert_same_geometry(out / f"{CASES[0]}.nii.gz", image)  # back on the input's grid
    assert "resampled in-plane to 1.5 mm" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- bad volumes

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
SHAPE = (12, 10, 6)


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _dataset(root: Path) -> Path:
    """A clean 2-channel nnU-Net v2 volume dataset of 4 cases."""
    rng = np.random.default_rng(0)
    for i in range(4):
        case = f"c{i:02d}"
        for ch in range(2):
            _save(root / "imagesTr" / f"{case}_{ch:04d}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        label = np.zeros(SHAPE, np.uint8)
        label[3:8, 2:6, 1:4] = 1
        _save(root / "labelsTr" / f"{case}.nii.gz", label)
    meta = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "lesion": 1},
            "numTraining": 4, "file_ending": ".nii.gz"}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _label_shape(root: Path) -> None:
    _save(root / "labelsTr" / "c01.nii.gz", np.zeros((12, 10, 5), np.uint8))


def _label_affine(root: Path) -> None:
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0  # same spacing, origin 5 mm away: the label lies elsewhere in the body
    _save(root / "labelsTr" / "c01.nii.gz", np.zeros(SHAPE, np.uint8), shifted)


def _missing_channel(root: Path) -> None:
    (root / "imagesTr" / "c01_0001.nii.gz").unlink()


def _label_outside(root: Path) -> None:
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 3
    _save(root / "labelsTr" / "c01.nii.gz", label)


def _truncated(root: Path) -> None:
    path = root / "imagesTr" / "c01_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_label_shape, "shape"),
        (_label_affine, "affine"),
        (_missing_channel, "c01_0001.nii.gz"),
        (_label_outside, "[3]"),
        (_truncated, "c01_0000.nii.gz"),
    ],
)
def test_train_refuses_bad_volumes_naming_the_case(tmp_path, capsys, damage, says):
    root = _dataset(tmp_path / "d")
    # a clean dataset trains (3 of 4 cases as train/val/test of one each, 1 epoch): the refusal below is the damage
    run_ok = tmp_path / "ok"
    assert main(["train", "--data", str(root), "--out", str(run_ok), *TRAIN_FLAGS[:8], "--epochs", "1",
                 "--limit", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--no-tensorboard",
                 "--no-eval-test", "--val-fraction", "0.25", "--test-fraction", "0.25"]) == 0  # fmt: skip
    capsys.readouterr()
    damage(root)
    run = tmp_path / "run"
    rc = main(["train", "--data", str(root), "--out", str(run), *TRAIN_FLAGS])
    line = one_error_line(capsys.readouterr().err, "train")
    assert rc == 2 and "'c01'" in line and says in line and "training refused" in line
    assert not list(run.glob("*.pt")) and not (run / "slices").exists()
