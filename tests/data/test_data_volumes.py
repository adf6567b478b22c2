"""Volume discovery, reading and writing (medurwkv.data.volumes) on small synthetic datasets and the shared
msd-hippocampus volumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medurwkv.data import (
    discover,
    discover_dataset,
    discover_volumes,
    is_volume_dataset,
    load_case,
    read_volume,
    write_label_volume,
)
from medurwkv.data.volumes import VolumeReadError, detect_volume_layout
from medurwkv.errors import UserError

AFFINE = np.array([[-0.8, 0, 0, 10.0], [0, 0.8, 0, -20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])  # LAS, mm


def nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def nnunet3d(root: Path, cases=("a", "b"), channels=("T1", "T2"), shape=(6, 5, 4)) -> Path:
    rng = np.random.default_rng(0)
    for case in cases:
        for c in range(len(channels)):
            nifti(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", rng.normal(size=shape).astype(np.float32))
        label = np.zeros(shape, np.uint8)
        label[1:3, 1:3, 1:3] = 1
        label[4, 4, 3] = 2
        nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    meta = {
        "channel_names": {str(i): n for i, n in enumerate(channels)},
        "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def msd(root: Path, cases=("c_001", "c_002"), modalities=("FLAIR", "T1w"), shape=(6, 5, 4)) -> Path:
    rng = np.random.default_rng(1)
    for case in cases:
        image = rng.normal(size=(*shape, len(modalities))).astype(np.float32)  # (X, Y, Z, C) channel last
        nifti(root / "imagesTr" / f"{case}.nii.gz", image if len(modalities) > 1 else image[..., 0])
        label = np.zeros(shape, np.uint8)
        label[2:4, 1:3, 0:2] = 1
        nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    meta = {
        "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": {"0": "background", "1": "tumour"},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet3d_discovery_and_load_case(tmp_path):
    root = nnunet3d(tmp_path / "Dataset001_X")
    assert detect_volume_layout(root) == "nnunet3d" and is_volume_dataset(root)
    index = discover_volumes(root)
    assert index.layout == "nnunet3d" and index.ids == ["a", "b"]
    assert index.channel_names == ["T1", "T2"] and index.file_ending == ".nii.gz"
    assert index.class_names == ["background", "liver", "tumour"] and index.classes_source == "dataset.json"
    assert [p.name for p in index.image_paths["a"]] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert index.label_paths["b"].name == "b.nii.gz"
    image, label, ref = load_case(index, "a")
    assert image.shape == (2, 6, 5, 4) and image.dtype == np.float32
    np.testing.assert_array_equal(image[1], nib.load(str(index.image_paths["a"][1])).get_fdata())
    assert label.dtype == np.int64 and label.shape == (6, 5, 4) and sorted(np.unique(label)) == [0, 1, 2]
    np.testing.assert_allclose(ref.affine, AFFINE)
    assert ref.spacing == pytest.approx((0.8, 0.8, 2.5)) and ref.orientation == "LAS"
    (root / "imagesTr" / "b_0001.nii.gz").unlink()
    index = discover_volumes(root)
    assert index.missing_channels == {"b": ["imagesTr/b_0001.nii.gz"]}
    with pytest.raises(UserError, match=r"case 'b' lacks channel file\(s\) imagesTr/b_0001.nii.gz"):
        load_case(index, "b")


def test_msd_discovery_with_4d_image_and_value_to_name_labels(tmp_path):
    root = msd(tmp_path / "Task01_X")
    index = discover_volumes(root)
    assert index.layout == "msd" and index.ids == ["c_001", "c_002"]
    assert index.channel_names == ["FLAIR", "T1w"]
    assert index.class_names == ["background", "tumour"]  # MSD's {"0": "background", ...} parsed
    vol = read_volume(index.image_paths["c_001"][0])
    assert vol.shape == (6, 5, 4, 2) and vol.num_channels == 2 and vol.spatial_shape == (6, 5, 4)
    image, label, ref = load_case(index, "c_001")
    np.testing.assert_array_equal(image, np.moveaxis(vol.array, -1, 0))  # channel last -> (C, X, Y, Z)
    assert label.shape == (6, 5, 4) and ref.shape == (6, 5, 4)


def test_nifti_without_gz_and_header_only_read(tmp_path):
    p = nifti(tmp_path / "v.nii", np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    vol = read_volume(p, data=False)
    assert vol.array is None and vol.shape == (2, 3, 4) and vol.dtype == "int16"
    assert read_volume(p).array[1, 2, 3] == 23


def test_truncated_nifti_is_a_user_error_naming_the_file(tmp_path):
    p = nifti(tmp_path / "cut.nii.gz", np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(VolumeReadError, match=r"cut\.nii\.gz.*truncated or corrupt"):
        read_volume(p)


def test_write_label_volume_round_trip_keeps_geometry_and_header(tmp_path):
    src = nib.Nifti1Image(np.zeros((7, 6, 5), np.float32), AFFINE)
    src.header.set_qform(AFFINE, code=1)
    src.header.set_sform(AFFINE, code=2)
    src.header.set_xyzt_units("mm", "sec")
    nib.save(src, str(tmp_path / "img.nii.gz"))
    ref = read_volume(tmp_path / "img.nii.gz")
    labels = np.zeros((7, 6, 5), np.int64)
    labels[1:4, 2:5, 0:3] = 2
    out = write_label_volume(tmp_path / "pred" / "img.nii.gz", labels, ref)
    assert sorted(p.name for p in out.parent.iterdir()) == ["img.nii.gz"]  # no temporary file left
    back = nib.load(str(out))
    assert back.shape == (7, 6, 5) and back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels)
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-6)
    h, rh = back.header, ref.header
    assert int(h["qform_code"]) == 1 and int(h["sform_code"]) == 2
    np.testing.assert_allclose(h["pixdim"][1:4], rh["pixdim"][1:4])
    assert h["pixdim"][0] == rh["pixdim"][0] and h.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(h.get_sform(), rh.get_sform(), atol=1e-6)
    np.testing.assert_allclose(h.get_qform(), rh.get_qform(), atol=1e-5)
    # more than 255 classes -> uint16; a wrong shape is refused
    labels[0, 0, 0] = 300
    assert nib.load(str(write_label_volume(tmp_path / "b.nii", labels, ref))).get_data_dtype() == np.uint16
    with pytest.raises(UserError, match=r"shape \(7, 6\).*\(7, 6, 5\)"):
        write_label_volume(tmp_path / "c.nii.gz", labels[..., 0], ref)


def synapse(root: Path) -> Path:
    import h5py

    rng = np.random.default_rng(2)
    (root / "train_npz").mkdir(parents=True)
    for n in range(3):
        label = np.zeros((8, 9), np.float32)
        label[n : n + 3, 2:5] = n + 1
        np.savez(root / "train_npz" / f"case0005_slice{n:03d}.npz", image=rng.random((8, 9)), label=label)
    (root / "test_vol_h5").mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"] = rng.random((4, 8, 9)).astype(np.float32)  # (slices, H, W)
        lab = np.zeros((4, 8, 9), np.float32)
        lab[1, 2:4, 2:4] = 3
        f["label"] = lab
    return root


def test_synapse_npz_slices_and_h5_volumes(tmp_path):
    root = synapse(tmp_path / "Synapse")
    index = discover_volumes(root)
    assert index.layout == "synapse" and index.ids == ["case0001", "case0005"]
    assert index.case_format == {"case0001": "h5", "case0005": "npz"}
    assert [p.name for p in index.image_paths["case0005"]][-1] == "case0005_slice002.npz"
    image, label, ref = load_case(index, "case0005")
    assert image.shape == (1, 8, 9, 3) and label.shape == (8, 9, 3)  # slices stacked on the last axis
    assert label[:, :, 2].max() == 3 and not ref.spacing_known
    image, label, _ = load_case(index, "case0001")
    assert image.shape == (1, 8, 9, 4) and label[:, :, 1].max() == 3  # (slices, H, W) -> (H, W, slices)


def test_synapse_h5_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    root = synapse(tmp_path / "Synapse")
    index = discover_volumes(root)
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'medurwkv\[synapse\]'"):
        load_case(index, "case0001")
    assert load_case(index, "case0005")[0].shape == (1, 8, 9, 3)  # npz slices need no h5py


def test_2d_discover_refuses_volume_folders(tmp_path):
    root = nnunet3d(tmp_path / "d")
    with pytest.raises(UserError, match=r"holds 3D volumes \(layout nnunet3d\).*reads 2D image datasets"):
        discover(root)
    assert discover_dataset(root).ids == discover_volumes(root).ids  # the reader of both kinds
    assert not is_volume_dataset(tmp_path / "missing") and detect_volume_layout(tmp_path) is None


def test_shared_hippocampus_index_and_case(shared_data_dir):
    root = shared_data_dir / "msd-hippocampus"
    index = discover_volumes(root)
    assert index.layout == "msd" and len(index) == 260
    assert index.class_names == ["background", "Anterior", "Posterior"] and index.channel_names == ["MRI"]
    image, label, ref = load_case(index, "hippocampus_001")
    assert image.shape == (1, *ref.shape) and label.shape == ref.shape
    assert set(np.unique(label).tolist()) == {0, 1, 2} and ref.orientation == "RAS"


def test_one_label_parser_reads_the_msd_form_too():
    from medurwkv.data.index import parse_class_info

    msd_form = {"labels": {"1": "anterior", "0": "background", "2": "posterior"}}  # any key order
    nnunet_form = {"labels": {"background": 0, "anterior": 1, "posterior": 2}}
    assert (
        parse_class_info(msd_form)
        == parse_class_info(nnunet_form)
        == (
            ["background", "anterior", "posterior"],
            3,
        )
    )
    with pytest.raises(UserError, match=r'label name "x" is used by values 1 and 2'):
        parse_class_info({"labels": {"0": "background", "1": "x", "2": "x"}}, "t.json")
    with pytest.raises(UserError, match=r"t\.json: \"labels\" maps 'background' to the name '0'"):
        parse_class_info({"labels": {"background": "0"}}, "t.json")
    with pytest.raises(UserError, match=r"label values must be exactly 0\.\.1"):
        parse_class_info({"labels": {"0": "background", "2": "x"}})


def test_write_volume_without_reference_and_with_a_nibabel_image(tmp_path):
    from medurwkv.data.volumes import write_volume

    data = np.arange(60, dtype=np.int16).reshape(5, 4, 3)  # (X, Y, Z)
    a = write_volume(tmp_path / "a.nii.gz", data, affine=AFFINE)
    b = write_volume(tmp_path / "b.nii.gz", data, affine=AFFINE)
    assert a.read_bytes() == b.read_bytes()  # zero gzip timestamp: reproducible bytes
    back = nib.load(str(a))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)
    assert back.get_data_dtype() == np.int16 and back.header.get_xyzt_units()[0] == "mm"
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 1
    np.testing.assert_allclose(back.affine, AFFINE, atol=1e-6)
    np.testing.assert_array_equal(nib.load(str(write_volume(tmp_path / "i.nii", data))).affine, np.eye(4))
    # a nibabel image as reference: its header travels, the data type follows the data
    back.header["descrip"] = b"kept"
    c = nib.load(str(write_volume(tmp_path / "c.nii.gz", data.astype(np.float32), back)))
    assert c.header["descrip"] == b"kept" and c.get_data_dtype() == np.float32
    np.testing.assert_allclose(c.affine, AFFINE, atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        write_volume(tmp_path / "d.nii.gz", data, back, affine=AFFINE)
    with pytest.raises(UserError, match=r"x\.png: expected a \.nii\.gz or \.nii file name"):
        write_volume(tmp_path / "x.png", data)
