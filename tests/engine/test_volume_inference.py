"""Volume inference (medurwkv.engine.volume_inference): grouping NIfTI inputs into cases, and a tiny model
trained once on the shared msd-hippocampus volumes predicting, exporting to ONNX and being evaluated (3D
metrics checked against MONAI on the written label maps)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medurwkv import create_model
from medurwkv.data.volume_slices import VOLUME_PREPROCESS_FORMAT, VolumeSpec
from medurwkv.engine.evaluation import evaluate
from medurwkv.engine.export import export_checkpoint
from medurwkv.engine.predict import Segmenter, predict_paths
from medurwkv.engine.volume_inference import (
    collect_volume_cases,
    predict_volumes,
    read_volume_case,
    segment_volume,
    volume_spec,
)
from medurwkv.errors import UserError

AFFINE = np.array([[-0.8, 0, 0, 10.0], [0, 0.8, 0, -20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])
CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004"]  # the first three of imagesTr
EVAL_CASES = CASES[:2]


def nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


# ---------------------------------------------------------------------------------------------- input cases


def test_nnunet_channel_files_are_grouped_in_channel_order(tmp_path):
    f1 = nifti(tmp_path / "in" / "CASE_0001.nii.gz", np.ones((2, 3, 4), np.float32))
    f0 = nifti(tmp_path / "in" / "CASE_0000.nii.gz", np.zeros((2, 3, 4), np.float32))
    g0 = nifti(tmp_path / "in" / "OTHER_0000.nii", np.zeros((2, 3, 4), np.float32))
    g1 = nifti(tmp_path / "in" / "OTHER_0001.nii", np.ones((2, 3, 4), np.float32))
    cases, problems = collect_volume_cases(tmp_path / "in", 2)
    assert problems == [] and cases == {"CASE": [f0, f1], "OTHER": [g0, g1]}
    cases, problems = collect_volume_cases([f1, str(f0)], 2)  # files given out of order, a str and a Path
    assert problems == [] and cases == {"CASE": [f0, f1]}
    image, ref = read_volume_case("CASE", cases["CASE"])
    assert image.shape == (2, 2, 3, 4) and image[0].max() == 0 and image[1].min() == 1
    assert ref.path == f0 and ref.shape == (2, 3, 4)


def test_a_missing_channel_file_is_a_problem_naming_case_and_file(tmp_path):
    nifti(tmp_path / "in" / "CASE_0000.nii.gz", np.zeros((2, 3, 4), np.float32))
    ok = nifti(tmp_path / "in" / "FULL_0000.nii.gz", np.zeros((2, 3, 4), np.float32))
    ok1 = nifti(tmp_path / "in" / "FULL_0001.nii.gz", np.zeros((2, 3, 4), np.float32))
    cases, problems = collect_volume_cases(tmp_path / "in", 2)
    assert cases == {"FULL": [ok, ok1]}
    assert len(problems) == 1
    name, why = problems[0]
    assert name == "CASE" and "CASE_0001.nii.gz" in why and "'CASE'" in why


def test_plain_files_empty_folders_and_4d_files(tmp_path):
    plain = nifti(tmp_path / "msd" / "hippocampus_007.nii.gz", np.zeros((2, 3, 4), np.uint8))
    assert collect_volume_cases(tmp_path / "msd", 1) == ({"hippocampus_007": [plain]}, [])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no volumes here")
    cases, problems = collect_volume_cases(tmp_path / "empty", 1)
    assert cases == {} and len(problems) == 1
    assert problems[0][0] == str(tmp_path / "empty") and "no NIfTI volume" in problems[0][1]
    cases, problems = collect_volume_cases(tmp_path / "missing" / "*.nii.gz", 1)
    assert cases == {} and "no NIfTI volume" in problems[0][1]
    four_d = nifti(tmp_path / "4d" / "brain.nii.gz", np.zeros((2, 3, 4, 2), np.float32))  # channels last
    assert collect_volume_cases(tmp_path / "4d", 2) == ({"brain": [four_d]}, [])
    image, ref = read_volume_case("brain", [four_d])
    assert image.shape == (2, 2, 3, 4) and ref.shape == (2, 3, 4)


# ---------------------------------------------------------------------------------------------- slice assembly


class NeighbourVote(nn.Module):
    """2.5D input (slices k-1, k, k+1) -> logits (0, x[k-1], x[k+1]): class 1 where the previous slice is the
    largest of (0, previous, next), class 2 where the next one is, so labels are known by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.pad_multiple = 3, 3, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 3, H, W)
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1], x[:, 2:3]], dim=1)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_segment_volume_puts_each_slice_back_in_place(axis: int):
    spec = VolumeSpec(axis=axis, context=1, channel_names=["MRI"], intensity=[{"scheme": "zscore"}])
    pre = {
        "in_channels": 3,
        "normalize": "none",
        "num_classes": 3,
        "img_size": None,
        "volume": spec.to_dict(),
    }
    seg = Segmenter.from_model(NeighbourVote(), pre)  # no img_size: native slices, no resizing
    vol = np.random.default_rng(axis).normal(5.0, 2.0, size=(6, 5, 4)).astype(np.float32)  # (X, Y, Z)
    z = (vol.astype(np.float64) - vol.mean()) / vol.std()
    n = vol.shape[axis]
    prev = np.take(z, np.clip(np.arange(n) - 1, 0, n - 1), axis=axis)  # the edge slice repeats
    nxt = np.take(z, np.clip(np.arange(n) + 1, 0, n - 1), axis=axis)
    expected = np.where((prev > 0) & (prev > nxt), 1, np.where((nxt > 0) & (nxt > prev), 2, 0))
    got = segment_volume(seg, vol, batch_size=3)  # batches that do not divide the slice count
    assert got.shape == vol.shape
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------------- a trained model


