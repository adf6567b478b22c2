"""Frozen, grouped train/val/test splits stored as JSON (``medurwkv data split``).

File format ``medurwkv-split-v1``::

    {"format": "medurwkv-split-v1",
     "train": [ids], "val": [ids], "test": [ids],          # sorted; with folds: fold 0's train/val
     "seed": 0, "group": "^(\\d{3})_" | null,
     "fractions": {"train": 0.7, "val": 0.1, "test": 0.2},  # requested
     "counts": {"train": n, "val": n, "test": n},
     "checksum": "<sha256>", "created": "<ISO 8601 UTC>",
     "folds": [{"train": [...], "val": [...]}, ...] | null, # optional k-fold rotation
     "dataset": "<folder name>", "test_subsets": [...] | null}

``checksum`` is the SHA-256 of the canonical JSON (sorted keys, separators ``(",", ":")``) of
``{"train": ..., "val": ..., "test": ..., "folds": ...}`` with every id list sorted; it detects a split file
edited by hand or truncated. Grouping: a regex with exactly one capture group maps an id to its group
(patient / exam); ids of one group always land in the same split (and fold).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..utils import atomic_write_json
from .index import DatasetIndex
from .io import check_writable
from .volumes import discover_dataset

__all__ = [
    "DEFAULT_FILENAME",
    "HC18_GROUP",
    "SPLIT_FORMAT",
    "Split",
    "auto_group",
    "ensure_split",
    "load_split",
    "make_split",
    "save_split",
    "split_checksum",
]

SPLIT_FORMAT = "medurwkv-split-v1"
HC18_GROUP = r"^(\d{3})_"
DEFAULT_VAL = 0.1
DEFAULT_TEST = 0.2
DEFAULT_FILENAME = "splits.json"


@dataclass
class Split:
    """Ids per split. ``fold`` is the selected fold (train/val are that fold's) or None."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int | None = 0
    group: str | None = None
    fractions: dict[str, float] = field(default_factory=dict)
    checksum: str = ""
    created: str = ""
    folds: list[dict[str, list[str]]] | None = None
    fold: int | None = None
    dataset: str | None = None
    test_subsets: list[str] | None = None

    def ids(self, name: str) -> list[str]:
        """Ids of ``"train"``, ``"val"`` or ``"test"``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"expected split name train/val/test, got {name!r}")
        return list(getattr(self, name))

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def to_json(self) -> dict:
        """The JSON document for the whole file (fold 0 as top-level train/val when folds exist)."""
        base_train, base_val = self.train, self.val
        if self.folds:
            base_train, base_val = self.folds[0]["train"], self.folds[0]["val"]
        return {
            "format": SPLIT_FORMAT,
            "train": sorted(base_train),
            "val": sorted(base_val),
            "test": sorted(self.test),
            "seed": self.seed,
            "group": self.group,
            "fractions": self.fractions,
            "counts": {"train": len(base_train), "val": len(base_val), "test": len(self.test)},
            "checksum": self.checksum or split_checksum(base_train, base_val, self.test, self.folds),
            "created": self.created,
            "folds": self.folds,
            "dataset": self.dataset,
            "test_subsets": self.test_subsets,
        }

    def describe(self) -> str:
        c = self.counts()
        fold = f", fold {self.fold}/{len(self.folds)}" if self.folds and self.fold is not None else ""
        folds = f", {len(self.folds)} folds" if self.folds else ""
        return (
            f"train {c['train']} / val {c['val']} / test {c['test']} (seed {self.seed}, group "
            f"{self.group or 'none'}{folds}{fold}, checksum {self.checksum[:12]})"
        )


def split_checksum(
    train: Sequence[str], val: Sequence[str], test: Sequence[str], folds: list[dict] | None = None
) -> str:
    """SHA-256 of the canonical JSON of the sorted id lists (and folds); see the module docstring."""
    canon = {
        "train": sorted(train),
        "val": sorted(val),
        "test": sorted(test),
        "folds": None
        if not folds
        else [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in folds],
    }
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _compile_group(group: str | None) -> re.Pattern | None:
    if group is None:
        return None
    try:
        pattern = re.compile(group)
    except re.error as e:
        raise UserError(
            f"group regex {group!r} is not a valid regular expression ({e}); pass a Python regex with one "
            "capture group for the patient/exam id (e.g. '^(\\d{3})_'), 'auto' or 'none'"
        ) from e
    if pattern.groups != 1:
        raise UserError(
            f"group regex {group!r} must have exactly one capture group (the patient/exam id), it has "
            f"{pattern.groups}; e.g. '^(\\d{{3}})_' groups HC18's 010_HC with 010_2HC"
        )
    return pattern


def auto_group(ids: Sequence[str]) -> str | None:
    """HC18-style grouping ``^(\\d{3})_`` when every id matches it, else None (no grouping)."""
    pattern = re.compile(HC18_GROUP)
    return HC18_GROUP if ids and all(pattern.search(i) for i in ids) else None


def _groups(ids: Sequence[str], group: str | None) -> dict[str, list[str]]:
    pattern = _compile_group(group)
    out: dict[str, list[str]] = {}
    bad = []
    for i in sorted(ids):
        if pattern is None:
            key = i
        else:
            m = pattern.search(i)
            if m is None or m.group(1) is None:
                bad.append(i)
                continue
            key = m.group(1)
        out.setdefault(key, []).append(i)
    if bad:
        raise UserError(
            f"{len(bad)} ids do not match the group regex {group!r} (e.g. {bad[:5]}); fix the regex "
            "(it is applied with re.search to each id = file stem) or pass group=None"
        )
    return out


def _check_fraction(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise UserError(f"{name} fraction must be in [0, 1), got {value}")
    return float(value)


def _fill(
    order: list[str], groups: dict[str, list[str]], targets: list[int]
) -> tuple[list[list[str]], list[str]]:
    """Greedily assign shuffled groups to buckets until each holds ~target ids; the rest is returned."""
    buckets: list[list[str]] = [[] for _ in targets]
    counts = [0] * len(targets)
    rest: list[str] = []
    for key in order:
        size = len(groups[key])
        for b, target in enumerate(targets):
            # accept a group while the bucket stays within half a group of its target
            if counts[b] + size / 2 <= target and counts[b] < target:
                buckets[b].append(key)
                counts[b] += size
                break
        else:
            rest.append(key)
    return buckets, rest


def make_split(
    ids: Sequence[str],
    *,
    val: float = DEFAULT_VAL,
    test: float = DEFAULT_TEST,
    group: str | None = None,
    seed: int = 0,
    folds: int | None = None,
    test_ids: Sequence[str] | None = None,
    dataset: str | None = None,
) -> Split:
    """Make a grouped random split of ``ids``.

    Groups (``group`` regex, one capture group) are shuffled with ``numpy.random.default_rng(seed)`` and
    assigned greedily: test first, then val, until each holds about ``fraction * len(ids)`` ids; the rest
    is train. A non-zero fraction never yields an empty split while another group can be spared.
    ``test_ids`` fixes the test set (e.g. an official test subset) instead of drawing it.
    With ``folds=K`` the test set is drawn as above, and the remaining groups are dealt into K folds of
    near-equal size (largest groups first, each to the currently smallest fold); fold ``i`` validates
    on part ``i`` and trains on the others (``val`` is then ignored and must be left at its default).
    """
    ids = sorted(set(ids))
    if not ids:
        raise UserError(
            "expected image/mask pairs to split, got none; check the dataset with `medurwkv data check DIR`"
        )
    val, test = _check_fraction("val", val), _check_fraction("test", test)
    if test_ids is None and val + test >= 1.0:
        raise UserError(f"val + test = {val + test:.3g} leaves nothing to train on; use smaller fractions")
    groups = _groups(ids, group)
    rng = np.random.default_rng(seed)
    keys = sorted(groups)
    order = [keys[i] for i in rng.permutation(len(keys))]
    n = len(ids)

    if test_ids is not None:
        fixed = set(test_ids)
        unknown = fixed - set(ids)
        if unknown:
            raise UserError(f"test ids not in the dataset: {sorted(unknown)[:5]}")
        straddle = [k for k in keys if 0 < len(fixed & set(groups[k])) < len(groups[k])]
        if straddle:
            raise UserError(
                f"the fixed test set splits groups {straddle[:5]} (regex {group!r}); "
                "choose a group regex compatible with the official test subset or group=None"
            )
        test_keys = [k for k in order if set(groups[k]) <= fixed]
        remaining = [k for k in order if k not in set(test_keys)]
        test = len(fixed) / n
    else:
        (test_keys,), remaining = _fill(order, groups, [round(test * n)])
        if test > 0 and not test_keys and len(remaining) > 1:
            test_keys, remaining = [remaining[0]], remaining[1:]

    fold_list: list[dict[str, list[str]]] | None = None
    if folds is not None:
        if folds < 2:
            raise UserError(f"folds must be >= 2, got {folds}")
        if len(remaining) < folds:
            raise UserError(f"{len(remaining)} groups left after the test split cannot make {folds} folds")
        parts: list[list[str]] = [[] for _ in range(folds)]
        sizes = [0] * folds
        # stable "largest first" dealing keeps fold sizes within one group of each other
        for key in sorted(remaining, key=lambda k: -len(groups[k])):
            j = int(np.argmin(sizes))
            parts[j].append(key)
            sizes[j] += len(groups[key])
        flat = [[i for k in part for i in groups[k]] for part in parts]
        fold_list = [
            {
                "train": sorted(i for j, part in enumerate(flat) if j != f for i in part),
                "val": sorted(flat[f]),
            }
            for f in range(folds)
        ]
        train_ids, val_ids = fold_list[0]["train"], fold_list[0]["val"]
        val = 1.0 / folds * (1.0 - test)
    else:
        (val_keys,), train_keys = _fill(remaining, groups, [round(val * n)])
        if val > 0 and not val_keys and len(train_keys) > 1:
            val_keys, train_keys = [train_keys[0]], train_keys[1:]
        val_ids = sorted(i for k in val_keys for i in groups[k])
        train_ids = sorted(i for k in train_keys for i in groups[k])
    test_list = sorted(i for k in test_keys for i in groups[k])
    return Split(
        train=train_ids,
        val=val_ids,
        test=test_list,
        seed=seed,
        group=group,
        fractions={"train": round(1.0 - val - test, 6), "val": round(val, 6), "test": round(test, 6)},
        checksum=split_checksum(train_ids, val_ids, test_list, fold_list),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        folds=fold_list,
        fold=0 if fold_list else None,
        dataset=dataset,
    )


def save_split(split: Split, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a split file; refuses to overwrite (splits are frozen) unless ``overwrite``."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"split file {path} already exists; splits are frozen: load it, delete it deliberately, "
            "or pass overwrite=True / --force"
        )
    folder = path.parent
    check_writable(
        folder, "pass --out FILE (Python: out=...) to save the split elsewhere, e.g. next to your runs"
    )
    return atomic_write_json(path, split.to_json(), indent=1)


def _as_ids(doc: dict, key: str, path: Path) -> list[str]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise UserError(f"split file {path}: {key!r} must be a list of id strings")
    return value


def load_split(path: str | Path, index: DatasetIndex | None = None, *, fold: int | None = None) -> Split:
    """Load and verify a split file; with ``index`` also check that every id exists in the dataset.

    Verifies the format tag, the checksum (detects hand edits), disjoint splits and (with folds) the
    fold structure. ``fold=i`` selects fold i's train/val. Dataset ids missing from the split give a
    ``UserWarning`` (the dataset grew); split ids missing from the dataset raise ``UserError``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"split file {path} does not exist; create one with `medurwkv data split DIR [--out FILE]`"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"split file {path} is not valid JSON ({e}); recreate it") from e
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise UserError(
            f"{path} is not a medurwkv split file: expected format {SPLIT_FORMAT!r}, got {found!r}"
        )
    train, val, test = (_as_ids(doc, k, path) for k in ("train", "val", "test"))
    folds = doc.get("folds") or None
    if folds is not None:
        if not isinstance(folds, list) or not all(isinstance(f, dict) for f in folds):
            raise UserError(f"split file {path}: 'folds' must be a list of {{train, val}} objects")
        for f in folds:
            _as_ids(f, "train", path)
            _as_ids(f, "val", path)
    expected = split_checksum(train, val, test, folds)
    if doc.get("checksum") != expected:
        raise UserError(
            f"split file {path} fails its checksum (stored {str(doc.get('checksum'))[:12]}..., computed "
            f"{expected[:12]}...): the id lists were edited or the file is damaged; restore it or recreate "
            "the split with `medurwkv data split`"
        )
    sets = {"train": set(train), "val": set(val), "test": set(test)}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sets[a] & sets[b]
        if both:
            raise UserError(f"split file {path}: ids in both {a} and {b}: {sorted(both)[:5]}")
    if folds:
        pool = sets["train"] | sets["val"]
        for j, f in enumerate(folds):
            if set(f["train"]) & set(f["val"]) or set(f["train"]) | set(f["val"]) != pool:
                raise UserError(f"split file {path}: fold {j} does not partition the train+val ids")
    split = Split(
        train=sorted(train),
        val=sorted(val),
        test=sorted(test),
        seed=doc.get("seed"),
        group=doc.get("group"),
        fractions=dict(doc.get("fractions") or {}),
        checksum=expected,
        created=str(doc.get("created", "")),
        folds=folds,
        fold=0 if folds else None,
        dataset=doc.get("dataset"),
        test_subsets=doc.get("test_subsets"),
    )
    if fold is not None:
        if not folds:
            raise UserError(
                f"fold {fold} requested but split file {path} has no folds (make it with --folds K)"
            )
        if not 0 <= fold < len(folds):
            raise UserError(f"fold {fold} out of range: {path} has folds 0..{len(folds) - 1}")
        split.train, split.val, split.fold = sorted(folds[fold]["train"]), sorted(folds[fold]["val"]), fold
    if index is not None:
        known = set(index.ids)
        all_ids = sets["train"] | sets["val"] | sets["test"]
        missing = sorted(all_ids - known)
        if missing:
            raise UserError(
                f"split file {path} names {len(missing)} ids that are not (or no longer) image/mask pairs in "
                f"{index.root} (e.g. {missing[:5]}): the dataset changed since the split was made; restore "
                "the files, or make a new split (`medurwkv data split ... --force`)"
            )
        unused = sorted(known - all_ids)
        if unused:
            warnings.warn(
                f"{len(unused)} ids in {index.root} are not in split {path} (e.g. {unused[:3]}) and will "
                "not be used; make a new split to include them",
                UserWarning,
                stacklevel=2,
            )
    return split


