"""Dataset discovery: find image/mask pairs, classes and pixel spacing in a dataset folder.

Two layouts are recognised (see docs/data.md):

* ``folder``: ``images/`` and ``masks/`` paired by file stem, optional ``dataset.json``, optional
  ``spacing.csv`` (``id,spacing_mm``) or HC18's ``training_set_pixel_size_and_HC.csv``.
* ``nnunet``: nnU-Net v2 raw 2D layout, ``imagesTr/<id>_0000.png`` (one file per channel ``_0000``,
  ``_0001``, ...), ``labelsTr/<id>.png`` and ``dataset.json`` (``labels``, ``channel_names``).

``discover`` is tolerant: unpaired files, duplicate stems and ignored files are recorded on the index so
that ``check_dataset`` can report them; only an unrecognisable folder raises.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .io import IMAGE_EXTENSIONS, is_image_file, read_image, read_mask

__all__ = [
    "DatasetIndex",
    "contiguous_classes",
    "default_class_names",
    "discover",
    "parse_class_info",
    "read_spacing_csv",
    "stray_label_message",
]

_NNUNET_IMAGE = re.compile(r"^(?P<id>.+)_(?P<ch>\d{4})$")


def default_class_names(num_classes: int) -> list[str]:
    """The one default naming rule, for datasets and models that declare no names: binary ->
    ``["background", "foreground"]``, else ``["background", "class_1", ..., "class_<K-1>"]``."""
    if num_classes < 1:
        raise ValueError(f"expected num_classes >= 1, got {num_classes}")
    if num_classes == 2:
        return ["background", "foreground"]
    return ["background"] + [f"class_{k}" for k in range(1, num_classes)]


def contiguous_classes(values: Iterable[int]) -> tuple[int, list[int]]:
    """Classes of a dataset without declared classes, from the label values found in its masks.

    Undeclared labels must be contiguous, ``0..K-1``: ``K`` is one more than the end of the run 1, 2, ...
    of present values (at least 2, so a dataset with background only is still binary), and every value
    above a gap breaks the rule. Returns ``(K, stray)``: ``{0, 1, 7}`` gives ``(2, [7])``, ``{0, 1, 2}``
    gives ``(3, [])``, ``{0, 2}`` gives ``(2, [2])``. Class 0 may be absent (masks that are all foreground).
    """
    present = {int(v) for v in values}
    top = 0
    while top + 1 in present:
        top += 1
    return max(2, top + 1), sorted(v for v in present if v > top)


def stray_label_message(mask: str, stray: Sequence[int], num_classes: int, found: Sequence[int]) -> str:
    """The error for a mask holding label values that break the contiguous ``0..K-1`` of a dataset without
    declared classes (see :func:`contiguous_classes`); says how to fix it."""
    shown = list(stray[:10]) + (["..."] if len(stray) > 10 else [])
    return (
        f"mask {mask} has label values {shown} that break the contiguous labels of this dataset: without "
        f"a dataset.json the values must be 0..K-1, and the masks hold {_short(found)}, so only "
        f"0..{num_classes - 1} are classes; fix the mask (set those pixels to their class), or declare the "
        'classes in dataset.json ({"labels": {"background": 0, "lesion": 1, ...}} with values 0..K-1)'
    )


def _short(values: Sequence[int], limit: int = 12) -> str:
    values = list(values)
    if len(values) <= limit:
        return "{" + ", ".join(map(str, values)) + "}"
    return "{" + ", ".join(map(str, values[: limit - 2])) + f", ..., {values[-1]}" + "}"


def parse_class_info(meta: dict, source: str = "dataset.json") -> tuple[list[str], int] | None:
    """Class names and count from a dataset.json dict, or None when it declares no classes.

    Canonical schema (shared with nnU-Net v2): ``{"labels": {"background": 0, "head": 1}}`` with integer
    values 0..K-1. Also accepted: the Medical Segmentation Decathlon's value -> name form
    ``{"labels": {"0": "background", "1": "head"}}`` (every value a string), and
    ``{"num_classes": K, "class_names": [...]}`` (names optional). Class ``k`` is ``names[k]`` in every form.
    """
    if "labels" in meta:
        labels = meta["labels"]
        if not isinstance(labels, dict) or not labels:
            raise UserError(
                f'{source}: "labels" must be a non-empty object like {{"background": 0, "head": 1}}, '
                f"got {labels!r}"
            )
        if all(isinstance(v, str) for v in labels.values()):
            labels = _msd_labels(labels, source)
        by_value: dict[int, str] = {}
        for name, value in labels.items():
            if isinstance(value, (list, tuple)) or name == "ignore":
                raise UserError(
                    f'{source}: label "{name}": {value!r} is an nnU-Net region/ignore label, which medurwkv '
                    "does not support; use one integer per class (background 0, classes 1..K-1)"
                )
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserError(f'{source}: label "{name}" must be an integer >= 0, got {value!r}')
            if value in by_value:
                raise UserError(f'{source}: labels "{by_value[value]}" and "{name}" share value {value}')
            by_value[value] = str(name)
        k = len(by_value)
        if sorted(by_value) != list(range(k)):
            raise UserError(
                f"{source}: label values must be exactly 0..{k - 1} (background = 0), got "
                f"{sorted(by_value)}; renumber the classes consecutively"
            )
        return [by_value[v] for v in range(k)], k
    if "num_classes" in meta:
        k = meta["num_classes"]
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UserError(f'{source}: "num_classes" must be an integer >= 1, got {k!r}')
        names = meta.get("class_names")
        if names is None:
            return default_class_names(k), k
        if not isinstance(names, list) or len(names) != k:
            raise UserError(
                f'{source}: "class_names" must be a list of {k} names (num_classes = {k}), got {names!r}'
            )
        return [str(n) for n in names], k
    return None


def _msd_labels(labels: dict, source: str) -> dict[str, int]:
    """MSD's value -> name ``{"0": "background", "1": "x"}`` as nnU-Net's name -> value ``{"background": 0, ...}``."""
    by_name: dict[str, int] = {}
    for key, name in labels.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise UserError(
                f'{source}: "labels" maps {key!r} to the name {name!r}; expected class numbers as keys in the '
                'MSD form ({"0": "background", "1": "x"}) or integer values in the nnU-Net form '
                '({"background": 0, "x": 1})'
            ) from None
        if name in by_name:
            raise UserError(f'{source}: label name "{name}" is used by values {by_name[name]} and {value}')
        by_name[name] = value
    return by_name


def _load_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); fix or delete it") from e
    if not isinstance(meta, dict):
        raise UserError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    return meta


def _strip_ext(name: str) -> str:
    p = Path(name.strip())
    return p.stem if p.suffix.lower() in IMAGE_EXTENSIONS else p.name


def read_spacing_csv(path: str | Path) -> tuple[dict[str, float], dict[str, dict[str, float]]] | None:
    """Read pixel spacing from a CSV; returns ({id: mm_per_pixel}, {id: other numeric columns}) or None.

    Recognised headers: ``id,spacing_mm`` (generic) and HC18's ``filename,pixel size(mm),...``
    (``test_set_pixel_size.csv`` too). Ids may be given with or without image extension. Other CSV files
    (e.g. GlaS ``Grade.csv``) return None.
    """
    p = Path(path)
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            return None
        cols = [h.strip().lower() for h in header]
        if "id" in cols and "spacing_mm" in cols:
            id_col, sp_col = cols.index("id"), cols.index("spacing_mm")
        elif "filename" in cols and "pixel size(mm)" in cols:
            id_col, sp_col = cols.index("filename"), cols.index("pixel size(mm)")
        else:
            return None
        spacing: dict[str, float] = {}
        extra: dict[str, dict[str, float]] = {}
        for lineno, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) <= max(id_col, sp_col):
                raise UserError(f"{p}:{lineno}: expected {len(header)} columns, got {row!r}")
            key = _strip_ext(row[id_col])
            try:
                value = float(row[sp_col])
            except ValueError as e:
                raise UserError(
                    f"{p}:{lineno}: spacing {row[sp_col]!r} is not a number (mm per pixel expected)"
                ) from e
            if not value > 0:
                raise UserError(f"{p}:{lineno}: spacing must be > 0 mm, got {value}")
            spacing[key] = value
            others: dict[str, float] = {}
            for j, name in enumerate(header):
                if j in (id_col, sp_col) or j >= len(row):
                    continue
                try:
                    others[name.strip()] = float(row[j])
                except ValueError:
                    continue
            if others:
                extra[key] = others
    return spacing, extra


@dataclass
class DatasetIndex:
    """Pairs found in a dataset folder (ids sorted), with classes, spacing and discovery problems.

    ``image_paths[id]`` is a tuple: one file, or one file per channel for the nnU-Net layout.
    ``num_classes`` / ``class_names`` come from dataset.json or an explicit ``num_classes``; when neither
    exists they are inferred lazily from the masks on first access (``classes_source == "inferred"``).
    """

    root: Path
    layout: str  # "folder" | "nnunet"
    ids: list[str]
    image_paths: dict[str, tuple[Path, ...]]
    mask_paths: dict[str, Path]
    spacing: dict[str, float | None]
    metadata: dict[str, dict[str, float]] = field(default_factory=dict)
    dataset_json: dict | None = None
    channel_names: list[str] | None = None
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_masks: list[Path] = field(default_factory=list)
    duplicate_stems: dict[str, list[Path]] = field(default_factory=dict)
    ignored_files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    classes_source: str = "inferred"  # "dataset.json" | "argument" | "inferred"
    _class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        """Number of classes including background (inferred from the masks if not declared)."""
        return len(self._classes())

    @property
    def class_names(self) -> list[str]:
        return list(self._classes())

    def _classes(self) -> list[str]:
        if self._class_names is None:
            self._class_names = self._infer_classes()
        return self._class_names

    @property
    def classes_known(self) -> bool:
        """True when classes are declared or already inferred (reading them then costs nothing)."""
        return self._class_names is not None

    def set_inferred_classes(self, max_label: int) -> None:
        """Record classes ``0..max(1, max_label)`` found by a scan of the masks (``check_dataset``) or taken
        from elsewhere (the model's classes in ``evaluate``, rank 0's in distributed training)."""
        if self._class_names is None:
            self._class_names = default_class_names(max(2, max_label + 1))
            self.classes_source = "inferred"

    def _infer_classes(self) -> list[str]:
        """Scan every mask; the label values must be contiguous (:func:`contiguous_classes`), else raise a
        ``UserError`` naming the masks that hold the values beyond the gap."""
        from tqdm.auto import tqdm

        present: dict[str, list[int]] = {}
        for i in tqdm(self.ids, desc="scanning mask labels", disable=None, leave=False):
            present[i] = np.flatnonzero(
                np.bincount(read_mask(self.mask_paths[i]).ravel(), minlength=1)
            ).tolist()
        k, stray = contiguous_classes(v for values in present.values() for v in values)
        if stray:
            found = sorted({v for values in present.values() for v in values})
            bad = [
                stray_label_message(str(self.mask_paths[i]), [v for v in values if v in stray], k, found)
                for i, values in present.items()
                if any(v in stray for v in values)
            ]
            raise UserError(
                f"{len(bad)} mask(s) of {self.root} hold label values beyond the contiguous 0..{k - 1}: "
                + "; ".join(bad[:20])
                + (
                    f"; ... and {len(bad) - 20} more (run `medurwkv data check {self.root}`)"
                    if len(bad) > 20
                    else ""
                )
            )
        self.classes_source = "inferred"
        return default_class_names(k)

    def image_path(self, sample_id: str) -> Path:
        """First (or only) image file of a sample."""
        return self.image_paths[sample_id][0]

    def load_image(self, sample_id: str) -> np.ndarray:
        """Image of a sample, (H, W) or (H, W, C); nnU-Net channel files are stacked along the last axis."""
        paths = self.image_paths[sample_id]
        if len(paths) == 1:
            return read_image(paths[0])
        parts = [read_image(p) for p in paths]
        shapes = {a.shape[:2] for a in parts}
        if len(shapes) != 1:
            raise UserError(
                f"channel files of {sample_id!r} differ in size {sorted(shapes)}: "
                f"{', '.join(p.name for p in paths)}; all channels of one case must have the same size"
            )
        dtypes = {a.dtype for a in parts}
        if len(dtypes) != 1:
            parts = [a.astype(np.float32) / _dtype_max(a) for a in parts]
        return np.concatenate([a[..., None] if a.ndim == 2 else a for a in parts], axis=-1)

    def load_mask(self, sample_id: str) -> np.ndarray:
        """Mask of a sample as int64 (H, W), validated against ``num_classes`` when classes are known."""
        return read_mask(self.mask_paths[sample_id], self.num_classes if self.classes_known else None)

    def summary_line(self) -> str:
        classes = ", ".join(self._class_names) if self._class_names else "not declared (inferred on use)"
        return f"{self.root} [{self.layout}]: {len(self.ids)} pairs, classes: {classes}"


def _dtype_max(a: np.ndarray) -> float:
    return float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 1.0


def _scan_dir(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Map stem -> image files in a folder (not recursive) and list the ignored entries."""
    by_stem: dict[str, list[Path]] = {}
    ignored: list[Path] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue  # hidden files (.DS_Store, macOS ._ resource forks)
        if p.is_file() and is_image_file(p):
            by_stem.setdefault(p.stem, []).append(p)
        else:
            ignored.append(p)
    return by_stem, ignored


