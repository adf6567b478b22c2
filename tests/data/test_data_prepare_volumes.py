"""Volume recipes (msd, acdc, synapse) on tiny synthetic archives with each dataset's official naming."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from medurwkv.cli import main
from medurwkv.data import make_split, prepare
from medurwkv.errors import UserError

SHAPE = (6, 7, 5)  # (X, Y, Z) of every synthetic volume


def affine(k: int) -> np.ndarray:
    """A distinct, non-trivial voxel -> mm map per case (anisotropic, rotated, shifted)."""
    a = np.array([[0.0, -1.5, 0, 10 + k], [1.25, 0, 0, -3], [0, 0, 3.0, 5 - k], [0, 0, 0, 1]])
    return a


def write_nii(path: Path, data: np.ndarray, aff: np.ndarray, descrip: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, aff)
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=2)
    img.header["descrip"] = descrip.encode()
    nib.save(img, str(path))
    return path


def labels_volume(rng, k: int) -> np.ndarray:
    lab = rng.integers(0, k, SHAPE).astype(np.uint8)  # (X, Y, Z)
    lab[0, 0, 0] = k - 1  # every class present
    return lab


def load(path: Path):
    img = nib.load(str(path))
    return img, np.asanyarray(img.dataobj)


# ----------------------------------------------------------------------------------------- MSD


def msd_task(root: Path, *, four_d: bool, n: int = 3, test: int = 1) -> Path:
    """TaskXX_Name/ as the MSD tarballs unpack, including macOS ._ resource forks."""
    rng = np.random.default_rng(0)
    name = "Task01_BrainTumour" if four_d else "Task04_Hippocampus"
    task = root / name
    modality = {"0": "FLAIR", "1": "T1w"} if four_d else {"0": "MRI"}
    meta = {
        "name": "BRATS" if four_d else "Hippocampus",
        "description": "synthetic",
        "licence": "CC-BY-SA 4.0",
        "relase": "1.0 04/05/2018",
        "tensorImageSize": "4D" if four_d else "3D",
        "modality": modality,
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "numTraining": n,
        "training": [],
    }
    stem = "BRATS" if four_d else "hippocampus"
    for k in range(1, n + 1):
        shape = (*SHAPE, 2) if four_d else SHAPE
        image = rng.normal(size=shape).astype(np.float32)  # (X, Y, Z[, C])
        write_nii(task / "imagesTr" / f"{stem}_{k:03d}.nii.gz", image, affine(k), f"img{k}")
        write_nii(task / "labelsTr" / f"{stem}_{k:03d}.nii.gz", labels_volume(rng, 3), affine(k))
        meta["training"].append({"image": f"./imagesTr/{stem}_{k:03d}.nii.gz"})
    for k in range(100, 100 + test):
        shape = (*SHAPE, 2) if four_d else SHAPE
        write_nii(
            task / "imagesTs" / f"{stem}_{k:03d}.nii.gz", rng.normal(size=shape).astype(np.float32), affine(k)
        )
    (task / "dataset.json").write_text(json.dumps(meta))
    # the official tarballs carry AppleDouble files beside the volumes: not NIfTI at all
    (task / "imagesTr" / f"._{stem}_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 Mac OS X junk")
    (task / "labelsTr" / f"._{stem}_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 Mac OS X junk")
    (task / "._dataset.json").write_bytes(b"junk")
    return task


def test_msd_4d_tar_splits_channels_and_keeps_geometry(tmp_path):
    task = msd_task(tmp_path / "raw", four_d=True)
    archive = tmp_path / "Task01_BrainTumour.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(task, arcname=task.name)
    out = tmp_path / "out"
    res = prepare("msd", archive, out, progress=False)
    assert res.count == 3
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        f"BRATS_{k:03d}_{c:04d}.nii.gz" for k in (1, 2, 3) for c in (0, 1)
    ]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [
        f"BRATS_{k:03d}.nii.gz" for k in (1, 2, 3)
    ]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [
        "BRATS_100_0000.nii.gz",
        "BRATS_100_0001.nii.gz",
    ]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1w"}
    assert meta["labels"] == {"background": 0, "edema": 1, "tumour": 2}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert meta["test_images"] == ["BRATS_100"] and meta["task"] == "Task01_BrainTumour"
    assert meta["release"] == "1.0 04/05/2018" and meta["recipe"] == "msd"
    for k in (1, 2, 3):
        src, src_data = load(task / "imagesTr" / f"BRATS_{k:03d}.nii.gz")
        for c in (0, 1):
            img, data = load(out / "imagesTr" / f"BRATS_{k:03d}_{c:04d}.nii.gz")
            assert img.shape == SHAPE and data.dtype == np.float32
            np.testing.assert_array_equal(data, src_data[..., c])
            np.testing.assert_allclose(img.affine, affine(k))
            assert img.header["descrip"] == f"img{k}".encode()
            assert img.header.get_qform(coded=True)[1] == 1 and img.header.get_sform(coded=True)[1] == 2
            np.testing.assert_allclose(img.header.get_zooms(), (1.25, 1.5, 3.0))
        lab_src = (task / "labelsTr" / f"BRATS_{k:03d}.nii.gz").read_bytes()
        assert (out / "labelsTr" / f"BRATS_{k:03d}.nii.gz").read_bytes() == lab_src


def test_msd_3d_folder_copies_volumes_and_skips_appledouble(tmp_path):
    task = msd_task(tmp_path / "raw", four_d=False, test=0)
    out = tmp_path / "out"
    res = prepare("msd", tmp_path / "raw", out, progress=False)
    assert res.count == 3 and not (out / "imagesTs").exists()
    names = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert names == [f"hippocampus_{k:03d}_0000.nii.gz" for k in (1, 2, 3)]  # no ._ file made it through
    for k in (1, 2, 3):
        src = task / "imagesTr" / f"hippocampus_{k:03d}.nii.gz"
        assert (out / "imagesTr" / f"hippocampus_{k:03d}_0000.nii.gz").read_bytes() == src.read_bytes()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MRI"} and meta["test_images"] == []


def test_msd_real_hippocampus_cases(shared_data_dir, tmp_path):
    """Three real Task04 cases (float32 and uint8 images occur) through the recipe."""
    real = shared_data_dir / "msd-hippocampus"
    task = tmp_path / "src" / "Task04_Hippocampus"
    cases = sorted(p.name for p in (real / "labelsTr").glob("hippocampus_*.nii.gz"))[:3]
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
        for name in cases:
            shutil.copyfile(real / sub / name, task / sub / name)
    shutil.copyfile(real / "dataset.json", task / "dataset.json")
    out = tmp_path / "out"
    assert prepare("msd", task.parent, out, progress=False).count == 3
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    for name in cases:
        case = name[: -len(".nii.gz")]
        img, _ = load(out / "imagesTr" / f"{case}_0000.nii.gz")
        ref = nib.load(str(real / "imagesTr" / name))
        np.testing.assert_array_equal(img.affine, ref.affine)
        assert img.shape == ref.shape
        _, lab = load(out / "labelsTr" / name)
        assert set(np.unique(lab)) <= {0, 1, 2}


def test_msd_errors_name_the_file(tmp_path):
    task = msd_task(tmp_path / "a", four_d=False, test=0)
    (task / "labelsTr" / "hippocampus_002.nii.gz").unlink()
    with pytest.raises(UserError, match=re.escape(str(task / "imagesTr" / "hippocampus_002.nii.gz"))):
        prepare("msd", tmp_path / "a", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # a failed recipe leaves no half-written DST

    task = msd_task(tmp_path / "b", four_d=False, test=0)
    bad = write_nii(task / "labelsTr" / "hippocampus_003.nii.gz", np.full(SHAPE, 7, np.uint8), affine(3))
    with pytest.raises(UserError, match=re.escape(str(bad)) + r".*\[7\]"):
        prepare("msd", tmp_path / "b", tmp_path / "out", progress=False)

    task = msd_task(tmp_path / "c", four_d=False, test=0)
    small = write_nii(task / "labelsTr" / "hippocampus_001.nii.gz", np.zeros((6, 7, 4), np.uint8), affine(1))
    with pytest.raises(UserError, match=re.escape(str(small)) + ".*shape"):
        prepare("msd", tmp_path / "c", tmp_path / "out", progress=False)

    task = msd_task(tmp_path / "d", four_d=True, test=0)
    meta = json.loads((task / "dataset.json").read_text())
    meta["modality"] = {"0": "FLAIR", "1": "T1w", "2": "T2w"}
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"BRATS_001\.nii\.gz has 2 channels.*declares 3"):
        prepare("msd", tmp_path / "d", tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------------------- ACDC


ACDC_FRAMES = {
    "patient001": (1, 12, "training"),
    "patient002": (1, 9, "training"),
    "patient101": (1, 14, "testing"),
}


def acdc_database(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for k, (patient, (ed, es, folder)) in enumerate(ACDC_FRAMES.items()):
        d = root / "database" / folder / patient
        d.mkdir(parents=True)
        (d / "Info.cfg").write_text(
            f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n"
        )
        write_nii(d / f"{patient}_4d.nii.gz", rng.normal(size=(*SHAPE, 3)).astype(np.float32), affine(k))
        for frame in (ed, es):
            image = rng.integers(0, 400, SHAPE).astype(np.int16)
            write_nii(d / f"{patient}_frame{frame:02d}.nii.gz", image, affine(k), f"{patient}")
            write_nii(d / f"{patient}_frame{frame:02d}_gt.nii.gz", labels_volume(rng, 4), affine(k))
    return root / "database"


def test_acdc_zip_one_case_per_frame_grouped_by_patient(tmp_path):
    db = acdc_database(tmp_path / "raw")
    archive = tmp_path / "database.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(db.rglob("*")):
            zf.write(p, p.relative_to(db.parent))
    out = tmp_path / "out"
    res = prepare("acdc", archive, out, progress=False)
    cases = [
        "patient001_frame01", "patient001_frame12", "patient002_frame01", "patient002_frame09",
        "patient101_frame01", "patient101_frame14",
    ]  # fmt: skip
    assert res.count == 6
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in cases]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    assert not (out / "imagesTs").exists()  # the 4D cine files are ignored, every frame has its ground truth
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
    assert meta["channel_names"] == {"0": "cineMRI"} and meta["numTraining"] == 6
    assert meta["subsets"] == {"train": cases[:4], "test": cases[4:]}
    p1 = meta["patients"]["patient001"]
    assert p1["cases"] == cases[:2] and p1["phase"] == {cases[0]: "ED", cases[1]: "ES"}
    assert p1["info"]["Group"] == "DCM" and p1["info"]["ES"] == 12
    for c in cases:
        patient = c.split("_")[0]
        src = db / ACDC_FRAMES[patient][2] / patient
        img, data = load(out / "imagesTr" / f"{c}_0000.nii.gz")
        np.testing.assert_allclose(img.affine, affine(list(ACDC_FRAMES).index(patient)))
        assert img.header["descrip"] == patient.encode() and data.dtype == np.int16
        _, lab = load(out / "labelsTr" / f"{c}.nii.gz")
        np.testing.assert_array_equal(lab, load(src / f"{c}_gt.nii.gz")[1])
        assert set(np.unique(lab)) == {0, 1, 2, 3}
    # the recorded grouping keeps a patient's ED and ES frames in one split, whatever the seed
    group = meta["split_group"]
    for seed in range(5):
        split = make_split(cases, val=0.2, test=0.3, group=group, seed=seed)
        for patient in ACDC_FRAMES:
            where = {
                name
                for name in ("train", "val", "test")
                for c in getattr(split, name)
                if c.startswith(patient)
            }
            assert len(where) == 1, (seed, patient, where)


def test_acdc_errors_name_the_file(tmp_path):
    db = acdc_database(tmp_path / "a")
    gt = db / "training" / "patient002" / "patient002_frame09_gt.nii.gz"
    gt.unlink()
    with pytest.raises(UserError, match=re.escape(str(db / "training/patient002/patient002_frame09.nii.gz"))):
        prepare("acdc", db, tmp_path / "out", progress=False)
    db = acdc_database(tmp_path / "b")
    bad = write_nii(
        db / "training/patient001/patient001_frame12_gt.nii.gz", np.full(SHAPE, 4, np.uint8), affine(0)
    )
    with pytest.raises(UserError, match=re.escape(str(bad)) + r".*\[4\]"):
        prepare("acdc", db, tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------------------- Synapse


def synapse_form(root: Path, *, bad_keys: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
    """TransUNet's project_TransUNet/data/Synapse: train_npz/ slices and test_vol_h5/ volumes."""
    rng = np.random.default_rng(2)
    truth: dict[str, np.ndarray] = {}
    (root / "train_npz").mkdir(parents=True)
    for case, n in (("case0005", 12), ("case0006", 3)):  # TransUNet's names: sliceNNN
        for k in rng.permutation(n):  # written out of order; slice 9 vs 10 checks numeric ordering
            image = np.full((6, 7), k / 100, np.float32)
            image[0, 0] = rng.random()
            label = rng.integers(0, 9, (6, 7)).astype(np.float32)
            np.savez(root / "train_npz" / f"{case}_slice{k:03d}.npz", image=image, label=label)
        truth[case] = np.arange(n) / 100
    for k in (10, 8, 11, 9):  # unpadded indices: ordered by number (8, 9, 10, 11), not by name
        np.savez(
            root / "train_npz" / f"case0007_slice{k}.npz", image=np.full((6, 7), k, np.float32), label=label
        )
    truth["case0007"] = np.array([8, 9, 10, 11])
    if bad_keys:
        np.savez(root / "train_npz" / "case0006_slice001.npz", img=np.zeros((6, 7)), label=np.zeros((6, 7)))
    (root / "test_vol_h5").mkdir()
    image = rng.random((4, 6, 7)).astype(np.float32)  # (Z, H, W)
    label = rng.integers(0, 9, (4, 6, 7)).astype(np.float32)
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"], f["label"] = image, label
    truth["case0001"] = (image, label)
    return root, truth


