"""Per-volume, per-class segmentation metrics for 3D label maps: Dice, IoU, HD95 and ASSD in mm.

Everything here works on integer label volumes ``(X, Y, Z)`` (one value per voxel, ``0`` = background) in
array axis order, with a voxel spacing ``(sx, sy, sz)`` in mm along the same axes (for a volume read with
nibabel, ``img.header.get_zooms()[:3]``). Each case is scored per class (background excluded by default);
:class:`VolumeMetrics` collects the cases of a split and summarises them the way the 2D-on-volumes papers
(TransUNet, Swin-Unet, RWKV-UNet on Synapse / ACDC) do: the mean over cases per class, then the mean over
classes of those means; pooled Dice / IoU over every voxel of every case are given beside them.

Definitions (the same as :mod:`medurwkv.engine.metrics` for Dice / IoU and for the distances, in 3D):

* ``TP, FP, FN``: voxel counts of a class; ``Dice = 2TP / (2TP + FP + FN)``, ``IoU = TP / (TP + FP + FN)``.
* surface of a mask: the mask minus its binary erosion with the 6-neighbourhood (the face-connected cross
  ``scipy.ndimage.generate_binary_structure(3, 1)``, SciPy's default and the one MONAI's ``get_mask_edges``
  uses), voxels outside the volume counting as background;
* ``d(A -> B)``: for each surface voxel of ``A``, the Euclidean distance (voxel indices times the spacing, so
  in mm) to the nearest surface voxel of ``B``;
* ``HD95 = max(P95(d(pred -> gt)), P95(d(gt -> pred)))``: the larger of the two directed 95th percentiles
  (linear interpolation), not the percentile of both sets pooled: MONAI's
  ``compute_hausdorff_distance(percentile=95, directed=False)``;
* ``ASSD = (sum d(pred -> gt) + sum d(gt -> pred)) / (|S_pred| + |S_gt|)``: the mean of both sets pooled:
  MONAI's ``compute_average_surface_distance(symmetric=True)``.

Empty-structure policy, per case and class (:data:`EMPTY_STRUCTURE_POLICY`):

* both prediction and reference empty (the structure is absent and none was predicted): Dice = IoU = 1,
  HD95 = ASSD = NaN (undefined: there is no surface to measure; MONAI also gives NaN);
* exactly one empty: Dice = IoU = 0, HD95 = ASSD = NaN (MONAI gives ``inf``).

An undefined value is left out of every mean / std / median and counted (``n_undefined`` in the summary,
split into ``n_both_empty``, ``n_gt_empty`` and ``n_pred_empty``). Note that this differs from the 2D
metrics on one point: there, both masks empty give HD95 = ASSD = 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..errors import UserError
from .metrics import (
    MEAN_KEY,
    _directed_distances,
    _fmt,
    _hd95_assd,
    _nan_to_none,
    _ratio,
    _stats,
    write_metric_files,
)

__all__ = [
    "DISTANCE_METRICS_3D",
    "EMPTY_STRUCTURE_POLICY",
    "METRICS_3D",
    "OVERLAP_METRICS_3D",
    "SURFACE_CONNECTIVITY",
    "VOLUME_DEFINITIONS",
    "VolumeMetrics",
    "check_spacing_3d",
    "surface_distances_3d",
    "surface_voxels",
    "volume_metrics",
    "volume_summary_markdown",
]

METRICS_3D: tuple[str, ...] = ("dice", "iou", "hd95", "assd")
OVERLAP_METRICS_3D: tuple[str, ...] = ("dice", "iou")
DISTANCE_METRICS_3D: tuple[str, ...] = ("hd95", "assd")
SURFACE_CONNECTIVITY = 6  # face neighbours: generate_binary_structure(3, 1)
_STRUCTURE = ndimage.generate_binary_structure(3, 1)  # (3, 3, 3) 6-neighbourhood cross

# case status of one class: which of the two masks hold voxels
BOTH_PRESENT, BOTH_EMPTY, GT_EMPTY, PRED_EMPTY = "both_present", "both_empty", "gt_empty", "pred_empty"
_STATUS = {
    (True, True): BOTH_PRESENT,
    (False, False): BOTH_EMPTY,
    (True, False): GT_EMPTY,
    (False, True): PRED_EMPTY,
}

VOLUME_DEFINITIONS = {
    "dice": "2TP / (2TP + FP + FN) from voxel counts",
    "iou": "TP / (TP + FP + FN) from voxel counts",
    "surface": "mask voxels with a face neighbour (6-neighbourhood) outside the mask or outside the volume: "
    "mask XOR its binary erosion with generate_binary_structure(3, 1), as MONAI get_mask_edges",
    "hd95": "max(P95(d(S_pred -> S_gt)), P95(d(S_gt -> S_pred))), d = Euclidean distance to the nearest voxel "
    "of the other surface, voxel indices scaled by the spacing, P95 = 95th percentile with linear "
    "interpolation; MONAI compute_hausdorff_distance(percentile=95, directed=False)",
    "assd": "mean of the distances of both directions pooled together, (sum d(pred->gt) + sum d(gt->pred)) / "
    "(|S_pred| + |S_gt|); MONAI compute_average_surface_distance(symmetric=True)",
}
EMPTY_STRUCTURE_POLICY = {
    "both_empty": "Dice=IoU=1 (nothing to find, nothing found); HD95=ASSD=NaN (undefined, no surface)",
    "one_empty": "Dice=IoU=0; HD95=ASSD=NaN (undefined; MONAI returns inf)",
    "undefined": "NaN values are left out of mean/std/median and counted in n_undefined (split into "
    "n_both_empty, n_gt_empty, n_pred_empty); NaN is empty in CSV and null in JSON",
    "class_mean": "the mean over classes of the per-class means over cases; a class whose mean is undefined "
    "is left out and counted in n_classes_undefined",
}

Spacing3D = float | Sequence[float]


def check_spacing_3d(spacing: Any, case: str | None = None) -> tuple[float, float, float] | None:
    """``None`` (distances in voxels), a float (isotropic) or three positive finite mm values ``(sx, sy, sz)``.

    Raises :class:`UserError` naming ``case`` otherwise (a 4-value NIfTI zoom tuple included: pass
    ``get_zooms()[:3]``).
    """
    if spacing is None:
        return None
    where = f" of case {case!r}" if case is not None else ""
    try:
        vals = [float(v) for v in np.asarray(spacing, dtype=np.float64).ravel()]
    except (TypeError, ValueError):
        raise UserError(
            f"expected the spacing{where} as a float or (sx, sy, sz) in mm, got {spacing!r}"
        ) from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise UserError(
            f"expected the spacing{where} as a float or three values (sx, sy, sz) in mm, got {len(vals)} "
            f"values {spacing!r}; for a NIfTI volume pass header.get_zooms()[:3]"
        )
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise UserError(f"expected a positive finite spacing{where} in mm, got {spacing!r}")
    return vals[0], vals[1], vals[2]


def _check_volume(name: str, arr: Any, num_classes: int, case: str) -> np.ndarray:
    """An integer ``(X, Y, Z)`` label volume with values in ``[0, num_classes)``; UserError naming the case."""
    a = np.asarray(arr)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]  # tolerate a (1, X, Y, Z) channel-first volume
    if a.ndim != 3:
        raise UserError(
            f"case {case!r}: expected {name} as an (X, Y, Z) integer label volume, got shape {a.shape}; "
            "pass the argmax of the logits, one volume per case"
        )
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating):
            raise UserError(f"case {case!r}: expected integer labels in {name}, got dtype {a.dtype}")
        if a.size and not (np.all(np.isfinite(a)) and np.all(np.mod(a, 1) == 0)):
            raise UserError(
                f"case {case!r}: {name} has dtype {a.dtype} with non-integer or non-finite values; a label "
                "volume holds whole class numbers"
            )
        a = a.astype(np.int32)
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= num_classes:
            raise UserError(
                f"case {case!r}: {name} has labels in [{lo}, {hi}] but num_classes={num_classes}; labels must "
                f"lie in [0, {num_classes - 1}] (fix the volume or the class list)"
            )
    return a


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Surface of a binary ``(X, Y, Z)`` mask: the mask minus its 6-neighbourhood erosion (outside = 0)."""
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m, structure=_STRUCTURE, border_value=0)