def _discover_folder(root: Path) -> DatasetIndex:
    images, ign_i = _scan_dir(root / "images")
    masks, ign_m = _scan_dir(root / "masks")
    dups = {
        f"{kind}/{stem}": paths
        for kind, table in (("images", images), ("masks", masks))
        for stem, paths in table.items()
        if len(paths) > 1
    }
    ids = sorted(set(images) & set(masks))
    return DatasetIndex(
        root=root,
        layout="folder",
        ids=ids,
        image_paths={i: (images[i][0],) for i in ids},
        mask_paths={i: masks[i][0] for i in ids},
        spacing={},
        unpaired_images=[images[s][0] for s in sorted(set(images) - set(masks))],
        unpaired_masks=[masks[s][0] for s in sorted(set(masks) - set(images))],
        duplicate_stems=dups,
        ignored_files=ign_i + ign_m,
    )


def _discover_nnunet(root: Path, meta: dict | None) -> DatasetIndex:
    ending = (meta or {}).get("file_ending")
    images_raw, ign_i = _scan_dir(root / "imagesTr")
    masks, ign_m = _scan_dir(root / "labelsTr")
    problems: list[str] = []
    channels: dict[str, dict[int, Path]] = {}
    for stem, paths in images_raw.items():
        m = _NNUNET_IMAGE.match(stem)
        if not m:
            ign_i.extend(paths)
            problems.append(
                f"imagesTr/{paths[0].name} does not follow nnU-Net naming <case>_<XXXX>{paths[0].suffix} "
                f"(e.g. {stem}_0000{paths[0].suffix}); rename it"
            )
            continue
        for p in paths:
            if ending and p.suffix.lower() != str(ending).lower():
                problems.append(f"imagesTr/{p.name} has ending {p.suffix}, dataset.json says {ending}")
            channels.setdefault(m["id"], {})[int(m["ch"])] = p
    dups = {f"labelsTr/{s}": ps for s, ps in masks.items() if len(ps) > 1}
    dups.update({f"imagesTr/{s}": ps for s, ps in images_raw.items() if len(ps) > 1})
    ids = sorted(set(channels) & set(masks))
    image_paths: dict[str, tuple[Path, ...]] = {}
    for i in ids:
        chans = channels[i]
        if sorted(chans) != list(range(len(chans))):
            problems.append(
                f"case {i!r} has channel files {sorted(chans)} in imagesTr/; expected consecutive _0000.._"
                f"{len(chans) - 1:04d}; add the missing channel file"
            )
        image_paths[i] = tuple(chans[c] for c in sorted(chans))
    names = (meta or {}).get("channel_names")
    channel_names = (
        [str(names[k]) for k in sorted(names, key=lambda s: int(s))] if isinstance(names, dict) else None
    )
    return DatasetIndex(
        root=root,
        layout="nnunet",
        ids=ids,
        image_paths=image_paths,
        mask_paths={i: masks[i][0] for i in ids},
        spacing={},
        channel_names=channel_names,
        unpaired_images=[channels[s][min(channels[s])] for s in sorted(set(channels) - set(masks))],
        unpaired_masks=[masks[s][0] for s in sorted(set(masks) - set(channels))],
        duplicate_stems=dups,
        ignored_files=ign_i + ign_m,
        problems=problems,
    )


