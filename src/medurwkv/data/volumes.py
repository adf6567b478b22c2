"""3D datasets: find the cases of a volume dataset and read, load and write its volumes.

Three layouts are recognised (see docs/data.md, "Volumes"):

* ``nnunet3d``: nnU-Net v2 raw with NIfTI files, ``imagesTr/<case>_0000.nii.gz`` (one file per channel,
  ``_0000``, ``_0001``, ...), ``labelsTr/<case>.nii.gz``, ``dataset.json`` with ``channel_names``,
  ``labels`` (name -> value) and ``file_ending`` (``.nii.gz`` or ``.nii``).
* ``msd``: the Medical Segmentation Decathlon's own layout, ``imagesTr/<case>.nii.gz`` (one file; a 4D file
  with the channels on the last axis when there are several modalities), ``labelsTr/<case>.nii.gz``,
  ``dataset.json`` with ``modality`` and ``labels`` (value -> name) and a ``training`` list.
* ``synapse``: TransUNet's form of Synapse, ``train_npz/<case>_slice<NNN>.npz`` (2D slices holding ``image``
  and ``label``) and ``test_vol_h5/<case>.npy.h5`` (whole volumes, ``image`` and ``label`` of shape
  (slices, H, W)); h5py is needed for the latter only.

Axis order: every array handed out is nibabel's voxel order **(X, Y, Z)** (images of several channels
``(C, X, Y, Z)``), the order in which ``affine`` maps voxel indices to millimetres. Synapse volumes carry no
geometry: they are returned as (H, W, slices), slice axis last like NIfTI's Z, with an identity affine and
``spacing_known=False``.

Discovery is tolerant like the 2D :func:`medurwkv.data.index.discover`: unpaired files and naming problems are
recorded on the :class:`VolumeIndex` for ``check_dataset`` to report; only an unrecognisable folder raises.
"""

from __future__ import annotations

import gzip
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..utils import atomic_write
from .index import (
    _NNUNET_IMAGE,
    NIFTI_ENDINGS,
    DatasetIndex,
    _files,
    _load_json,
    _nifti_ending,
    _strip,
    default_class_names,
    detect_volume_layout,
    discover,
    parse_class_info,
    volume_only_message,
)

__all__ = [
    "NIFTI_ENDINGS",
    "VOLUME_LAYOUTS",
    "Volume",
    "VolumeIndex",
    "VolumeReadError",
    "detect_volume_layout",
    "discover_dataset",
    "discover_volumes",
    "is_volume_dataset",
    "as_label_array",
    "load_case",
    "read_synapse_pair",
    "read_synapse_slices",
    "read_volume",
    "stack_channels",
    "volume_only_message",
    "write_label_volume",
    "write_volume",
]

VOLUME_LAYOUTS = ("nnunet3d", "msd", "synapse")  # what detect_volume_layout returns
_CHANNEL = _NNUNET_IMAGE  # <case>_<XXXX>
_SYNAPSE_SLICE = re.compile(r"^(?P<id>.+)_slice(?P<n>\d+)$")
_H5_ENDINGS = (".npy.h5", ".h5")


class VolumeReadError(UserError):
    """A volume file that cannot be read (truncated or corrupt NIfTI / npz / h5); the message names it."""


