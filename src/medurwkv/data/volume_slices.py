"""2D training on 3D volumes: intensity normalisation, slicing, the cached slice index and its dataset.

A 2D network meets a volume slice by slice, as the peers do (TransUNet, Swin-Unet, RWKV-UNet, nnU-Net 2d):

* **Intensity normalisation** (:func:`fit_intensity`, :func:`normalize_volume`), chosen per channel from
  ``channel_names`` as nnU-Net does: a ``CT`` channel is clipped to the 0.5 / 99.5 percentiles of the
  *training* foreground voxels and z-scored with their mean and std (Hounsfield units mean the same in every
  scan, so one global rule); any other channel (MR, ultrasound, ...) is z-scored per volume, since its
  intensities have no absolute scale. The numbers are stored in the checkpoint (``preprocess["volume"]``) so
  that prediction normalises exactly as training did.
* **Slicing** (:func:`slice_image`): slices are cut along ``axis`` (an array axis of the (X, Y, Z) volume;
  ``"auto"``: the axis of the largest median voxel spacing, i.e. the through-plane axis of anisotropic scans,
  the last one for isotropic data). With ``context`` k > 0 (2.5D) the k slices on either side are stacked as
  extra channels (edge slices repeat), so the model sees ``channels * (2k + 1)`` input channels.
* **The slice index** (:class:`SliceIndex`, built by :func:`build_slice_index`): every case normalised once and
  cached as ``.npy`` (memory-mapped while training) with the list of its slices and which hold foreground, in
  ``RUN_DIR/slices/``; a resumed run finds the cache valid (same source files, same normalisation) and skips
  the work. It looks like a 2D :class:`~medurwkv.data.index.DatasetIndex` to the training loop: ids are slice
  ids ``<case>#<slice>``.
* **Sampling** (:class:`VolumeSliceDataset`): each training position is, with probability
  ``foreground_ratio`` (default 0.33, nnU-Net's ``oversample_foreground_percent``), replaced by a random slice
  that holds foreground, so at least that share of the samples shows a structure however small it is in the
  volume; the draw is seeded from (seed, epoch, position) like the augmentation.

Splits are made over cases (``data split`` on a volume folder), so a patient never straddles splits.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..utils import atomic_write, atomic_write_json, progress_bar
from .dataset import SegmentationDataset
from .volumes import Volume, VolumeIndex, load_case

__all__ = [
    "VOLUME_PREPROCESS_FORMAT",
    "INTENSITY_SCHEMES",
    "VolumeSpec",
    "SliceIndex",
    "VolumeSliceDataset",
    "resolve_axis",
    "intensity_schemes",
    "fit_intensity",
    "normalize_volume",
    "slice_image",
    "num_slices",
    "inplane_zoom",
    "resample",
    "require_spacing",
    "build_slice_index",
    "slice_id",
    "parse_slice_id",
]

VOLUME_PREPROCESS_FORMAT = "medurwkv-volume-slices-v1"
INTENSITY_SCHEMES = ("auto", "ct", "zscore")
CT_PERCENTILES = (0.5, 99.5)  # nnU-Net's CT clipping range (percent of the training foreground voxels)
_CT_SAMPLES_PER_CASE = 10_000  # foreground voxels drawn per training case for the CT statistics
_EPS = 1e-8
_SLICE_ID = re.compile(r"^(?P<case>.+)#(?P<k>\d+)$")

Log = Callable[[str], None]


def slice_id(case: str, k: int) -> str:
    """The id of slice ``k`` of ``case`` (``"<case>#<k>"``, k zero-padded to 4 digits)."""
    return f"{case}#{k:04d}"


def parse_slice_id(sid: str) -> tuple[str, int]:
    m = _SLICE_ID.match(sid)
    if m is None:
        raise ValueError(f"expected a slice id '<case>#<k>', got {sid!r}")
    return m["case"], int(m["k"])


# ---------------------------------------------------------------------------------------------- the spec


@dataclass
class VolumeSpec:
    """How volumes become model inputs; stored as ``preprocess["volume"]`` in checkpoints and ONNX files.

    ``intensity`` holds one dict per channel: ``{"scheme": "zscore"}`` (per volume) or ``{"scheme": "ct",
    "lower", "upper", "mean", "std"}`` (fixed numbers from the training foreground).
    """

    axis: int
    context: int
    channel_names: list[str]
    intensity: list[dict[str, Any]]
    format: str = VOLUME_PREPROCESS_FORMAT
    median_spacing: list[float] | None = None
    target_spacing: float | None = None  # in-plane mm per pixel of the slices; None: slices as stored

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def in_channels(self) -> int:
        """Model input channels: every channel with its ``context`` neighbours on either side."""
        return self.num_channels * (2 * self.context + 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "checkpoint") -> VolumeSpec:
        if not isinstance(d, dict) or d.get("format") != VOLUME_PREPROCESS_FORMAT:
            raise UserError(
                f"{source}: expected volume preprocessing of format {VOLUME_PREPROCESS_FORMAT!r}, got "
                f"{(d or {}).get('format') if isinstance(d, dict) else type(d).__name__!r}; it was written by "
                "another medurwkv version: re-train or re-export with this one"
            )
        known = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        # a dict of the right format lacking a field would else raise a TypeError (a traceback in the CLI)
        missing = [f for f in ("axis", "context", "channel_names", "intensity") if f not in known]
        if missing:
            raise UserError(
                f"{source}: expected volume preprocessing with axis, context, channel_names and intensity, got "
                f"none for {missing}; the file is damaged: re-train or re-export it"
            )
        return cls(**known)

    def describe(self) -> str:
        schemes = ", ".join(
            f"{n}: {i['scheme']}"
            + (
                f" [{i['lower']:.4g}, {i['upper']:.4g}] mean {i['mean']:.4g} std {i['std']:.4g}"
                if i["scheme"] == "ct"
                else " per volume"
            )
            for n, i in zip(self.channel_names, self.intensity)
        )
        ctx = f", 2.5D: {self.context} neighbour slice(s) each side" if self.context else ""
        res = f", resampled in-plane to {self.target_spacing:g} mm" if self.target_spacing else ""
        return f"slices along array axis {self.axis}{ctx}{res}; intensity {schemes}"


def resolve_axis(axis: str | int, spacings: Sequence[Sequence[float]]) -> int:
    """The slicing axis: an int 0..2 as given, or ``"auto"``: the axis of the largest median spacing (ties: the
    last such axis, Z for isotropic volumes)."""
    if isinstance(axis, str) and axis != "auto":
        if axis not in ("0", "1", "2"):
            raise UserError(f"expected slice axis 'auto', 0, 1 or 2, got {axis!r}")
        axis = int(axis)
    # bool is an int to Python but no axis; a float (1.0) or None must not silently become "auto"
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, (bool, np.bool_)):
        if axis not in (0, 1, 2):
            raise UserError(f"expected slice axis 0, 1 or 2 (X, Y, Z of the stored array), got {axis}")
        return int(axis)
    if axis != "auto":
        raise UserError(f"expected slice axis 'auto', 0, 1 or 2, got {axis!r} ({type(axis).__name__})")
    if not spacings:
        return 2
    med = np.median(np.asarray(spacings, dtype=np.float64), axis=0)  # (3,)
    top = med.max()
    return int(max(i for i in range(3) if med[i] >= top * (1 - 1e-6)))


def intensity_schemes(channel_names: Sequence[str], intensity: str = "auto") -> list[str]:
    """Per channel ``"ct"`` or ``"zscore"``: ``auto`` reads the channel name (``CT`` -> ct, as nnU-Net does)."""
    if intensity not in INTENSITY_SCHEMES:
        raise UserError(f"expected intensity one of {INTENSITY_SCHEMES}, got {intensity!r}")
    if intensity != "auto":
        return [intensity] * len(channel_names)
    return ["ct" if str(n).strip().upper() == "CT" else "zscore" for n in channel_names]


def fit_intensity(
    index: VolumeIndex,
    cases: Sequence[str],
    schemes: Sequence[str],
    *,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The per-channel normalisation of :func:`normalize_volume`, fitted on the training ``cases``.

    CT channels need the foreground voxels of the training cases (up to 10 000 drawn per case, seeded);
    z-score channels need nothing (their statistics are per volume), so no case is read when none is CT.
    """
    out: list[dict[str, Any]] = [{"scheme": s} for s in schemes]
    ct = [c for c, s in enumerate(schemes) if s == "ct"]
    if not ct:
        return out
    rng = np.random.default_rng(seed)
    samples: dict[int, list[np.ndarray]] = {c: [] for c in ct}
    for case in progress_bar(cases, desc="CT intensity statistics", progress=progress, leave=False):
        image, label, _ = load_case(index, case)  # (C, X, Y, Z), (X, Y, Z)
        if image.shape[0] != len(schemes):  # else image[c] below fails with an IndexError, or skips channels
            raise UserError(
                f"case {case!r} of {index.root}: expected {len(schemes)} channel(s) {list(index.channel_names)}, "
                f"got an image of {image.shape[0]}; fix dataset.json's channel names or the image files"
            )
        if label is None:
            continue
        fg = np.flatnonzero(label.reshape(-1) > 0)
        if fg.size == 0:
            continue
        pick = rng.choice(fg, size=min(fg.size, _CT_SAMPLES_PER_CASE), replace=False)
        for c in ct:
            samples[c].append(image[c].reshape(-1)[pick].astype(np.float64))
    for c in ct:
        if not samples[c]:
            raise UserError(
                f"channel {index.channel_names[c]!r} is CT, whose normalisation needs foreground voxels of the "
                f"training cases, but none of the {len(cases)} training cases has any; check labelsTr/ or "
                "choose --intensity zscore"
            )
        v = np.concatenate(samples[c])
        lo, hi = np.percentile(v, CT_PERCENTILES)
        clipped = np.clip(v, lo, hi)
        out[c] = {
            "scheme": "ct",
            "lower": float(lo),
            "upper": float(hi),
            "mean": float(clipped.mean()),
            "std": float(clipped.std()),
            "voxels": int(v.size),
        }
    return out


