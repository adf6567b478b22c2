"""``data check`` for volume datasets: the checks behind :func:`medurwkv.data.check.check_volumes` (which
:func:`medurwkv.data.check.check_dataset` calls when the folder holds volumes).

Every case is read in full (a truncated ``.nii.gz`` only shows when its data are decompressed). Errors name the
case and the file; see docs/data.md ("Volumes") for the list.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import UserError
from ..utils import progress_bar, top_counts
from .index import contiguous_classes, default_class_names
from .volumes import (
    Volume,
    VolumeIndex,
    VolumeReadError,
    _read_case_arrays,
    as_label_array,
    discover_volumes,
    read_volume,
)

__all__ = ["GEOMETRY_TOL_MM", "format_volume_summary", "run_volume_checks"]

# Largest difference (mm, per entry of the affine and per spacing component) still counted as the same grid:
# files written by different tools round the same geometry differently (float32 headers, qform vs sform).
GEOMETRY_TOL_MM = 1e-3
_MAX_INFERRED_CLASSES = 32  # as for 2D masks: more undeclared classes mean intensities, not labels
_NAMED = 20  # cases named in one summary message


class _Report(Protocol):
    """What the checks fill in: ``check.VolumeCheckReport`` (kept there so that check.py alone imports this)."""

    root: Path
    errors: list[str]
    warnings: list[str]
    summary: dict
    volumes: VolumeIndex | None
    layout: str


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(str(int(v)) for v in s)


def _vec(v: np.ndarray | tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"


def _names(cases: list[str]) -> str:
    more = f" ... and {len(cases) - _NAMED} more" if len(cases) > _NAMED else ""
    return ", ".join(cases[:_NAMED]) + more


def _geometry_errors(case: str, what: str, a: Volume, ref: Volume, index: VolumeIndex) -> list[str]:
    """Disagreements of ``a`` (a channel or the label) with the reference channel ``ref``."""
    name, ref_name = index.rel(a.path), index.rel(ref.path)
    if a.spatial_shape != ref.spatial_shape:
        return [
            f"case {case!r}: {what} {name} has shape {_shape(a.spatial_shape)} but {ref_name} has "
            f"{_shape(ref.spatial_shape)} (X x Y x Z); every file of a case must be on one voxel grid "
            "(resample or re-export it)"
        ]
    errors = []
    d_sp = float(np.max(np.abs(np.subtract(a.spacing, ref.spacing))))
    if d_sp > GEOMETRY_TOL_MM:
        errors.append(
            f"case {case!r}: {what} {name} has spacing {_vec(a.spacing)} mm but {ref_name} "
            f"{_vec(ref.spacing)} mm; fix the header of the wrong file"
        )
    d_aff = float(np.max(np.abs(a.affine - ref.affine)))
    if d_aff > GEOMETRY_TOL_MM and d_sp <= GEOMETRY_TOL_MM:
        errors.append(
            f"case {case!r}: {what} {name} has another affine than {ref_name} (differs by up to {d_aff:.4g} "
            f"mm, tolerance {GEOMETRY_TOL_MM}): origin {_vec(a.affine[:3, 3])} vs {_vec(ref.affine[:3, 3])}, "
            f"orientation {a.orientation} vs {ref.orientation}; both must map voxels to the same positions "
            "(copy the image's header into the label, or re-export it)"
        )
    return errors


class _Tally:
    """What the per-case checks accumulate for the summary."""

    def __init__(self) -> None:
        self.shapes: Counter[str] = Counter()
        self.spacings: Counter[str] = Counter()
        self.orientations: dict[str, list[str]] = {}
        self.dtypes: Counter[str] = Counter()
        self.label_dtypes: Counter[str] = Counter()
        self.voxels = np.zeros(0, dtype=np.int64)  # (K,) voxels per label value
        self.cases = np.zeros(0, dtype=np.int64)  # (K,) cases holding each label value
        self.values: dict[str, list[int]] = {}
        self.empty: list[str] = []
        self.spacing_values: list[tuple[float, float, float]] = []

    def add_labels(self, case: str, labels: np.ndarray) -> None:
        counts = np.bincount(labels.ravel(), minlength=1)  # (max + 1,)
        if len(counts) > len(self.voxels):
            self.voxels = np.pad(self.voxels, (0, len(counts) - len(self.voxels)))
            self.cases = np.pad(self.cases, (0, len(counts) - len(self.cases)))
        present = np.flatnonzero(counts)
        self.voxels[: len(counts)] += counts
        self.cases[present] += 1
        self.values[case] = present.tolist()
        if present.tolist() in ([0], []):
            self.empty.append(case)


def _check_nifti_case(index: VolumeIndex, case: str, report: _Report, tally: _Tally) -> None:
    declared = index.dataset_json is not None and (
        "channel_names" in index.dataset_json or "modality" in index.dataset_json
    )
    channels: list[Volume] = []
    for p in index.image_paths[case]:
        try:
            vol = read_volume(p)
        except (VolumeReadError, FileNotFoundError) as e:
            report.errors.append(f"case {case!r}: {e}")
            continue
        channels.append(vol)
        tally.dtypes[vol.dtype] += 1
        if index.layout == "nnunet3d" and vol.num_channels != 1:
            report.errors.append(
                f"case {case!r}: {index.rel(p)} has shape {_shape(vol.shape)}, a 4D file; nnU-Net layout "
                "wants one 3D file per channel (_0000, _0001, ...): split it"
            )
        elif index.layout == "msd" and declared and vol.num_channels != index.num_channels:
            report.errors.append(
                f"case {case!r}: {index.rel(p)} has {vol.num_channels} channel(s) (shape {_shape(vol.shape)}, "
                f"channels on the 4th axis) but dataset.json modality lists {index.num_channels} "
                f"{index.channel_names}; add the missing modality or fix dataset.json"
            )
    label_path = index.label_paths[case]
    label: Volume | None = None
    try:
        label = read_volume(label_path)  # type: ignore[arg-type]
        tally.label_dtypes[label.dtype] += 1
        if label.num_channels != 1:
            report.errors.append(
                f"case {case!r}: label {index.rel(label.path)} has shape {_shape(label.shape)}, expected one "
                "3D label map (X, Y, Z)"
            )
        else:
            tally.add_labels(case, as_label_array(label.array.reshape(label.spatial_shape), label.path))
    except (UserError, FileNotFoundError) as e:
        report.errors.append(f"case {case!r}: {e}")
    if not channels:
        return
    ref = channels[0]
    for vol in channels[1:]:
        report.errors.extend(_geometry_errors(case, "channel", vol, ref, index))
    if label is not None:
        report.errors.extend(_geometry_errors(case, "label", label, ref, index))
    tally.shapes[_shape(ref.spatial_shape)] += 1
    tally.spacings[_shape_mm(ref.spacing)] += 1
    tally.spacing_values.append(ref.spacing)
    tally.orientations.setdefault(ref.orientation, []).append(case)


def _shape_mm(spacing: tuple[float, float, float]) -> str:
    return "x".join(f"{s:.4g}" for s in spacing)


def _check_synapse_case(index: VolumeIndex, case: str, report: _Report, tally: _Tally) -> None:
    try:  # the reader checks keys, image vs label shape and one (H, W) across the slices
        channels, label_vol, labels = _read_case_arrays(index, case)
    except (UserError, FileNotFoundError) as e:
        report.errors.append(f"case {case!r}: {e}")
        return
    image = channels[0]
    tally.dtypes[image.dtype] += 1
    if label_vol is not None:
        tally.label_dtypes[label_vol.dtype if index.case_format[case] == "h5" else str(labels.dtype)] += 1
    if labels is not None:
        tally.add_labels(case, labels)
    tally.shapes[_shape(image.spatial_shape)] += 1


def _discovery_messages(index: VolumeIndex, report: _Report) -> None:
    label_dir_hint = "_0000" if index.layout == "nnunet3d" else ""
    for case, p in index.unpaired_images.items():
        report.errors.append(
            f"case {case!r}: image {index.rel(p)} has no label: expected labelsTr/{case}{index.file_ending}; add "
            "it, or move the image to imagesTs/ (unlabelled cases)"
        )
    for case, p in index.unpaired_labels.items():
        report.errors.append(
            f"case {case!r}: label {index.rel(p)} has no image: expected imagesTr/{case}{label_dir_hint}"
            f"{index.file_ending}; add the image or remove the label"
        )
    for case, names in index.missing_channels.items():
        report.errors.append(
            f"case {case!r}: channel file(s) {', '.join(names)} missing: dataset.json channel_names lists "
            f"{index.num_channels} channels {index.channel_names}; add the file(s) or fix channel_names"
        )
    report.errors.extend(index.problems)
    for p in index.ignored_files[:50]:
        report.warnings.append(f"ignored {index.rel(p)} (not a volume file of this layout)")
    if len(index.ignored_files) > 50:
        report.warnings.append(f"... {len(index.ignored_files) - 50} more ignored entries")


def run_volume_checks(report: _Report, num_classes: int | None = None, *, progress: bool = True) -> None:
    """Validate the volume dataset at ``report.root`` and summarise it into ``report`` (its ``errors``,
    ``warnings``, ``summary``, ``volumes`` and ``layout``); never raises for dataset problems.
    Called by :func:`medurwkv.data.check.check_volumes`.

    Errors (each naming the case and file): image without label and label without image, missing channel
    files, channel counts that contradict dataset.json, truncated or unreadable files, shape / spacing /
    affine disagreements (tolerance :data:`GEOMETRY_TOL_MM`) between the channels of a case and between
    image and label, non-integer or negative labels, label values outside dataset.json's ``labels``.
    Warnings: label maps holding background only (the cases named), mixed orientations (the minority cases
    named), classes that never occur, ignored files. The summary holds the case count, classes, channels,
    shapes, spacings, the orientation counts, dtypes and per-class voxel fractions.
    """
    root = report.root
    try:
        index = discover_volumes(root, num_classes=num_classes)
    except (FileNotFoundError, UserError) as e:
        report.errors.append(str(e))
        return
    report.volumes, report.layout = index, index.layout
    _discovery_messages(index, report)
    if not index.ids:
        report.errors.append(f"no labelled cases found in {root} ({index.layout} layout)")
    tally = _Tally()
    for case in progress_bar(index.ids, desc="checking volumes", progress=progress, leave=False):
        if index.layout == "synapse":
            _check_synapse_case(index, case, report, tally)
        else:
            _check_nifti_case(index, case, report, tally)

    found = np.flatnonzero(tally.voxels).tolist()
    if index.class_names is not None:
        names, k = index.class_names, len(index.class_names)
        for case, values in tally.values.items():
            bad = [v for v in values if v >= k]
            if bad:
                report.errors.append(
                    f"case {case!r}: label {_label_name(index, case)} holds values {bad[:10]} outside the "
                    f"{k} classes of {index.classes_source} (0..{k - 1}, {names}); fix the label map or "
                    "declare the classes in dataset.json"
                )
    else:
        k, stray = contiguous_classes(found)
        if k > _MAX_INFERRED_CLASSES:
            report.errors.append(
                f"label volumes hold values up to {k - 1}, which would be {k} classes: these look like "
                "intensities, not labels; check labelsTr/ or declare the classes in dataset.json"
            )
        for case, values in tally.values.items():
            bad = [v for v in values if v in stray]
            if bad:
                report.errors.append(
                    f"case {case!r}: label {_label_name(index, case)} holds values {bad[:10]} beyond the "
                    f"contiguous 0..{k - 1} of the dataset (values found {found}); without dataset.json labels "
                    "must be 0..K-1: fix the label or declare the classes in dataset.json"
                )
        names = default_class_names(k)
        index.class_names, index.classes_source = names, "inferred"
    voxels = np.pad(tally.voxels, (0, max(0, k - len(tally.voxels))))
    cases = np.pad(tally.cases, (0, max(0, k - len(tally.cases))))

    if tally.empty:
        report.warnings.append(
            f"{len(tally.empty)} label volume(s) hold background only: {_names(tally.empty)}; check that their "
            "segmentation was exported (such a case teaches no structure)"
        )
    for c in range(1, k):
        if tally.values and cases[c] == 0:
            report.warnings.append(f"class {c} ({names[c]!r}) never appears in any label volume")
    if len(tally.orientations) > 1:
        major = max(tally.orientations, key=lambda o: len(tally.orientations[o]))
        others = "; ".join(f"{o}: {_names(cs)}" for o, cs in sorted(tally.orientations.items()) if o != major)
        report.warnings.append(
            f"mixed orientations: {len(tally.orientations[major])} cases {major}, others {others}; volumes "
            "are read in their stored voxel order, so slices of these cases are cut along other body axes: "
            "reorient them to one orientation (e.g. nibabel.as_closest_canonical)"
        )

    total = int(voxels.sum())
    sp = np.array(tally.spacing_values) if tally.spacing_values else None  # (cases, 3)
    report.summary = {
        "kind": "volumes",
        "root": str(root),
        "layout": index.layout,
        "cases": len(index.ids),
        "pairs": len(index.ids),
        "num_classes": k,
        "class_names": names,
        "classes_source": index.classes_source,
        "channel_names": index.channel_names,
        "file_ending": index.file_ending,
        "shapes": dict(tally.shapes),
        "spacings": dict(tally.spacings),
        "spacing_range_mm": (
            {"min": sp.min(0).tolist(), "max": sp.max(0).tolist()} if sp is not None else None
        ),
        "orientations": {o: len(cs) for o, cs in sorted(tally.orientations.items())},
        "dtypes": dict(tally.dtypes),
        "label_dtypes": dict(tally.label_dtypes),
        "class_voxel_fraction": {
            names[c] if c < k else f"value_{c}": float(voxels[c] / total) if total else 0.0
            for c in range(len(voxels))
            if c < k or voxels[c]
        },
        "class_case_count": {
            names[c] if c < k else f"value_{c}": int(cases[c]) for c in range(len(cases)) if c < k or cases[c]
        },
        "empty_labels": len(tally.empty),
    }


def _label_name(index: VolumeIndex, case: str) -> str:
    p = index.label_paths.get(case)
    return index.rel(p) if p is not None else index.rel(index.image_paths[case][0])


def format_volume_summary(s: dict) -> list[str]:
    """The summary lines of a volume report (used by ``CheckReport.format``)."""
    lines = [f"  layout: {s.get('layout')} (3D volumes)   cases: {s.get('cases')}"]
    lines.append(f"  channels: {s.get('channel_names')}   file ending: {s.get('file_ending')}")
    if s.get("num_classes") is not None:
        lines.append(f"  classes ({s.get('classes_source')}): {s.get('num_classes')} {s.get('class_names')}")
    for key, label in (("shapes", "shapes (X x Y x Z)"), ("spacings", "spacing (mm)"), ("dtypes", "dtypes")):
        if s.get(key):
            lines.append(f"  {label}: {top_counts(s[key])}")
    if s.get("orientations"):
        lines.append("  orientation: " + ", ".join(f"{o}: {n} cases" for o, n in s["orientations"].items()))
    elif s.get("layout") == "synapse":
        lines.append("  orientation: not stored (Synapse npz/h5 carry no geometry)")
    if s.get("class_voxel_fraction"):
        parts = [
            f"{name} {frac * 100:.2f}% voxels / {s['class_case_count'].get(name, 0)} cases"
            for name, frac in s["class_voxel_fraction"].items()
        ]
        lines.append("  class frequencies: " + "; ".join(parts))
    lines.append(f"  labels with background only: {s.get('empty_labels')}")
    return lines
