"""``data check`` on volume datasets (medurwkv.data.volume_check): one synthetic dataset per bad-volume kind,
the shared msd-hippocampus check, the CLI, and `train` refusing volumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medurwkv.cli import main
from medurwkv.data import VolumeCheckReport, check_dataset
from medurwkv.errors import UserError

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
SHAPE = (8, 7, 5)  # (X, Y, Z)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def make_cases(root: Path, cases=("p01", "p02", "p03"), channels=2) -> Path:
    """nnU-Net v2 raw with 3D NIfTI: every case has two channels and labels {0, 1, 2}."""
    rng = np.random.default_rng(0)
    for case in cases:
        for c in range(channels):
            save_nifti(
                root / "imagesTr" / f"{case}_{c:04d}.nii.gz", rng.normal(size=SHAPE).astype(np.float32)
            )
        label = np.zeros(SHAPE, np.uint8)
        label[2:5, 2:4, 1:3] = 1
        label[6, 5, 4] = 2
        save_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    meta = {
        "channel_names": {str(c): f"MR{c}" for c in range(channels)},
        "labels": {"background": 0, "left": 1, "right": 2},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def errors_of(root: Path) -> str:
    report = check_dataset(root, progress=False)
    assert not report.ok, report.format()
    return "\n".join(report.errors)


def test_clean_volume_dataset_passes_with_summary(tmp_path):
    report = check_dataset(make_cases(tmp_path / "d"), progress=False)
    assert isinstance(report, VolumeCheckReport)
    assert report.ok and report.warnings == [], report.format()
    s = report.summary
    assert s["layout"] == "nnunet3d" and s["cases"] == 3 and s["channel_names"] == ["MR0", "MR1"]
    assert s["class_names"] == ["background", "left", "right"] and s["orientations"] == {"RAS": 3}
    assert s["shapes"] == {"8x7x5": 3} and s["spacings"] == {"1.5x1.5x3": 3}
    assert s["class_case_count"] == {"background": 3, "left": 3, "right": 3}
    assert s["class_voxel_fraction"]["left"] == pytest.approx(12 / 280)
    text = report.format()
    assert "orientation: RAS: 3 cases" in text and "cases: 3" in text and "OK: no errors" in text
    assert report.volumes.ids == ["p01", "p02", "p03"]
    with pytest.raises(UserError, match=r"holds 3D volumes \(layout nnunet3d\)"):
        _ = report.index  # what `train` reads next: a clear refusal, not a misread folder


def test_shape_mismatch_names_the_case(tmp_path):
    root = make_cases(tmp_path / "d")
    save_nifti(root / "labelsTr" / "p02.nii.gz", np.zeros((8, 7, 6), np.uint8))
    save_nifti(root / "imagesTr" / "p03_0001.nii.gz", np.zeros((8, 6, 5), np.float32))
    errors = errors_of(root)
    assert (
        "case 'p02': label labelsTr/p02.nii.gz has shape 8x7x6 but imagesTr/p02_0000.nii.gz has 8x7x5"
        in errors
    )
    assert "case 'p03': channel imagesTr/p03_0001.nii.gz has shape 8x6x5" in errors
    assert "p01" not in errors


def test_affine_and_spacing_mismatch(tmp_path):
    root = make_cases(tmp_path / "d")
    shifted = AFFINE.copy()
    shifted[:3, 3] = (0.0, 0.0, 12.0)  # same spacing, other origin
    label = nib.load(str(root / "labelsTr" / "p01.nii.gz")).get_fdata().astype(np.uint8)
    save_nifti(root / "labelsTr" / "p01.nii.gz", label, shifted)
    save_nifti(
        root / "imagesTr" / "p02_0001.nii.gz", np.zeros(SHAPE, np.float32), np.diag([1.5, 1.5, 2.0, 1])
    )
    errors = errors_of(root)
    assert "case 'p01': label labelsTr/p01.nii.gz has another affine than imagesTr/p01_0000.nii.gz" in errors
    assert "differs by up to 12 mm" in errors and "origin (0, 0, 12) vs (0, 0, 0)" in errors
    assert "case 'p02': channel imagesTr/p02_0001.nii.gz has spacing (1.5, 1.5, 2) mm" in errors
    # within the tolerance (float32 rounding of the same geometry) is no error
    root2 = make_cases(tmp_path / "d2")
    nudged = AFFINE.copy()
    nudged[0, 3] = 2e-4
    save_nifti(root2 / "labelsTr" / "p01.nii.gz", label, nudged)
    assert check_dataset(root2, progress=False).ok


def test_missing_channel_and_unpaired_files(tmp_path):
    root = make_cases(tmp_path / "d", cases=("p01", "p02", "p03", "p04"))
    (root / "imagesTr" / "p02_0001.nii.gz").unlink()
    (root / "labelsTr" / "p03.nii.gz").unlink()
    for c in range(2):
        (root / "imagesTr" / f"p04_{c:04d}.nii.gz").unlink()
    errors = errors_of(root)
    assert "case 'p02': channel file(s) imagesTr/p02_0001.nii.gz missing" in errors
    assert "channel_names lists 2 channels ['MR0', 'MR1']" in errors
    assert "case 'p03': image imagesTr/p03_0000.nii.gz has no label: expected labelsTr/p03.nii.gz" in errors
    assert "case 'p04': label labelsTr/p04.nii.gz has no image: expected imagesTr/p04_0000.nii.gz" in errors


def test_msd_4d_image_with_a_modality_missing(tmp_path):
    root = tmp_path / "Task01"
    save_nifti(root / "imagesTr" / "b_001.nii.gz", np.zeros((*SHAPE, 2), np.float32))
    save_nifti(root / "imagesTr" / "b_002.nii.gz", np.zeros((*SHAPE, 3), np.float32))
    for case in ("b_001", "b_002"):
        lab = np.zeros(SHAPE, np.uint8)
        lab[1, 1, 1] = 1
        save_nifti(root / "labelsTr" / f"{case}.nii.gz", lab)
    meta = {"modality": {"0": "FLAIR", "1": "T1w", "2": "T2w"}, "labels": {"0": "background", "1": "edema"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    report = check_dataset(root, progress=False)
    assert report.summary["layout"] == "msd" and len(report.errors) == 1, report.format()
    assert "case 'b_001': imagesTr/b_001.nii.gz has 2 channel(s)" in report.errors[0]
    assert "modality lists 3 ['FLAIR', 'T1w', 'T2w']" in report.errors[0]


def test_labels_outside_dataset_json_name_the_values(tmp_path):
    root = make_cases(tmp_path / "d")
    bad = np.zeros(SHAPE, np.uint8)
    bad[0, 0, 0], bad[1, 1, 1] = 5, 9
    save_nifti(root / "labelsTr" / "p03.nii.gz", bad)
    save_nifti(root / "labelsTr" / "p01.nii.gz", np.full(SHAPE, 0.5, np.float32))
    errors = errors_of(root)
    assert "case 'p03': label labelsTr/p03.nii.gz holds values [5, 9] outside the 3 classes" in errors
    assert "case 'p01': label volume " in errors and "non-integer values [0.5]" in errors


def test_truncated_gz_is_an_error_naming_the_file_not_a_traceback(tmp_path):
    root = make_cases(tmp_path / "d")
    p = root / "imagesTr" / "p02_0000.nii.gz"
    p.write_bytes(p.read_bytes()[:-40])
    garbage = root / "labelsTr" / "p03.nii.gz"
    garbage.write_bytes(b"not a gzip file at all")
    report = check_dataset(root, progress=False)
    errors = "\n".join(report.errors)
    assert "case 'p02': cannot read volume" in errors and "p02_0000.nii.gz" in errors
    assert "truncated or corrupt" in errors
    assert "case 'p03': cannot read volume" in errors and "labelsTr/p03.nii.gz" in errors


def test_empty_labels_and_mixed_orientations_are_warnings_naming_cases(tmp_path):
    root = make_cases(tmp_path / "d", cases=("p01", "p02", "p03", "p04"))
    save_nifti(root / "labelsTr" / "p02.nii.gz", np.zeros(SHAPE, np.uint8))
    flipped = np.diag([-1.5, 1.5, 3.0, 1.0])  # LAS
    for f in ("imagesTr/p04_0000", "imagesTr/p04_0001", "labelsTr/p04"):
        path = root / f"{f}.nii.gz"
        save_nifti(path, np.asanyarray(nib.load(str(path)).dataobj), flipped)
    report = check_dataset(root, progress=False)
    assert report.ok, report.format()
    warnings = "\n".join(report.warnings)
    assert "1 label volume(s) hold background only: p02" in warnings
    assert "mixed orientations: 3 cases RAS, others LAS: p04" in warnings
    assert report.summary["orientations"] == {"LAS": 1, "RAS": 3} and report.summary["empty_labels"] == 1
    assert "orientation: LAS: 1 cases, RAS: 3 cases" in report.format()


def test_synapse_slices_checked_by_case(tmp_path):
    root = tmp_path / "Synapse" / "train_npz"
    root.mkdir(parents=True)
    for n in (0, 1, 3):  # slice 2 missing
        label = np.zeros((6, 6), np.float32)
        label[1, 1] = 1
        np.savez(root / f"case0002_slice{n:03d}.npz", image=np.zeros((6, 6), np.float32), label=label)
    np.savez(root / "case0007_slice000.npz", image=np.zeros((6, 6), np.float32), label=np.zeros((6, 5)))
    report = check_dataset(root.parent, progress=False)
    errors = "\n".join(report.errors)
    assert "case 'case0002': slices [2] are missing from train_npz/" in errors
    assert "case 'case0007': train_npz/case0007_slice000.npz has image 6x6 but label 6x5" in errors
    assert report.summary["layout"] == "synapse" and report.summary["cases"] == 2


def test_cli_data_check_on_volumes_json_and_exit_codes(tmp_path, capsys):
    root = make_cases(tmp_path / "d")
    out = tmp_path / "report.json"
    assert main(["data", "check", str(root), "--no-progress", "--json", str(out)]) == 0
    assert "layout: nnunet3d (3D volumes)" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["ok"] and saved["summary"]["orientations"] == {"RAS": 3}
    save_nifti(root / "labelsTr" / "p02.nii.gz", np.zeros((3, 3, 3), np.uint8))
    assert main(["data", "check", str(root), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "FAILED: 1 error(s)" in captured.out
    assert "error: case 'p02': label labelsTr/p02.nii.gz has shape 3x3x3" in captured.err


def test_train_refuses_a_volume_dataset_with_errors_naming_the_case(tmp_path, capsys):
    root = make_cases(tmp_path / "d")
    save_nifti(root / "labelsTr" / "p01.nii.gz", np.zeros((3, 3, 3), np.uint8))  # not the image's shape
    run = tmp_path / "run"
    # --pretrained false: the default med_urwkv_t would fetch its official release before the data check
    assert main(["train", "--data", str(root), "--out", str(run), "--pretrained", "false"]) == 2
    err = capsys.readouterr().err
    assert "medurwkv train: error:" in err and "case 'p01'" in err and "training refused" in err
    assert not list(run.glob("*.pt")) and not (root / "splits.json").exists()


def test_shared_hippocampus_check_passes(shared_data_dir):
    root = shared_data_dir / "msd-hippocampus"
    report = check_dataset(root, progress=False)
    assert report.ok and report.warnings == [], report.format()
    s = report.summary
    assert s["layout"] == "msd" and s["cases"] == 260 and s["channel_names"] == ["MRI"]
    assert (
        s["class_names"] == ["background", "Anterior", "Posterior"] and s["classes_source"] == "dataset.json"
    )
    assert s["orientations"] == {"RAS": 260} and s["spacings"] == {"1x1x1": 260}
    assert s["dtypes"] == {"float32": 205, "uint8": 55} and s["empty_labels"] == 0
    assert s["class_case_count"] == {"background": 260, "Anterior": 260, "Posterior": 260}
    assert "orientation: RAS: 260 cases" in report.format()
