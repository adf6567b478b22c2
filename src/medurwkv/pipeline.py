"""The main job, one command: HC18 -> exam-grouped split -> train -> evaluate -> predict -> report.

``medurwkv demo`` (``make demo``) runs it on a fresh machine. Data: ``$MEDURWKV_DATA/hc18`` when the variable is
set (a prepared folder, e.g. the project's shared data); otherwise the official HC18 archive is downloaded only
when ``--download`` is given (Zenodo record 1327317, checksum-verified when a hash is known), prepared (filled
ellipse masks) into the cache and reused. Python: :func:`run_demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoConfig", "DemoResult", "locate_hc18", "run_demo", "add_parser", "run"]

DATA_ENV = "MEDURWKV_DATA"


@dataclass
class DemoConfig:
    """Options of the main job. The defaults train ``med_urwkv_t`` from scratch in about 15 min on 2 CPU cores."""

    out: str = "demo_out"
    data: str | None = None  # a prepared HC18 folder; default: $MEDURWKV_DATA/hc18 or the download cache
    download: bool = False
    model: str = "med_urwkv_t"
    pretrained: bool | str = False
    img_size: int = 96
    epochs: int = 4
    batch_size: int = 8
    limit: int | None = None  # images per split (smoke runs)
    max_train_batches: int | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 2
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


@dataclass
class DemoResult:
    data_dir: Path
    split_file: Path
    run_dir: Path
    checkpoint: Path
    predictions: Path
    report: Path | None
    test_dice: float | None
    minutes: float


def _cache_root() -> Path:
    return Path(os.environ.get("MEDURWKV_CACHE", Path.home() / ".cache" / "medurwkv")).expanduser()


def locate_hc18(data: str | Path | None = None, *, download: bool = False, progress: bool = True) -> Path:
    """Find a prepared HC18 folder (``images/``, ``masks/``, pixel-size CSV); download it only on request."""
    if data is not None:
        path = Path(data).expanduser()
        if not (path / "images").is_dir():
            raise FileNotFoundError(f"expected a prepared HC18 folder with images/ and masks/, got {path}")
        return path
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser() / "hc18"
        if not (path / "images").is_dir():
            raise FileNotFoundError(
                f"expected ${DATA_ENV}/hc18 with images/ and masks/ (${DATA_ENV}={env}), got nothing at {path}; "
                f"unset {DATA_ENV} and pass --download to fetch the official archive"
            )
        return path
    cached = _cache_root() / "data" / "hc18"
    if (cached / "images").is_dir():
        return cached
    if not download:
        raise FileNotFoundError(
            f"no HC18 data: set {DATA_ENV} to a folder holding hc18/ (images/, masks/), or pass --download "
            f"to fetch the official archive (about 50 MB, Zenodo record 1327317) into {cached}"
        )
    from .data.prepare import fetch_hc18

    print(f"downloading HC18 (Zenodo record 1327317) and preparing it into {cached}")
    return fetch_hc18(cached, download_dir=_cache_root() / "downloads", progress=progress)


def run_demo(config: DemoConfig | None = None, **overrides: Any) -> DemoResult:
    """Run the main job end to end and return where everything is (see module docstring)."""
    from .data.index import discover
    from .data.split import HC18_GROUP, ensure_split
    from .engine.predict import Segmenter, predict_paths
    from .engine.report import build_report
    from .engine.train import fit

    cfg = config or DemoConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ValueError(f"expected a DemoConfig option, got {k!r}")
        setattr(cfg, k, v)
    t0 = time.perf_counter()
    out = Path(cfg.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    data_dir = locate_hc18(cfg.data, download=cfg.download, progress=cfg.progress)
    index = discover(data_dir)
    print(f"[1/5] data: {data_dir} ({index.summary_line()})")

    # Frames of one exam share the 3-digit prefix: split by exam so no patient straddles train and test.
    split, split_file, created = ensure_split(
        data_dir, group=HC18_GROUP, val=0.1, test=0.2, seed=cfg.seed, out=out / "splits.json", index=index
    )
    print(f"[2/5] split by exam ({'created' if created else 'reused'} {split_file}): {split.describe()}")

    run_dir = out / "run"
    train_kwargs = dict(
        data=str(data_dir),
        out=str(run_dir),
        split_file=str(split_file),
        model=cfg.model,
        pretrained=cfg.pretrained,
        model_kwargs=cfg.model_kwargs,
        img_size=cfg.img_size,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        limit=cfg.limit,
        max_train_batches=cfg.max_train_batches,
        seed=cfg.seed,
        device=cfg.device,
        num_workers=cfg.num_workers,
        progress=cfg.progress,
        eval_test=True,
    )
    print(f"[3/5] training {cfg.model} ({cfg.epochs} epochs, {cfg.img_size}px) into {run_dir}")
    if (run_dir / "last.pt").exists():
        result = fit(resume=run_dir, progress=cfg.progress)
    else:
        result = fit(**train_kwargs)

    test_summary = result.eval.get("test") if isinstance(result.eval, dict) else None
    test_dice = None
    if isinstance(test_summary, dict):  # per-image mean Dice over the foreground classes
        test_dice = float(test_summary["headline"]["value"])
    print(f"[4/5] evaluated best.pt on the held-out exams: {run_dir / 'eval' / 'test'}")

    test_ids = split.ids("test")
    if cfg.limit:
        test_ids = test_ids[: cfg.limit]
    pred_dir = out / "predictions"
    segmenter = Segmenter.from_checkpoint(
        result.best_checkpoint, device="cpu" if cfg.device == "auto" else cfg.device
    )
    summary = predict_paths(
        segmenter, [index.image_path(i) for i in test_ids], pred_dir, progress=cfg.progress
    )
    print(f"[5/5] predicted {len(test_ids)} test images into {pred_dir}")
    if summary.failed:
        print(f"      {len(summary.failed)} inputs failed: {summary.failed[:3]}")

    report = build_report(run_dir)
    minutes = (time.perf_counter() - t0) / 60
    res = DemoResult(
        data_dir, split_file, run_dir, result.best_checkpoint, pred_dir, report, test_dice, minutes
    )
    (out / "demo_result.json").write_text(
        json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in res.__dict__.items()}, indent=2)
    )
    print("\n" + "=" * 72)
    dice_txt = f"{test_dice:.4f}" if test_dice is not None else "n/a"
    print(f"Test Dice (per-image mean, held-out exams): {dice_txt}")
    print(f"  report      {report}")
    print(f"  checkpoint  {result.best_checkpoint}")
    print(f"  metrics     {run_dir / 'eval' / 'test' / 'summary.md'}")
    print(f"  predictions {pred_dir}")
    print(f"  total time  {minutes:.1f} min")
    print("=" * 72)
    return res


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    d = DemoConfig()
    p = subparsers.add_parser(
        "demo",
        help="the main job: HC18 -> exam split -> train med_urwkv_t -> evaluate -> predict -> report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    p.add_argument(
        "--data", default=None, help=f"prepared HC18 folder (default ${DATA_ENV}/hc18 or the cache)"
    )
    p.add_argument("--download", action="store_true", help="download the official HC18 archive if needed")
    p.add_argument("--model", default=d.model, help=f"model name (default {d.model})")
    p.add_argument(
        "--pretrained", default=False, help="false, true (official release) or PATH/URL of weights"
    )
    p.add_argument("--img-size", type=int, default=d.img_size, help=f"training size (default {d.img_size})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})"
    )
    p.add_argument("--limit", type=int, default=None, help="use only N images per split (smoke runs)")
    p.add_argument("--max-train-batches", type=int, default=None, help="cap batches per epoch (smoke runs)")
    p.add_argument("--model-kwargs", default="{}", help="JSON overrides of the model config")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _pretrained_arg(value: Any) -> bool | str:
    if isinstance(value, str) and value.lower() in {"false", "no", "0", "none"}:
        return False
    if isinstance(value, str) and value.lower() in {"true", "yes", "1"}:
        return True
    return value


def run(args: argparse.Namespace) -> int:
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as e:
        print(f"error: expected --model-kwargs as JSON, got {args.model_kwargs!r} ({e})")
        return 2
    cfg = DemoConfig(
        out=args.out,
        data=args.data,
        download=args.download,
        model=args.model,
        pretrained=_pretrained_arg(args.pretrained),
        img_size=args.img_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        limit=args.limit,
        max_train_batches=args.max_train_batches,
        seed=args.seed,
        device=args.device,
        num_workers=args.num_workers,
        model_kwargs=kwargs,
        progress=not args.no_progress,
    )
    try:
        run_demo(cfg)
    except FileNotFoundError as e:
        print(f"error: {e}")
        return 2
    return 0