def test_synapse_stacks_slices_in_order_and_writes_test_volumes(tmp_path):
    src, truth = synapse_form(tmp_path / "Synapse")
    out = tmp_path / "out"
    res = prepare("synapse", src, out, progress=False)
    assert res.count == 4 and any("TransUNet's 12" in n for n in res.notes)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["subsets"] == {"train": ["case0005", "case0006", "case0007"], "test": ["case0001"]}
    assert list(meta["labels"]) == [
        "background", "aorta", "gallbladder", "left kidney", "right kidney", "liver", "pancreas", "spleen",
        "stomach",
    ]  # fmt: skip
    assert list(meta["labels"].values()) == list(range(9)) and meta["spacing_known"] is False
    assert "identity" in meta["geometry"] and meta["channel_names"] == {"0": "CT"}
    for case in ("case0005", "case0006"):
        img, data = load(out / "imagesTr" / f"{case}_0000.nii.gz")
        n = len(truth[case])
        assert data.shape == (6, 7, n) and data.dtype == np.float32  # (H, W, Z)
        np.testing.assert_allclose(data[1, 1, :], truth[case])  # slice k is slice_k, in numeric order
        np.testing.assert_array_equal(img.affine, np.eye(4))
        _, lab = load(out / "labelsTr" / f"{case}.nii.gz")
        assert lab.dtype == np.uint8 and lab.shape == (6, 7, n)
        for k in range(n):
            with np.load(src / "train_npz" / f"{case}_slice{k:03d}.npz") as z:
                np.testing.assert_array_equal(data[:, :, k], z["image"])
                np.testing.assert_array_equal(lab[:, :, k], z["label"])
    np.testing.assert_array_equal(load(out / "imagesTr" / "case0007_0000.nii.gz")[1][2, 3], truth["case0007"])
    image, label = truth["case0001"]
    img, data = load(out / "imagesTr" / "case0001_0000.nii.gz")
    np.testing.assert_array_equal(data, np.transpose(image, (1, 2, 0)))
    np.testing.assert_array_equal(
        load(out / "labelsTr" / "case0001.nii.gz")[1], np.transpose(label, (1, 2, 0))
    )
    np.testing.assert_allclose(img.header.get_zooms(), (1, 1, 1))