def normalize_volume(image: np.ndarray, intensity: Sequence[dict[str, Any]]) -> np.ndarray:
    """(C, X, Y, Z) -> float32 (C, X, Y, Z) normalised per channel as ``intensity`` says (see the module)."""
    if image.ndim != 4 or image.shape[0] != len(intensity):
        raise UserError(
            f"expected a volume (C, X, Y, Z) with C = {len(intensity)} channel(s) (as in training), got shape "
            f"{image.shape}"
        )
    out = np.empty(image.shape, dtype=np.float32)
    for c, rule in enumerate(intensity):
        x = image[c].astype(np.float32, copy=False)
        if rule["scheme"] == "ct":
            x = np.clip(x, rule["lower"], rule["upper"])
            mean, std = rule["mean"], rule["std"]
        elif rule["scheme"] == "zscore":
            mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
        else:
            raise UserError(f"unknown intensity scheme {rule['scheme']!r}; expected 'ct' or 'zscore'")
        out[c] = (x - np.float32(mean)) / np.float32(max(std, _EPS))
    return out


def num_slices(shape: Sequence[int], axis: int) -> int:
    """Slices of a (C, X, Y, Z) or (X, Y, Z) volume along array axis ``axis`` of (X, Y, Z)."""
    return int(shape[axis - 3])


