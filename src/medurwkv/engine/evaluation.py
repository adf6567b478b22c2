"""``medurwkv evaluate``: metrics of a trained model on a dataset split, at the images' original resolution
(volume datasets: per volume in 3D, see :func:`_evaluate_volumes` and docs/predict.md, "Volumes").

Every image of the split is predicted with a :class:`~medurwkv.engine.predict.Segmenter` (same modes as
``predict``: by default resized to the training ``img_size`` and the probabilities resized back), and the
label map is compared with the **original** mask at the **original** size by
:class:`~medurwkv.engine.metrics.MetricAccumulator` (HD95 / ASSD in mm when the dataset gives a pixel spacing,
e.g. HC18's CSV, else in pixels). Outputs, in ``OUT`` (default ``RUN_DIR/eval/<split>/`` when the checkpoint
lies in a run folder)::

    per_image.csv  summary.json  summary.md  cases/{best,median,worst}_<id>.png

``summary.json`` is ``MetricAccumulator.summary()`` plus an ``"evaluation"`` block (checkpoint, data, split,
split file and checksum, inference mode, post-processing). When the output lies in the run folder, the run's
``report.html`` is rebuilt afterwards. The command line is ``medurwkv/cli/evaluate.py``.

Post-processing (:mod:`medurwkv.engine.postprocess`): the label maps are scored with the checkpoint's decision
applied (``postprocess=False`` / ``--no-postprocess``: as the model predicted them). With
``choose_postprocess=True`` (what ``fit`` does on the validation split) the decision is chosen on this split's
raw predictions first, then applied; it is returned in ``summary["evaluation"]["postprocess_decision"]``. Every
case is therefore predicted first (label maps kept zlib-compressed) and scored afterwards.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.volumes import is_volume_dataset
from ..errors import UserError
from ..utils import atomic_write_text, progress_bar
from .postprocess import PostprocessDecision, apply_postprocess, choose_postprocess
from .predict import Segmenter
from .report import RUN_MARKERS

if TYPE_CHECKING:
    import torch

__all__ = ["evaluate", "resolve_split_ids", "run_dir_of"]

# A label map kept in memory until the thumbnails are drawn: (zlib bytes, shape, dtype string).
_Compressed = tuple[bytes, tuple[int, ...], str]


def _compress_labels(labels: np.ndarray) -> _Compressed:
    a = np.ascontiguousarray(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.int32))
    return zlib.compress(a.tobytes(), 1), a.shape, a.dtype.str


def _decompress_labels(blob: _Compressed, as_int64: bool = True) -> np.ndarray:
    data, shape, dtype = blob
    a = np.frombuffer(zlib.decompress(data), dtype=np.dtype(dtype)).reshape(shape)
    return a.astype(np.int64) if as_int64 else a.copy()


class _LazyMaps(Sequence[np.ndarray]):
    """Label maps decompressed one at a time on access, so choosing the post-processing never holds a whole
    split's maps (e.g. volumes) uncompressed at once."""

    def __init__(self, ids: list[str], blob: Callable[[str], _Compressed]) -> None:
        self.ids, self.blob = ids, blob

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return _decompress_labels(self.blob(self.ids[i]), as_int64=False)  # stored dtype (uint8 mostly)


def _postprocess_for(
    seg: Segmenter,
    cases: dict[str, tuple[_Compressed, _Compressed]],
    *,
    enabled: bool,
    choose: bool,
) -> tuple[PostprocessDecision | None, dict[str, Any]]:
    """The decision to score with (chosen on ``cases``: id -> (raw prediction, reference), or the model's),
    and the ``"evaluation"`` fields that record it."""
    if choose:
        ids = list(cases)
        decision: PostprocessDecision | None = choose_postprocess(
            _LazyMaps(ids, lambda c: cases[c][0]), _LazyMaps(ids, lambda c: cases[c][1]), seg.num_classes
        )
        source = "chosen on this split"
    elif seg.postprocess is None:
        decision, source = None, "none in the checkpoint"
    elif not enabled:
        decision, source = None, "off (postprocess=False / --no-postprocess)"
    else:
        decision, source = seg.postprocess, "from the checkpoint"
    text = source if decision is None else f"{source}: {decision.describe(seg.class_names)}"
    return decision, {
        "postprocess_applied": decision is not None and decision.active,
        "postprocess": text,
        "postprocess_decision": decision.to_dict() if decision is not None else None,
    }