def test_synapse_errors(tmp_path, monkeypatch):
    src, _ = synapse_form(tmp_path / "a", bad_keys=True)
    with pytest.raises(
        UserError, match=re.escape(str(src / "train_npz" / "case0006_slice001.npz")) + ".*'img'"
    ):
        prepare("synapse", src, tmp_path / "out", progress=False)
    src, _ = synapse_form(tmp_path / "b")
    (src / "train_npz" / "case0005_slice004.npz").unlink()
    with pytest.raises(UserError, match=r"case0005 misses slices \[4\]"):
        prepare("synapse", src, tmp_path / "out", progress=False)
    src, _ = synapse_form(tmp_path / "c")
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    with pytest.raises(UserError, match=r"h5py is needed.*medurwkv\[synapse\]"):
        prepare("synapse", src, tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------------------- CLI


def test_cli_prepare_acdc_and_overwrite(tmp_path, capsys):
    db = acdc_database(tmp_path / "raw")
    out = tmp_path / "out"
    assert (
        main(["data", "prepare", "acdc", str(db), str(out), "--no-progress"]) == 0
    )  # then `data check` passes
    assert "prepared 6" in capsys.readouterr().out
    (out / "labelsTr" / "stale.nii.gz").write_bytes(b"old")
    assert main(["data", "prepare", "acdc", str(db), str(out), "--no-check", "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        main(["data", "prepare", "acdc", str(db), str(out), "--overwrite", "--no-check", "--no-progress"])
        == 0
    )
    assert not (out / "labelsTr" / "stale.nii.gz").exists()  # overwrite replaced labelsTr/
    assert not (out / "images").exists() and not (out / "masks").exists()


def test_tar_with_an_unsafe_member_is_refused(tmp_path):
    (tmp_path / "evil.txt").write_text("x")
    archive = tmp_path / "Task09_Spleen.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "evil.txt", arcname="../evil.txt")
    with pytest.raises(UserError, match=re.escape(str(archive)) + ".*unsafe"):
        prepare("msd", archive, tmp_path / "out", progress=False)
