"""Recipes converting official dataset archives into the ``images/`` + ``masks/`` layout.

``prepare(name, src, dst)`` where ``src`` is a folder, a ``.zip`` archive, or several of them (zip files
found inside a source folder are extracted too, so a folder of downloaded archives works). Files are
searched recursively by their official names, so a top-level folder inside an archive does not matter.
Images are copied byte for byte (ids are the official file stems, except BUSI whose names contain
spaces); masks are written as 8-bit PNG, 0 = background, 255 = foreground. ``dst/dataset.json``
records classes, source, licence and the official subsets (``"subsets": {"train": [...], ...}``).

Recipes: ``hc18``, ``isic2017``, ``isic2018``, ``busi``, ``kvasir-seg``, ``glas`` (see docs/data.md); the
volume recipes ``msd``, ``acdc``, ``synapse`` (:mod:`medurwkv.data.prepare_volumes`) write the nnU-Net v2 raw
layout (``imagesTr/``, ``labelsTr/``, ``imagesTs/``) instead. ``.tar``/``.tar.gz``/``.tgz`` sources are
extracted like zips (MSD ships tarballs).
``fetch_hc18`` downloads HC18's training set from Zenodo, on explicit request only.
"""

from __future__ import annotations

import functools
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import UserError
from ..utils import atomic_write_json, download, progress_bar, sha256_file
from .io import check_writable, read_image, read_label_array, write_mask
from .prepare_volumes import NNUNET_SUBDIRS, VOLUME_RECIPES, VolumeConversion

__all__ = [
    "HC18_CSV_URL",
    "HC18_SHA256",
    "HC18_URL",
    "RECIPES",
    "PrepareResult",
    "fetch_hc18",
    "fill_outline",
    "prepare",
]

HC18_URL = "https://zenodo.org/records/1327317/files/training_set.zip"
HC18_CSV_URL = "https://zenodo.org/records/1327317/files/training_set_pixel_size_and_HC.csv"
# Unknown here: this project cannot reach Zenodo to hash the archive. With sha256=None the download is
# not verified; pass the hash (Zenodo shows an md5; compute sha256 once) to pin it.
HC18_SHA256: str | None = None
_FETCH_HINT = (
    "check the URL (--url / --csv-url) and the network, or download training_set.zip and "
    "training_set_pixel_size_and_HC.csv from Zenodo record 1327317 by hand and run "
    "`medurwkv data prepare hc18 training_set.zip training_set_pixel_size_and_HC.csv DST`"
)


@dataclass
class PrepareResult:
    """What a recipe wrote: ``count`` items (image/mask pairs, or volume cases) into ``dst``, plus notes."""

    dst: Path
    count: int
    subsets: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unit: str = "image/mask pairs"

    def format(self) -> str:
        lines = [f"prepared {self.count} {self.unit} in {self.dst}"]
        if self.subsets:
            lines.append("subsets: " + ", ".join(f"{k} {len(v)}" for k, v in self.subsets.items()))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------- sources


_TAR_ENDINGS = (".tar", ".tar.gz", ".tgz")


def _is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".zip") or name.endswith(_TAR_ENDINGS)


def _safe_extract(archive: Path, dest: Path) -> Path:
    if archive.name.lower().endswith(_TAR_ENDINGS):
        try:
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")  # refuses absolute paths, "..", links out, devices
        except tarfile.TarError as e:
            raise UserError(f"{archive} is not a valid tar archive or has an unsafe member ({e})") from e
        return dest
    try:
        with zipfile.ZipFile(archive) as zf:
            root = dest.resolve()
            for member in zf.namelist():
                target = (dest / member).resolve()
                if root != target and root not in target.parents:
                    raise UserError(
                        f"archive {archive} has an unsafe member path {member!r}; refusing to extract"
                    )
            zf.extractall(dest)
    except zipfile.BadZipFile as e:
        raise UserError(f"{archive} is not a valid zip archive ({e}); re-download it") from e
    return dest


