"""Volume recipes: official 3D dataset layouts -> the nnU-Net v2 raw layout (``medurwkv data prepare``).

Every recipe writes, under ``dst``::

    imagesTr/<case>_0000.nii.gz [<case>_0001.nii.gz ...]   one 3D file per channel
    labelsTr/<case>.nii.gz                                  integer label map, same grid as the image
    imagesTs/<case>_0000.nii.gz ...                         only when the source has unlabelled test images

and returns the metadata that :func:`medurwkv.data.prepare.prepare` writes to ``dataset.json``
(``channel_names``, ``labels`` name -> int, ``file_ending``, plus ``numTraining`` and ``subsets`` added there).

Recipes (see docs/data.md, "Volume recipes"):

* ``msd``: any Medical Segmentation Decathlon task in its original layout (``TaskXX_Name/imagesTr``,
  ``labelsTr``, ``imagesTs``, ``dataset.json`` with ``modality`` and ``labels`` value -> name). 3D files are
  copied byte for byte; 4D multi-modal files are split along their last axis into one file per channel.
* ``acdc``: the ACDC challenge folders (``training|testing/patientNNN/patientNNN_frameNN[_gt].nii.gz`` and
  ``Info.cfg``); one case per labelled frame, ``patientNNN_frameNN``, grouped by patient.
* ``synapse``: TransUNet's preprocessed Synapse (``train_npz/caseNNNN_sliceNNN.npz`` 2D slices,
  ``test_vol_h5/caseNNNN.npy.h5`` volumes); volumes get an identity affine (the files carry no spacing).

This module depends only on the layers below ``data``, on :mod:`medurwkv.data.index` (the one label-schema
parser) and on :mod:`medurwkv.data.volumes` (the one reader and writer of NIfTI and Synapse files);
:mod:`medurwkv.data.prepare` imports it and registers its recipes, so the import graph has no circle.
Files are written atomically (:func:`medurwkv.utils.atomic_write`, :func:`medurwkv.data.volumes.write_volume`).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..utils import atomic_write, progress_bar
from .index import _load_json, parse_class_info
from .volumes import Volume, as_label_array, read_synapse_pair, read_synapse_slices, read_volume, write_volume

__all__ = [
    "ACDC_LABELS",
    "FILE_ENDING",
    "NNUNET_SUBDIRS",
    "SYNAPSE_LABELS",
    "TRANSUNET_TEST_CASES",
    "VOLUME_RECIPES",
    "VolumeConversion",
    "convert_acdc",
    "convert_msd",
    "convert_synapse",
]

FILE_ENDING = ".nii.gz"
# folders of the nnU-Net v2 raw layout a volume recipe writes (``prepare`` creates / replaces them)
NNUNET_SUBDIRS = ("imagesTr", "labelsTr", "imagesTs")
# ACDC ground truth values (the challenge's own numbering)
ACDC_LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
# TransUNet's Synapse label values (its preprocessing remaps the 13 BTCV organs to these 8)
SYNAPSE_LABELS = {
    "background": 0,
    "aorta": 1,
    "gallbladder": 2,
    "left kidney": 3,
    "right kidney": 4,
    "liver": 5,
    "pancreas": 6,
    "spleen": 7,
    "stomach": 8,
}
# the 12 volumes TransUNet tests on (its lists_Synapse/test_vol.txt); the other 18 are its training cases
TRANSUNET_TEST_CASES = (
    "case0001", "case0002", "case0003", "case0004", "case0008", "case0022",
    "case0025", "case0029", "case0032", "case0035", "case0036", "case0038",
)  # fmt: skip
SYNAPSE_GEOMETRY = (
    "TransUNet's npz/h5 files carry no voxel spacing or orientation: every volume is written with an identity "
    "affine (1 mm isotropic voxels, origin 0); volume[:, :, k] is slice k exactly as stored (H, W)"
)


@dataclass
class VolumeConversion:
    """What a volume recipe wrote: ``count`` labelled cases, official subsets, notes, ``dataset.json`` fields."""

    meta: dict
    count: int
    subsets: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- reading, writing


def _copy(src: Path, dst: Path) -> None:
    def write(f) -> None:
        with open(src, "rb") as fin:
            shutil.copyfileobj(fin, f)

    atomic_write(dst, write)


def _read(path: Path, *, data: bool = True) -> Volume:
    """A source NIfTI file (header always, voxels when ``data``): 3D, or 4D with the channels last."""
    vol = read_volume(path, data=data)
    stored = vol.header.get_data_shape()
    if len(stored) not in (3, 4):
        raise UserError(f"{path} has shape {stored}; expected a 3D volume (or 4D with channels last)")
    return vol


def _check_labels(values: np.ndarray, path: Path, labels: dict[str, int]) -> None:
    """Label map values must be integers among the declared ``labels``; the error names ``path``."""
    found = np.unique(as_label_array(values, path))
    stray = sorted(int(v) for v in found if int(v) not in labels.values())
    if stray:
        raise UserError(
            f"label map {path} holds values {stray[:10]} outside the declared labels {labels}; "
            "fix the label file or the dataset.json labels"
        )


def _label_volume(path: Path, image_shape: tuple[int, ...], labels: dict[str, int]) -> Volume:
    """Read and check a label file (3D, the image's spatial shape, declared values)."""
    lab = _read(path)
    if lab.shape != tuple(image_shape[:3]):
        raise UserError(
            f"label map {path} has shape {lab.shape} but its image is {tuple(image_shape)}; "
            "expected a 3D label map on the image's grid"
        )
    _check_labels(lab.array, path, labels)  # type: ignore[arg-type]
    return lab


def _copy_volume(src: Path, vol: Volume, out: Path) -> None:
    """``src`` as ``out`` (``.nii.gz``): a .nii.gz byte for byte, anything else written on its grid."""
    if src.name.endswith(FILE_ENDING):
        _copy(src, out)
    else:
        write_volume(out, vol.array if vol.array is not None else read_volume(src).array, vol)


def _write_channels(src: Path, vol: Volume, out_dir: Path, case: str, num_channels: int) -> None:
    """``out_dir/<case>_0000.nii.gz`` ...: a 3D volume is copied as is, a 4D one split by its last axis."""
    if len(vol.shape) == 3:
        if num_channels != 1:
            raise UserError(
                f"{src} is a 3D volume but dataset.json declares {num_channels} modalities; expected a 4D file "
                "with the channels on the last axis"
            )
        _copy_volume(src, vol, out_dir / f"{case}_0000{FILE_ENDING}")
        return
    if vol.shape[3] != num_channels:
        raise UserError(
            f"{src} has {vol.shape[3]} channels (shape {vol.shape}) but dataset.json declares {num_channels} "
            "modalities; fix the file or the dataset.json modality entry"
        )
    data = read_volume(src).array  # (X, Y, Z, C); stored dtype unless the header scales the values
    for c in range(num_channels):
        write_volume(out_dir / f"{case}_{c:04d}{FILE_ENDING}", np.ascontiguousarray(data[..., c]), vol)


def _nii_stem(name: str) -> str | None:
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else None


def _unique(found: dict[str, Path], key: str, path: Path) -> None:
    if key in found and found[key] != path:
        raise UserError(
            f"ambiguous source: {found[key]} and {path} are both case {key!r}; point SRC at one copy of the dataset"
        )
    found[key] = path


def _refuse(files: dict[str, Path], partners: Mapping[str, object], what: str, hint: str = "") -> None:
    """A UserError naming the first ``files`` (case -> path) whose case has no entry in ``partners``."""
    alone = sorted(c for c in files if c not in partners)
    if alone:
        raise UserError(f"{len(alone)} {what}: {', '.join(str(files[c]) for c in alone[:5])}{hint}")


def _drop_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


# ----------------------------------------------------------------------------------------- MSD


def _declared_labels(meta: dict, source: str) -> dict[str, int]:
    """dataset.json ``labels`` (MSD's value -> name or nnU-Net's name -> value) as ``{name: value}``."""
    info = parse_class_info(meta, source) if "labels" in meta else None
    if info is None:
        raise UserError(f'{source}: expected MSD "labels" like {{"0": "background", "1": "x"}}, got nothing')
    return {name: value for value, name in enumerate(info[0])}


def convert_msd(files: list[Path], dst: Path, progress: bool) -> VolumeConversion:
    """A Medical Segmentation Decathlon task (``TaskXX_Name/``) -> nnU-Net v2 raw in ``dst``."""
    jsons = [p for p in files if p.name == "dataset.json" and (p.parent / "imagesTr").is_dir()]
    if not jsons:
        raise UserError(
            "no MSD task found in the source; expected TaskXX_Name/dataset.json beside imagesTr/ and labelsTr/ "
            "(the extracted TaskXX_Name.tar or the tar itself)"
        )
    if len(jsons) > 1:
        raise UserError(
            f"{len(jsons)} MSD tasks found ({', '.join(str(p.parent) for p in jsons)}); prepare one task at a time"
        )
    root = jsons[0].parent
    meta_in = _load_json(jsons[0])
    labels = _declared_labels(meta_in, str(jsons[0]))
    modality = meta_in.get("modality")
    if not isinstance(modality, dict) or not modality:
        raise UserError(f'{jsons[0]}: expected "modality" like {{"0": "MRI"}}, got {modality!r}')
    channel_names = {str(int(k)): str(v) for k, v in sorted(modality.items(), key=lambda kv: int(kv[0]))}
    if list(channel_names) != [str(i) for i in range(len(channel_names))]:
        raise UserError(
            f'{jsons[0]}: "modality" keys must be "0".."{len(channel_names) - 1}", got {list(modality)}'
        )

    groups: dict[str, dict[str, Path]] = {"imagesTr": {}, "labelsTr": {}, "imagesTs": {}}
    ignored: list[Path] = []
    for p in files:
        if p.parent.parent != root or p.parent.name not in groups:
            continue
        stem = _nii_stem(p.name)
        if stem is None:
            ignored.append(p)
            continue
        _unique(groups[p.parent.name], stem, p)
    images, label_files, tests = groups["imagesTr"], groups["labelsTr"], groups["imagesTs"]
    if not images:
        raise UserError(f"no training images (*.nii.gz) in {root / 'imagesTr'}")
    incomplete = "; the archive is incomplete"
    _refuse(images, label_files, f"MSD training images have no label in {root / 'labelsTr'}", incomplete)
    _refuse(label_files, images, f"MSD labels have no image in {root / 'imagesTr'}", incomplete)
    k = len(channel_names)
    for case in progress_bar(sorted(images), desc=f"msd {root.name}", progress=progress, leave=False):
        img = _read(images[case], data=False)
        lab = _label_volume(label_files[case], img.shape, labels)
        _write_channels(images[case], img, dst / "imagesTr", case, k)
        _copy_volume(label_files[case], lab, dst / "labelsTr" / f"{case}{FILE_ENDING}")
    for case in progress_bar(sorted(tests), desc=f"msd {root.name} imagesTs", progress=progress, leave=False):
        _write_channels(tests[case], _read(tests[case], data=False), dst / "imagesTs", case, k)
    _drop_empty(dst / "imagesTs")
    notes = []
    if ignored:
        notes.append(f"ignored {len(ignored)} files that are not .nii.gz (e.g. {ignored[0]})")
    if tests:
        notes.append(
            f"{len(tests)} unlabelled test images written to imagesTs/ (MSD publishes no test labels)"
        )
    meta = {
        "name": str(meta_in.get("name", root.name)),
        "description": str(meta_in.get("description", f"Medical Segmentation Decathlon {root.name}")),
        "channel_names": channel_names,
        "labels": labels,
        "file_ending": FILE_ENDING,
        "test_images": sorted(tests),
        "task": root.name,
        "reference": str(meta_in.get("reference", "Antonelli et al., Nature Communications 13:4128, 2022")),
        "licence": str(meta_in.get("licence", "CC BY-SA 4.0")),
        "release": str(meta_in.get("release", meta_in.get("relase", ""))),  # MSD spells it "relase"
        "recipe": "msd",
    }
    return VolumeConversion(meta, len(images), notes=notes)


# ----------------------------------------------------------------------------------------- ACDC

_ACDC_FRAME = re.compile(r"(patient\d{3})_frame(\d{2})(_gt)?\.nii\.gz")


def _read_info_cfg(path: Path) -> dict:
    """ACDC ``Info.cfg`` (``ED: 1``, ``ES: 12``, ``Group: DCM``, ``Height``, ``NbFrame``, ``Weight``)."""
    info: dict = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise UserError(f"{path}:{lineno}: expected 'Key: value', got {line!r}")
        value = value.strip()
        try:
            num = float(value)
            info[key.strip()] = (
                int(num) if num.is_integer() and key.strip() in ("ED", "ES", "NbFrame") else num
            )
        except ValueError:
            info[key.strip()] = value
    return info


def convert_acdc(files: list[Path], dst: Path, progress: bool) -> VolumeConversion:
    """ACDC ``training/`` and ``testing/`` patient folders -> one nnU-Net case per labelled frame in ``dst``."""
    frames: dict[str, Path] = {}
    gts: dict[str, Path] = {}
    infos: dict[str, Path] = {}
    subset_of: dict[str, str] = {}
    for p in files:
        if p.name == "Info.cfg" and re.fullmatch(r"patient\d{3}", p.parent.name):
            _unique(infos, p.parent.name, p)
            continue
        m = _ACDC_FRAME.fullmatch(p.name)
        if not m or p.parent.name != m.group(1):
            continue  # patientNNN_4d.nii.gz and anything else
        patient, case = m.group(1), f"{m.group(1)}_frame{m.group(2)}"
        _unique(gts if m.group(3) else frames, case, p)
        folder = p.parent.parent.name.lower()
        subset = {"training": "train", "testing": "test"}.get(folder, folder)
        if subset_of.setdefault(patient, subset) != subset:
            raise UserError(f"ACDC {patient} occurs in two folders ({subset_of[patient]}, {subset}): {p}")
    if not gts:
        raise UserError(
            "no ACDC ground truth (training/patientNNN/patientNNN_frameNN_gt.nii.gz) found in the source; "
            "expected the official ACDC database folders"
        )
    _refuse(gts, frames, "ACDC ground-truth files have no frame image")
    unlabelled = sorted(c for c in frames if c not in gts)
    training = {c: p for c, p in frames.items() if subset_of[c.split("_")[0]] != "test"}
    _refuse(training, gts, "ACDC frames have no ground truth (expected <frame>_gt.nii.gz beside them)")
    notes: list[str] = []
    subsets: dict[str, list[str]] = {}
    patients: dict[str, dict] = {}
    for case in progress_bar(sorted(gts), desc="acdc", progress=progress, leave=False):
        patient = case.split("_")[0]
        img = _read(frames[case], data=False)
        lab = _label_volume(gts[case], img.shape, ACDC_LABELS)
        _write_channels(frames[case], img, dst / "imagesTr", case, 1)
        _copy_volume(gts[case], lab, dst / "labelsTr" / f"{case}{FILE_ENDING}")
        subsets.setdefault(subset_of[patient], []).append(case)
        patients.setdefault(patient, {"cases": []})["cases"].append(case)
    for case in unlabelled:  # testing frames without ground truth (older ACDC releases)
        _write_channels(frames[case], _read(frames[case], data=False), dst / "imagesTs", case, 1)
    _drop_empty(dst / "imagesTs")
    if unlabelled:
        notes.append(f"{len(unlabelled)} test frames without ground truth written to imagesTs/")
    missing_info = []
    for patient, entry in patients.items():
        if patient not in infos:
            missing_info.append(patient)
            continue
        info = _read_info_cfg(infos[patient])
        entry["info"] = info
        phase = {}
        for case in entry["cases"]:
            frame = int(case.rsplit("frame", 1)[1])
            phase[case] = "ED" if frame == info.get("ED") else "ES" if frame == info.get("ES") else None
        entry["phase"] = phase
        other = [c for c, ph in phase.items() if ph is None]
        if other:
            notes.append(f"{patient}: frames {other} are neither ED nor ES in {infos[patient]}")
    if missing_info:
        notes.append(
            f"no Info.cfg for {len(missing_info)} patients (e.g. {missing_info[0]}): ED/ES not recorded"
        )
    meta = {
        "name": "ACDC",
        "description": "Automated Cardiac Diagnosis Challenge cine MRI, ED and ES frames; RV, myocardium, LV",
        "channel_names": {"0": "cineMRI"},
        "labels": dict(ACDC_LABELS),
        "file_ending": FILE_ENDING,
        "split_group": r"^(patient\d+)_",
        "patients": {p: patients[p] for p in sorted(patients)},
        "test_images": unlabelled,
        "reference": "Bernard et al., IEEE TMI 37(11):2514-2525, 2018",
        "licence": "research use (ACDC terms of use)",
        "recipe": "acdc",
    }
    return VolumeConversion(meta, len(gts), subsets, notes)


# ----------------------------------------------------------------------------------------- Synapse

_SYNAPSE_SLICE = re.compile(r"(case\d{4})_slice(\d+)\.npz")
_SYNAPSE_VOLUME = re.compile(r"(case\d{4})\.npy\.h5")


def _write_synapse_case(dst: Path, case: str, source: Path, image: np.ndarray, label: np.ndarray) -> None:
    """(H, W, Z) arrays read from ``source`` -> checked volumes with the documented identity affine."""
    _check_labels(label, source, SYNAPSE_LABELS)
    image = np.ascontiguousarray(image.astype(np.float32))  # (H, W, Z)
    label = np.ascontiguousarray(label.astype(np.uint8))  # (H, W, Z)
    write_volume(dst / "imagesTr" / f"{case}_0000{FILE_ENDING}", image)
    write_volume(dst / "labelsTr" / f"{case}{FILE_ENDING}", label)


def convert_synapse(files: list[Path], dst: Path, progress: bool) -> VolumeConversion:
    """TransUNet's Synapse (``train_npz/`` slices, ``test_vol_h5/`` volumes) -> nnU-Net v2 raw in ``dst``."""
    slices: dict[str, dict[int, Path]] = {}
    volumes: dict[str, Path] = {}
    for p in files:
        m = _SYNAPSE_SLICE.fullmatch(p.name)
        if m:
            per_case = slices.setdefault(m.group(1), {})
            index = int(m.group(2))
            if index in per_case and per_case[index] != p:
                raise UserError(f"ambiguous source: {per_case[index]} and {p} are the same slice")
            per_case[index] = p
            continue
        m = _SYNAPSE_VOLUME.fullmatch(p.name)
        if m:
            _unique(volumes, m.group(1), p)
    if not slices and not volumes:
        raise UserError(
            "no TransUNet Synapse files found; expected train_npz/caseNNNN_sliceNNN.npz and/or "
            "test_vol_h5/caseNNNN.npy.h5 (TransUNet's preprocessed data)"
        )
    both = sorted(set(slices) & set(volumes))
    if both:
        raise UserError(
            f"Synapse cases {both[:5]} occur both as train_npz slices and as test volumes (e.g. {volumes[both[0]]})"
        )
    for case, per_case in slices.items():
        idx = sorted(per_case)
        gaps = sorted(set(range(idx[0], idx[-1] + 1)) - set(idx))
        if gaps:
            raise UserError(
                f"Synapse case {case} misses slices {gaps[:10]} between {per_case[idx[0]].name} and "
                f"{per_case[idx[-1]].name}; a volume needs every slice (re-extract train_npz)"
            )
    notes: list[str] = []
    for case in progress_bar(sorted(slices), desc="synapse train", progress=progress, leave=False):
        paths = [slices[case][i] for i in sorted(slices[case])]  # ordered by slice index
        _write_synapse_case(dst, case, paths[0].parent / f"{case}_slice*.npz", *read_synapse_slices(paths))
    for case in progress_bar(sorted(volumes), desc="synapse test", progress=progress, leave=False):
        _write_synapse_case(dst, case, volumes[case], *read_synapse_pair(volumes[case]))
    subsets = {k: v for k, v in (("train", sorted(slices)), ("test", sorted(volumes))) if v}
    if volumes and set(volumes) != set(TRANSUNET_TEST_CASES):
        notes.append(
            f"test_vol_h5 holds {len(volumes)} volumes, not TransUNet's 12 test cases "
            f"({', '.join(TRANSUNET_TEST_CASES)}); subsets.test lists the ones found"
        )
    notes.append(
        "no spacing in TransUNet's files: identity affine (1 mm) written, see dataset.json 'geometry'"
    )
    meta = {
        "name": "Synapse",
        "description": "Synapse multi-organ abdominal CT (BTCV), TransUNet's preprocessed form: intensities "
        "clipped to [-125, 275] HU and scaled to [0, 1], 8 organs",
        "channel_names": {"0": "CT"},
        "labels": dict(SYNAPSE_LABELS),
        "file_ending": FILE_ENDING,
        "geometry": SYNAPSE_GEOMETRY,
        "spacing_known": False,
        "reference": "Landman et al., MICCAI 2015 Multi-Atlas Labeling Beyond the Cranial Vault; "
        "Chen et al., TransUNet, arXiv:2102.04306, 2021",
        "licence": "Synapse terms of use (https://www.synapse.org/#!Synapse:syn3193805)",
        "recipe": "synapse",
    }
    return VolumeConversion(meta, len(slices) + len(volumes), subsets, notes)


VOLUME_RECIPES: dict[str, Callable[[list[Path], Path, bool], VolumeConversion]] = {
    "msd": convert_msd,
    "acdc": convert_acdc,
    "synapse": convert_synapse,
}
