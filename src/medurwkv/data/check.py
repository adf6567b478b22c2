"""Dataset validation: ``check_dataset(root) -> CheckReport`` (``medurwkv data check DIR``).

Errors make a dataset unusable for training (``train`` refuses to start on them); warnings are
worth a look but do not block. Every message names the file, says what was expected and found, and how
to fix it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..utils import progress_bar, top_counts
from .index import DatasetIndex, contiguous_classes, discover, stray_label_message
from .io import ImageReadError, image_hash, read_mask
from .volume_check import format_volume_summary, run_volume_checks
from .volumes import VolumeIndex, detect_volume_layout, volume_only_message

__all__ = ["CheckReport", "DatasetCheckError", "VolumeCheckReport", "check_dataset", "check_volumes"]

# A label map with more classes than this, inferred from the masks, is almost certainly a grayscale or
# JPEG mask that still needs thresholding rather than a genuine K-class dataset.
_MAX_INFERRED_CLASSES = 32
_MASK_HINT_SUFFIXES = ("_mask", "_segmentation", "_anno", "_Annotation", "_label", "_gt")


class DatasetCheckError(UserError):
    """Raised by ``CheckReport.raise_for_errors`` when a dataset has errors."""


@dataclass
class CheckReport:
    """Result of ``check_dataset``: ``ok`` is True when there are no errors."""

    root: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    index: DatasetIndex | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, max_items: int = 30) -> str:
        """Human-readable report: summary, then errors and warnings (each list capped at ``max_items``)."""
        s = self.summary
        lines = [f"dataset {self.root}"]
        if s.get("kind") == "volumes":
            lines.extend(format_volume_summary(s))
        elif s:
            lines.append(f"  layout: {s.get('layout')}   pairs: {s.get('pairs')}")
            if s.get("num_classes") is not None:
                lines.append(
                    f"  classes ({s.get('classes_source')}): {s.get('num_classes')} {s.get('class_names')}"
                )
            for key in ("sizes", "channels", "dtypes"):
                if s.get(key):
                    lines.append(f"  {key}: {top_counts(s[key])}")
            if s.get("class_pixel_fraction"):
                parts = [
                    f"{name} {frac * 100:.2f}% px / {s['class_image_count'].get(name, 0)} images"
                    for name, frac in s["class_pixel_fraction"].items()
                ]
                lines.append("  class frequencies: " + "; ".join(parts))
            if "empty_masks" in s:
                lines.append(f"  masks with background only: {s['empty_masks']}")
            sp = s.get("spacing")
            if sp:
                lines.append(
                    f"  pixel spacing: {sp['with_spacing']} of {s.get('pairs')} ids"
                    + (f", {sp['min_mm']:.4g}..{sp['max_mm']:.4g} mm/px" if sp["with_spacing"] else "")
                )
        for title, items in (("ERRORS", self.errors), ("warnings", self.warnings)):
            if not items:
                continue
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  - {m}" for m in items[:max_items])
            if len(items) > max_items:
                lines.append(f"  ... and {len(items) - max_items} more")
        lines.append(
            "OK: no errors" if self.ok else f"FAILED: {len(self.errors)} error(s); fix them before training"
        )
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        """Raise ``DatasetCheckError`` listing the errors when the dataset is not ok."""
        if not self.ok:
            raise DatasetCheckError(
                f"dataset {self.root} failed its check with {len(self.errors)} error(s) "
                f"(run `medurwkv data check {self.root}` for the full report):\n"
                + "\n".join(f"  - {e}" for e in self.errors[:20])
            )

    def to_dict(self) -> dict:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "summary": self.summary,
        }


class VolumeCheckReport(CheckReport):
    """The :class:`CheckReport` of a volume dataset (:func:`check_volumes`). ``volumes`` is its
    :class:`~medurwkv.data.volumes.VolumeIndex` (``None`` when discovery failed), ``layout`` its layout. Its
    ``index`` (the 2D ``DatasetIndex`` that ``train`` reads after a passed check) raises the ``UserError``
    saying that it reads 2D image datasets (training on volumes reads ``.volumes``).
    """

    def __init__(self, root: Path, volumes: VolumeIndex | None = None, layout: str = "volumes") -> None:
        super().__init__(root=root)
        self.volumes = volumes
        self.layout = layout

    def __repr__(self) -> str:  # the dataclass repr would read .index
        return f"VolumeCheckReport(root={self.root!r}, layout={self.layout!r}, ok={self.ok})"

    @property  # type: ignore[override]
    def index(self):
        raise UserError(volume_only_message(self.root, self.layout, "VolumeCheckReport.index"))

    @index.setter
    def index(self, value) -> None:
        if value is not None:
            raise TypeError("a volume check report has no 2D index; use .volumes")


def check_volumes(
    root: str | Path, num_classes: int | None = None, *, progress: bool = True
) -> VolumeCheckReport:
    """Validate a volume dataset (any layout of :mod:`medurwkv.data.volumes`) and summarise it; never raises
    for dataset problems. The checks are listed in :func:`medurwkv.data.volume_check.run_volume_checks` and
    docs/data.md ("Volumes")."""
    report = VolumeCheckReport(Path(root).expanduser())
    run_volume_checks(report, num_classes, progress=progress)
    return report


def _rel(index: DatasetIndex, p: Path) -> str:
    try:
        return str(p.relative_to(index.root))
    except ValueError:
        return str(p)


def _jpeg_hint(mask: Path) -> str:
    return " (JPEG masks are lossy: threshold them)" if mask.suffix.lower() in (".jpg", ".jpeg") else ""


def _discovery_messages(index: DatasetIndex, report: CheckReport) -> None:
    mask_dir, image_dir = ("labelsTr", "imagesTr") if index.layout == "nnunet" else ("masks", "images")
    image_stems = {index.image_path(i).stem for i in index.ids} | {p.stem for p in index.unpaired_images}
    for p in index.unpaired_images:
        case = p.stem[:-5] if index.layout == "nnunet" else p.stem
        report.errors.append(
            f"image {_rel(index, p)} has no mask: expected {mask_dir}/{case}.png (or another supported "
            f"extension) with the same stem; add the mask or move the image out of {image_dir}/"
        )
    for p in index.unpaired_masks:
        hint = ""
        for suffix in _MASK_HINT_SUFFIXES:
            if p.stem.endswith(suffix) and p.stem[: -len(suffix)] in image_stems:
                hint = (
                    f"; mask names must equal the image stem: rename to {p.stem[: -len(suffix)]}{p.suffix} "
                    "(or convert the archive with `medurwkv data prepare`)"
                )
                break
        report.errors.append(
            f"mask {_rel(index, p)} has no image: expected {image_dir}/{p.stem}.<png|jpg|bmp|tif> "
            f"with the same stem{hint or '; add the image or remove the mask'}"
        )
    for key, paths in sorted(index.duplicate_stems.items()):
        report.errors.append(
            f"duplicate stem {key!r}: {', '.join(p.name for p in paths)}; ids must be unique per folder, "
            "delete or rename all but one"
        )
    report.errors.extend(index.problems)
    for p in index.ignored_files[:50]:
        what = "folder" if p.is_dir() else "file with unsupported extension"
        report.warnings.append(
            f"ignored {what} {_rel(index, p)} (only images/masks directly inside are read)"
        )
    if len(index.ignored_files) > 50:
        report.warnings.append(f"... {len(index.ignored_files) - 50} more ignored entries")


def check_dataset(
    root: str | Path,
    num_classes: int | None = None,
    *,
    progress: bool = True,
) -> CheckReport:
    """Validate a dataset folder and summarise it; never raises for dataset problems (see ``.errors``).

    Checks: every image has a mask and vice versa, unique stems, readable files, image and mask sizes
    match, mask values within ``0..num_classes-1`` (``num_classes`` from the argument or dataset.json),
    or, with no declared classes, contiguous label values ``0..K-1`` over the whole dataset (a value
    beyond a gap, e.g. the 7 of {0, 1, 7}, is an error naming each mask that holds it), duplicate image
    content (warning). The summary holds counts, a size histogram, channels, dtypes and class pixel
    frequencies. See docs/data.md ("`medurwkv data check DIR`").

    A folder of 3D volumes (:func:`medurwkv.data.volumes.detect_volume_layout`) is checked by
    :func:`medurwkv.data.volume_check.check_volumes` instead, which returns a ``VolumeCheckReport``
    (``.volumes`` is its ``VolumeIndex``; its ``.index``, the 2D index, raises a ``UserError``).
    """
    root = Path(root).expanduser()
    if detect_volume_layout(root) is not None:  # 3D volumes: their own checks (data/volume_check.py)
        return check_volumes(root, num_classes, progress=progress)
    report = CheckReport(root=root)
    try:
        index = discover(root, num_classes=num_classes)
    except (FileNotFoundError, UserError) as e:
        report.errors.append(str(e))
        return report
    report.index = index
    _discovery_messages(index, report)
    if not index.ids:
        report.errors.append(
            f"no image/mask pairs found in {root}; images and masks are paired by identical file stem"
        )

    sizes: Counter[str] = Counter()
    channels: Counter[int] = Counter()
    dtypes: Counter[str] = Counter()
    pixel_counts = np.zeros(0, dtype=np.int64)  # (K,) pixels per label value over the dataset
    image_counts = np.zeros(0, dtype=np.int64)  # (K,) images containing each label value
    values_per_id: dict[str, np.ndarray] = {}
    hashes: dict[str, list[str]] = defaultdict(list)
    empty = 0
    for sample_id in progress_bar(index.ids, desc="checking", progress=progress, leave=False):
        img_paths = index.image_paths[sample_id]
        try:
            image = index.load_image(sample_id)
        except (UserError, FileNotFoundError) as e:  # ImageReadError, channel files of different sizes
            report.errors.append(str(e))
            image = None
        try:
            mask = read_mask(index.mask_paths[sample_id])  # int64 (H, W); 0/255 masks read as {0, 1}
        except (ImageReadError, FileNotFoundError) as e:
            report.errors.append(str(e))
            mask = None
        if image is not None:
            sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
            channels[1 if image.ndim == 2 else image.shape[2]] += 1
            dtypes[str(image.dtype)] += 1
            hashes[image_hash(image)].append(sample_id)
        if mask is None:
            continue
        if image is not None and mask.shape != image.shape[:2]:
            report.errors.append(
                f"size mismatch for {sample_id!r}: image {_rel(index, img_paths[0])} is "
                f"{image.shape[0]}x{image.shape[1]} (HxW) but mask "
                f"{_rel(index, index.mask_paths[sample_id])} is {mask.shape[0]}x{mask.shape[1]}; masks must "
                "have the image's size (re-export the mask)"
            )
        counts = np.bincount(mask.ravel(), minlength=1)  # (max_label + 1,) pixels per label value
        present = np.flatnonzero(counts)
        values_per_id[sample_id] = present
        if len(counts) > len(pixel_counts):
            pixel_counts = np.pad(pixel_counts, (0, len(counts) - len(pixel_counts)))
            image_counts = np.pad(image_counts, (0, len(counts) - len(image_counts)))
        pixel_counts[: len(counts)] += counts
        image_counts[present] += 1
        empty += int(present.tolist() in ([0], []))

    found = np.flatnonzero(pixel_counts).tolist()  # label values present in any mask, ascending
    if index.classes_known:  # declared in dataset.json or by the num_classes argument
        k, names = index.num_classes, index.class_names
        for sample_id, present in values_per_id.items():
            bad = present[present >= k]
            if bad.size:
                report.errors.append(
                    f"mask {_rel(index, index.mask_paths[sample_id])} has label values {bad[:10].tolist()}, "
                    f"expected 0..{k - 1} ({k} classes {names}); fix the mask or the classes in dataset.json"
                    + _jpeg_hint(index.mask_paths[sample_id])
                )
    else:  # undeclared: the values must be contiguous 0..K-1 (docs/data.md, "Classes")
        k, stray = contiguous_classes(found)
        if k > _MAX_INFERRED_CLASSES:  # stray values beyond a gap are named per file below instead
            report.errors.append(
                f"masks contain label values up to {k - 1}, which would mean {k} classes; "
                "these look like grayscale intensities (anti-aliased, resized or JPEG masks), not labels: "
                "threshold them to 0/255 or class indices and save as PNG, or declare the classes in "
                'dataset.json ({"labels": {"background": 0, ...}})'
            )
        for sample_id, present in values_per_id.items():
            bad = [v for v in present.tolist() if v in stray]
            if bad:
                rel = _rel(index, index.mask_paths[sample_id])
                report.errors.append(
                    stray_label_message(rel, bad, k, found) + _jpeg_hint(index.mask_paths[sample_id])
                )
        index.set_inferred_classes(k - 1)
        names = index.class_names
    if len(pixel_counts) < k:  # classes that never occur still get a (zero) entry
        pixel_counts = np.pad(pixel_counts, (0, k - len(pixel_counts)))
        image_counts = np.pad(image_counts, (0, k - len(image_counts)))

    for c in range(1, k):
        if values_per_id and image_counts[c] == 0:
            report.warnings.append(f"class {c} ({names[c]!r}) never appears in any mask")
    if values_per_id and image_counts[1:].sum() == 0:
        report.warnings.append("every mask is background only: nothing to learn")
    for group in hashes.values():
        if len(group) > 1:
            report.warnings.append(
                f"identical image content: {', '.join(group)}; duplicates can leak between train and test, "
                "remove them or put them in one split group"
            )
    if len(channels) > 1:
        report.warnings.append(
            f"images have mixed channel counts {dict(channels)}; they are converted to the model's "
            "in_channels (gray<->RGB) when loaded"
        )
    if index.layout == "nnunet" and index.channel_names and channels:
        expected = len(index.channel_names)
        if set(channels) != {expected}:
            report.warnings.append(
                f"dataset.json lists {expected} channel_names but images have {sorted(channels)} channels"
            )
    with_sp = [v for v in index.spacing.values() if v is not None]
    if with_sp and len(with_sp) < len(index.ids):
        missing = [i for i, v in index.spacing.items() if v is None]
        report.warnings.append(
            f"pixel spacing missing for {len(missing)} of {len(index.ids)} ids (e.g. {missing[:3]}); "
            "add them to spacing.csv (id,spacing_mm)"
        )

    total = pixel_counts.sum()
    report.summary = {
        "root": str(root),
        "layout": index.layout,
        "pairs": len(index.ids),
        "num_classes": k,
        "class_names": names,
        "classes_source": index.classes_source,
        "sizes": dict(sizes),
        "channels": {str(c): n for c, n in sorted(channels.items())},
        "dtypes": dict(dtypes),
        # label values beyond the classes (errors above) are listed as value_<v>
        "class_pixel_fraction": {
            names[c] if c < k else f"value_{c}": float(pixel_counts[c] / total) if total else 0.0
            for c in range(len(pixel_counts))
            if c < k or pixel_counts[c]
        },
        "class_image_count": {
            names[c] if c < k else f"value_{c}": int(image_counts[c])
            for c in range(len(image_counts))
            if c < k or image_counts[c]
        },
        "empty_masks": empty,
        "spacing": {
            "with_spacing": len(with_sp),
            "min_mm": float(min(with_sp)) if with_sp else None,
            "max_mm": float(max(with_sp)) if with_sp else None,
        },
    }
    return report