def _materialize(sources: Sequence[Path], tmp: Path) -> list[Path]:
    """Folders to search: source folders, extracted zips (given or found inside folders), loose files."""
    roots: list[Path] = []
    for k, src in enumerate(sources):
        if not src.exists():
            raise FileNotFoundError(f"source {src} does not exist")
        if src.is_file():
            if _is_archive(src):
                roots.append(_safe_extract(src, tmp / f"src{k}"))
            else:
                # a single loose file (e.g. HC18's pixel-size CSV): expose it through a folder of its own
                holder = tmp / f"src{k}"
                holder.mkdir(parents=True)
                shutil.copyfile(src, holder / src.name)
                roots.append(holder)
            continue
        roots.append(src)
        for j, archive in enumerate(sorted(p for p in src.rglob("*") if p.is_file() and _is_archive(p))):
            if "__MACOSX" not in archive.parts and not archive.name.startswith("."):
                roots.append(_safe_extract(archive, tmp / f"src{k}_zip{j}"))
    return roots


def _walk(roots: Iterable[Path]) -> list[Path]:
    files = []
    for root in roots:
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).parts
            # skip macOS archive junk (__MACOSX/, ._name) and hidden files
            if "__MACOSX" in rel or any(part.startswith(".") for part in rel) or not p.is_file():
                continue
            files.append(p)
    return files


def _collect(files: Iterable[Path], pattern: str, parent: str | None = None) -> dict[tuple, Path]:
    """Files whose name fully matches ``pattern`` (and whose folder matches ``parent``), keyed by groups."""
    rx, prx = re.compile(pattern), re.compile(parent) if parent else None
    found: dict[tuple, Path] = {}
    for p in files:
        m = rx.fullmatch(p.name)
        if not m or (prx and not prx.fullmatch(p.parent.name)):
            continue
        key = m.groups()
        if key in found and not _same_file(found[key], p):
            raise UserError(
                f"ambiguous source: {found[key]} and {p} have the same name but differ; "
                "point SRC at one copy of the dataset"
            )
        found.setdefault(key, p)
    return found


def _same_file(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)


def _check_dst(dst: Path, overwrite: bool) -> None:
    check_writable(dst, "choose a writable destination folder")
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"destination {dst} is a file; choose a new folder")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(
            f"destination {dst} is not empty; choose a new folder or pass overwrite=True / --overwrite"
        )


def _prepare_dst(dst: Path, overwrite: bool, subdirs: Sequence[str] = ("images", "masks")) -> None:
    """Create the recipe's folders in ``dst``; with ``overwrite``, first remove them and dataset.json."""
    if dst.exists() and any(dst.iterdir()) and overwrite:
        for sub in subdirs:
            if (dst / sub).is_dir():
                shutil.rmtree(dst / sub)
        # splits.json is kept: load_split verifies it against the new content
        (dst / "dataset.json").unlink(missing_ok=True)
    for sub in subdirs:
        (dst / sub).mkdir(parents=True, exist_ok=True)


def _write_pair(dst: Path, sample_id: str, image: Path, mask: np.ndarray) -> None:
    """Copy the image file unchanged (keeps its bit depth) and write the label map as ``masks/<id>.png``.

    Plain writes, not atomic ones: a recipe that fails removes a new DST as a whole (see ``prepare``), and
    ``dataset.json``, written atomically after the last pair, marks a finished conversion.
    """
    shutil.copyfile(image, dst / "images" / f"{sample_id}{image.suffix.lower()}")
    write_mask(dst / "masks" / f"{sample_id}.png", mask.astype(np.uint8))


