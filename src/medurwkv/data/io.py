"""Reading and writing 2D images and label masks.

Images are returned as numpy arrays in their stored dtype (uint8, uint16 or float32), shaped (H, W) for
single-channel files and (H, W, C) otherwise. RGBA / LA lose their alpha channel, palette images become RGB.
Masks are returned as int64 label maps (H, W); a mask whose values are a subset of {0, 255} (or {0, 65535}
for 16-bit files) is a binary mask and is mapped to {0, 1}.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from ..errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "check_writable",
    "image_hash",
    "is_image_file",
    "read_image",
    "read_label_array",
    "read_mask",
    "write_mask",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_TIFF = (".tif", ".tiff")
# PIL modes that are converted to RGB for images (their channels are not plain intensities).
_TO_RGB_MODES = {"P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"}


class ImageReadError(UserError):
    """A file exists but cannot be decoded as a supported 2D image or label mask."""


def is_image_file(path: str | Path) -> bool:
    """True for visible files with a supported image extension (case-insensitive)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _check_path(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {p} does not exist (or is not a regular file)")
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ImageReadError(
            f"{what} file {p} has unsupported extension {p.suffix!r}; expected one of "
            f"{', '.join(IMAGE_EXTENSIONS)} (convert the file to PNG)"
        )
    return p


def _png_is_16bit_colour(path: Path) -> bool:
    """Peek at the PNG header: 16-bit RGB/RGBA files are not decoded losslessly by Pillow."""
    with open(path, "rb") as f:
        head = f.read(26)
    # signature (8) + IHDR length (4) + "IHDR" (4) + width (4) + height (4) + bit depth (1) + colour type (1)
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _read_cv2_16bit(path: Path) -> np.ndarray:
    import cv2  # albumentations depends on OpenCV; imported lazily because only this rare case needs it

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(f"cannot decode 16-bit colour PNG {path}; re-export it as 16-bit TIFF")
    # OpenCV returns BGR(A); report RGB(A) like every other reader here.
    return arr[..., [2, 1, 0, 3]] if arr.shape[-1] == 4 else arr[..., ::-1]


def _read_tiff(path: Path) -> np.ndarray:
    arr = np.asarray(tifffile.imread(path))
    if arr.ndim == 3 and arr.shape[0] <= 4 and arr.shape[2] > 4:
        # planar (C, H, W) layout written without an RGB photometric tag: move channels last
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3):
        raise ImageReadError(
            f"TIFF {path} has shape {arr.shape}; expected a single 2D image (H, W) or (H, W, C), "
            "not a stack or volume; save one 2D slice per file"
        )
    return arr


def _read_raw(path: Path, what: str) -> tuple[np.ndarray, str]:
    """Decode a file into an array and a mode tag ('pil:<MODE>' or 'tiff' / 'cv2')."""
    try:
        if path.suffix.lower() in _TIFF:
            return _read_tiff(path), "tiff"
        if path.suffix.lower() == ".png" and _png_is_16bit_colour(path):
            return _read_cv2_16bit(path), "cv2"
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if what == "image" and mode in _TO_RGB_MODES:
                im = im.convert("RGBA" if "A" in mode or "transparency" in im.info else "RGB")
                mode = im.mode
            elif what == "image" and mode == "1":
                im = im.convert("L")  # bilevel -> 0/255
                mode = "L"
            arr = np.asarray(im)
            return arr, f"pil:{mode}"
    except ImageReadError:
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        ValueError,
        SyntaxError,
        tifffile.TiffFileError,
    ) as e:
        raise ImageReadError(
            f"cannot read {what} {path}: {type(e).__name__}: {e}; the file is corrupt, truncated or not "
            f"really a {path.suffix} file; re-export or remove it"
        ) from e


