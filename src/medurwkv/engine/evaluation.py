"""``medurwkv evaluate``: metrics of a trained model on a dataset split, at the images' original resolution.

Every image of the split is predicted with a :class:`~medurwkv.engine.predict.Segmenter` (same modes as
``predict``: by default resized to the training ``img_size`` and the probabilities resized back), and the
label map is compared with the **original** mask at the **original** size by
:class:`~medurwkv.engine.metrics.MetricAccumulator` (HD95 / ASSD in mm when the dataset gives a pixel spacing,
e.g. HC18's CSV, else in pixels). Outputs, in ``OUT`` (default ``RUN_DIR/eval/<split>/`` when the checkpoint
lies in a run folder)::

    per_image.csv  summary.json  summary.md  cases/{best,median,worst}_<id>.png

``summary.json`` is ``MetricAccumulator.summary()`` plus an ``"evaluation"`` block (checkpoint, data, split,
split file and checksum, inference mode). When the output lies in the run folder, the run's ``report.html`` is
rebuilt afterwards. The command line is ``medurwkv/cli/evaluate.py``.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from ..utils import atomic_write_text
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


def _decompress_labels(blob: _Compressed) -> np.ndarray:
    data, shape, dtype = blob
    return np.frombuffer(zlib.decompress(data), dtype=np.dtype(dtype)).reshape(shape).astype(np.int64)


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
) -> dict[str, Any]:
    """Evaluate a checkpoint (``.pt``, run folder or ``.onnx``) or a :class:`Segmenter` on a dataset split.

    Args:
        ckpt_or_segmenter: what to evaluate.
        data_dir: dataset folder (``images/`` + ``masks/`` or nnU-Net layout, see ``data.index.discover``).
        split: ``"test"``, ``"val"``, ``"train"`` or ``"all"`` (every image, no split file needed).
        split_file: split JSON (default: see :func:`resolve_split_ids`).
        fold: fold of a k-fold split file (default: the training's fold when it used this dataset).
        ids: evaluate exactly these image ids (``split`` then only names the output); overrides split files.
        out_dir: output folder (default ``RUN_DIR/eval/<split>`` when the checkpoint is in a run folder).
        out: alias of ``out_dir`` (the CLI's ``--out``).
        tta, native, window, overlap, batch_size: inference options of :meth:`Segmenter.predict`.
        device: torch device when a path is given.
        include_background: also score class 0.
        thumbnails: write ``cases/{best,median,worst}_<id>.png`` (prediction vs ground truth).
        report: rebuild ``RUN_DIR/report.html`` when the output lies in the run folder.
        progress, verbose: progress bar; print the Markdown table and headline Dice.

    Returns:
        the summary dict written to ``summary.json`` (``MetricAccumulator.summary()`` + ``"evaluation"``).

    Raises:
        UserError: a wrong checkpoint, dataset, split or option (see :meth:`Segmenter.from_checkpoint` and
            :func:`resolve_split_ids`); ``FileNotFoundError`` for missing paths.
    """
    from tqdm.auto import tqdm

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
    if ids is not None:
        ids = [str(i) for i in ids]
        missing = sorted(set(ids) - set(index.ids))
        if missing:
            raise UserError(
                f"{len(missing)} ids are not image/mask pairs of {data_root} (e.g. {missing[:5]})"
            )
        if not ids:
            raise UserError("expected at least one image id to evaluate, got an empty list")
        split_info: dict[str, Any] = {
            "split": split,
            "split_file": None,
            "checksum": None,
            "split_source": "ids argument",
        }
    else:
        ids, split_info = resolve_split_ids(
            index,
            split,
            split_file=split_file,
            fold=fold,
            checkpoint_info=seg.checkpoint_info,
            run_dir=run_dir,
        )
    if out_dir is not None and out is not None and Path(out_dir) != Path(out):
        raise UserError(f"expected one of out_dir / out, got both ({out_dir} and {out})")
    out_dir = out_dir if out_dir is not None else out
    if out_dir is None:
        if run_dir is None:
            raise UserError(
                f"the checkpoint {source} is not inside a run folder (config.yaml / metrics.csv beside it); "
                "pass out_dir / --out DIR"
            )
        out = run_dir / "eval" / split
    else:
        out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    mode, mode_size = seg.resolve_mode(native=native, window=window)  # fails early on a bad window
    mode_line = seg.describe_mode(native=native, window=window, tta=tta)
    if verbose:
        print(f"evaluating {seg} on {len(ids)} images of {data_root} (split {split}); mode: {mode_line}")
    acc = MetricAccumulator(seg.num_classes, seg.class_names, include_background=include_background)
    preds: dict[str, Any] = {}  # id -> compressed label map, for the thumbnails
    bs = max(1, int(batch_size))
    bar = tqdm(total=len(ids), desc=f"evaluate {split}", unit="img", disable=None if progress else True)
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
            acc.add(cid, labels, gt, spacing=index.spacing.get(cid))
            preds[cid] = _compress_labels(labels)
            bar.update(1)
    bar.close()

    paths = write_outputs(acc, out)
    summary = acc.summary()
    summary["evaluation"] = {
        "checkpoint": str(seg.source) if seg.source is not None else None,
        "backend": seg.backend,
        "model": (seg.model_spec or {}).get("name"),
        "data": str(data_root),
        **split_info,
        "mode": mode,
        "model_input_size": list(mode_size) if mode_size else None,
        "mode_description": mode_line,
        "tta": bool(tta),
        "overlap": overlap if mode == "window" else None,
        "resolution": "original image size (predictions resized back before scoring)",
        "spacing_source": "dataset spacing CSV" if summary["distance_unit"] == "mm" else None,
        "epoch": seg.checkpoint_info.get("epoch"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(paths["summary_json"], json.dumps(summary, indent=2, allow_nan=False) + "\n")

    if thumbnails:
        save_case_thumbnails(
            out / "cases",
            acc.per_image_rows(),
            images=index.load_image,
            preds=lambda cid: _decompress_labels(preds[cid]),
            gts=index.load_mask,
        )
    if verbose:
        print(summary_markdown(summary, title=f"{split} ({len(ids)} images)"))
        hl = summary["headline"]["value"]
        print(
            f"headline Dice ({split}, per-image mean over {len(ids)} images): "
            + ("n/a" if hl is None else f"{hl:.4f}")
        )
        print(f"wrote {out}")
    if report and run_dir is not None and _is_within(out, run_dir):
        from .report import build_report

        try:
            path = build_report(run_dir)
            if verbose:
                print(f"report: {path}")
        except Exception as e:  # noqa: BLE001 - the metrics are written; a report failure must not hide them
            print(
                f"warning: could not rebuild the report of {run_dir}: {type(e).__name__}: {e}",
                file=sys.stderr,
            )
    return summary


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