def slice_image(volume: np.ndarray, axis: int, k: int, context: int = 0) -> np.ndarray:
    """Slice ``k`` of a (C, X, Y, Z) volume along ``axis`` as an (H, W, C * (2 context + 1)) float32 image.

    (H, W) are the two other axes in their order ((X, Y) for axis 2). Channels are channel-major: channel 0's
    slices k - context .. k + context first; slices beyond the volume repeat its edge slice.
    """
    n = volume.shape[1 + axis]
    ks = np.clip(np.arange(k - context, k + context + 1), 0, n - 1)
    part = np.take(volume, ks, axis=1 + axis)  # (C, ..., 2c+1 at axis, ...)
    part = np.moveaxis(part, 1 + axis, 1)  # (C, 2c+1, H, W)
    c, s, h, w = part.shape
    return np.ascontiguousarray(part.reshape(c * s, h, w).transpose(1, 2, 0), dtype=np.float32)


def label_slice(labels: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Slice ``k`` of an (X, Y, Z) label volume along ``axis``: (H, W) int64, the grid of :func:`slice_image`."""
    return np.take(labels, k, axis=axis).astype(np.int64)


def inplane_zoom(spacing: Sequence[float], axis: int, target: float) -> tuple[float, float, float]:
    """Zoom factors along (X, Y, Z) that bring the two in-plane axes to ``target`` mm (1 along ``axis``)."""
    return tuple(1.0 if a == axis else float(spacing[a]) / float(target) for a in range(3))  # type: ignore[return-value]


def resample(volume: np.ndarray, zoom: Sequence[float], order: int) -> np.ndarray:
    """(C, X, Y, Z) or (X, Y, Z) resampled by ``zoom`` along (X, Y, Z): ``order`` 1 (linear, images) or 0
    (nearest, labels); voxel centres map as pixel-edge-aligned grids (``grid_mode``), like
    ``F.interpolate(align_corners=False)``; the output shape is ``round(shape * zoom)``."""
    from scipy import ndimage

    factors = (1.0, *zoom) if volume.ndim == 4 else tuple(zoom)
    if all(f == 1.0 for f in factors):
        return volume
    return ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True, prefilter=False)


def require_spacing(ref: Volume, case: str) -> tuple[float, float, float]:
    """The voxel spacing of ``ref`` for resampling; a ``UserError`` naming ``case`` when it has none."""
    if not ref.spacing_known:
        raise UserError(
            f"case {case!r} has no voxel spacing (a Synapse npz/h5 file), so it cannot be resampled to a target "
            "spacing; drop --target-spacing"
        )
    return ref.spacing


# ---------------------------------------------------------------------------------------------- the index


@dataclass
class SliceIndex:
    """The slices of some cases of a volume dataset, normalised and cached in ``cache_dir``.

    Quacks like a 2D ``DatasetIndex`` for the training loop (``ids``, ``num_classes``, ``class_names``,
    ``load_image``, ``load_mask``); ``ids`` are slice ids ``<case>#<k>`` in case order.
    """

    root: Path  # the dataset folder (messages)
    cache_dir: Path
    spec: VolumeSpec
    class_names: list[str]
    cases: list[str]
    num_slices_of: dict[str, int]
    foreground_of: dict[str, list[int]]  # case -> slices holding any label > 0
    ids: list[str] = field(default_factory=list)
    _arrays: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = [slice_id(c, k) for c in self.cases for k in range(self.num_slices_of[c])]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    classes_known = True

    def __len__(self) -> int:
        return len(self.ids)

    def slice_ids(self, cases: Sequence[str]) -> list[str]:
        """The slice ids of ``cases`` (in that order)."""
        return [slice_id(c, k) for c in cases for k in range(self.num_slices_of[c])]

    def foreground_ids(self, cases: Sequence[str]) -> list[str]:
        return [slice_id(c, k) for c in cases for k in self.foreground_of[c]]

    def _case(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        # memory-mapped once per process (DataLoader workers each map their own)
        if case not in self._arrays:
            self._arrays[case] = (
                np.load(self.cache_dir / f"{case}_image.npy", mmap_mode="r"),
                np.load(self.cache_dir / f"{case}_label.npy", mmap_mode="r"),
            )
        return self._arrays[case]

    def load_image(self, sid: str) -> np.ndarray:
        case, k = parse_slice_id(sid)
        return slice_image(self._case(case)[0], self.spec.axis, k, self.spec.context)

    def load_mask(self, sid: str) -> np.ndarray:
        case, k = parse_slice_id(sid)
        return label_slice(self._case(case)[1], self.spec.axis, k)

    def image_path(self, sid: str) -> Path:
        return self.cache_dir / f"{parse_slice_id(sid)[0]}_image.npy"

    def summary_line(self) -> str:
        fg = sum(len(v) for v in self.foreground_of.values())
        return (
            f"{self.root} [3D volumes as 2D slices]: {len(self.cases)} cases, {len(self.ids)} slices "
            f"({fg} with foreground); {self.spec.describe()}"
        )

    @classmethod
    def open(cls, cache_dir: Path, root: Path, class_names: list[str]) -> SliceIndex:
        """The index written by :func:`build_slice_index` (DDP ranks other than 0 read it)."""
        doc = json.loads((cache_dir / _INDEX_FILE).read_text())
        return cls(
            root=root,
            cache_dir=cache_dir,
            spec=VolumeSpec.from_dict(doc["spec"], str(cache_dir / _INDEX_FILE)),
            class_names=class_names,
            cases=list(doc["cases"]),
            num_slices_of={c: int(v["slices"]) for c, v in doc["cases"].items()},
            foreground_of={c: [int(k) for k in v["foreground"]] for c, v in doc["cases"].items()},
        )


_INDEX_FILE = "index.json"


def _fingerprint(index: VolumeIndex, case: str, spec: VolumeSpec) -> str:
    """Changes when a source file of the case or the normalisation changes (cache validity)."""
    parts: list[Any] = [spec.to_dict()]
    files = [*index.image_paths[case], index.label_paths.get(case)]
    for p in files:
        if p is not None:
            st = Path(p).stat()
            parts.append([str(p), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_slice_index(
    index: VolumeIndex,
    cases: Sequence[str],
    spec: VolumeSpec,
    cache_dir: str | Path,
    class_names: list[str],
    *,
    progress: bool = True,
    log: Log | None = None,
) -> SliceIndex:
    """Normalise ``cases`` of ``index`` with ``spec``, cache them in ``cache_dir`` and index their slices.

    Cases whose cached files match their source files and ``spec`` are reused (a resumed run rebuilds
    nothing). Every file is written atomically; ``index.json`` last.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    old: dict[str, Any] = {}
    if (cache / _INDEX_FILE).is_file():
        try:
            old = json.loads((cache / _INDEX_FILE).read_text()).get("cases", {})
        except (OSError, ValueError):
            old = {}
    entries: dict[str, dict[str, Any]] = {}
    reused = 0
    dtype = np.uint8 if len(class_names) <= 256 else np.uint16
    for case in progress_bar(cases, desc="caching slices", unit="case", progress=progress, leave=False):
        fp = _fingerprint(index, case, spec)
        prev = old.get(case)
        if (
            prev is not None
            and prev.get("fingerprint") == fp
            and (cache / f"{case}_image.npy").is_file()
            and (cache / f"{case}_label.npy").is_file()
        ):
            entries[case] = prev
            reused += 1
            continue
        image, label, ref = load_case(index, case)  # (C, X, Y, Z) float32, (X, Y, Z) int64
        if label is None:
            raise UserError(f"case {case!r} of {index.root} has no label; training needs labelled cases")
        vol = normalize_volume(image, spec.intensity)
        if spec.target_spacing:
            zoom = inplane_zoom(require_spacing(ref, case), spec.axis, spec.target_spacing)
            vol, label = resample(vol, zoom, order=1), resample(label, zoom, order=0)
        lab = label.astype(dtype)
        for name, arr in ((f"{case}_image.npy", vol), (f"{case}_label.npy", lab)):
            atomic_write(cache / name, lambda f, a=arr: np.save(f, a, allow_pickle=False))
        other = tuple(a for a in range(3) if a != spec.axis)
        fg = np.flatnonzero((lab > 0).any(axis=other)).tolist()
        entries[case] = {"fingerprint": fp, "slices": num_slices(lab.shape, spec.axis), "foreground": fg}
    atomic_write_json(cache / _INDEX_FILE, {"spec": spec.to_dict(), "cases": entries})
    if log is not None:
        log(f"slices: {len(cases) - reused} case(s) normalised and cached in {cache}, {reused} reused")
    return SliceIndex(
        root=Path(index.root),
        cache_dir=cache,
        spec=spec,
        class_names=list(class_names),
        cases=list(cases),
        num_slices_of={c: int(entries[c]["slices"]) for c in cases},
        foreground_of={c: list(entries[c]["foreground"]) for c in cases},
    )


# ---------------------------------------------------------------------------------------------- dataset


class VolumeSliceDataset(SegmentationDataset):
    """Training / validation slices of a :class:`SliceIndex`, with foreground oversampling when training.

    ``foreground_ratio`` (training only): the probability that a position is replaced by a random slice
    holding foreground (seeded from (seed, epoch, position), so independent of workers); ``0`` samples the
    slices uniformly. Without any foreground slice the ratio has no effect.
    """

    def __init__(
        self, index: SliceIndex, ids: Sequence[str], *, foreground_ratio: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(index, ids, **kwargs)  # type: ignore[arg-type]
        if not 0.0 <= foreground_ratio <= 1.0:
            raise UserError(f"expected a foreground oversampling ratio in [0, 1], got {foreground_ratio}")
        cases = list(dict.fromkeys(parse_slice_id(i)[0] for i in self.ids))
        # only slices of this dataset: ids may be part of a case's slices, and the draw must stay inside them
        mine = set(self.ids)
        self.foreground_ids = [s for s in index.foreground_ids(cases) if s in mine]
        self.foreground_ratio = float(foreground_ratio) if self.train else 0.0

    def __getitem__(self, position: int) -> dict:
        sid = self.ids[position]
        if self.foreground_ratio > 0 and self.foreground_ids:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, position, 1]))
            if rng.random() < self.foreground_ratio:
                sid = self.foreground_ids[int(rng.integers(len(self.foreground_ids)))]
        return self._sample(sid, position)