def _score_cases(
    seg: Segmenter,
    cases: dict[str, tuple[_Compressed, _Compressed]],
    acc: Any,
    spacing: Callable[[str], Any],
    *,
    enabled: bool,
    choose: bool,
) -> tuple[dict[str, tuple[_Compressed, _Compressed]], dict[str, Any]]:
    """Take (or choose) the post-processing decision for ``cases`` (id -> raw prediction, reference; images or
    whole volumes), add every case to ``acc`` with it applied, and return the cases as scored (for the
    thumbnails) and the ``"evaluation"`` fields that record the decision."""
    decision, fields = _postprocess_for(seg, cases, enabled=enabled, choose=choose)
    scored: dict[str, tuple[_Compressed, _Compressed]] = {}
    for cid, (pred_blob, ref_blob) in cases.items():
        pred = apply_postprocess(_decompress_labels(pred_blob), decision)
        acc.add(cid, pred, _decompress_labels(ref_blob), spacing=spacing(cid))
        scored[cid] = (_compress_labels(pred) if decision is not None else pred_blob, ref_blob)
    return scored, fields


def run_dir_of(path: str | Path | None) -> Path | None:
    """The run folder of a checkpoint: the folder itself, or the checkpoint's parent when it looks like a run
    (holds ``config.yaml`` or ``metrics.csv``); ``None`` otherwise (e.g. an exported .onnx elsewhere)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    parent = p.parent
    return parent if any((parent / m).is_file() for m in RUN_MARKERS) else None


def _same_folder(a: Any, b: Path) -> bool:
    try:
        return a is not None and Path(a).expanduser().resolve() == b.resolve()
    except OSError:
        return False


def resolve_split_ids(
    index: Any,
    split: str,
    *,
    split_file: str | Path | None = None,
    fold: int | None = None,
    checkpoint_info: dict[str, Any] | None = None,
    run_dir: Path | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Ids of ``split`` (``train``/``val``/``test``/``all``) and a description of where they came from.

    Sources, in order: ``split_file``; when the checkpoint was trained on this same dataset folder, the split
    recorded in the checkpoint (``ckpt["split"]``, the exact ids training used), then the training's
    ``split_file`` and ``RUN_DIR/splits.json``; then ``DATA/splits.json``. ``"all"`` needs no file.
    """
    from ..data.split import DEFAULT_FILENAME, load_split

    if split == "all":
        return list(index.ids), {"split": "all", "split_file": None, "checksum": None, "split_source": "all"}
    if split not in ("train", "val", "test"):
        raise UserError(f"expected --split train, val, test or all, got {split!r}")
    info = checkpoint_info or {}
    tc = info.get("train_config") or {}
    same_data = _same_folder(tc.get("data"), Path(index.root))
    candidates: list[Path] = []
    if split_file is not None:
        candidates = [Path(split_file).expanduser()]
        if not candidates[0].is_file():
            raise FileNotFoundError(f"split file {candidates[0]} does not exist")
    else:
        rec = info.get("split")
        if same_data and fold is None and isinstance(rec, dict) and isinstance(rec.get(split), list):
            ids = [str(i) for i in rec[split]]
            missing = sorted(set(ids) - set(index.ids))
            if missing:
                raise UserError(
                    f"the checkpoint's {split} split has {len(missing)} ids not in {index.root} "
                    f"(e.g. {missing[:5]}); the dataset changed since training: pass --split-file or "
                    "--split all"
                )
            if not ids:
                raise UserError(
                    f"the checkpoint's {split} split is empty; choose another split or --split all"
                )
            return ids, {
                "split": split,
                "split_file": rec.get("path"),
                "checksum": rec.get("checksum"),
                "fold": rec.get("fold"),
                "split_source": "checkpoint",
            }
        if same_data:
            if tc.get("split_file"):
                candidates.append(Path(tc["split_file"]).expanduser())
            if run_dir is not None:
                candidates.append(run_dir / DEFAULT_FILENAME)
            if fold is None and tc.get("fold") is not None:
                fold = int(tc["fold"])
        candidates.append(Path(index.root) / DEFAULT_FILENAME)
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        looked = ", ".join(str(c) for c in candidates)
        raise FileNotFoundError(
            f"no split file found (looked for {looked}); pass --split-file FILE, create one with "
            f"`medurwkv data split {index.root}`, or evaluate every image with --split all"
        )
    sp = load_split(path, index, fold=fold)
    ids = sp.ids(split)
    if not ids:
        raise UserError(f"split {split!r} of {path} is empty; choose another split (train, val, test or all)")
    return ids, {
        "split": split,
        "split_file": str(path),
        "checksum": sp.checksum,
        "fold": sp.fold,
        "split_source": "split file",
    }


