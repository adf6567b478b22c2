"""Post-processing of label maps, chosen on the validation split (nnU-Net's idea): per foreground class, keep
only its largest connected component, optionally with its holes filled, when that raised the class's Dice on
the validation cases.

Pure numpy / SciPy, for 2D label maps ``(H, W)`` and 3D label volumes ``(X, Y, Z)`` alike:

* :func:`keep_largest_component` is the operation on one class;
* :func:`choose_postprocess` decides, per class, from predictions and references of validation cases;
* :func:`apply_postprocess` applies a decision to a label map;
* :class:`PostprocessDecision` is the decision, stored as a plain JSON dict (:meth:`~PostprocessDecision.to_dict`)
  under the key ``"postprocess"`` of ``best.pt`` after training, and in the metadata of an ONNX export::

    {"format": "medurwkv-postprocess-v1",
     "per_class": {"1": {"largest_component": true, "fill_holes": false}, ...},
     "val_dice": {"1": {"before": 0.951, "largest_component": 0.957,
                        "largest_component_fill_holes": 0.956, "after": 0.957}, ...},
     "n_cases": 70, "min_improvement": 0.0001}

Rules (docs/predict.md, "Post-processing"):

* components are **fully connected** (8-connected in 2D, 26-connected in 3D:
  ``generate_binary_structure(ndim, ndim)``); pixels of the removed components become background (0);
* holes are the background regions, 4-connected in 2D (6 in 3D, the dual of the objects' connectivity), that
  the kept component encloses (``scipy.ndimage.binary_fill_holes``); only their **background** pixels become
  the class, pixels of another class inside a hole keep their label (e.g. a cavity inside a ring);
* a step is kept for a class only if it raises that class's mean per-case Dice on the validation cases by at
  least ``min_improvement`` (1e-4: a smaller gain is noise; nnU-Net keeps a step that merely does not hurt).
  Largest component is tried first, then largest component + fill holes; the latter is kept only if it beats
  the best so far by that margin too;
* the Dice of a case is ``2 TP / (2 TP + FP + FN)`` with the project's empty-mask rule (``engine/metrics.py``,
  ``engine/metrics3d.py``): a case where the class is absent from both prediction and reference counts as 1;
* each class is decided on the raw predictions independently of the others: a step on class ``c`` only turns
  ``c`` pixels into background or background pixels into ``c``, so the other classes' Dice does not change
  (except when two classes would fill the same background pixel; the decision is applied in class order and
  its ``after`` values are measured with all classes applied).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import UserError

__all__ = [
    "POSTPROCESS_FORMAT",
    "MIN_IMPROVEMENT",
    "ClassSteps",
    "PostprocessDecision",
    "keep_largest_component",
    "apply_postprocess",
    "case_dice",
    "choose_postprocess",
    "as_decision",
]

POSTPROCESS_FORMAT = "medurwkv-postprocess-v1"
MIN_IMPROVEMENT = 1e-4  # smallest gain of mean per-case Dice for which a step is kept


# ---------------------------------------------------------------------------------------- the operation


def _check_mask(mask: Any, what: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim not in (2, 3):
        raise UserError(f"expected {what} as an (H, W) or (X, Y, Z) label map, got shape {m.shape}")
    if m.dtype != bool and not np.issubdtype(m.dtype, np.integer):
        raise UserError(
            f"expected {what} with integer labels, got dtype {m.dtype}; pass the argmax of logits"
        )
    return m


def keep_largest_component(mask: np.ndarray, cls: int, fill_holes: bool = False) -> np.ndarray:
    """Keep only the largest fully connected component of class ``cls`` in a label map.

    Args:
        mask: ``(H, W)`` or ``(X, Y, Z)`` integer label map (not modified).
        cls: a foreground class (>= 1).
        fill_holes: also fill the holes of the kept component: the **background** pixels it encloses become
            ``cls``; pixels of other classes inside a hole keep their label.

    Returns:
        a new label map of the same shape and dtype: the pixels of the other components of ``cls`` are 0. A
        class absent from ``mask`` leaves it unchanged. Of two components of the same size, the first in
        C (raster) order is kept.
    """
    m = _check_mask(mask)
    if int(cls) < 1:
        raise UserError(f"expected a foreground class >= 1 (0 is the background), got {cls}")
    out = m.copy()
    sel = m == cls
    if not sel.any():
        return out
    structure = ndimage.generate_binary_structure(m.ndim, m.ndim)  # 8 (2D) / 26 (3D) neighbours
    comp, n = ndimage.label(sel, structure=structure)  # comp: same shape, 0 outside, 1..n per component
    if n > 1:
        sizes = np.bincount(comp.ravel())[1:]  # (n,) pixels per component
        keep = comp == int(np.argmax(sizes)) + 1
        out[sel & ~keep] = 0
    else:
        keep = sel
    if fill_holes:
        # default structure: background connected through faces, the dual of the full object connectivity
        enclosed = ndimage.binary_fill_holes(keep) & ~keep
        out[enclosed & (out == 0)] = cls
    return out


# ---------------------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class ClassSteps:
    """The post-processing of one class: largest component, and optionally its holes filled with it."""

    largest_component: bool = False
    fill_holes: bool = False

    def __post_init__(self) -> None:
        if self.fill_holes and not self.largest_component:
            raise UserError(
                "expected fill_holes only together with largest_component (holes are those of the kept "
                "component), got fill_holes=true, largest_component=false"
            )

    @property
    def active(self) -> bool:
        return self.largest_component

    def describe(self) -> str:
        if self.fill_holes:
            return "largest component + fill holes"
        return "largest component" if self.largest_component else "off"


@dataclass(frozen=True)
class PostprocessDecision:
    """What to do per foreground class (``per_class``; classes not named are left alone) and the validation
    Dice it was chosen on (``val_dice[c]``: ``before``, ``largest_component``, ``largest_component_fill_holes``,
    ``after``; empty for a hand-written decision). JSON form: :meth:`to_dict` / :meth:`from_dict`."""

    per_class: Mapping[int, ClassSteps]
    val_dice: Mapping[int, Mapping[str, float]] = field(default_factory=dict)
    n_cases: int | None = None
    min_improvement: float = MIN_IMPROVEMENT

    @property
    def active(self) -> bool:
        """True when some class has a step on (otherwise applying it changes nothing)."""
        return any(s.active for s in self.per_class.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form (class indices as strings, as JSON keys are)."""
        d: dict[str, Any] = {
            "format": POSTPROCESS_FORMAT,
            "per_class": {
                str(c): {"largest_component": s.largest_component, "fill_holes": s.fill_holes}
                for c, s in sorted(self.per_class.items())
            },
            "min_improvement": self.min_improvement,
        }
        if self.val_dice:
            d["val_dice"] = {str(c): dict(v) for c, v in sorted(self.val_dice.items())}
        if self.n_cases is not None:
            d["n_cases"] = self.n_cases
        return d

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], source: str = "the post-processing decision"
    ) -> PostprocessDecision:
        """Read :meth:`to_dict`'s form back; a :class:`UserError` naming ``source`` for anything else."""

        def bad(why: str) -> UserError:
            return UserError(
                f"{source}: expected a post-processing decision (format {POSTPROCESS_FORMAT!r}, per_class "
                f"{{'1': {{'largest_component': bool, 'fill_holes': bool}}}}), got {why}; choose it again by "
                "training, or predict with postprocess=False / --no-postprocess"
            )

        if not isinstance(d, Mapping):
            raise bad(f"a {type(d).__name__}")
        if d.get("format") != POSTPROCESS_FORMAT:
            raise bad(f"format {d.get('format')!r}")
        per = d.get("per_class")
        if not isinstance(per, Mapping):
            raise bad(f"per_class = {per!r}")
        per_class: dict[int, ClassSteps] = {}
        for key, steps in per.items():
            try:
                c = int(key)
            except (TypeError, ValueError):
                raise bad(f"the class key {key!r}") from None
            if c < 1:
                raise bad(f"the class {c} (foreground classes are >= 1)")
            if not isinstance(steps, Mapping) or set(steps) - {"largest_component", "fill_holes"}:
                raise bad(f"the steps {steps!r} of class {c}")
            if not all(isinstance(v, bool) for v in steps.values()):
                raise bad(f"non-boolean steps {dict(steps)!r} for class {c}")
            per_class[c] = ClassSteps(bool(steps.get("largest_component")), bool(steps.get("fill_holes")))
        val = d.get("val_dice") or {}
        if not isinstance(val, Mapping):
            raise bad(f"val_dice = {val!r}")
        val_dice = {int(k): {str(n): float(x) for n, x in v.items()} for k, v in val.items()}
        n_cases = d.get("n_cases")
        return cls(
            per_class=per_class,
            val_dice=val_dice,
            n_cases=int(n_cases) if n_cases is not None else None,
            min_improvement=float(d.get("min_improvement", MIN_IMPROVEMENT)),
        )

    def check_classes(self, num_classes: int, source: str = "the post-processing decision") -> None:
        """Refuse a decision naming a class the model does not predict."""
        beyond = sorted(c for c in self.per_class if c >= num_classes)
        if beyond:
            raise UserError(
                f"{source}: expected post-processing for classes 1..{num_classes - 1} of a {num_classes}-class "
                f"model, got class(es) {beyond}; use the checkpoint it was chosen for, or --no-postprocess"
            )

    def _name(self, c: int, class_names: Sequence[str] | None) -> str:
        return (
            f"class {c} ({class_names[c]})"
            if class_names is not None and c < len(class_names)
            else f"class {c}"
        )

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        """One line: the active steps per class, e.g. ``class 1 (head): largest component``."""
        on = [
            f"{self._name(c, class_names)}: {s.describe()}"
            for c, s in sorted(self.per_class.items())
            if s.active
        ]
        return "; ".join(on) if on else "no step kept (every class as predicted)"

    def log_lines(self, class_names: Sequence[str] | None = None) -> list[str]:
        """One line per class for the training log, with the validation Dice before and after."""
        lines = []
        for c, s in sorted(self.per_class.items()):
            v = self.val_dice.get(c, {})
            what = f"{s.describe()} on" if s.active else "off"
            if not s.active and v:
                what += (
                    f" (largest component {_fmt(v.get('largest_component'))}, + fill holes "
                    f"{_fmt(v.get('largest_component_fill_holes'))})"
                )
            dice = f", val Dice {_fmt(v.get('before'))} -> {_fmt(v.get('after'))}" if v else ""
            lines.append(f"postprocess: {self._name(c, class_names)}: {what}{dice}")
        return lines


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"