def _to_binary(path: Path, threshold: int = 128) -> np.ndarray:
    """Foreground = luminance >= threshold (for 0/255 masks, possibly RGB or lossy JPEG)."""
    arr = read_image(path)
    if arr.dtype == np.uint16:
        arr = (arr // 257).astype(np.uint8)
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return arr >= threshold


def _finish(
    dst: Path,
    meta: dict,
    count: int,
    subsets: dict[str, list[str]] | None = None,
    notes: list[str] | None = None,
) -> PrepareResult:
    """Write ``dataset.json`` (the recipe's metadata, the sample count and the official subsets)."""
    subsets = subsets or {}
    doc = {**meta, "numTraining": count}
    if subsets:
        doc["subsets"] = {k: sorted(v) for k, v in subsets.items()}
    atomic_write_json(dst / "dataset.json", doc, indent=1)
    return PrepareResult(dst, count, subsets, notes or [])


def _unpaired(images: dict[tuple, Path], masks: dict[tuple, Path]) -> list[str]:
    """Ids with a mask but no image, then ids with an image but no mask."""
    return sorted(k[0] for k in masks if k not in images) + sorted(k[0] for k in images if k not in masks)


# ----------------------------------------------------------------------------------------- HC18


def _fit_ellipse(ys: np.ndarray, xs: np.ndarray) -> np.ndarray | None:
    """Direct least-squares ellipse fit (Fitzgibbon et al. 1999, Halir & Flusser's stable form).

    Returns conic coefficients (a, b, c, d, e, f) of a x^2 + b xy + c y^2 + d x + e y + f = 0 in pixel
    coordinates, or None when the points do not determine an ellipse.
    """
    if len(xs) < 6:
        return None
    mx, my = xs.mean(), ys.mean()
    s = max(xs.std(), ys.std(), 1e-9)
    x, y = (xs - mx) / s, (ys - my) / s  # centred and scaled for conditioning
    d1 = np.stack([x * x, x * y, y * y], axis=1)  # (N, 3) quadratic part
    d2 = np.stack([x, y, np.ones_like(x)], axis=1)  # (N, 3) linear part
    s1, s2, s3 = d1.T @ d1, d1.T @ d2, d2.T @ d2
    try:
        t = -np.linalg.solve(s3, s2.T)
    except np.linalg.LinAlgError:
        return None
    m = s1 + s2 @ t
    m = np.array([m[2] / 2, -m[1], m[0] / 2])  # C1^-1 @ m for the constraint 4ac - b^2 = 1
    w, v = np.linalg.eig(m)
    v = np.real(v)
    ok = 4 * v[0] * v[2] - v[1] ** 2 > 0
    if not ok.any():
        return None
    a1 = v[:, np.flatnonzero(ok)[0]]
    a, b, c, d, e, f = np.concatenate([a1, t @ a1])
    # undo the normalisation x' = (x - mx) / s, y' = (y - my) / s
    A, B, C = a / s**2, b / s**2, c / s**2
    D = d / s - 2 * a * mx / s**2 - b * my / s**2
    E = e / s - 2 * c * my / s**2 - b * mx / s**2
    F = f + a * mx**2 / s**2 + b * mx * my / s**2 + c * my**2 / s**2 - d * mx / s - e * my / s
    return np.array([A, B, C, D, E, F])


def _ellipse_interior(coef: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    a, b, c, d, e, f = coef
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    val = a * xx * xx + b * xx * yy + c * yy * yy + d * xx + e * yy + f
    # the centre solves the gradient = 0 system; inside points share the sign of the conic there
    cx, cy = np.linalg.solve(np.array([[2 * a, b], [b, 2 * c]]), np.array([-d, -e]))
    centre = a * cx * cx + b * cx * cy + c * cy * cy + d * cx + e * cy + f
    return np.sign(val) == np.sign(centre)


def fill_outline(outline: np.ndarray) -> tuple[np.ndarray, str]:
    """Fill a 1-px ellipse outline (bool (H, W)) into a mask (outline pixels included).

    Closed contours: ``binary_fill_holes`` (4-connected background cannot leak through an 8-connected
    curve). Contours cut by the image border: the background components that touch the border are
    classified by an ellipse fitted to the outline pixels (a component more than half inside the fit is
    interior), which closes the contour against the border while keeping the drawn boundary exactly.
    Contours with gaps (nothing enclosed) fall back to the filled fitted ellipse. Returns the mask and
    the method used: ``"fill_holes"``, ``"border_closed"`` or ``"ellipse_fit"``.
    """
    outline = np.asarray(outline, dtype=bool)
    if not outline.any():
        raise UserError("outline is empty: no annotation pixels")
    filled = ndi.binary_fill_holes(outline)
    touches = outline[0].any() or outline[-1].any() or outline[:, 0].any() or outline[:, -1].any()
    if not touches and filled.sum() > outline.sum():
        return filled, "fill_holes"
    ys, xs = np.nonzero(outline)
    coef = _fit_ellipse(ys.astype(np.float64), xs.astype(np.float64))
    if coef is None:
        return filled, "fill_holes"
    inside = _ellipse_interior(coef, outline.shape)
    labels, n = ndi.label(~outline)  # 4-connected background components
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]
    method = "fill_holes"
    if n and border.size:
        frac = ndi.mean(inside, labels, border)  # fraction of each border component inside the fit
        interior = border[np.asarray(frac) > 0.5]
        if interior.size:
            filled = filled | np.isin(labels, interior)
            method = "border_closed"
    if filled.sum() <= outline.sum():
        # open contour away from the border (a gap): use the fitted ellipse itself
        return outline | inside, "ellipse_fit"
    return filled, method


def _recipe_hc18(files: list[Path], dst: Path, progress: bool) -> PrepareResult:
    images = _collect(files, r"(\d{3}_\d*HC)\.png")
    annots = _collect(files, r"(\d{3}_\d*HC)_Annotation\.png")
    if not annots:
        raise UserError(
            "no HC18 annotations (NNN_HC_Annotation.png) found in the source; expected the official "
            "training_set.zip (or its extracted training_set/ folder)"
        )
    orphans = sorted(k[0] for k in annots if k not in images)
    if orphans:
        raise UserError(
            f"{len(orphans)} annotations have no image (e.g. {orphans[:5]}); the archive is incomplete"
        )
    notes = []
    skipped = [k[0] for k in images if k not in annots]
    if skipped:
        notes.append(
            f"skipped {len(skipped)} images without annotation (HC18's test set has no public labels)"
        )
    methods: dict[str, list[str]] = {}
    for key in progress_bar(sorted(annots), desc="hc18", progress=progress, leave=False):
        sid = key[0]
        outline_img = read_image(annots[key])
        outline = (outline_img.max(axis=-1) if outline_img.ndim == 3 else outline_img) > 127
        mask, method = fill_outline(outline)
        methods.setdefault(method, []).append(sid)
        _write_pair(dst, sid, images[key], mask)
    for method in ("border_closed", "ellipse_fit"):
        if methods.get(method):
            notes.append(f"{method}: {', '.join(methods[method])}")
    csvs = _collect(files, r"(training_set_pixel_size_and_HC\.csv)")
    if csvs:
        shutil.copyfile(next(iter(csvs.values())), dst / "training_set_pixel_size_and_HC.csv")
    else:
        notes.append(
            "training_set_pixel_size_and_HC.csv not found: no pixel spacing (download it from Zenodo "
            "record 1327317 and pass it as a second SRC)"
        )
    meta = {
        "name": "HC18",
        "description": "HC18 fetal head circumference ultrasound, training set; masks = filled head ellipse",
        "labels": {"background": 0, "head": 1},
        "channel_names": {"0": "ultrasound"},
        "split_group": r"^(\d{3})_",
        "reference": "van den Heuvel et al., PLoS ONE 13(8):e0200412, 2018; doi:10.5281/zenodo.1327317",
        "licence": "CC BY 4.0",
        "recipe": "hc18",
    }
    return _finish(dst, meta, len(annots), notes=notes)


# ----------------------------------------------------------------------------------------- ISIC


def _recipe_isic(files: list[Path], dst: Path, progress: bool, *, year: int) -> PrepareResult:
    if year == 2018:
        img_dir, gt_dir = r"ISIC2018_Task1-2_(\w+)_Input", r"ISIC2018_Task1_(\w+)_GroundTruth"
    else:
        img_dir, gt_dir = r"ISIC-2017_(\w+)_Data", r"ISIC-2017_(\w+)_Part1_GroundTruth"
    images = _collect(files, r"(ISIC_\d+)\.jpg", img_dir)
    masks = _collect(files, r"(ISIC_\d+)_segmentation\.png", gt_dir)
    if not masks:
        gt_glob = gt_dir.replace(r"(\w+)", "*")
        raise UserError(
            f"no ISIC {year} ground truth (ISIC_NNNNNNN_segmentation.png inside {gt_glob}/) found in the "
            "source; pass the extracted folders or the official zips"
        )
    orphans = sorted(k[0] for k in masks if k not in images)
    if orphans:
        raise UserError(
            f"{len(orphans)} ISIC masks have no input image (e.g. {orphans[:5]}); add the _Input zips"
        )
    notes = []
    skipped = [k for k in images if k not in masks]
    if skipped:
        notes.append(f"skipped {len(skipped)} images without ground truth")
    subsets: dict[str, list[str]] = {}
    rx = re.compile(gt_dir)
    for key in progress_bar(sorted(masks), desc=f"isic{year}", progress=progress, leave=False):
        sid = key[0]
        m = rx.fullmatch(masks[key].parent.name)
        subset = {"training": "train", "validation": "val"}.get(m.group(1).lower(), "test") if m else "train"
        subsets.setdefault(subset, []).append(sid)
        _write_pair(dst, sid, images[key], _to_binary(masks[key]))
    meta = {
        "name": f"ISIC{year}",
        "description": f"ISIC {year} {'Task 1' if year == 2018 else 'Part 1'} skin lesion segmentation",
        "labels": {"background": 0, "lesion": 1},
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "reference": "ISIC Challenge, https://challenge.isic-archive.com",
        "licence": "CC BY-NC",
        "recipe": f"isic{year}",
    }
    return _finish(dst, meta, len(masks), subsets, notes)


# ----------------------------------------------------------------------------------------- BUSI


def _recipe_busi(files: list[Path], dst: Path, progress: bool) -> PrepareResult:
    images = _collect(files, r"(benign|malignant|normal) \((\d+)\)\.png")
    masks: dict[tuple, list[Path]] = {}
    for p in files:
        m = re.fullmatch(r"(benign|malignant|normal) \((\d+)\)_mask(?:_\d+)?\.png", p.name)
        if m:
            masks.setdefault(m.groups(), []).append(p)
    if not images:
        raise UserError(
            "no BUSI images ('benign (1).png' ...) found in the source; expected Dataset_BUSI_with_GT/"
            "{benign,malignant,normal}/"
        )
    notes = []
    missing = sorted(f"{c} ({n})" for c, n in images if (c, n) not in masks)
    if missing:
        raise UserError(f"{len(missing)} BUSI images have no _mask.png (e.g. {missing[:5]})")
    subsets: dict[str, list[str]] = {}
    multi = 0
    for key in progress_bar(
        sorted(images, key=lambda k: (k[0], int(k[1]))), desc="busi", progress=progress, leave=False
    ):
        cls, num = key
        sid = f"{cls}_{int(num):03d}"
        shape = read_image(images[key]).shape[:2]
        union = np.zeros(shape, dtype=bool)
        for mp in sorted(masks[key]):
            part = _to_binary(mp)
            if part.shape != shape:
                raise UserError(f"BUSI mask {mp} is {part.shape} but its image is {shape} (HxW)")
            union |= part  # several lesions come as _mask.png, _mask_1.png, ...: take the union
        multi += len(masks[key]) > 1
        subsets.setdefault(cls, []).append(sid)
        _write_pair(dst, sid, images[key], union)
    if multi:
        notes.append(f"{multi} images have several lesion masks (_mask_N.png): merged by union")
    notes.append("ids are <class>_<NNN> (BUSI names contain spaces); 'normal' images have empty masks")
    meta = {
        "name": "BUSI",
        "description": "Breast ultrasound images (Al-Dhabyani et al.), benign/malignant/normal; lesion masks",
        "labels": {"background": 0, "lesion": 1},
        "channel_names": {"0": "ultrasound"},
        "reference": "Al-Dhabyani et al., Data in Brief 28:104863, 2020",
        "licence": "CC BY 4.0",
        "recipe": "busi",
    }
    return _finish(dst, meta, len(images), subsets, notes)


# ----------------------------------------------------------------------------------------- Kvasir-SEG


def _recipe_kvasir(files: list[Path], dst: Path, progress: bool) -> PrepareResult:
    images = _collect(files, r"([^/]+)\.jpg", "images")
    masks = _collect(files, r"([^/]+)\.jpg", "masks")
    if not masks:
        raise UserError(
            "no Kvasir-SEG masks found; expected Kvasir-SEG/images/*.jpg and Kvasir-SEG/masks/*.jpg"
        )
    orphans = _unpaired(images, masks)
    if orphans:
        raise UserError(f"{len(orphans)} Kvasir-SEG files are unpaired (e.g. {orphans[:5]})")
    for key in progress_bar(sorted(masks), desc="kvasir-seg", progress=progress, leave=False):
        sid = key[0]
        mask = _to_binary(masks[key], threshold=128)  # JPEG masks: threshold at 128
        _write_pair(dst, sid, images[key], mask)
    meta = {
        "name": "Kvasir-SEG",
        "description": "Kvasir-SEG polyp segmentation (Jha et al. 2020); JPEG masks thresholded at 128",
        "labels": {"background": 0, "polyp": 1},
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "reference": "Jha et al., MMM 2020, https://datasets.simula.no/kvasir-seg/",
        "licence": "research and educational use",
        "recipe": "kvasir-seg",
    }
    return _finish(dst, meta, len(masks))


# ----------------------------------------------------------------------------------------- GlaS


def _recipe_glas(files: list[Path], dst: Path, progress: bool) -> PrepareResult:
    images = _collect(files, r"((train|testA|testB)_\d+)\.bmp")
    masks = _collect(files, r"((train|testA|testB)_\d+)_anno\.bmp")
    if not masks:
        raise UserError(
            "no GlaS annotations (train_N_anno.bmp) found; expected the 'Warwick QU Dataset (Released "
            "2016_07_08)' folder"
        )
    unpaired = _unpaired(images, masks)
    if unpaired:
        raise UserError(f"{len(unpaired)} GlaS files are unpaired (e.g. {unpaired[:5]})")
    subsets: dict[str, list[str]] = {}
    for key in progress_bar(sorted(masks), desc="glas", progress=progress, leave=False):
        sid, subset = key
        labels = read_label_array(masks[key])  # instance labels: 0 background, 1..N glands
        subsets.setdefault(subset, []).append(sid)
        _write_pair(dst, sid, images[key], labels > 0)
    grade = _collect(files, r"(Grade\.csv)")
    if grade:
        shutil.copyfile(next(iter(grade.values())), dst / "Grade.csv")
    meta = {
        "name": "GlaS",
        "description": "GlaS@MICCAI 2015 gland segmentation (Warwick-QU); instance labels merged to gland",
        "labels": {"background": 0, "gland": 1},
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "reference": "Sirinukunwattana et al., Medical Image Analysis 35:489-502, 2017",
        "licence": "research use",
        "recipe": "glas",
    }
    return _finish(dst, meta, len(masks), subsets)


def _volume_recipe(convert: Callable[[list[Path], Path, bool], VolumeConversion]):
    """A volume conversion (prepare_volumes) as a recipe: its result goes through ``_finish``."""

    def run(files: list[Path], dst: Path, progress: bool) -> PrepareResult:
        done = convert(files, dst, progress)
        result = _finish(dst, done.meta, done.count, done.subsets, done.notes)
        result.unit = "cases"
        return result

    return run


RECIPES: dict[str, Callable[[list[Path], Path, bool], PrepareResult]] = {
    "hc18": _recipe_hc18,
    "isic2017": lambda f, d, p: _recipe_isic(f, d, p, year=2017),
    "isic2018": lambda f, d, p: _recipe_isic(f, d, p, year=2018),
    "busi": _recipe_busi,
    "kvasir-seg": _recipe_kvasir,
    "glas": _recipe_glas,
    **{name: _volume_recipe(convert) for name, convert in VOLUME_RECIPES.items()},
}
# folders a recipe writes in DST (created, and replaced with overwrite); images/ + masks/ unless listed
_RECIPE_SUBDIRS: dict[str, tuple[str, ...]] = {name: NNUNET_SUBDIRS for name in VOLUME_RECIPES}


def prepare(
    name: str,
    src: str | Path | Sequence[str | Path],
    dst: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Convert an official archive layout into ``dst/images``, ``dst/masks`` and ``dst/dataset.json``.

    ``src``: folder(s) and/or .zip / .tar[.gz] archive(s) (extracted to a temporary folder). ``dst`` must be
    empty or absent (``overwrite=True`` replaces its images/, masks/ and dataset.json, or imagesTr/, labelsTr/,
    imagesTs/ for the volume recipes; a splits.json is kept and re-verified when loaded). If the recipe fails
    on a new DST, the partial output is removed.
    """
    key = name.lower()
    if key not in RECIPES:
        raise UserError(f"unknown dataset recipe {name!r}; available: {', '.join(sorted(RECIPES))}")
    sources = [Path(s).expanduser() for s in ([src] if isinstance(src, (str, Path)) else src)]
    dst = Path(dst).expanduser()
    for s in sources:
        if s.is_dir() and (dst.resolve() == s.resolve() or s.resolve() in dst.resolve().parents):
            raise UserError(f"destination {dst} must not be inside the source {s}")
    _check_dst(dst, overwrite)  # fail fast, before extracting anything
    with tempfile.TemporaryDirectory(prefix="medurwkv-prepare-") as tmp:
        files = _walk(_materialize(sources, Path(tmp)))
        fresh = not dst.exists() or not any(dst.iterdir())
        _prepare_dst(dst, overwrite, _RECIPE_SUBDIRS.get(key, ("images", "masks")))
        try:
            return RECIPES[key](files, dst, progress)
        except BaseException:
            if fresh:  # leave no half-written dataset behind, so a corrected re-run can use DST again
                shutil.rmtree(dst, ignore_errors=True)
            raise


# ----------------------------------------------------------------------------------------- download


def fetch_hc18(
    dst: str | Path,
    *,
    url: str = HC18_URL,
    sha256: str | None = HC18_SHA256,
    csv_url: str | None = HC18_CSV_URL,
    csv_sha256: str | None = None,
    download_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download HC18's training set (Zenodo record 1327317) and prepare it into ``dst``; returns ``dst``.

    Only ever called on explicit request (``medurwkv data fetch hc18 DST``). ``download_dir`` keeps the
    downloaded files (reused on the next call); by default they go to a temporary folder. The pixel-size
    CSV is a separate file on Zenodo (``csv_url``; None skips it). A failed download (network, HTTP
    status, checksum) raises :class:`~medurwkv.errors.DownloadError` saying how to get the files by hand.
    """
    dst = Path(dst).expanduser()
    with tempfile.TemporaryDirectory(prefix="medurwkv-fetch-") as tmp:
        where = Path(download_dir).expanduser() if download_dir is not None else Path(tmp)
        get = functools.partial(download, progress=progress, timeout=timeout, hint=_FETCH_HINT)
        sources = [get(url, where / "training_set.zip", sha256=sha256)]
        if csv_url:
            sources.append(get(csv_url, where / "training_set_pixel_size_and_HC.csv", sha256=csv_sha256))
        prepare("hc18", sources, dst, overwrite=overwrite, progress=progress)
    return dst