@pytest.fixture(scope="module")
def hippocampus(shared_data_dir: Path) -> Path:
    return shared_data_dir / "msd-hippocampus"


@pytest.fixture(scope="module")
def volume_ckpt(hippocampus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.pt of a tiny 2.5D U-Net (3 slices in) fitted for 24 steps on 2 hippocampus cases.

    A high learning rate and only foreground slices, so that it predicts both structures (HD95 is compared with MONAI only where both
    surfaces exist); last.pt, not best.pt: a model predicting only background scores a high per-slice val
    Dice (most slices are empty), so best.pt may be the epoch that predicts nothing.
    """
    from medurwkv.engine.train import fit

    tmp = tmp_path_factory.mktemp("volume_run")
    result = fit(
        data=hippocampus,
        out=tmp / "run",
        model="unet",
        model_kwargs={"base_channels": 8, "depth": 2},
        img_size=32,
        context_slices=1,
        foreground_oversample=1.0,  # every sample shows both structures: 24 steps learn them
        epochs=3,
        lr=3e-3,
        warmup_epochs=0,
        limit=2,
        batch_size=8,
        max_train_batches=8,
        max_val_batches=1,
        num_workers=0,
        progress=False,
        eval_test=False,
        tensorboard=False,
        split_file=tmp / "split.json",  # the shared dataset folder is read-only
    )
    assert result.epochs_completed == 3
    return result.last_checkpoint


@pytest.fixture(scope="module")
def segmenter(volume_ckpt: Path) -> Segmenter:
    return Segmenter.from_checkpoint(volume_ckpt)


@pytest.fixture(scope="module")
def predicted(segmenter: Segmenter, hippocampus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pred")
    inputs = [hippocampus / "imagesTr" / f"{c}.nii.gz" for c in CASES]
    summary = predict_volumes(segmenter, inputs, out, batch_size=16, progress=False)
    assert summary.failed == [] and summary.n_ok == 3
    assert summary.outputs == {str(p): [out / p.name] for p in inputs}
    return out


def test_volume_spec_of_the_checkpoint(segmenter: Segmenter):
    spec = volume_spec(segmenter)
    assert spec.format == VOLUME_PREPROCESS_FORMAT and spec.context == 1 and spec.channel_names == ["MRI"]
    assert spec.axis == 2  # 1 mm isotropic: Z
    assert spec.intensity == [{"scheme": "zscore"}]  # MRI: per volume
    assert segmenter.in_channels == 3 and segmenter.normalize == "none" and segmenter.num_classes == 3


def test_predict_volumes_keeps_grid_and_header(predicted: Path, hippocampus: Path):
    assert sorted(p.name for p in predicted.iterdir()) == [f"{c}.nii.gz" for c in CASES]
    for case in CASES:
        src = nib.load(str(hippocampus / "imagesTr" / f"{case}.nii.gz"))
        out = nib.load(str(predicted / f"{case}.nii.gz"))
        assert np.array_equal(out.affine, src.affine)
        assert out.shape == src.shape and out.get_data_dtype() == np.uint8
        h, sh = out.header, src.header
        assert int(h["qform_code"]) == int(sh["qform_code"]) and int(h["sform_code"]) == int(sh["sform_code"])
        assert np.array_equal(h["pixdim"], sh["pixdim"])
        labels = np.asanyarray(out.dataobj)
        assert labels.min() >= 0 and labels.max() <= 2


def test_segment_volume_equals_the_written_labels_and_tta_runs(
    segmenter: Segmenter, predicted: Path, hippocampus: Path, tmp_path: Path
):
    case = CASES[0]
    src = hippocampus / "imagesTr" / f"{case}.nii.gz"
    raw = np.asanyarray(nib.load(str(src)).dataobj)  # (X, Y, Z) uint8
    labels = segment_volume(segmenter, raw.astype(np.float32))  # a 3D array for a 1-channel model
    assert labels.shape == raw.shape and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.asanyarray(nib.load(str(predicted / f"{case}.nii.gz")).dataobj))
    np.testing.assert_array_equal(segment_volume(segmenter, raw[None], batch_size=5), labels)  # batching
    summary = predict_volumes(segmenter, [src], tmp_path / "tta", tta=True, progress=False)
    assert summary.failed == [] and "TTA" in summary.mode
    tta = np.asanyarray(nib.load(str(tmp_path / "tta" / f"{case}.nii.gz")).dataobj)
    assert tta.shape == raw.shape and tta.min() >= 0 and tta.max() <= 2
    with pytest.raises(UserError, match=r"C = 1 channel"):
        segment_volume(segmenter, np.zeros((2, *raw.shape), np.float32))


def test_a_synthetic_volume_keeps_an_oblique_header(segmenter: Segmenter, tmp_path: Path):
    # LAS, anisotropic voxels, qform (scanner) and sform (aligned) differing in code; qfac -1
    img = nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 17, 9)).astype(np.float32), AFFINE)
    img.header.set_qform(AFFINE, code=1)
    img.header.set_sform(AFFINE, code=2)
    img.header.set_xyzt_units("mm", "sec")
    (tmp_path / "in").mkdir()
    nib.save(img, str(tmp_path / "in" / "scan.nii"))
    src = nib.load(str(tmp_path / "in" / "scan.nii"))
    summary = predict_volumes(segmenter, tmp_path / "in", tmp_path / "out", progress=False)
    assert summary.failed == []
    out = nib.load(str(tmp_path / "out" / "scan.nii"))  # the input's ending
    assert np.array_equal(out.affine, src.affine) and out.shape == (20, 17, 9)
    h, sh = out.header, src.header
    assert (int(h["qform_code"]), int(h["sform_code"])) == (1, 2)
    assert np.array_equal(h["pixdim"], sh["pixdim"]) and h.get_xyzt_units() == ("mm", "sec")
    assert np.array_equal(h.get_qform(), sh.get_qform()) and np.array_equal(h.get_sform(), sh.get_sform())


def test_predict_volumes_never_overwrites_an_input(segmenter: Segmenter, hippocampus: Path, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    src = hippocampus / "imagesTr" / f"{CASES[0]}.nii.gz"
    (data / src.name).write_bytes(src.read_bytes())
    before = (data / src.name).read_bytes()
    summary = predict_volumes(segmenter, data, data, progress=False)  # out = the input folder
    assert summary.n_ok == 0 and len(summary.failed) == 1
    assert summary.failed[0][0] == CASES[0] and "would overwrite the input" in summary.failed[0][1]
    assert (data / src.name).read_bytes() == before


def test_unreadable_case_is_skipped_and_the_others_written(segmenter: Segmenter, hippocampus: Path, tmp_path):
    good = hippocampus / "imagesTr" / f"{CASES[0]}.nii.gz"
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(good.read_bytes()[:200])
    summary = predict_volumes(segmenter, [bad, good], tmp_path / "out", progress=False)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [good.name]
    assert len(summary.failed) == 1 and summary.failed[0][0] == "cut" and "cut.nii.gz" in summary.failed[0][1]


def test_a_2d_model_cannot_segment_volumes(tmp_path: Path):
    model = create_model("unet", in_channels=1, num_classes=3, base_channels=4, depth=2)
    seg = Segmenter.from_model(
        model, {"in_channels": 1, "normalize": "per_image", "num_classes": 3, "img_size": 32}
    )
    with pytest.raises(UserError, match=r"trained on 2D images, so it cannot segment volumes"):
        volume_spec(seg)
    with pytest.raises(UserError, match=r"trained on 2D images"):
        predict_volumes(seg, tmp_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_onnx_export_of_the_volume_model_gives_the_same_labels(
    volume_ckpt: Path, segmenter: Segmenter, hippocampus: Path, tmp_path: Path
):
    report = export_checkpoint(volume_ckpt, tmp_path / "vol.onnx")
    assert report["metadata"]["preprocess"]["volume"] == segmenter.preprocess["volume"]
    seg_o = Segmenter.from_checkpoint(tmp_path / "vol.onnx")
    assert seg_o.backend == "onnx" and volume_spec(seg_o) == volume_spec(segmenter)
    image, _ = read_volume_case(CASES[1], [hippocampus / "imagesTr" / f"{CASES[1]}.nii.gz"])
    lab_t, lab_o = segment_volume(segmenter, image), segment_volume(seg_o, image)
    # onnxruntime and PyTorch sum in other orders (probabilities within ~1e-6): the argmax may flip only
    # where two classes tie to that precision, a handful of voxels at most
    assert lab_o.shape == lab_t.shape and (lab_o != lab_t).mean() < 1e-3


def read_per_case(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def onehot(labels: np.ndarray) -> torch.Tensor:
    """(X, Y, Z) labels -> (1, 3, X, Y, Z) one-hot, MONAI's layout."""
    t = torch.as_tensor(labels.astype(np.int64))
    return F.one_hot(t, 3).permute(3, 0, 1, 2)[None].double()


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # inside MONAI 1.5+
def test_evaluate_per_case_metrics_match_monai(
    volume_ckpt: Path, hippocampus: Path, predicted: Path, tmp_path: Path
):
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    summary = evaluate(
        volume_ckpt, hippocampus, ids=EVAL_CASES, out=tmp_path / "eval", progress=False, verbose=False
    )
    assert summary["format"] == "medurwkv-volume-metrics-v1" and summary["n_cases"] == 2
    rows = read_per_case(tmp_path / "eval" / "per_case.csv")
    assert sorted((r["case_id"], r["class_name"]) for r in rows) == [
        (c, n) for c in EVAL_CASES for n in ("Anterior", "Posterior")
    ]
    compared = 0
    for case in EVAL_CASES:
        pred_img = nib.load(str(predicted / f"{case}.nii.gz"))  # what predict_volumes wrote for this case
        gt_img = nib.load(str(hippocampus / "labelsTr" / f"{case}.nii.gz"))
        pred, gt = onehot(np.asanyarray(pred_img.dataobj)), onehot(np.asanyarray(gt_img.dataobj))
        spacing = [float(z) for z in gt_img.header.get_zooms()[:3]]
        dice = DiceMetric(include_background=False, reduction="none")(pred, gt)[0]  # (2,)
        hd95 = compute_hausdorff_distance(pred, gt, include_background=False, percentile=95, spacing=spacing)
        hd95 = hd95[0]  # (2,)
        for c, name in enumerate(("Anterior", "Posterior")):
            (row,) = [r for r in rows if r["case_id"] == case and r["class_name"] == name]
            assert float(row["dice"]) == pytest.approx(float(dice[c]), abs=1e-6)
            both = bool(pred[0, c + 1].any()) and bool(gt[0, c + 1].any())
            if both:  # HD95 is defined only when both surfaces exist (MONAI gives inf otherwise)
                # MONAI casts the surface distances to float32 (get_surface_distance), so its HD95 of ~27 mm
                # carries float32 rounding (~2e-6 mm): 1e-6 relative, not absolute
                assert float(row["hd95"]) == pytest.approx(float(hd95[c]), rel=1e-6)
                compared += 1
            else:
                assert row["hd95"] == "" and not math.isfinite(float(hd95[c]))
    assert compared >= 1  # at least one HD95 really checked against MONAI


def test_a_volume_model_refuses_raw_2d_images(segmenter: Segmenter, tmp_path: Path):
    # a raw slice would skip the volume's z-score: the 2D entry points say which function to use instead
    with pytest.raises(UserError, match=r"trained on volumes; segment a \(C, X, Y, Z\) volume"):
        segmenter.predict(np.zeros((32, 32), np.float32))
    with pytest.raises(UserError, match=r"trained on volumes \(slices of 3D scans\); predict NIfTI"):
        predict_paths(segmenter, tmp_path, tmp_path / "out", progress=False)