def _find_spacing(
    root: Path, ids: Iterable[str]
) -> tuple[dict[str, float | None], dict[str, dict[str, float]]]:
    spacing: dict[str, float] = {}
    extra: dict[str, dict[str, float]] = {}
    candidates = [root / "spacing.csv"] + sorted(p for p in root.glob("*.csv") if p.name != "spacing.csv")
    for csv_path in candidates:
        if not csv_path.is_file():
            continue
        found = read_spacing_csv(csv_path)
        if found is None:
            continue
        sp, ex = found
        for k, v in sp.items():
            spacing.setdefault(k, v)
        for k, v in ex.items():
            extra.setdefault(k, v)
    ids = list(ids)
    return {i: spacing.get(i) for i in ids}, {i: extra[i] for i in ids if i in extra}


# Volume datasets are read by medurwkv.data.volumes; they are recognised here so that the 2D discovery
# refuses them with one clear error instead of misreading their NIfTI files as ignored files.

NIFTI_ENDINGS = (".nii.gz", ".nii")


def _nifti_ending(name: str) -> str | None:
    low = name.lower()
    return next((e for e in NIFTI_ENDINGS if low.endswith(e)), None)


def _strip(name: str, ending: str) -> str:
    return name[: -len(ending)]


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def detect_volume_layout(root: str | Path) -> str | None:
    """The volume layout of a dataset folder (``"nnunet3d"``, ``"msd"``, ``"synapse"``), or ``None`` when it
    is not a volume dataset (2D folders, missing paths).

    Rules: ``train_npz/`` or ``test_vol_h5/`` -> synapse; ``imagesTr/`` holding NIfTI files (or a dataset.json
    whose ``file_ending`` is ``.nii``/``.nii.gz``) -> nnunet3d when dataset.json has ``channel_names`` (or, with
    no dataset.json keys to go by, every image name ends in ``_XXXX``), else msd.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    if (root / "train_npz").is_dir() or (root / "test_vol_h5").is_dir():
        return "synapse"
    images = [p for p in _files(root / "imagesTr") if p.is_file()]
    meta = _safe_json(root / "dataset.json")
    ending = str(meta.get("file_ending", "")).lower()
    niftis = [p for p in images if _nifti_ending(p.name)]
    if not niftis and ending not in NIFTI_ENDINGS:
        return None
    if not niftis and not (root / "imagesTr").is_dir():
        return None
    if "channel_names" in meta:
        return "nnunet3d"
    if "modality" in meta:
        return "msd"
    stems = [_strip(p.name, _nifti_ending(p.name) or "") for p in niftis]
    return "nnunet3d" if stems and all(_NNUNET_IMAGE.match(s) for s in stems) else "msd"


def volume_only_message(root: str | Path, layout: str, what: str = "medurwkv.data.discover") -> str:
    """The error of the 2D readers (``discover``, ``CheckReport.index``) given a volume dataset."""
    return (
        f"{root} holds 3D volumes (layout {layout}); `{what}` reads 2D image datasets (images/ + masks/, or "
        "nnU-Net raw with 2D images): read volumes with medurwkv.data.volumes.discover_volumes / load_case "
        "(or medurwkv.data.discover_dataset, which takes both); the commands train, evaluate, predict and "
        "data split take volume folders as they are"
    )


def _safe_json(path: Path) -> dict:
    """dataset.json for layout detection: {} when absent or broken (discovery reports a broken one)."""
    if not path.is_file():
        return {}
    try:
        return _load_json(path)
    except UserError:
        return {}


def discover(root: str | Path, *, num_classes: int | None = None) -> DatasetIndex:
    """Index a dataset folder (``folder`` or ``nnunet`` layout); see the module docstring.

    ``num_classes`` declares the class count when the folder has no dataset.json (names then default to
    background/foreground or class_<k>); if dataset.json declares a different count this raises.
    Raises ``FileNotFoundError`` / ``UserError`` when the folder is missing or no layout is recognised, and a
    ``UserError`` for a folder of 3D volumes (read those with :mod:`medurwkv.data.volumes`).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"dataset folder {root} does not exist; expected a folder holding images/ and masks/ (or nnU-Net's "
            "imagesTr/ and labelsTr/): check the path"
        )
    if not root.is_dir():
        raise UserError(
            f"{root} is a file, expected a dataset folder with images/ and masks/; "
            "to convert an archive use `medurwkv data prepare NAME SRC DST`"
        )
    volume_layout = detect_volume_layout(root)
    if volume_layout is not None:  # NIfTI/Synapse files would otherwise be "ignored files" and "no pairs"
        raise UserError(volume_only_message(root, volume_layout))
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path) if meta_path.is_file() else None
    if (root / "images").is_dir() and (root / "masks").is_dir():
        index = _discover_folder(root)
    elif (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        index = _discover_nnunet(root, meta)
    else:
        subdirs = sorted(p.name + "/" for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise UserError(
            f"{root} is not a dataset folder: expected images/ and masks/ (paired by file stem) or nnU-Net's "
            f"imagesTr/ and labelsTr/, found {subdirs or 'no sub-folders'}; if this is an official archive, "
            "convert it with `medurwkv data prepare NAME SRC DST`"
        )
    index.dataset_json = meta
    if meta is not None:
        info = parse_class_info(meta, str(meta_path))
        if info is not None:
            names, k = info
            if num_classes is not None and num_classes != k:
                raise UserError(
                    f"{meta_path} declares {k} classes {names} but num_classes={num_classes} was requested; "
                    "drop the argument or fix dataset.json"
                )
            index._class_names, index.classes_source = names, "dataset.json"
        if index.channel_names is None and isinstance(meta.get("channel_names"), dict):
            cn = meta["channel_names"]
            index.channel_names = [str(cn[k]) for k in sorted(cn, key=lambda s: int(s))]
    if index._class_names is None and num_classes is not None:
        index._class_names, index.classes_source = default_class_names(num_classes), "argument"
    index.spacing, index.metadata = _find_spacing(root, index.ids)
    return index