def evaluate(
    ckpt_or_segmenter: str | Path | Segmenter,
    data_dir: str | Path,
    *,
    split: str = "test",
    split_file: str | Path | None = None,
    fold: int | None = None,
    ids: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    out: str | Path | None = None,
    tta: bool = False,
    native: bool = False,
    window: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    include_background: bool = False,
    thumbnails: bool = True,
    report: bool = True,
    progress: bool = True,
    verbose: bool = True,
    postprocess: bool = True,
    choose_postprocess: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint (``.pt``, run folder or ``.onnx``) or a :class:`Segmenter` on a dataset split.

    Args:
        ckpt_or_segmenter: what to evaluate.
        data_dir: dataset folder (``images/`` + ``masks/`` or nnU-Net layout, see ``data.index.discover``), or
            a volume dataset (``data.volumes``) for a model trained on volumes: each case is then segmented
            slice by slice and scored in 3D per class (``engine/metrics3d.py``; ``per_case.csv``).
        split: ``"test"``, ``"val"``, ``"train"`` or ``"all"`` (every image, no split file needed).
        split_file: split JSON (default: see :func:`resolve_split_ids`).
        fold: fold of a k-fold split file (default: the training's fold when it used this dataset).
        ids: evaluate exactly these image (or case) ids (``split`` then only names the output); overrides
            split files.
        out_dir: output folder (default ``RUN_DIR/eval/<split>`` when the checkpoint is in a run folder).
        out: alias of ``out_dir`` (the CLI's ``--out``).
        tta, native, window, overlap, batch_size: inference options of :meth:`Segmenter.predict`.
        device: torch device when a path is given.
        include_background: also score class 0.
        thumbnails: write ``cases/{best,median,worst}_<id>.png`` (prediction vs ground truth).
        report: rebuild ``RUN_DIR/report.html`` when the output lies in the run folder.
        progress, verbose: progress bar; print the Markdown table and headline Dice.
        postprocess: score the label maps with the checkpoint's post-processing decision applied (when it
            has one); ``False`` scores them as predicted.
        choose_postprocess: choose the decision on this split's predictions (which should then be the
            validation split) and score with it applied, whatever ``postprocess`` says; ``fit`` stores it in
            best.pt.

    Returns:
        the summary dict written to ``summary.json`` (``MetricAccumulator.summary()`` + ``"evaluation"``, whose
        ``postprocess_applied``, ``postprocess`` (one line) and ``postprocess_decision`` (the decision's dict,
        or ``None``) say what post-processing the scores include).

    Raises:
        UserError: a wrong checkpoint, dataset, split or option (see :meth:`Segmenter.from_checkpoint` and
            :func:`resolve_split_ids`); ``FileNotFoundError`` for missing paths.
    """
    from ..data.index import discover
    from .metrics import MetricAccumulator, summary_markdown, write_outputs
    from .visualize import save_case_thumbnails

    t0 = time.perf_counter()
    if isinstance(ckpt_or_segmenter, Segmenter):
        seg = ckpt_or_segmenter
        source = seg.source
    else:
        source = Path(ckpt_or_segmenter).expanduser()
        seg = Segmenter.from_checkpoint(source, device=device)
    run_dir = run_dir_of(source)
    data_root = Path(data_dir).expanduser()
    if is_volume_dataset(data_root):
        if native or window is not None:
            raise UserError(
                "expected neither --native nor --window for a volume dataset (its slices are resized as in "
                f"training), got {'--native' if native else '--window'}; drop it"
            )
        return _evaluate_volumes(
            seg,
            data_root,
            run_dir,
            split=split,
            split_file=split_file,
            fold=fold,
            ids=ids,
            out=_out_dir(out_dir, out, run_dir, source, split),
            tta=tta,
            batch_size=batch_size,
            include_background=include_background,
            thumbnails=thumbnails,
            report=report,
            progress=progress,
            verbose=verbose,
            t0=t0,
            postprocess=postprocess,
            choose=choose_postprocess,
        )
    if seg.preprocess.get("volume") is not None:
        raise UserError(
            f"{seg.source or 'the model'} was trained on volumes, but {data_root} is not a volume dataset "
            "(imagesTr/ + labelsTr/ NIfTI); evaluate it on volumes"
        )
    index = discover(data_root)
    if not index.ids:
        raise UserError(f"no image/mask pairs found in {data_root}; check it with `medurwkv data check`")
    if index.classes_known and index.num_classes != seg.num_classes:
        raise UserError(
            f"{data_root} declares {index.num_classes} classes {index.class_names} but the model predicts "
            f"{seg.num_classes} {seg.class_names}; evaluate on a dataset with the model's classes"
        )
    if not index.classes_known:
        # no dataset.json: take the model's classes, so masks are validated against them
        index.set_inferred_classes(seg.num_classes - 1)
    ids, split_info = _split_ids(index, ids, split, split_file, fold, seg, run_dir)
    out = _out_dir(out_dir, out, run_dir, source, split)

    mode, mode_size = seg.resolve_mode(native=native, window=window)  # fails early on a bad window
    mode_line = seg.describe_mode(native=native, window=window, tta=tta)
    if verbose:
        print(f"evaluating {seg} on {len(ids)} images of {data_root} (split {split}); mode: {mode_line}")
    acc = MetricAccumulator(seg.num_classes, seg.class_names, include_background=include_background)
    # id -> (raw prediction, mask), compressed: every image is predicted before any is scored, since choosing
    # the post-processing needs them all
    raw: dict[str, tuple[_Compressed, _Compressed]] = {}
    bs = max(1, int(batch_size))
    bar = progress_bar(total=len(ids), desc=f"evaluate {split}", unit="img", progress=progress)
    for start in range(0, len(ids), bs):
        chunk = ids[start : start + bs]
        images = [index.load_image(i) for i in chunk]
        names = [f"{i} ({index.image_path(i)})" for i in chunk]
        probs = seg.predict_items(
            images, names, tta=tta, native=native, window=window, overlap=overlap, batch_size=bs
        )
        for cid, p in zip(chunk, probs):
            labels = p.argmax(0).numpy()  # (H, W) at the original size
            gt = index.load_mask(cid)
            if gt.shape != labels.shape:
                raise UserError(
                    f"image {index.image_path(cid)} is {labels.shape} but its mask "
                    f"{index.mask_paths[cid]} is {gt.shape}; image and mask must have the same size"
                )
            raw[cid] = (_compress_labels(labels), _compress_labels(gt))
            bar.update(1)
    bar.close()
    scored, pp_fields = _score_cases(
        seg, raw, acc, index.spacing.get, enabled=postprocess, choose=choose_postprocess
    )
    del raw

    summary = acc.summary()
    _write_summary(
        write_outputs(acc, out)["summary_json"],
        summary,
        seg,
        data_root,
        split_info,
        t0,
        mode=mode,
        model_input_size=list(mode_size) if mode_size else None,
        mode_description=mode_line,
        tta=bool(tta),
        overlap=overlap if mode == "window" else None,
        resolution="original image size (predictions resized back before scoring)",
        spacing_source="dataset spacing CSV" if summary["distance_unit"] == "mm" else None,
        **pp_fields,
    )

    if thumbnails:
        save_case_thumbnails(
            out / "cases",
            acc.per_image_rows(),
            images=index.load_image,
            preds=lambda cid: _decompress_labels(scored[cid][0]),
            gts=index.load_mask,
        )
    if verbose:
        print(f"post-processing: {pp_fields['postprocess']}")
        print(summary_markdown(summary, title=f"{split} ({len(ids)} images)"))
        hl = summary["headline"]["value"]
        print(
            f"headline Dice ({split}, per-image mean over {len(ids)} images): "
            + ("n/a" if hl is None else f"{hl:.4f}")
        )
        print(f"wrote {out}")
    if report:
        _rebuild_report(run_dir, out, verbose)
    return summary


def _write_summary(
    path: Path,
    summary: dict[str, Any],
    seg: Segmenter,
    data_root: Path,
    split_info: dict[str, Any],
    t0: float,
    **how: Any,
) -> None:
    """Add the ``"evaluation"`` block (what was evaluated on what, and ``how``) and rewrite summary.json."""
    summary["evaluation"] = {
        "checkpoint": str(seg.source) if seg.source is not None else None,
        "backend": seg.backend,
        "model": (seg.model_spec or {}).get("name"),
        "data": str(data_root),
        **split_info,
        **how,
        "epoch": seg.checkpoint_info.get("epoch"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def _split_ids(
    index: Any,
    ids: Sequence[str] | None,
    split: str,
    split_file: str | Path | None,
    fold: int | None,
    seg: Segmenter,
    run_dir: Path | None,
) -> tuple[list[str], dict[str, Any]]:
    """The ids to evaluate: ``ids`` as given (checked against the dataset), else the split's."""
    if ids is None:
        return resolve_split_ids(
            index,
            split,
            split_file=split_file,
            fold=fold,
            checkpoint_info=seg.checkpoint_info,
            run_dir=run_dir,
        )
    ids = [str(i) for i in ids]
    missing = sorted(set(ids) - set(index.ids))
    if missing:
        raise UserError(f"{len(missing)} ids are not labelled cases of {index.root} (e.g. {missing[:5]})")
    if not ids:
        raise UserError("expected at least one id to evaluate, got an empty list")
    return ids, {"split": split, "split_file": None, "checksum": None, "split_source": "ids argument"}


def _out_dir(
    out_dir: str | Path | None, out: str | Path | None, run_dir: Path | None, source: Any, split: str
) -> Path:
    """``out_dir`` / ``out`` (aliases), else ``RUN_DIR/eval/<split>``; created."""
    if out_dir is not None and out is not None and Path(out_dir) != Path(out):
        raise UserError(f"expected one of out_dir / out, got both ({out_dir} and {out})")
    chosen = out_dir if out_dir is not None else out
    if chosen is None:
        if run_dir is None:
            raise UserError(
                f"the checkpoint {source} is not inside a run folder (config.yaml / metrics.csv beside it); "
                "pass out_dir / --out DIR"
            )
        path = run_dir / "eval" / split
    else:
        path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _rebuild_report(run_dir: Path | None, out: Path, verbose: bool) -> None:
    """Rebuild ``RUN_DIR/report.html`` when the evaluation was written inside the run folder."""
    if run_dir is None or not _is_within(out, run_dir):
        return
    from .report import build_report

    try:
        path = build_report(run_dir)
        if verbose:
            print(f"report: {path}")
    except Exception as e:  # noqa: BLE001 - the metrics are written; a report failure must not hide them
        print(f"warning: could not rebuild the report of {run_dir}: {type(e).__name__}: {e}", file=sys.stderr)


def _evaluate_volumes(
    seg: Segmenter,
    data_root: Path,
    run_dir: Path | None,
    *,
    split: str,
    split_file: str | Path | None,
    fold: int | None,
    ids: Sequence[str] | None,
    out: Path,
    tta: bool,
    batch_size: int,
    include_background: bool,
    thumbnails: bool,
    report: bool,
    progress: bool,
    verbose: bool,
    t0: float,
    postprocess: bool,
    choose: bool,
) -> dict[str, Any]:
    """``evaluate`` on a volume dataset: each case segmented slice by slice, scored in 3D per class (with the
    post-processing applied to each whole volume)."""
    from ..data.volumes import discover_volumes, load_case
    from .metrics3d import VolumeMetrics, volume_summary_markdown
    from .visualize import save_volume_thumbnails
    from .volume_inference import segment_volume, volume_spec

    spec = volume_spec(seg)
    index = discover_volumes(data_root)
    if index.class_names is not None and len(index.class_names) != seg.num_classes:
        raise UserError(
            f"{data_root} declares {len(index.class_names)} classes {index.class_names} but the model predicts "
            f"{seg.num_classes} {seg.class_names}; evaluate on a dataset with the model's classes"
        )
    ids, split_info = _split_ids(index, ids, split, split_file, fold, seg, run_dir)
    mode_line = seg.describe_mode(tta=tta) + f"; volumes: {spec.describe()}"
    if verbose:
        print(f"evaluating {seg} on {len(ids)} volumes of {data_root} (split {split}); mode: {mode_line}")
    acc = VolumeMetrics(seg.num_classes, seg.class_names, include_background=include_background)
    # case -> (raw prediction, reference), compressed: all cases are segmented before any is scored
    kept: dict[str, tuple[_Compressed, _Compressed]] = {}
    spacings: dict[str, Any] = {}
    spacing_known = True
    for case in progress_bar(ids, desc=f"evaluate {split}", unit="vol", progress=progress):
        image, gt, ref = load_case(index, case)  # (C, X, Y, Z), (X, Y, Z), geometry
        if gt is None:
            raise UserError(f"case {case!r} of {data_root} has no label; evaluation needs labelled cases")
        pred = segment_volume(
            seg,
            image,
            spacing=ref.spacing if ref.spacing_known else None,
            tta=tta,
            batch_size=batch_size,
            name=f"case {case!r}",
            postprocess=False,  # applied below, once the decision is known
        )
        spacing_known = spacing_known and ref.spacing_known
        spacings[case] = ref.spacing if ref.spacing_known else None
        kept[case] = (_compress_labels(pred), _compress_labels(gt))
    # post-processing on each whole volume: (X, Y, Z) label maps, 3D components
    kept, pp_fields = _score_cases(seg, kept, acc, spacings.get, enabled=postprocess, choose=choose)
    summary = acc.summary()
    _write_summary(
        acc.write_outputs(out)["summary_json"],
        summary,
        seg,
        data_root,
        split_info,
        t0,
        mode="volume slices",
        model_input_size=list(seg.img_size) if seg.img_size else None,
        mode_description=mode_line,
        tta=bool(tta),
        resolution="each volume on its own voxel grid (slice predictions resized back before scoring)",
        spacing_source="NIfTI header" if spacing_known else None,
        **pp_fields,
    )
    if thumbnails:
        save_volume_thumbnails(
            out / "cases",
            acc.per_case_rows(),
            images=lambda c: load_case(index, c)[0][0],  # first channel (X, Y, Z)
            preds=lambda c: _decompress_labels(kept[c][0]),
            gts=lambda c: _decompress_labels(kept[c][1]),
            axis=spec.axis,
        )
    if verbose:
        print(f"post-processing: {pp_fields['postprocess']}")
        print(volume_summary_markdown(summary, title=f"{split} ({len(ids)} volumes)"))
        hl = summary["headline"]["value"]
        print(
            f"headline Dice ({split}, mean over classes of the mean over {len(ids)} volumes): "
            + ("n/a" if hl is None else f"{hl:.4f}")
        )
        print(f"wrote {out}")
    if report:
        _rebuild_report(run_dir, out, verbose)
    return summary


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
