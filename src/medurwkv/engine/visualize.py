"""Overlays of predictions and ground truth on images, PNG writing, and best/median/worst case thumbnails.

Colour convention (used by predict, evaluate and the HTML report):

* prediction: warm palette :data:`PRED_PALETTE` (class 1 red, 2 orange, 3 magenta, ...), drawn as a filled
  translucent area plus its outline (``mode="fill"``) or as an outline only (``mode="contour"``);
* ground truth: cool palette :data:`GT_PALETTE` (class 1 green, 2 cyan, 3 blue, ...), always an outline, drawn
  *under* the prediction outline so that where both coincide the prediction colour shows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..utils import atomic_write

# index = class label; background (0) is never drawn
PRED_PALETTE: np.ndarray = np.array(
    [[0, 0, 0], [255, 40, 40], [255, 150, 0], [230, 0, 230], [255, 235, 0], [160, 60, 20], [255, 120, 160]],
    dtype=np.uint8,
)
GT_PALETTE: np.ndarray = np.array(
    [[0, 0, 0], [0, 230, 60], [0, 220, 255], [60, 110, 255], [160, 255, 120], [0, 140, 120], [180, 160, 255]],
    dtype=np.uint8,
)
# colorize_mask: distinct colours for label maps shown on their own
MASK_PALETTE: np.ndarray = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
    ],
    dtype=np.uint8,
)


def _palette_color(palette: np.ndarray, label: int) -> np.ndarray:
    # cycle over the non-background entries when there are more classes than colours
    n = len(palette) - 1
    return palette[1 + (label - 1) % n] if label > 0 else palette[0]


def palette_hex(palette: np.ndarray, label: int) -> str:
    """The CSS colour ``"#rrggbb"`` that :func:`overlay` draws class ``label`` with (for legends)."""
    r, g, b = (int(v) for v in _palette_color(palette, int(label)))
    return f"#{r:02x}{g:02x}{b:02x}"


def to_display(image: Any) -> np.ndarray:
    """Any ``(H, W)`` or ``(H, W, 1|3|4)`` image (uint8, 16-bit, float, bool) -> ``(H, W, 3)`` uint8.

    uint8 is kept as is; other dtypes are scaled linearly from their 0.5th to 99.5th percentile to 0..255
    (robust to a few hot pixels), a constant image becomes black. Alpha channels are dropped.
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(
            f"expected an image of shape (H, W) or (H, W, 1|3|4), got {a.shape}; move channels last"
        )
    if a.dtype != np.uint8:
        f = a.astype(np.float64)
        finite = np.isfinite(f)
        if not finite.any():
            f = np.zeros_like(f)
        else:
            lo, hi = np.percentile(f[finite], [0.5, 99.5])
            if a.dtype == bool or hi <= lo:
                lo, hi = float(f[finite].min()), float(f[finite].max())
            f = np.where(finite, f, lo)
            f = np.zeros_like(f) if hi <= lo else (np.clip(f, lo, hi) - lo) / (hi - lo) * 255.0
        a = np.round(f).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return np.ascontiguousarray(a)