def as_decision(obj: Any, source: str = "the post-processing decision") -> PostprocessDecision | None:
    """``None`` stays ``None`` (no post-processing); a dict is read with :meth:`PostprocessDecision.from_dict`."""
    if obj is None or isinstance(obj, PostprocessDecision):
        return obj
    return PostprocessDecision.from_dict(obj, source)


def apply_postprocess(
    mask: np.ndarray, decision: PostprocessDecision | Mapping[str, Any] | None
) -> np.ndarray:
    """``mask`` (2D or 3D label map) with the decision's steps applied class by class, in class order.

    ``decision`` is a :class:`PostprocessDecision`, its dict form, or ``None`` (``mask`` returned as is). The
    input is not modified; with a step on, a new array is returned.
    """
    d = as_decision(decision)
    out = _check_mask(mask)
    if d is None:
        return out
    for c, s in sorted(d.per_class.items()):
        if s.active:
            out = keep_largest_component(out, c, fill_holes=s.fill_holes)
    return out


# ---------------------------------------------------------------------------------------- choosing it


def case_dice(pred: np.ndarray, target: np.ndarray, cls: int) -> float:
    """Dice of class ``cls`` in one case, ``2 TP / (2 TP + FP + FN)``; 1 when the class is absent from both
    (the empty-mask rule of ``engine/metrics.py``: ``image_metrics(...)[cls]["dice"]`` gives the same)."""
    p, t = pred == cls, target == cls
    den = int(np.count_nonzero(p)) + int(np.count_nonzero(t))  # 2 TP + FP + FN
    return 1.0 if den == 0 else 2.0 * int(np.count_nonzero(p & t)) / den


