"""Segmentation metrics for 2D label maps: Dice, IoU, precision, recall, HD95 and ASSD.

Everything here works on integer label maps ``(H, W)`` (one value per pixel, ``0`` = background), per image
and per class, and aggregates a split in two ways that papers often mix up:

* ``per_image_mean`` / ``per_image_std``: the metric is computed on each image, then averaged over images
  (std is the population std, ``ddof=0``);
* ``pooled``: true positives / false positives / false negatives are summed over *all* pixels of the split
  first, and Dice / IoU / precision / recall are computed once from those sums (no std; no pooled HD95 /
  ASSD).

Empty-mask policy (one rule for every ratio, applied per image and per class):

* every ratio whose numerator and denominator are both 0 is **1** ("nothing to find, nothing found"): with
  ``TP, FP, FN`` the pixel counts of a class, ``Dice = 2TP / (2TP + FP + FN)``,
  ``IoU = TP / (TP + FP + FN)``, ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``; so both masks
  empty gives Dice = IoU = precision = recall = 1, and only one empty gives Dice = IoU = 0 with precision or
  recall 1 for the side that is 0/0;
* both masks empty: HD95 = ASSD = 0;
* exactly one mask empty: HD95 = ASSD = NaN ("undefined"); it is left out of the mean / std of that metric
  and counted in ``n_undefined`` of the summary.

HD95 follows MONAI's ``compute_hausdorff_distance(percentile=95, directed=False)``: the surface of a mask is
its set of boundary pixels (the mask minus its binary erosion with a 4-connected cross, the image border
counting as background); for each pixel of one surface the Euclidean distance to the nearest pixel of the
other surface is taken (pixel coordinates scaled by the spacing), the 95th percentile (linear interpolation)
is computed for each of the two directions, and HD95 is the larger of the two. ASSD is the mean of the
distances of both directions pooled together (``compute_average_surface_distance(symmetric=True)``).
``tests/engine/test_metrics.py`` checks agreement with MONAI on random inputs.

Distances are in millimetres (``mm``) when every image of a split was given a spacing, else in pixels
(``px``). A spacing is a float (isotropic) or a ``(row, col)`` pair in mm per pixel, in array axis order.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..utils import atomic_write, atomic_write_text

METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "hd95", "assd")
OVERLAP_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall")
DISTANCE_METRICS: tuple[str, ...] = ("hd95", "assd")
MEAN_KEY = "mean"  # name of the average over the evaluated (foreground by default) classes

HD95_DEFINITION = (
    "HD95 = max(P95(d(S_pred -> S_gt)), P95(d(S_gt -> S_pred))), S = boundary pixels (mask XOR its "
    "4-connected binary erosion), d = Euclidean distance to the nearest pixel of the other surface with "
    "coordinates scaled by the spacing, P95 = 95th percentile with linear interpolation; identical to MONAI "
    "compute_hausdorff_distance(percentile=95, directed=False). ASSD = mean of both directions' distances "
    "pooled together (MONAI compute_average_surface_distance(symmetric=True))."
)
EMPTY_MASK_POLICY = {
    "ratios": "every ratio 0/0 is 1: Dice=2TP/(2TP+FP+FN), IoU=TP/(TP+FP+FN), precision=TP/(TP+FP), "
    "recall=TP/(TP+FN) computed from pixel counts",
    "both_empty": "Dice=IoU=precision=recall=1, HD95=ASSD=0",
    "one_empty": "Dice=IoU=0; precision/recall from the counts (gt empty: precision 0, recall 1; pred empty: "
    "precision 1, recall 0); HD95=ASSD=NaN, excluded from mean/std and counted in n_undefined",
    "class_mean": "per image, the mean over the evaluated classes (NaN distances skipped; NaN if all "
    "undefined)",
}

Spacing = float | tuple[float, float]


def _ratio(num: float, den: float) -> float:
    # 0/0 -> 1 is the documented empty-mask rule
    return 1.0 if den == 0 else float(num) / float(den)


def _check_label_map(name: str, arr: Any, num_classes: int) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]  # tolerate a (1, H, W) channel-first map
    if a.ndim != 2:
        raise ValueError(
            f"expected {name} as an (H, W) integer label map, got shape {a.shape}; pass argmax of logits"
        )
    if a.dtype == bool:
        a = a.astype(np.int64)
    elif not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.mod(a, 1) == 0):
            raise ValueError(f"expected integer labels in {name}, got dtype {a.dtype} with fractional values")
        a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        raise ValueError(
            f"{name} has labels in [{a.min()}, {a.max()}] but num_classes={num_classes}; "
            "labels must lie in [0, num_classes)"
        )
    return a.astype(np.int64, copy=False)


def _check_spacing(spacing: Any) -> tuple[float, float] | None:
    if spacing is None:
        return None
    if isinstance(spacing, (int, float, np.floating, np.integer)):
        s = (float(spacing), float(spacing))
    else:
        vals = [float(v) for v in np.asarray(spacing, dtype=float).ravel()]
        if len(vals) == 1:
            vals = vals * 2
        if len(vals) != 2:
            raise ValueError(f"expected spacing as a float or a (row, col) pair in mm, got {spacing!r}")
        s = (vals[0], vals[1])
    if not all(math.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"expected a positive finite spacing, got {spacing!r}")
    return s


def surface_pixels(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary ``(H, W)`` mask: the mask minus its 4-connected erosion."""
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m)