def _normalise_dtype(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.uint8) * (255 if what == "image" else 1)
    if arr.dtype in (np.uint8, np.uint16, np.float32):
        return arr
    if arr.dtype == np.float64 or arr.dtype == np.float16:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo >= 0 and hi <= 255:
            return arr.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16)
        raise ImageReadError(
            f"{what} {path} has dtype {arr.dtype} with values in [{lo}, {hi}]; expected uint8, uint16 or "
            "float; rescale it to 0..65535 (e.g. window CT values) and save as 16-bit PNG/TIFF"
        )
    raise ImageReadError(f"{what} {path} has unsupported dtype {arr.dtype}; expected uint8, uint16 or float")


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2D image as (H, W) or (H, W, C) in its stored dtype (uint8, uint16 or float32).

    Gray (and gray+alpha) files give (H, W); RGB/RGBA/palette files give (H, W, 3) (alpha dropped);
    other channel counts (e.g. multi-channel TIFF) are kept. 16-bit PNG/TIFF stay uint16.
    Raises ``FileNotFoundError`` for a missing file and ``ImageReadError`` (a ``UserError``) for an
    undecodable or unsupported one, naming the file.
    """
    p = _check_path(path, "image")
    arr, mode = _read_raw(p, "image")
    if mode in ("pil:LA", "pil:La"):
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]  # RGBA -> RGB: alpha is not image content
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    arr = _normalise_dtype(arr, p, "image")
    return np.ascontiguousarray(arr)


def read_label_array(path: str | Path) -> np.ndarray:
    """Read a label file as stored, without any value remapping: (H, W) integer array.

    Palette PNGs give their palette indices (the usual way to store colour-displayed label maps);
    gray-looking RGB(A) files (all colour channels equal) give one channel. Colour-coded masks
    (R, G, B differ) are rejected with an explanation.
    """
    p = _check_path(path, "mask")
    arr, mode = _read_raw(p, "mask")
    if arr.ndim == 3:
        if mode in ("pil:LA", "pil:La", "pil:PA"):
            arr = arr[..., 0]
        else:
            colour = arr[..., :3] if arr.shape[-1] >= 3 else arr
            if colour.shape[-1] > 1 and not all(
                np.array_equal(colour[..., 0], colour[..., c]) for c in range(1, colour.shape[-1])
            ):
                raise ImageReadError(
                    f"mask {p} is a colour image {arr.shape} whose channels differ; expected a label map "
                    "(one integer class per pixel, e.g. 8-bit gray PNG with 0=background, 1..K-1=classes); "
                    "convert colour-coded masks to class indices"
                )
            arr = colour[..., 0]
    arr = _normalise_dtype(arr, p, "mask")
    if arr.dtype == np.float32:
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ImageReadError(
                f"mask {p} has non-integer float values; expected integer class labels; "
                "round/threshold it and save as 8-bit PNG"
            )
        if arr.size and arr.min() < 0:
            raise ImageReadError(f"mask {p} has negative values; expected class labels >= 0")
        arr = arr.astype(np.int64)
    return arr


def _present_values(arr: np.ndarray) -> np.ndarray:
    if arr.dtype in (np.uint8, np.uint16):
        # bincount is several times faster than np.unique for small integer dtypes
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=1))
    return np.unique(arr)


def read_mask(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """Read a label mask as int64 (H, W).

    A mask whose values are a subset of {0, 255} (8-bit) or {0, 65535} (16-bit) is binary and is mapped to
    {0, 1}; any other mask is taken as a label map as is. With ``num_classes`` every value must lie in
    ``0..num_classes-1``, otherwise a ``UserError`` names the file and the offending values.
    """
    arr = read_label_array(path)
    values = _present_values(arr)
    full = 65535 if arr.dtype == np.uint16 else 255
    if values.size and set(values.tolist()) <= {0, full}:
        out = (arr == full).astype(np.int64)
        values = (values == full).astype(np.int64)
    else:
        out = arr.astype(np.int64)
    if num_classes is not None:
        bad = values[values >= num_classes]
        if bad.size:
            p = Path(path)
            hint = (
                " JPEG masks are lossy: threshold them into a PNG label map (see `medurwkv data prepare`)."
                if p.suffix.lower() in (".jpg", ".jpeg")
                else ""
            )
            raise UserError(
                f"mask {p} has label values {bad[:10].tolist()} but the dataset has {num_classes} classes "
                f"(expected values 0..{num_classes - 1}); fix the mask or declare the classes in "
                f'dataset.json ("labels": {{"background": 0, ...}}).{hint}'
            )
    return out


def write_mask(path: str | Path, mask: np.ndarray, *, binary_as_255: bool = True) -> Path:
    """Write a label map as PNG: binary masks as 0/255 (viewable), others as uint8 (or uint16) labels."""
    p = Path(path)
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {m.shape}")
    if m.size and m.min() < 0:
        raise ValueError(f"mask values must be >= 0, got min {m.min()}")
    hi = int(m.max()) if m.size else 0
    if binary_as_255 and hi <= 1:
        out = (m > 0).astype(np.uint8) * 255
    elif hi <= 255:
        out = m.astype(np.uint8)
    elif hi <= 65535:
        out = m.astype(np.uint16)
    else:
        raise ValueError(f"mask has label {hi}; PNG label maps hold at most 65535")
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out).save(p)
    return p


def image_hash(array: np.ndarray) -> str:
    """Content hash of decoded pixels (shape, dtype and values), for duplicate detection."""
    h = hashlib.sha1(f"{array.shape}{array.dtype}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def check_writable(path: str | Path, hint: str) -> None:
    """Raise ``PermissionError`` when ``path`` (or its nearest existing ancestor) is a read-only folder.

    The permission bits are respected even for root, who could write anyway: shared data folders are
    marked read-only on purpose and must not receive generated files.
    """
    p = Path(path)
    existing = next((q for q in (p, *p.parents) if q.exists()), None)
    if existing is None:
        return
    folder = existing if existing.is_dir() else existing.parent
    mode = folder.stat().st_mode
    if not (mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) or not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {p}: folder {folder} is read-only; {hint}")