def _pairs(
    preds: Iterable[np.ndarray], targets: Iterable[np.ndarray]
) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    for i, (p, t) in enumerate(zip(preds, targets)):
        p, t = _check_mask(p, f"prediction {i}"), _check_mask(t, f"reference {i}")
        if p.shape != t.shape:
            raise UserError(
                f"case {i}: expected prediction and reference of the same shape, got {p.shape} and {t.shape}"
            )
        yield p, t


def choose_postprocess(
    preds: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    num_classes: int,
    *,
    min_improvement: float = MIN_IMPROVEMENT,
) -> PostprocessDecision:
    """Choose, per foreground class, the post-processing that raises its mean per-case Dice on these cases.

    Args:
        preds: the raw predicted label maps of the validation cases (2D or 3D, one per case). Any sequence
            that can be iterated twice: a list, or one that loads each case on access (it is read twice: once
            to score the options, once to measure the chosen decision).
        targets: the reference label maps, same shapes, same order.
        num_classes: classes including the background; classes ``1..num_classes-1`` are decided.
        min_improvement: the smallest gain of mean Dice for which a step is kept (see the module docstring).

    Returns:
        the decision, with the validation Dice of every option (``val_dice``) and ``n_cases``.
    """
    if num_classes < 2:
        raise UserError(f"expected num_classes >= 2 (background + at least one class), got {num_classes}")
    if len(preds) != len(targets):
        raise UserError(f"expected as many references as predictions, got {len(targets)} and {len(preds)}")
    if len(preds) == 0:
        raise UserError("expected at least one validation case to choose the post-processing on, got none")
    classes = range(1, num_classes)
    options = ("before", "largest_component", "largest_component_fill_holes")
    scores = {c: {o: 0.0 for o in options} for c in classes}  # sums of per-case Dice
    for p, t in _pairs(preds, targets):
        for c in classes:
            scores[c]["before"] += case_dice(p, t, c)
            if not (p == c).any():
                # nothing to remove or fill: every option gives the raw Dice
                d = case_dice(p, t, c)
                scores[c]["largest_component"] += d
                scores[c]["largest_component_fill_holes"] += d
                continue
            scores[c]["largest_component"] += case_dice(keep_largest_component(p, c), t, c)
            scores[c]["largest_component_fill_holes"] += case_dice(keep_largest_component(p, c, True), t, c)
    n = len(preds)
    per_class: dict[int, ClassSteps] = {}
    val_dice: dict[int, dict[str, float]] = {}
    for c in classes:
        mean = {o: s / n for o, s in scores[c].items()}
        best, steps = mean["before"], ClassSteps()
        if mean["largest_component"] - best >= min_improvement:
            best, steps = mean["largest_component"], ClassSteps(largest_component=True)
        if mean["largest_component_fill_holes"] - best >= min_improvement:
            steps = ClassSteps(largest_component=True, fill_holes=True)
        per_class[c] = steps
        val_dice[c] = mean
    decision = PostprocessDecision(per_class, n_cases=n, min_improvement=float(min_improvement))
    # the Dice with the whole decision applied (all classes at once), as evaluate will score it
    after = {c: 0.0 for c in classes}
    for p, t in _pairs(preds, targets):
        q = apply_postprocess(p, decision)
        for c in classes:
            after[c] += case_dice(q, t, c)
    for c in classes:
        val_dice[c]["after"] = after[c] / n
    return PostprocessDecision(per_class, val_dice, n_cases=n, min_improvement=float(min_improvement))