def surface_distances_3d(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Spacing3D | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(d(pred -> gt), d(gt -> pred))`` of two non-empty ``(X, Y, Z)`` masks.

    In mm when ``spacing`` is given, else in voxels. The masks are cropped to the bounding box of their
    union first (exact: outside it both are background, and the erosion treats the outside as background).
    """
    sp = check_spacing_3d(spacing) or (1.0, 1.0, 1.0)
    p, g = np.asarray(pred_mask, dtype=bool), np.asarray(gt_mask, dtype=bool)
    if p.shape != g.shape or p.ndim != 3:
        raise UserError(f"expected two (X, Y, Z) masks of one shape, got {p.shape} and {g.shape}")
    box = ndimage.find_objects((p | g).astype(np.uint8))
    if not box or not p.any() or not g.any():
        raise UserError(
            "surface_distances_3d needs two non-empty masks; the empty-structure policy handles the rest"
        )
    return _distances(p[box[0]], g[box[0]], np.asarray(sp, dtype=np.float64))


def _distances(p: np.ndarray, g: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # p, g: (x, y, z) non-empty boolean masks, already cropped; scale: (3,) mm per voxel
    edges_p, edges_g = surface_voxels(p), surface_voxels(g)
    tree_g = cKDTree(np.argwhere(edges_g).astype(np.float64) * scale)  # (Ng, 3) points
    tree_p = cKDTree(np.argwhere(edges_p).astype(np.float64) * scale)  # (Np, 3) points
    return _directed_distances(edges_p, tree_g, scale), _directed_distances(edges_g, tree_p, scale)


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...]:
    boxes = [s for s in (a, b) if s is not None]
    return tuple(
        slice(min(s[i].start for s in boxes), max(s[i].stop for s in boxes)) for i in range(len(boxes[0]))
    )


def _case_stats(
    p: np.ndarray, g: np.ndarray, classes: Sequence[int], num_classes: int, spacing: tuple[float, ...] | None
) -> dict[int, dict[str, Any]]:
    """Counts, status, Dice / IoU and HD95 / ASSD (mm with a spacing, else voxels) of each class."""
    full = tuple(slice(0, n) for n in p.shape)
    # bounding boxes of labels 1..K-1 in each volume (None where absent): one pass each
    boxes_p = ndimage.find_objects(p, max_label=num_classes - 1)
    boxes_g = ndimage.find_objects(g, max_label=num_classes - 1)
    scale = np.asarray(spacing or (1.0, 1.0, 1.0), dtype=np.float64)
    out: dict[int, dict[str, Any]] = {}
    for c in classes:
        bp = full if c == 0 else boxes_p[c - 1]
        bg = full if c == 0 else boxes_g[c - 1]
        if bp is None and bg is None:
            tp = fp = fn = 0
            status = BOTH_EMPTY
        else:
            box = _union_box(bp, bg)
            pm, gm = p[box] == c, g[box] == c  # (x, y, z) crops
            tp = int(np.count_nonzero(pm & gm))
            n_pred, n_gt = int(np.count_nonzero(pm)), int(np.count_nonzero(gm))
            fp, fn = n_pred - tp, n_gt - tp
            status = _STATUS[(n_pred > 0, n_gt > 0)]
        st: dict[str, Any] = {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "status": status,
            "dice": _ratio(2 * tp, 2 * tp + fp + fn),
            "iou": _ratio(tp, tp + fp + fn),
            "hd95": math.nan,
            "assd": math.nan,
        }
        if status == BOTH_PRESENT:
            st["hd95"], st["assd"] = _hd95_assd(*_distances(pm, gm, scale))
        out[c] = st
    return out


def _check_num_classes(num_classes: Any) -> None:
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 2:
        raise UserError(f"expected num_classes >= 2 (background + at least one class), got {num_classes!r}")


def _resolve_classes(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    _check_num_classes(num_classes)
    if class_names is None:
        from ..data.index import default_class_names  # lazy: the data package imports torch

        return default_class_names(int(num_classes))
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise UserError(f"expected {num_classes} class names (background first), got {len(names)}: {names}")
    return names


def volume_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: Spacing3D | None = None,
    *,
    include_background: bool = False,
    class_names: Sequence[str] | None = None,
    case_id: str = "volume",
) -> dict[str | int, dict[str, Any]]:
    """Metrics of one volume, per class.

    Args:
        pred: ``(X, Y, Z)`` integer predicted labels in ``[0, num_classes)``.
        gt: ``(X, Y, Z)`` integer reference labels.
        num_classes: number of classes including background.
        spacing: mm per voxel along the array axes, a float or ``(sx, sy, sz)``; ``None`` gives voxels.
        include_background: also report class 0.
        class_names: names of all classes; when given, the result is keyed by name, else by index.
        case_id: named in error messages.

    Returns:
        ``{class: {"dice", "iou", "hd95", "assd": float, "tp", "fp", "fn": int, "status": str}}``, ``status``
        one of ``both_present``, ``both_empty``, ``gt_empty``, ``pred_empty`` (see the module docstring for
        the values an empty structure gets).
    """
    _check_num_classes(num_classes)
    names = _resolve_classes(num_classes, class_names) if class_names is not None else None
    case = str(case_id)
    p = _check_volume("pred", pred, num_classes, case)
    g = _check_volume("gt", gt, num_classes, case)
    if p.shape != g.shape:
        raise UserError(f"case {case!r}: pred and gt must have the same shape, got {p.shape} and {g.shape}")
    sp = check_spacing_3d(spacing, case)
    classes = range(0 if include_background else 1, num_classes)
    stats = _case_stats(p, g, classes, num_classes, sp)
    return {(names[c] if names is not None else c): st for c, st in stats.items()}


class VolumeMetrics:
    """Collects per-volume, per-class metrics of a split and summarises them.

    Example::

        acc = VolumeMetrics(num_classes=3, class_names=["background", "anterior", "posterior"])
        for case_id, pred, gt, spacing in cases:          # (X, Y, Z) label volumes, spacing in mm
            acc.add(case_id, pred, gt, spacing)
        acc.summary()["mean"]["mean_over_cases"]["dice"]  # the TransUNet / Synapse number
        acc.write_outputs("runs/x/eval/test")             # per_case.csv, summary.json, summary.md

    Every case of one accumulator has a spacing (distances in mm) or none has (distances in voxels): mixing
    is refused, since a mean of mm and voxels means nothing.
    """

    def __init__(
        self, num_classes: int, class_names: Sequence[str] | None = None, *, include_background: bool = False
    ) -> None:
        names = _resolve_classes(num_classes, class_names)
        if len(set(names)) != len(names) or MEAN_KEY in names:
            raise UserError(f"class names must be distinct and not '{MEAN_KEY}', got {names}")
        self.num_classes = int(num_classes)
        self.class_names = names
        self.include_background = include_background
        self.classes = list(range(0 if include_background else 1, self.num_classes))
        self._records: list[dict[str, Any]] = []
        self._ids: set[str] = set()

    @classmethod
    def from_dataset_json(
        cls, dataset_json: str | Path | Mapping[str, Any], *, include_background: bool = False
    ) -> VolumeMetrics:
        """An accumulator for the classes a ``dataset.json`` declares (a path, the dataset folder holding
        it, or its parsed dict), in any form :func:`medurwkv.data.index.parse_class_info` reads: nnU-Net's
        name -> value, MSD's value -> name, or ``num_classes``/``class_names``."""
        from ..data.index import _load_json, parse_class_info  # lazy: the data package imports torch

        if isinstance(dataset_json, Mapping):
            meta, source = dict(dataset_json), "dataset.json"
        else:
            path = Path(dataset_json)
            path = path / "dataset.json" if path.is_dir() else path
            meta, source = _load_json(path), str(path)
        info = parse_class_info(meta, source)
        if info is None:
            raise UserError(
                f'{source} declares no classes; expected "labels" like {{"background": 0, "x": 1}}'
            )
        names, k = info
        return cls(k, names, include_background=include_background)

    def __len__(self) -> int:
        return len(self._records)

    @property
    def distance_unit(self) -> str:
        """``"mm"`` when the cases have a spacing, ``"voxel"`` when they have none (or no case yet)."""
        return "mm" if self._records and self._records[0]["spacing"] is not None else "voxel"

    def add(
        self, case_id: str, pred: np.ndarray, gt: np.ndarray, spacing: Spacing3D | None
    ) -> dict[str, dict[str, Any]]:
        """Score one case; returns its metrics keyed by class name (see :func:`volume_metrics`).

        ``pred`` / ``gt``: ``(X, Y, Z)`` label volumes; ``spacing``: ``(sx, sy, sz)`` mm per voxel along the
        array axes (nibabel: ``header.get_zooms()[:3]``), or ``None`` for distances in voxels.
        """
        case = str(case_id)
        if case in self._ids:
            raise UserError(f"case {case!r} was added twice; case ids must be unique within a split")
        p = _check_volume("pred", pred, self.num_classes, case)
        g = _check_volume("gt", gt, self.num_classes, case)
        if p.shape != g.shape:
            raise UserError(
                f"case {case!r}: pred and gt must have the same shape, got {p.shape} and {g.shape}"
            )
        sp = check_spacing_3d(spacing, case)
        if self._records and (sp is None) != (self._records[0]["spacing"] is None):
            first = self._records[0]["id"]
            raise UserError(
                f"case {case!r} has {'no spacing' if sp is None else 'a spacing'} but case {first!r} has "
                f"{'one' if sp is None else 'none'}; give every case its spacing (distances in mm) or none "
                "(distances in voxels)"
            )
        stats = _case_stats(p, g, self.classes, self.num_classes, sp)
        self._records.append({"id": case, "spacing": sp, "shape": p.shape, "stats": stats})
        self._ids.add(case)
        return {self.class_names[c]: dict(st) for c, st in stats.items()}

    def per_case_rows(self) -> list[dict[str, Any]]:
        """One dict per case and evaluated class (CSV-ready).

        Columns: ``case_id, class_index, class_name, status, dice, iou, hd95, assd, tp, fp, fn, distance_unit,
        spacing_x, spacing_y, spacing_z, shape_x, shape_y, shape_z``; undefined distances are NaN.
        """
        unit = self.distance_unit
        rows: list[dict[str, Any]] = []
        for rec in self._records:
            sp = rec["spacing"] or (math.nan,) * 3
            for c in self.classes:
                st = rec["stats"][c]
                rows.append(
                    {
                        "case_id": rec["id"],
                        "class_index": c,
                        "class_name": self.class_names[c],
                        "status": st["status"],
                        **{m: float(st[m]) for m in METRICS_3D},
                        **{k: int(st[k]) for k in ("tp", "fp", "fn")},
                        "distance_unit": unit,
                        **{f"spacing_{a}": v for a, v in zip("xyz", sp)},
                        **{f"shape_{a}": int(n) for a, n in zip("xyz", rec["shape"])},
                    }
                )
        return rows

    def _class_summary(self, c: int) -> dict[str, Any]:
        recs = [r["stats"][c] for r in self._records]
        mean, std, med, undef = {}, {}, {}, {}
        for m in METRICS_3D:
            mean[m], std[m], med[m], undef[m] = _stats([st[m] for st in recs])
        tp, fp, fn = (sum(st[k] for st in recs) for k in ("tp", "fp", "fn"))
        status = [st["status"] for st in recs]
        return {
            "mean_over_cases": mean,
            "std_over_cases": std,
            "median_over_cases": med,
            "pooled": {"dice": _ratio(2 * tp, 2 * tp + fp + fn), "iou": _ratio(tp, tp + fp + fn)},
            "n_cases": len(recs),
            "n_undefined": undef,
            "n_both_empty": status.count(BOTH_EMPTY),
            "n_gt_empty": status.count(GT_EMPTY),
            "n_pred_empty": status.count(PRED_EMPTY),
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }

    def summary(self) -> dict[str, Any]:
        """Per class and over classes (key ``"mean"``), JSON-ready (NaN -> None).

        Per class: ``mean_over_cases`` / ``std_over_cases`` (ddof=0) / ``median_over_cases`` of each metric
        over the cases where it is defined (the rest counted in ``n_undefined``), ``pooled`` Dice / IoU from
        TP / FP / FN summed over every voxel of every case, the case counts per empty-structure status and the
        summed counts. ``"mean"``: ``mean_over_cases`` is the mean over classes of the per-class
        ``mean_over_cases`` (the TransUNet / Synapse protocol), ``pooled`` the mean over classes of the
        per-class pooled values; ``n_classes_undefined`` counts classes left out because their mean is
        undefined. ``headline``: the class mean of the per-class mean Dice.
        """
        if not self._records:
            raise UserError("no cases were added to VolumeMetrics; call add() before summary()")
        classes = {self.class_names[c]: self._class_summary(c) for c in self.classes}
        over_cases, undefined = {}, {}
        for m in METRICS_3D:
            vals = np.asarray([g["mean_over_cases"][m] for g in classes.values()], dtype=np.float64)
            ok = np.isfinite(vals)
            over_cases[m] = float(vals[ok].mean()) if ok.any() else math.nan
            undefined[m] = int((~ok).sum())
        pooled = {m: float(np.mean([g["pooled"][m] for g in classes.values()])) for m in OVERLAP_METRICS_3D}
        out = {
            "format": "medurwkv-volume-metrics-v1",
            "n_cases": len(self._records),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "evaluated_classes": [self.class_names[c] for c in self.classes],
            "include_background": self.include_background,
            "distance_unit": self.distance_unit,
            "headline": {
                "metric": "dice",
                "statistic": "mean_over_cases",
                "over": MEAN_KEY,
                "value": over_cases["dice"],
            },
            "std_ddof": 0,
            "surface_connectivity": SURFACE_CONNECTIVITY,
            "definitions": VOLUME_DEFINITIONS,
            "empty_structure_policy": EMPTY_STRUCTURE_POLICY,
            "classes": classes,
            MEAN_KEY: {
                "mean_over_cases": over_cases,
                "pooled": pooled,
                "n_classes": len(classes),
                "n_classes_undefined": undefined,
            },
        }
        return _nan_to_none(out)

    def write_outputs(self, out_dir: str | Path, prefix: str = "") -> dict[str, Path]:
        """Write ``<prefix>per_case.csv``, ``<prefix>summary.json`` and ``<prefix>summary.md`` into ``out_dir``,
        each atomically; returns their paths under ``"per_case"``, ``"summary_json"``, ``"summary_md"``."""
        summary = self.summary()
        return write_metric_files(
            out_dir, "per_case", self.per_case_rows(), summary, volume_summary_markdown(summary), prefix
        )


def volume_summary_markdown(summary: Mapping[str, Any], title: str | None = None) -> str:
    """Markdown of :meth:`VolumeMetrics.summary`: one row per class (and the class mean), one column group
    per metric: mean ± std over cases, pooled Dice / IoU, undefined counts."""
    unit = summary["distance_unit"]
    lines = [f"# {title}" if title else "# Volume segmentation metrics", ""]
    lines.append(
        f"**Dice (mean over {summary['n_cases']} cases per class, then over "
        f"{', '.join(summary['evaluated_classes'])}): {_fmt(summary['headline']['value'])}**"
    )
    lines += [
        "",
        "- *mean ± std over cases*: the metric of each volume and class, averaged over cases (std ddof=0); "
        "row `mean`: the mean over classes of the per-class means (TransUNet / Synapse protocol).",
        "- *pooled*: TP/FP/FN summed over every voxel of every case, then one ratio (row `mean`: average over "
        "classes).",
        f"- HD95 and ASSD in **{unit}**, 3D surfaces (6-neighbourhood), HD95 = max of the two directed 95th "
        "percentiles (as MONAI).",
        "- empty structures: both empty gives Dice = IoU = 1 and undefined distances; one empty gives Dice = "
        "IoU = 0 and undefined distances. Undefined values are left out of the means; *undefined* counts them "
        "as *undefined: both empty / reference empty / prediction empty*.",
        "",
        f"| class | Dice | IoU | HD95 ({unit}) | ASSD ({unit}) | pooled Dice | pooled IoU | undefined distances |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(g: Mapping[str, Any], m: str) -> str:
        if "std_over_cases" not in g:
            return _fmt(g["mean_over_cases"][m])
        return f"{_fmt(g['mean_over_cases'][m])} ± {_fmt(g['std_over_cases'][m])}"

    for name, g in summary["classes"].items():
        undef = f"{g['n_undefined']['hd95']} ({g['n_both_empty']} / {g['n_gt_empty']} / {g['n_pred_empty']})"
        lines.append(
            f"| {name} | "
            + " | ".join(cell(g, m) for m in METRICS_3D)
            + f" | {_fmt(g['pooled']['dice'])} | {_fmt(g['pooled']['iou'])} | {undef} |"
        )
    if len(summary["classes"]) > 1:
        g = summary[MEAN_KEY]
        lines.append(
            f"| {MEAN_KEY} | "
            + " | ".join(cell(g, m) for m in METRICS_3D)
            + f" | {_fmt(g['pooled']['dice'])} | {_fmt(g['pooled']['iou'])} | "
            f"{g['n_classes_undefined']['hd95']} classes |"
        )
    lines.append("")
    return "\n".join(lines)