@dataclass
class Volume:
    """One volume as read from disk.

    ``array`` is (X, Y, Z) or, for a 4D NIfTI, (X, Y, Z, C) in the stored dtype (``None`` when only the header
    was read). ``affine`` (4, 4) maps voxel indices (i, j, k, 1) to millimetres (RAS+ world, nibabel's
    convention); ``spacing`` is the voxel size (sx, sy, sz) in mm; ``orientation`` the axis code of the
    affine, e.g. ``"RAS"``. ``header`` is the nibabel ``Nifti1Header`` (``None`` for Synapse files).
    """

    path: Path
    array: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    orientation: str
    shape: tuple[int, ...]
    dtype: str
    header: Any = None
    spacing_known: bool = True

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) without the channel axis of a 4D file."""
        return tuple(self.shape[:3])  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        return int(self.shape[3]) if len(self.shape) > 3 else 1


@dataclass
class VolumeIndex:
    """Cases found in a volume dataset (ids sorted), with channels, classes and discovery problems.

    ``image_paths[case]`` holds one file per channel (nnU-Net), one file (MSD, 3D or 4D; Synapse h5) or the
    slice files of a Synapse training case in slice order. ``label_paths[case]`` is the label file of a
    NIfTI case, or ``None`` for Synapse, whose labels live in the image files. ``case_format[case]`` is
    ``"nifti"``, ``"npz"`` (slices) or ``"h5"``. ``class_names`` is ``None`` when no classes are declared
    (``data check`` then infers them from the labels).
    """

    root: Path
    layout: str  # one of VOLUME_LAYOUTS
    ids: list[str]
    image_paths: dict[str, tuple[Path, ...]]
    label_paths: dict[str, Path | None]
    case_format: dict[str, str]
    channel_names: list[str]
    class_names: list[str] | None
    classes_source: str  # "dataset.json" | "argument" | "inferred"
    file_ending: str
    dataset_json: dict | None = None
    unpaired_images: dict[str, Path] = field(default_factory=dict)  # case -> its first image file
    unpaired_labels: dict[str, Path] = field(default_factory=dict)  # case -> label file
    missing_channels: dict[str, list[str]] = field(default_factory=dict)  # case -> expected file names
    problems: list[str] = field(default_factory=list)
    ignored_files: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names is not None else None

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def rel(self, path: Path) -> str:
        """``path`` relative to the dataset root (for messages)."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def summary_line(self) -> str:
        classes = ", ".join(self.class_names) if self.class_names else "not declared"
        return (
            f"{self.root} [{self.layout}, 3D volumes]: {len(self.ids)} cases, channels {self.channel_names}, "
            f"classes: {classes}"
        )


def is_volume_dataset(root: str | Path) -> bool:
    """True when ``root`` holds a 3D volume dataset in one of :data:`VOLUME_LAYOUTS`."""
    return detect_volume_layout(root) is not None