def _directed_distances(src: np.ndarray, dst_tree: cKDTree, scale: np.ndarray) -> np.ndarray:
    pts = np.argwhere(src).astype(np.float64) * scale  # (N, 2)
    return dst_tree.query(pts, k=1)[0]


def surface_distances(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Spacing | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances pred-surface -> gt-surface and gt-surface -> pred-surface, both non-empty masks required."""
    sp = _check_spacing(spacing) or (1.0, 1.0)
    scale = np.asarray(sp, dtype=np.float64)
    edges_p, edges_g = surface_pixels(pred_mask), surface_pixels(gt_mask)
    if not edges_p.any() or not edges_g.any():
        raise ValueError(
            "surface_distances needs two non-empty masks; the empty-mask policy handles the rest"
        )
    tree_g = cKDTree(np.argwhere(edges_g).astype(np.float64) * scale)
    tree_p = cKDTree(np.argwhere(edges_p).astype(np.float64) * scale)
    return _directed_distances(edges_p, tree_g, scale), _directed_distances(edges_g, tree_p, scale)


def _hd95_assd(d_pg: np.ndarray, d_gp: np.ndarray) -> tuple[float, float]:
    hd95 = max(float(np.percentile(d_pg, 95)), float(np.percentile(d_gp, 95)))
    assd = float((d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size))
    return hd95, assd


def _confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    # (K, K) matrix, rows = gt label, cols = predicted label
    idx = gt.ravel() * num_classes + pred.ravel()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _class_stats(
    pred: np.ndarray,
    gt: np.ndarray,
    classes: Sequence[int],
    cm: np.ndarray,
    spacing: tuple[float, float] | None,
) -> dict[int, dict[str, float]]:
    """Counts, overlap ratios and distances (px always, mm when a spacing is given) for each class."""
    out: dict[int, dict[str, float]] = {}
    for c in classes:
        tp = int(cm[c, c])
        fp = int(cm[:, c].sum()) - tp
        fn = int(cm[c, :].sum()) - tp
        st: dict[str, float] = {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "dice": _ratio(2 * tp, 2 * tp + fp + fn),
            "iou": _ratio(tp, tp + fp + fn),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
        }
        n_pred, n_gt = tp + fp, tp + fn
        if n_pred == 0 and n_gt == 0:
            px = mm = (0.0, 0.0)
        elif n_pred == 0 or n_gt == 0:
            px = mm = (math.nan, math.nan)
        else:
            pm, gm = pred == c, gt == c
            px = _hd95_assd(*surface_distances(pm, gm))
            mm = (
                _hd95_assd(*surface_distances(pm, gm, spacing))
                if spacing is not None
                else (math.nan, math.nan)
            )
        st["hd95_px"], st["assd_px"] = px
        st["hd95_mm"], st["assd_mm"] = mm if spacing is not None else (math.nan, math.nan)
        out[c] = st
    return out


def image_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: Spacing | None = None,
    *,
    include_background: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict[str | int, dict[str, float]]:
    """Metrics of one image, per class.

    Args:
        pred: ``(H, W)`` integer predicted labels in ``[0, num_classes)``.
        gt: ``(H, W)`` integer ground-truth labels.
        num_classes: number of classes including background (binary segmentation: 2).
        spacing: mm per pixel, a float or a ``(row, col)`` pair; ``None`` gives distances in pixels.
        include_background: also report class 0.
        class_names: names of all ``num_classes`` classes; when given, the result is keyed by name, else by
            index.

    Returns:
        ``{class: {"dice", "iou", "precision", "recall", "hd95", "assd": float}}``; HD95/ASSD are in mm when
        ``spacing`` is given, else in pixels, NaN when exactly one of the two masks is empty (see the module
        docstring).
    """
    if num_classes < 2:
        raise ValueError(f"expected num_classes >= 2 (background + at least one class), got {num_classes}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"expected {num_classes} class_names, got {len(class_names)}: {list(class_names)}")
    p = _check_label_map("pred", pred, num_classes)
    g = _check_label_map("gt", gt, num_classes)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    sp = _check_spacing(spacing)
    classes = list(range(0 if include_background else 1, num_classes))
    stats = _class_stats(p, g, classes, _confusion(p, g, num_classes), sp)
    unit = "mm" if sp is not None else "px"
    result: dict[str | int, dict[str, float]] = {}
    for c, st in stats.items():
        key: str | int = class_names[c] if class_names is not None else c
        result[key] = {m: st[m] for m in OVERLAP_METRICS}
        result[key]["hd95"] = st[f"hd95_{unit}"]
        result[key]["assd"] = st[f"assd_{unit}"]
    return result


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def _column_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_") or "class"


def _stats(values: Sequence[float]) -> tuple[float, float, float, int]:
    """(mean, std ddof=0, median, n_undefined) over the finite values."""
    arr = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(arr)
    n_undef = int((~ok).sum())
    if not ok.any():
        return math.nan, math.nan, math.nan, n_undef
    v = arr[ok]
    return float(v.mean()), float(v.std()), float(np.median(v)), n_undef


class MetricAccumulator:
    """Collects per-image metrics of a split and summarises them (per-image mean ± std and pooled).

    Example::

        acc = MetricAccumulator(num_classes=2)
        for case_id, pred, gt, spacing in cases:
            acc.add(case_id, pred, gt, spacing=spacing)
        write_outputs(acc, "runs/x/eval/test")
    """

    def __init__(
        self, num_classes: int, class_names: Sequence[str] | None = None, *, include_background: bool = False
    ) -> None:
        if num_classes < 2:
            raise ValueError(
                f"expected num_classes >= 2 (background + at least one class), got {num_classes}"
            )
        if class_names is None:
            from ..data.index import default_class_names  # lazy: the data package imports torch

            class_names = default_class_names(num_classes)
        names = list(class_names)
        if len(names) != num_classes:
            raise ValueError(
                f"expected {num_classes} class_names (background first), got {len(names)}: {names}"
            )
        cols = [_column_name(n) for n in names]
        if len(set(cols)) != len(cols) or MEAN_KEY in cols:
            raise ValueError(
                f"class names must be distinct and not '{MEAN_KEY}' after sanitising, got {names}"
            )
        self.num_classes = num_classes
        self.class_names = names
        self.include_background = include_background
        self.classes = list(range(0 if include_background else 1, num_classes))
        self._cols = cols
        self._records: list[dict[str, Any]] = []
        self._ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._records)

    @property
    def distance_unit(self) -> str:
        """``"mm"`` when every image added so far has a spacing (and there is at least one), else ``"px"``."""
        if self._records and all(r["spacing"] is not None for r in self._records):
            return "mm"
        return "px"

    def add(
        self, id: str, pred: np.ndarray, gt: np.ndarray, spacing: Spacing | None = None
    ) -> dict[str, dict[str, float]]:
        """Add one image; returns its metrics keyed by class name (distances in mm if ``spacing`` else px)."""
        sid = str(id)
        if sid in self._ids:
            raise ValueError(f"image id {sid!r} was added twice; ids must be unique within a split")
        p = _check_label_map("pred", pred, self.num_classes)
        g = _check_label_map("gt", gt, self.num_classes)
        if p.shape != g.shape:
            raise ValueError(f"pred and gt of {sid!r} must have the same shape, got {p.shape} and {g.shape}")
        sp = _check_spacing(spacing)
        stats = _class_stats(p, g, self.classes, _confusion(p, g, self.num_classes), sp)
        self._records.append({"id": sid, "spacing": sp, "shape": p.shape, "stats": stats})
        self._ids.add(sid)
        unit = "mm" if sp is not None else "px"
        return {
            self.class_names[c]: {
                **{m: st[m] for m in OVERLAP_METRICS},
                "hd95": st[f"hd95_{unit}"],
                "assd": st[f"assd_{unit}"],
            }
            for c, st in stats.items()
        }

    def _value(self, rec: dict[str, Any], c: int, metric: str, unit: str) -> float:
        st = rec["stats"][c]
        return float(st[f"{metric}_{unit}"] if metric in DISTANCE_METRICS else st[metric])

    def _image_mean(self, rec: dict[str, Any], metric: str, unit: str) -> float:
        vals = np.asarray([self._value(rec, c, metric, unit) for c in self.classes], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        return float(vals.mean()) if vals.size else math.nan

    def per_image_rows(self) -> list[dict[str, Any]]:
        """One dict per image (CSV-ready): id, spacing, per-image class mean and per-class metrics and counts.

        Columns: ``id, spacing_row, spacing_col, distance_unit``, then ``<metric>_mean`` (mean over the
        evaluated classes) for each metric, then ``<metric>_<class>`` and ``tp_<class>, fp_<class>,
        fn_<class>`` per class.
        Distances are in the accumulator's :attr:`distance_unit`.
        """
        unit = self.distance_unit
        rows: list[dict[str, Any]] = []
        for rec in self._records:
            sp = rec["spacing"]
            row: dict[str, Any] = {
                "id": rec["id"],
                "spacing_row": sp[0] if sp else math.nan,
                "spacing_col": sp[1] if sp else math.nan,
                "distance_unit": unit,
            }
            for m in METRICS:
                row[f"{m}_{MEAN_KEY}"] = self._image_mean(rec, m, unit)
            for c in self.classes:
                col = self._cols[c]
                for m in METRICS:
                    row[f"{m}_{col}"] = self._value(rec, c, m, unit)
                for k in ("tp", "fp", "fn"):
                    row[f"{k}_{col}"] = int(rec["stats"][c][k])
            rows.append(row)
        return rows

    def _group(self, per_image: Sequence[Sequence[float]], pooled: dict[str, float]) -> dict[str, Any]:
        # per_image: one sequence of per-image values for each metric in METRICS order
        mean, std, med, undef = {}, {}, {}, {}
        for m, vals in zip(METRICS, per_image):
            mean[m], std[m], med[m], undef[m] = _stats(vals)
        return {
            "per_image_mean": mean,
            "per_image_std": std,
            "per_image_median": med,
            "pooled": pooled,
            "n_images": len(self._records),
            "n_undefined": {m: undef[m] for m in DISTANCE_METRICS},
        }

    def summary(self) -> dict[str, Any]:
        """Per class and averaged over the evaluated classes (key ``"mean"``), JSON-ready (NaN -> None).

        ``per_image_mean``/``per_image_std``/``per_image_median``: statistics over images of the per-image
        value (distances: over images where defined, the rest counted in ``n_undefined``). ``pooled``: Dice /
        IoU / precision / recall from TP/FP/FN summed over every pixel of the split; for ``"mean"`` it is the
        average of the per-class pooled values. ``headline`` is the per-image mean Dice averaged over classes.
        """
        if not self._records:
            raise ValueError("no images were added to the MetricAccumulator; call add() before summary()")
        unit = self.distance_unit
        classes: dict[str, Any] = {}
        pooled_all: list[dict[str, float]] = []
        for c in self.classes:
            tp = sum(r["stats"][c]["tp"] for r in self._records)
            fp = sum(r["stats"][c]["fp"] for r in self._records)
            fn = sum(r["stats"][c]["fn"] for r in self._records)
            pooled = {
                "dice": _ratio(2 * tp, 2 * tp + fp + fn),
                "iou": _ratio(tp, tp + fp + fn),
                "precision": _ratio(tp, tp + fp),
                "recall": _ratio(tp, tp + fn),
            }
            pooled_all.append(pooled)
            per_image = [[self._value(r, c, m, unit) for r in self._records] for m in METRICS]
            classes[self.class_names[c]] = self._group(per_image, pooled) | {"tp": tp, "fp": fp, "fn": fn}
        pooled_mean = {m: float(np.mean([p[m] for p in pooled_all])) for m in OVERLAP_METRICS}
        per_image_mean = [[self._image_mean(r, m, unit) for r in self._records] for m in METRICS]
        mean = self._group(per_image_mean, pooled_mean)
        out = {
            "format": "medurwkv-metrics-v1",
            "n_images": len(self._records),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "evaluated_classes": [self.class_names[c] for c in self.classes],
            "include_background": self.include_background,
            "distance_unit": unit,
            "headline": {
                "metric": "dice",
                "statistic": "per_image_mean",
                "over": MEAN_KEY,
                "value": mean["per_image_mean"]["dice"],
            },
            "std_ddof": 0,
            "hd95_definition": HD95_DEFINITION,
            "empty_mask_policy": EMPTY_MASK_POLICY,
            "classes": classes,
            MEAN_KEY: mean,
        }
        return _nan_to_none(out)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def summary_markdown(summary: Mapping[str, Any], title: str | None = None) -> str:
    """Markdown of :meth:`MetricAccumulator.summary`: metric, per-image mean ± std, pooled, unit."""
    unit = summary["distance_unit"]
    lines = [f"# {title}" if title else "# Segmentation metrics", ""]
    hl = summary["headline"]
    lines.append(
        f"**Dice (per-image mean over {summary['n_images']} images, averaged over "
        f"{', '.join(summary['evaluated_classes'])}): {_fmt(hl['value'])}**"
    )
    lines += [
        "",
        "- *per-image mean ± std*: metric computed on each image, then averaged over images (std with "
        "ddof=0).",
        "- *pooled*: TP/FP/FN summed over all pixels of the split, then one ratio (row `mean`: average of "
        "the per-class pooled values). No pooled value exists for distances.",
        f"- distances (HD95, ASSD) in **{unit}**; images where exactly one mask is empty have undefined "
        "distances, left out of mean ± std and counted in *undefined*.",
        "- empty masks: every 0/0 ratio is 1; both masks empty gives HD95 = ASSD = 0.",
        "",
        "| class | metric | per-image mean ± std | pooled | unit | undefined |",
        "|---|---|---|---|---|---|",
    ]
    groups = [(MEAN_KEY, summary[MEAN_KEY])] + list(summary["classes"].items())
    if len(summary["classes"]) == 1:
        groups = groups[1:]  # the class mean equals the single class
    for name, g in groups:
        for m in METRICS:
            pooled = _fmt(g["pooled"].get(m)) if m in OVERLAP_METRICS else "—"
            u = unit if m in DISTANCE_METRICS else "—"
            undef = str(g["n_undefined"].get(m, 0)) if m in DISTANCE_METRICS else "—"
            ms = f"{_fmt(g['per_image_mean'][m])} ± {_fmt(g['per_image_std'][m])}"
            lines.append(f"| {name} | {m} | {ms} | {pooled} | {u} | {undef} |")
    lines.append("")
    return "\n".join(lines)


def write_metric_files(
    out_dir: str | Path,
    rows_name: str,
    rows: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    markdown: str,
    prefix: str = "",
) -> dict[str, Path]:
    """Write ``<prefix><rows_name>.csv`` (NaN as empty cells), ``<prefix>summary.json`` (NaN refused: pass
    JSON-ready summaries) and ``<prefix>summary.md`` into ``out_dir``, each atomically.

    The one writer of evaluation outputs, 2D (:func:`write_outputs`) and 3D (``metrics3d``). Returns the paths
    under ``rows_name``, ``"summary_json"`` and ``"summary_md"``.
    """
    out = Path(out_dir)
    paths = {
        rows_name: out / f"{prefix}{rows_name}.csv",
        "summary_json": out / f"{prefix}summary.json",
        "summary_md": out / f"{prefix}summary.md",
    }
    buf = io.StringIO(newline="")  # csv writes its own \r\n line ends
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    atomic_write(paths[rows_name], lambda f: f.write(buf.getvalue().encode("utf-8")))
    atomic_write_text(paths["summary_json"], json.dumps(summary, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["summary_md"], markdown)
    return paths


def write_outputs(acc: MetricAccumulator, out_dir: str | Path, prefix: str = "") -> dict[str, Path]:
    """Write ``<prefix>per_image.csv``, ``<prefix>summary.json`` and ``<prefix>summary.md`` into ``out_dir``
    (each atomically).

    Returns the three paths under keys ``"per_image"``, ``"summary_json"``, ``"summary_md"``.
    """
    summary = acc.summary()
    return write_metric_files(
        out_dir, "per_image", acc.per_image_rows(), summary, summary_markdown(summary), prefix
    )


def read_per_image_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``per_image.csv`` back: numbers as floats (empty -> NaN), ``id``/``distance_unit`` as str."""
    rows: list[dict[str, Any]] = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                if k in ("id", "distance_unit"):
                    row[k] = v
                elif v is None or v == "":
                    row[k] = math.nan
                else:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            rows.append(row)
    return rows


def dice_per_image_torch(pred: Any, target: Any, num_classes: int) -> Any:
    """Foreground-mean Dice of each image of a batch, on the tensors' device (training-time validation).

    ``pred`` / ``target``: ``(B, H, W)`` integer label tensors -> ``(B,)`` float64. The rule of this module:
    Dice = 2TP / (2TP + FP + FN) per class, 0/0 -> 1, averaged over the classes 1..K-1 (background excluded);
    ``image_metrics(...)[c]["dice"]`` gives the same numbers one image at a time.
    """
    import torch

    dices = []
    for c in range(1, num_classes):
        p, t = pred == c, target == c
        tp = (p & t).flatten(1).sum(1).double()  # (B,)
        den = p.flatten(1).sum(1).double() + t.flatten(1).sum(1).double()  # 2TP + FP + FN
        dices.append(torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.ones_like(den)))
    return torch.stack(dices, 1).mean(1)