def _resolve_group(group: str | None, index: DatasetIndex) -> str | None:
    if group == "auto":
        declared = (index.dataset_json or {}).get("split_group")
        return declared if declared else auto_group(index.ids)
    if group in ("none", ""):
        return None
    return group


def _subset_ids(index: DatasetIndex, names: Sequence[str]) -> list[str]:
    subsets = (index.dataset_json or {}).get("subsets") or {}
    missing = [n for n in names if n not in subsets]
    if missing:
        raise UserError(
            f"dataset.json of {index.root} has no subsets {missing}; available: {sorted(subsets) or 'none'}"
        )
    known = set(index.ids)
    return sorted({i for n in names for i in subsets[n] if i in known})


def ensure_split(
    root: str | Path,
    *,
    val: float | None = None,
    test: float | None = None,
    group: str | None = "auto",
    seed: int | None = None,
    folds: int | None = None,
    fold: int | None = None,
    out: str | Path | None = None,
    test_subsets: Sequence[str] | None = None,
    index: DatasetIndex | None = None,
    overwrite: bool = False,
    verbose: bool = True,
) -> tuple[Split, Path, bool]:
    """Load the dataset's split file, or create and save a default one; returns (split, path, created).

    The file is ``out`` if given, else ``<root>/splits.json``. A new split uses val 0.1 / test 0.2,
    seed 0 and ``group="auto"`` (dataset.json ``split_group``, else HC18-style ``^(\\d{3})_`` if every id
    matches, else none) unless given. Loading an existing file with explicitly different settings
    (``val``, ``test``, ``seed``, ``folds``, a concrete ``group``) raises instead of silently ignoring
    them. ``overwrite=True`` always makes a new split and replaces the file (``data split --force``).
    Saving into a read-only dataset folder raises ``PermissionError`` suggesting ``out``.
    """
    root = Path(root).expanduser()
    index = index if index is not None else discover_dataset(root)
    path = Path(out).expanduser() if out is not None else root / DEFAULT_FILENAME
    if path.exists() and not overwrite:
        split = load_split(path, index, fold=fold)
        asked = {"seed": seed, "folds": folds}
        have = {"seed": split.seed, "folds": len(split.folds) if split.folds else None}
        if val is not None and split.folds is None:
            asked["val"], have["val"] = val, split.fractions.get("val")
        if test is not None and test_subsets is None:
            asked["test"], have["test"] = test, split.fractions.get("test")
        if group not in ("auto", None):
            asked["group"], have["group"] = _resolve_group(group, index), split.group
        diff = {k: (v, have[k]) for k, v in asked.items() if v is not None and v != have[k]}
        if diff:
            detail = ", ".join(f"{k}: asked {a!r}, file has {h!r}" for k, (a, h) in diff.items())
            raise UserError(
                f"existing split {path} was made with different settings ({detail}); use it as is "
                "(drop those options), choose another --out, or delete it to re-split"
            )
        if verbose:
            print(f"using split {path}: {split.describe()}")
        return split, path, False
    group_rx = _resolve_group(group, index)
    test_ids = _subset_ids(index, test_subsets) if test_subsets else None
    split = make_split(
        index.ids,
        val=DEFAULT_VAL if val is None else val,
        test=DEFAULT_TEST if test is None else test,
        group=group_rx,
        seed=0 if seed is None else seed,
        folds=folds,
        test_ids=test_ids,
        dataset=root.name,
    )
    split.test_subsets = list(test_subsets) if test_subsets else None
    if fold is not None:
        if not split.folds:
            raise UserError(f"fold {fold} requested without folds; pass folds=K")
        if not 0 <= fold < len(split.folds):
            raise UserError(f"fold {fold} out of range 0..{len(split.folds) - 1}")
    save_split(split, path, overwrite=overwrite)
    if fold is not None and split.folds:
        split.train, split.val, split.fold = split.folds[fold]["train"], split.folds[fold]["val"], fold
    if verbose:
        print(f"created split {path}: {split.describe()}")
    return split, path, True