def discover_dataset(root: str | Path, *, num_classes: int | None = None) -> DatasetIndex | VolumeIndex:
    """The index of any dataset folder: a :class:`VolumeIndex` (cases) for volumes, else the 2D
    :class:`~medurwkv.data.index.DatasetIndex` (images); both have ``root``, ``ids`` and ``dataset_json``,
    which is what splitting needs."""
    if is_volume_dataset(root):
        return discover_volumes(root, num_classes=num_classes)
    return discover(root, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------- discovery


def _class_info(meta: dict | None, source: str, num_classes: int | None) -> tuple[list[str] | None, str]:
    names: list[str] | None = None
    origin = "inferred"
    if meta:
        info = parse_class_info(meta, source)
        if info is not None:
            names, origin = info[0], "dataset.json"
    if names is not None and num_classes is not None and num_classes != len(names):
        raise UserError(
            f"{source} declares {len(names)} classes {names} but num_classes={num_classes} was requested; "
            "drop the argument or fix dataset.json"
        )
    if names is None and num_classes is not None:
        names, origin = default_class_names(num_classes), "argument"
    return names, origin


def _channel_names(meta: dict | None, key: str) -> list[str] | None:
    names = (meta or {}).get(key)
    if isinstance(names, dict) and names:
        try:
            return [str(names[k]) for k in sorted(names, key=lambda s: int(s))]
        except (TypeError, ValueError):
            return [str(v) for v in names.values()]
    return None


def _scan_nifti(folder: Path, ending: str | None) -> tuple[dict[str, Path], list[Path], list[str]]:
    """stem -> NIfTI file of a folder, the ignored entries, and naming problems (duplicates, endings)."""
    found: dict[str, Path] = {}
    ignored: list[Path] = []
    problems: list[str] = []
    for p in _files(folder):
        e = _nifti_ending(p.name)
        if not p.is_file() or e is None:
            ignored.append(p)
            continue
        if ending and e != ending:
            problems.append(f"{folder.name}/{p.name} ends in {e}, dataset.json says file_ending {ending}")
        stem = _strip(p.name, e)
        if stem in found:
            problems.append(
                f"duplicate case {folder.name}/{stem}: {found[stem].name} and {p.name}; keep one of them"
            )
            continue
        found[stem] = p
    return found, ignored, problems


def _discover_nifti(root: Path, layout: str, meta: dict | None) -> VolumeIndex:
    meta = meta or {}
    ending = str(meta.get("file_ending", "")).lower() or None
    if ending is not None and ending not in NIFTI_ENDINGS:
        ending = None  # another format (2D): not ours; only NIfTI endings are checked
    images, ign_i, problems = _scan_nifti(root / "imagesTr", ending)
    labels, ign_l, problems_l = _scan_nifti(root / "labelsTr", ending)
    problems += problems_l
    missing: dict[str, list[str]] = {}
    if layout == "nnunet3d":
        declared = _channel_names(meta, "channel_names")
        channels: dict[str, dict[int, Path]] = {}
        for stem, p in images.items():
            m = _CHANNEL.match(stem)
            if not m:
                problems.append(
                    f"imagesTr/{p.name} does not follow nnU-Net naming <case>_<XXXX>{_nifti_ending(p.name)} "
                    f"(e.g. {stem}_0000{_nifti_ending(p.name)}); rename it"
                )
                ign_i.append(p)
                continue
            channels.setdefault(m["id"], {})[int(m["ch"])] = p
        n_ch = len(declared) if declared else max((max(c) + 1 for c in channels.values()), default=1)
        channel_names = declared or [f"channel_{c}" for c in range(n_ch)]
        suffix = ending or ".nii.gz"
        image_paths: dict[str, tuple[Path, ...]] = {}
        for case, chans in channels.items():
            absent = [c for c in range(n_ch) if c not in chans]
            if absent:
                missing[case] = [f"imagesTr/{case}_{c:04d}{suffix}" for c in absent]
            extra = sorted(c for c in chans if c >= n_ch)
            if extra:
                problems.append(
                    f"case {case!r} has channel files {[f'_{c:04d}' for c in extra]} beyond the {n_ch} "
                    f"channels of dataset.json channel_names {channel_names}; remove them or declare them"
                )
            image_paths[case] = tuple(chans[c] for c in sorted(chans) if c < n_ch)
    else:
        declared = _channel_names(meta, "modality")
        channel_names = declared or ["image"]
        image_paths = {case: (p,) for case, p in images.items()}
        for entry in meta.get("training") or []:
            if not isinstance(entry, dict):
                continue
            for key in ("image", "label"):
                ref = entry.get(key)
                if isinstance(ref, str) and not (root / ref).is_file():
                    problems.append(
                        f"dataset.json training lists {key} {ref}, which does not exist in {root}; add the "
                        "file or remove the entry"
                    )
    cases = sorted(set(image_paths) | set(missing))
    ids = [c for c in cases if c in labels]
    return VolumeIndex(
        root=root,
        layout=layout,
        ids=ids,
        image_paths={c: image_paths.get(c, ()) for c in ids},
        label_paths={c: labels[c] for c in ids},
        case_format=dict.fromkeys(ids, "nifti"),
        channel_names=channel_names,
        class_names=None,
        classes_source="inferred",
        file_ending=ending or _common_ending([*images.values(), *labels.values()]),
        dataset_json=meta or None,
        unpaired_images={c: image_paths[c][0] for c in cases if c not in labels and image_paths.get(c)},
        unpaired_labels={c: p for c, p in labels.items() if c not in image_paths and c not in missing},
        missing_channels=missing,
        problems=problems,
        ignored_files=ign_i + ign_l,
    )


def _common_ending(paths: Sequence[Path]) -> str:
    endings = [_nifti_ending(p.name) for p in paths]
    return max(set(endings), key=endings.count) if endings else ".nii.gz"  # type: ignore[arg-type]


def _discover_synapse(root: Path, meta: dict | None) -> VolumeIndex:
    slices: dict[str, dict[int, Path]] = {}
    volumes: dict[str, Path] = {}
    ignored: list[Path] = []
    problems: list[str] = []
    for p in _files(root / "train_npz"):
        m = _SYNAPSE_SLICE.match(p.stem) if p.suffix.lower() == ".npz" else None
        if not p.is_file() or not m:
            ignored.append(p)
            continue
        slices.setdefault(m["id"], {})[int(m["n"])] = p
    for p in _files(root / "test_vol_h5"):
        e = next((e for e in _H5_ENDINGS if p.name.lower().endswith(e)), None)
        if not p.is_file() or e is None:
            ignored.append(p)
            continue
        volumes[_strip(p.name, e)] = p
    for case in sorted(set(slices) & set(volumes)):
        problems.append(
            f"case {case!r} is both in train_npz/ (slices) and test_vol_h5/ ({volumes[case].name}); a case must "
            "be in one of them (training slices or test volume), remove one"
        )
    image_paths: dict[str, tuple[Path, ...]] = {}
    case_format: dict[str, str] = {}
    for case, by_n in slices.items():
        numbers = sorted(by_n)
        gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if gaps:
            problems.append(
                f"case {case!r}: slices {gaps[:10]}{' ...' if len(gaps) > 10 else ''} are missing from "
                f"train_npz/ (found {len(numbers)} slices {numbers[0]}..{numbers[-1]}); add them or the "
                "case's volume has holes"
            )
        image_paths[case] = tuple(by_n[n] for n in numbers)
        case_format[case] = "npz"
    for case, p in volumes.items():
        if case not in image_paths:
            image_paths[case] = (p,)
            case_format[case] = "h5"
    ids = sorted(image_paths)
    return VolumeIndex(
        root=root,
        layout="synapse",
        ids=ids,
        image_paths={c: image_paths[c] for c in ids},
        label_paths=dict.fromkeys(ids),
        case_format={c: case_format[c] for c in ids},
        channel_names=_channel_names(meta, "channel_names") or ["CT"],
        class_names=None,
        classes_source="inferred",
        file_ending=".npz/.npy.h5",
        dataset_json=meta,
        problems=problems,
        ignored_files=ignored,
    )


def discover_volumes(root: str | Path, *, num_classes: int | None = None) -> VolumeIndex:
    """Index a volume dataset (any of :data:`VOLUME_LAYOUTS`); see the module docstring.

    Classes come from dataset.json's ``labels`` (nnU-Net's name -> value or MSD's value -> name, both parsed
    by :func:`medurwkv.data.index.parse_class_info`) or from ``num_classes``; otherwise ``class_names`` is
    ``None``. Raises ``FileNotFoundError`` / ``UserError`` when the folder is missing, is no volume dataset,
    or its dataset.json is invalid.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} does not exist; check the path")
    layout = detect_volume_layout(root)
    if layout is None:
        raise UserError(
            f"{root} is not a volume dataset: expected imagesTr/ + labelsTr/ with NIfTI files (.nii.gz, .nii) "
            "or Synapse's train_npz/ / test_vol_h5/; 2D datasets are read with medurwkv.data.discover"
        )
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path) if meta_path.is_file() else None
    if layout == "synapse":
        index = _discover_synapse(root, meta)
    else:
        index = _discover_nifti(root, layout, meta)
    index.class_names, index.classes_source = _class_info(meta, str(meta_path), num_classes)
    return index


# ---------------------------------------------------------------------------------------------- reading


def _orientation(affine: np.ndarray) -> str:
    import nibabel as nib

    try:
        return "".join(str(c) for c in nib.aff2axcodes(affine))
    except ValueError:
        return "unknown"


# what a truncated or corrupt file raises, by reader: gzip/zlib and nibabel, numpy's npz (a zip), h5py
_READ_ERRORS = (EOFError, OSError, zlib.error, ValueError, KeyError, zipfile.BadZipFile)


def _corrupt(name: str, e: Exception) -> VolumeReadError:
    return VolumeReadError(
        f"cannot read volume {name}: {type(e).__name__}: {e}; the file is truncated or corrupt "
        "(an interrupted download or copy?): fetch or export it again"
    )


def _read_nifti(path: Path, data: bool) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj) if data else None  # a truncated .nii.gz fails only here
    except FileNotFoundError:
        raise
    except (*_READ_ERRORS, nib.filebasedimages.ImageFileError) as e:
        raise _corrupt(str(path), e) from e
    header = img.header
    if len(img.shape) < 3:
        shape = tuple(int(s) for s in img.shape) + (1,) * (3 - len(img.shape))
        array = array.reshape(shape) if array is not None else None
    else:
        shape = tuple(int(s) for s in img.shape)
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    zooms = zooms + (1.0,) * (3 - len(zooms))
    return Volume(
        path=path,
        array=array,
        affine=np.asarray(img.affine, dtype=np.float64),
        spacing=zooms,  # type: ignore[arg-type]
        orientation=_orientation(img.affine),
        shape=shape,
        dtype=str(img.get_data_dtype()),
        header=header,
    )


def _synapse_volume(path: Path, array: np.ndarray) -> Volume:
    return Volume(
        path=path,
        array=array,
        affine=np.eye(4),
        spacing=(1.0, 1.0, 1.0),
        orientation=_orientation(np.eye(4)),
        shape=tuple(int(s) for s in array.shape),
        dtype=str(array.dtype),
        spacing_known=False,
    )


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as e:
        raise UserError(
            "h5py is needed to read TransUNet's Synapse test volumes (test_vol_h5/*.npy.h5) and is not "
            "installed: pip install 'medurwkv[synapse]' (or pip install h5py)"
        ) from e
    return h5py


def _display(path: Path, root: Path | None) -> str:
    """``path`` as messages name it: relative to ``root`` when given and below it, else in full."""
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return str(path)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _synapse_arrays(path: Path, keys: Sequence[str], root: Path | None = None) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of one Synapse file, an npz slice ((H, W) each) or an h5 volume ((H, W, slices)
    each, moved from TransUNet's (slices, H, W)), read in one opening; errors name the file."""
    name = _display(path, root)
    npz = path.name.lower().endswith(".npz")
    h5py = None if npz else _import_h5py()
    try:
        with np.load(path, allow_pickle=False) if npz else h5py.File(path, "r") as f:
            found = sorted(f.files if npz else f.keys())
            missing = [k for k in keys if k not in found]
            if missing:
                raise VolumeReadError(
                    f"{name} holds no {' and no '.join(map(repr, missing))} {'array' if npz else 'dataset'} "
                    f"(found {found}); TransUNet's files hold 'image' and 'label'"
                )
            arrays = {k: np.asarray(f[k] if npz else f[k][()]) for k in keys}
    except VolumeReadError:
        raise
    except _READ_ERRORS as e:
        raise _corrupt(name, e) from e
    want = 2 if npz else 3
    for k, a in arrays.items():
        if a.ndim != want:
            raise VolumeReadError(
                f"{name}: {k!r} has shape {a.shape}, expected {'a 2D slice (H, W)' if npz else '(slices, H, W)'}"
            )
    return arrays if npz else {k: np.moveaxis(a, 0, -1) for k, a in arrays.items()}  # (H, W, slices)


def read_synapse_pair(path: str | Path, *, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Image and label of one file of TransUNet's Synapse: an npz slice, (H, W) each, or an ``.npy.h5``
    volume, (H, W, slices) each (TransUNet's (slices, H, W) with the slice axis moved last), in the stored
    dtypes. Raises :class:`VolumeReadError` naming the file (relative to ``root`` when given) when it is
    unreadable, lacks ``image`` or ``label``, or the two differ in shape; a ``UserError`` when h5py is missing.
    """
    path = Path(path)
    arrays = _synapse_arrays(path, ("image", "label"), Path(root) if root is not None else None)
    image, label = arrays["image"], arrays["label"]
    if image.shape != label.shape:
        raise VolumeReadError(
            f"{_display(path, Path(root) if root is not None else None)} has image {_shape(image.shape)} but "
            f"label {_shape(label.shape)}; they must match (one label per pixel)"
        )
    return image, label


def read_synapse_slices(
    paths: Sequence[str | Path], *, root: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The npz slices of one Synapse case, in the order given, stacked as image and label (H, W, slices).

    Raises :class:`VolumeReadError` naming the files (relative to ``root`` when given) as
    :func:`read_synapse_pair` does, and when the slices differ in size.
    """
    paths = [Path(p) for p in paths]
    pairs = [read_synapse_pair(p, root=root) for p in paths]  # (H, W) each
    sizes: dict[tuple[int, ...], list[str]] = {}
    for p, (image, _) in zip(paths, pairs):
        sizes.setdefault(image.shape, []).append(p.name)
    if len(sizes) > 1:
        parts = "; ".join(f"{_shape(s)}: {', '.join(names[:3])}" for s, names in sizes.items())
        raise VolumeReadError(
            f"the slices {paths[0].name} .. {paths[-1].name} differ in size ({parts}); the slices of one case "
            "must share one (H, W): re-extract train_npz"
        )
    image = np.stack([im for im, _ in pairs], axis=-1)  # (H, W, slices)
    label = np.stack([lb for _, lb in pairs], axis=-1)  # (H, W, slices)
    return image, label


def read_volume(path: str | Path, *, key: str = "image", data: bool = True) -> Volume:
    """Read one volume file: NIfTI (``.nii``, ``.nii.gz``), a Synapse ``.npy.h5`` (``key`` ``"image"`` or
    ``"label"``) or a Synapse ``.npz`` slice (a (H, W, 1) volume).

    ``data=False`` reads the NIfTI header only (``array`` is ``None``). Raises ``FileNotFoundError`` or
    :class:`VolumeReadError` (a ``UserError`` naming the file) for truncated or corrupt files.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"volume file {path} does not exist")
    name = path.name.lower()
    if _nifti_ending(name):
        return _read_nifti(path, data)
    if name.endswith(_H5_ENDINGS):
        return _synapse_volume(path, _synapse_arrays(path, (key,))[key])
    if name.endswith(".npz"):
        return _synapse_volume(path, _synapse_arrays(path, (key,))[key][..., None])
    raise UserError(f"{path}: unsupported volume file, expected .nii.gz, .nii, .npy.h5 or .npz")


def as_label_array(array: np.ndarray, path: Path | str) -> np.ndarray:
    """A label volume as int64, raising a ``UserError`` naming ``path`` when it holds non-integer or negative
    values (float label files are accepted when every value is a whole number)."""
    if not np.issubdtype(array.dtype, np.integer):
        finite = np.isfinite(array)
        if not finite.all() or not np.array_equal(array, np.round(array)):
            bad = np.unique(array[~finite | (array != np.round(array))])[:5].tolist()
            raise UserError(
                f"label volume {path} holds non-integer values {bad}; labels must be whole class numbers "
                "(re-export the segmentation as an integer label map)"
            )
    labels = array.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise UserError(f"label volume {path} holds negative values (min {labels.min()}); classes are >= 0")
    return labels


def _read_case_arrays(index: VolumeIndex, case: str) -> tuple[list[Volume], Volume | None, np.ndarray | None]:
    """The channel volumes (arrays as stored) and the label volume / int64 label array of a case."""
    fmt = index.case_format[case]
    paths = index.image_paths[case]
    if fmt in ("npz", "h5"):  # Synapse: files named relative to the dataset root, as data check reports them
        if fmt == "npz":
            image, labels = read_synapse_slices(paths, root=index.root)  # (H, W, slices) each
            label_name: Path | str = index.rel(paths[0].parent / f"{case}_slice*.npz")
        else:
            image, labels = read_synapse_pair(paths[0], root=index.root)  # (H, W, slices) each
            label_name = index.rel(paths[0])
        vol = _synapse_volume(paths[0], image)
        lab = _synapse_volume(paths[0], labels) if fmt == "h5" else vol
        return [vol], lab, as_label_array(labels, label_name)
    channels = [read_volume(p) for p in paths]
    label_path = index.label_paths.get(case)
    if label_path is None:
        return channels, None, None
    lab = read_volume(label_path)
    return channels, lab, as_label_array(lab.array, label_path)  # type: ignore[arg-type]


def load_case(index: VolumeIndex, case_id: str) -> tuple[np.ndarray, np.ndarray | None, Volume]:
    """Image, label and geometry of one case.

    Returns ``image`` float32 (C, X, Y, Z) (channel files stacked, or a 4D MSD file's last axis moved first),
    ``label`` int64 (X, Y, Z) or ``None`` when the case has no label, and the :class:`Volume` of the first
    channel (affine, spacing, header: the reference for :func:`write_label_volume`). Raises a ``UserError``
    naming the case when channels or label disagree in shape.
    """
    if case_id not in index.case_format:
        raise UserError(f"case {case_id!r} is not in {index.root} (cases: {index.ids[:5]} ...)")
    if case_id in index.missing_channels:
        raise UserError(
            f"case {case_id!r} lacks channel file(s) {', '.join(index.missing_channels[case_id])} in "
            f"{index.root}; add them (run `medurwkv data check {index.root}`)"
        )
    try:
        channels, _, label = _read_case_arrays(index, case_id)
    except VolumeReadError as e:
        raise VolumeReadError(f"case {case_id!r} of {index.root}: {e}") from e
    image, ref = stack_channels(channels, case_id, index.rel)
    if label is not None and label.shape != image.shape[1:]:
        raise UserError(
            f"case {case_id!r}: label has shape {label.shape} but the image {image.shape[1:]} (X, Y, Z); "
            "the label must be on the image's grid"
        )
    return image, label, ref


def stack_channels(channels: Sequence[Volume], case_id: str, name: Any = str) -> tuple[np.ndarray, Volume]:
    """The channel volumes of one case (each 3D, or one 4D file with the channels last) as a float32
    (C, X, Y, Z) image, and the 3D reference :class:`Volume` of its grid (the first channel's geometry, the
    reference of the label map); ``name(path)`` names files in the error raised when shapes differ."""
    parts: list[np.ndarray] = []
    for vol in channels:
        a = vol.array
        assert a is not None
        parts.extend(np.moveaxis(a, -1, 0) if a.ndim == 4 else a[None])  # each (X, Y, Z)
    shapes = {p.shape for p in parts}
    if len(shapes) != 1:
        raise UserError(
            f"case {case_id!r}: channel files differ in shape {sorted(shapes)} "
            f"({', '.join(name(v.path) for v in channels)}); all channels of a case must share one grid"
        )
    image = np.stack([p.astype(np.float32, copy=False) for p in parts])  # (C, X, Y, Z)
    ref = channels[0]
    if ref.array is not None and ref.array.ndim == 4:  # the reference of a label map is 3D
        ref = Volume(**{**ref.__dict__, "shape": ref.shape[:3], "array": None})
    return image, ref


# ---------------------------------------------------------------------------------------------- writing


def write_volume(
    path: str | Path, data: np.ndarray, reference: Any = None, *, affine: np.ndarray | None = None
) -> Path:
    """Write ``data`` (X, Y, Z) as the NIfTI file ``path`` atomically, on the grid of ``reference``.

    ``reference`` is a :class:`Volume` or a nibabel image. Its NIfTI header is kept (qform and sform matrices
    with their codes, pixdim, units, description); only the shape and the data type follow ``data``, which is
    stored as given (no intensity scaling). A reference without a NIfTI header (a Synapse volume), or none,
    gives a fresh header with ``affine`` (default: the reference's affine, else identity, 1 mm voxels) as
    qform and sform (code 1, scanner) and millimetre units. ``.nii.gz`` is gzip-compressed with a zero
    timestamp (the same data give the same bytes), ``.nii`` is not. Returns ``path``.
    """
    import nibabel as nib

    path = Path(path)
    if not _nifti_ending(path.name):
        raise UserError(f"volume file {path}: expected a .nii.gz or .nii file name")
    data = np.asarray(data)
    stored = getattr(reference, "header", None)
    stored = stored if isinstance(stored, nib.Nifti1Header) else None
    if stored is not None and affine is not None:
        raise ValueError(
            "affine is taken from the reference's header; pass a reference or an affine, not both"
        )
    header = stored.copy() if stored is not None else nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    if affine is None:
        affine = reference.affine if reference is not None else np.eye(4)
    img = nib.Nifti1Image(data, affine, header=header)
    if stored is not None:
        qform, qcode = stored.get_qform(coded=True)  # both matrices and codes as stored
        sform, scode = stored.get_sform(coded=True)
        img.set_qform(qform, code=int(qcode))
        img.set_sform(sform, code=int(scode))
    else:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(None, None)  # the values are stored as given
    img.header.set_data_dtype(data.dtype)
    raw = img.to_bytes()
    # compresslevel 1 as nibabel's own .nii.gz writer; mtime 0 keeps the output byte-reproducible
    blob = gzip.compress(raw, compresslevel=1, mtime=0) if path.name.lower().endswith(".gz") else raw
    return atomic_write(path, lambda f: f.write(blob))


def write_label_volume(path: str | Path, labels: np.ndarray, reference: Volume) -> Path:
    """Write a label map (X, Y, Z) as NIfTI (``.nii.gz`` compressed, ``.nii`` not) on the grid of
    ``reference`` with :func:`write_volume` (its affine and header kept); the data type becomes uint8 (uint16
    when a label exceeds 255). Raises a ``UserError`` for a shape other than the reference's or values outside
    0..65535. The write is atomic.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(reference.shape[:3]):
        raise UserError(
            f"label map for {path} has shape {labels.shape}, expected the reference's {tuple(reference.shape[:3])}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise UserError(
            f"label map for {path} holds values outside 0..65535 (min {labels.min()}, max {labels.max()})"
        )
    dtype = np.uint8 if not labels.size or labels.max() <= 255 else np.uint16
    return write_volume(path, labels.astype(dtype), reference)