def _as_labels(name: str, mask: Any, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != shape:
        raise ValueError(f"expected {name} of shape {shape} (same as the image), got {m.shape}")
    return m.astype(np.int64)


def _outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    edge = mask & ~ndimage.binary_erosion(mask)
    if thickness > 1:
        edge = ndimage.binary_dilation(edge, iterations=thickness - 1) & mask
    return edge


def default_thickness(shape: Sequence[int]) -> int:
    """Outline thickness in pixels that stays visible once the image is shown ~300 px wide."""
    return max(1, int(round(max(shape[:2]) / 300)))


def overlay(
    image: Any,
    pred: Any | None,
    gt: Any | None = None,
    *,
    alpha: float = 0.4,
    mode: str = "contour",
    thickness: int | None = None,
) -> np.ndarray:
    """Draw a predicted and/or ground-truth label map over an image.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` image of any dtype (normalised with :func:`to_display`).
        pred: ``(H, W)`` integer labels or ``None``; drawn with :data:`PRED_PALETTE`.
        gt: ``(H, W)`` integer labels or ``None``; outlined with :data:`GT_PALETTE`.
        alpha: opacity of the prediction fill in ``mode="fill"``.
        mode: ``"contour"`` (prediction outlined) or ``"fill"`` (prediction filled with ``alpha``, and
            outlined).
        thickness: outline width in pixels (default grows with the image size, see :func:`default_thickness`).

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    if mode not in ("contour", "fill"):
        raise ValueError(f"expected mode 'contour' or 'fill', got {mode!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"expected 0 <= alpha <= 1, got {alpha}")
    out = to_display(image).astype(np.float32)
    shape = out.shape[:2]
    t = default_thickness(shape) if thickness is None else int(thickness)
    if t < 1:
        raise ValueError(f"expected thickness >= 1, got {thickness}")
    p = _as_labels("pred", pred, shape) if pred is not None else None
    g = _as_labels("gt", gt, shape) if gt is not None else None
    if g is not None:
        for c in np.unique(g):
            if c > 0:
                out[_outline(g == c, t)] = _palette_color(GT_PALETTE, int(c))
    if p is not None:
        for c in np.unique(p):
            if c <= 0:
                continue
            m = p == c
            col = _palette_color(PRED_PALETTE, int(c)).astype(np.float32)
            if mode == "fill":
                out[m] = (1.0 - alpha) * out[m] + alpha * col
            out[_outline(m, t)] = col
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def colorize_mask(mask: Any, palette: np.ndarray | None = None) -> np.ndarray:
    """``(H, W)`` integer label map -> ``(H, W, 3)`` uint8 RGB (background black, palette cycled)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {m.shape}")
    m = m.astype(np.int64)
    if m.size and m.min() < 0:
        raise ValueError(f"expected non-negative labels, got min {m.min()}")
    pal = MASK_PALETTE if palette is None else np.asarray(palette, dtype=np.uint8)
    n = len(pal) - 1
    idx = np.where(m > 0, 1 + (m - 1) % n, 0)
    return pal[idx]


def save_png(path: str | Path, array: Any) -> Path:
    """Write ``(H, W)`` or ``(H, W, 3)`` as an 8-bit PNG, atomically (non-uint8 input goes through
    :func:`to_display`)."""
    from PIL import Image  # lazy: PIL is only needed when writing

    a = np.asarray(array)
    if a.dtype != np.uint8 or (a.ndim == 3 and a.shape[-1] != 3):
        a = to_display(a)
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (H, W, 3), got {a.shape}")
    img = Image.fromarray(np.ascontiguousarray(a))
    return atomic_write(path, lambda f: img.save(f, format="PNG"))


CASE_KINDS: tuple[str, ...] = ("best", "median", "worst")


def select_cases(rows: Sequence[Mapping[str, Any]], key: str = "dice_mean") -> dict[str, str]:
    """Ids of the best, median and worst images by ``row[key]`` (higher is better; NaN rows skipped).

    The median is the lower median (sorted ascending, index ``(n - 1) // 2``); ties keep the input order.
    """
    scored = []
    for i, r in enumerate(rows):
        v = r.get(key)
        try:
            f = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            scored.append((f, i, str(r["id"])))
    if not scored:
        return {}
    scored.sort()
    return {"worst": scored[0][2], "median": scored[(len(scored) - 1) // 2][2], "best": scored[-1][2]}


def safe_id(case_id: str) -> str:
    """A file-name-safe version of an image id (used in ``cases/<kind>_<id>.png``)."""
    return re.sub(r"[^0-9A-Za-z._-]+", "_", str(case_id)).strip("._") or "case"


def _fit(rgb: np.ndarray, max_side: int, min_side: int) -> np.ndarray:
    """Shrink (Lanczos) to ``max_side``, or enlarge small images by an integer factor to ``min_side``.

    Enlarging here keeps 1-pixel outlines crisp; left to the browser, a 96 px overlay shown 350 px wide blurs.
    """
    from PIL import Image

    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    if max(h, w) < min_side:
        f = min(math.ceil(min_side / max(h, w)), max(1, max_side // max(h, w)))
        return np.repeat(np.repeat(rgb, f, axis=0), f, axis=1)
    return rgb


def save_case_thumbnails(
    out_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    images: Mapping[str, Any] | Callable[[str], Any],
    preds: Mapping[str, Any] | Callable[[str], Any],
    gts: Mapping[str, Any] | Callable[[str], Any] | None = None,
    *,
    key: str = "dice_mean",
    max_side: int = 512,
    min_side: int = 256,
    mode: str = "contour",
) -> dict[str, Path]:
    """Write ``out_dir/{best,median,worst}_<id>.png`` overlays for the report (what evaluate should call).

    Args:
        out_dir: usually ``RUN_DIR/eval/<split>/cases``; old ``best_*/median_*/worst_*.png`` there are
            removed.
        rows: per-image rows (``MetricAccumulator.per_image_rows()`` or ``read_per_image_csv``), with ``"id"``
            and ``key``.
        images, preds, gts: id -> array, as a mapping or a loader function; only the (up to) three selected
            ids are looked up, so evaluate can call :func:`select_cases` first and keep only those in memory.
        key: column ranking the images (higher is better).
        max_side: thumbnails are shrunk (after drawing, outlines sized for the original) to this longest side.
        min_side: smaller overlays are enlarged by an integer factor (nearest neighbour) to reach this side.
        mode: passed to :func:`overlay`.

    Returns:
        ``{kind: path}`` for the kinds written (one image can be best, median and worst at once).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for kind in CASE_KINDS:
        for old in out.glob(f"{kind}_*.png"):
            old.unlink()

    def get(src: Mapping[str, Any] | Callable[[str], Any] | None, cid: str) -> Any:
        if src is None:
            return None
        return src(cid) if callable(src) else src[cid]

    written: dict[str, Path] = {}
    for kind, cid in select_cases(rows, key).items():
        img = get(images, cid)
        rgb = overlay(img, get(preds, cid), get(gts, cid), mode=mode)
        written[kind] = save_png(out / f"{kind}_{safe_id(cid)}.png", _fit(rgb, max_side, min_side))
    return written


def busiest_slice(gt: np.ndarray, pred: np.ndarray, axis: int) -> int:
    """The slice along ``axis`` with the most ground-truth foreground (else predicted foreground, else the
    middle slice): the one a thumbnail of a volume shows."""
    other = tuple(a for a in range(3) if a != axis)
    for vol in (gt, pred):
        area = (np.asarray(vol) > 0).sum(axis=other)
        if area.any():
            return int(area.argmax())
    return gt.shape[axis] // 2


def save_volume_thumbnails(
    out_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    images: Callable[[str], np.ndarray],
    preds: Callable[[str], np.ndarray],
    gts: Callable[[str], np.ndarray],
    *,
    axis: int,
    mode: str = "contour",
) -> dict[str, Path]:
    """:func:`save_case_thumbnails` for volumes: the best, median and worst cases by their Dice averaged over
    the evaluated classes (``rows``: ``VolumeMetrics.per_case_rows()``), each shown at its
    :func:`busiest_slice` along ``axis``; ``images`` / ``preds`` / ``gts`` load a case's (X, Y, Z) volume.
    The colours are those of the module docstring, one per class (the report prints the legend)."""
    per_case: dict[str, list[float]] = {}
    for r in rows:
        per_case.setdefault(str(r["case_id"]), []).append(float(r["dice"]))
    ranked = [
        {"id": c, "dice_mean": float(np.nanmean(v)) if np.isfinite(v).any() else math.nan}
        for c, v in per_case.items()
    ]
    cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def sliced(cid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if cid not in cache:
            g, p = gts(cid), preds(cid)
            k = busiest_slice(g, p, axis)
            cache[cid] = tuple(np.take(v, k, axis=axis) for v in (images(cid), p, g))  # type: ignore[assignment]
        return cache[cid]

    return save_case_thumbnails(
        out_dir,
        ranked,
        images=lambda c: sliced(c)[0],
        preds=lambda c: sliced(c)[1],
        gts=lambda c: sliced(c)[2],
        mode=mode,
    )
