"""The main job, one command: HC18 -> exam-grouped split -> train -> evaluate -> predict -> report.

``medurwkv demo`` (``make demo``) runs it on a fresh machine. Data: ``$MEDURWKV_DATA/hc18`` when the variable is
set (a prepared folder, e.g. the project's shared data); otherwise the official HC18 archive is downloaded only
when ``--download`` is given (Zenodo record 1327317, checksum-verified when a hash is known), prepared (filled
ellipse masks) into the cache and reused. Python: :func:`run_demo`; the command line is ``medurwkv/cli/demo.py``.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .engine.config import TrainConfig
from .errors import UserError
from .utils import atomic_write_json, default_cache_dir

__all__ = ["DemoConfig", "DemoResult", "DEMO_TRAINING", "demo_training_config", "locate_hc18", "run_demo"]

DATA_ENV = "MEDURWKV_DATA"

# The training options `medurwkv demo` exposes, with the demo's defaults: med_urwkv_t from scratch, about 15 min
# on 2 CPU cores. Their flags, types and help come from TrainConfig; every other option keeps its default.
DEMO_TRAINING: dict[str, Any] = dict(
    model="med_urwkv_t",
    pretrained=False,
    img_size=96,
    epochs=4,
    batch_size=8,
    limit=None,
    max_train_batches=None,
    model_kwargs={},
    seed=0,
    device="auto",
    num_workers=2,
    progress=True,
)


def demo_training_config(**overrides: Any) -> TrainConfig:
    """The demo's training options: TrainConfig defaults, then :data:`DEMO_TRAINING`, then ``overrides``."""
    return TrainConfig(**copy.deepcopy(DEMO_TRAINING)).replace(**overrides)


@dataclass
class DemoConfig:
    """Options of the main job: where the data and the results go, and the training options (``train``)."""

    out: str = field(default="demo_out", metadata={"help": "output folder"})
    data: str | None = field(
        default=None, metadata={"help": f"prepared HC18 folder (default ${DATA_ENV}/hc18 or the cache)"}
    )
    download: bool = field(default=False, metadata={"help": "download the official HC18 archive if needed"})
    train: TrainConfig = field(default_factory=demo_training_config)

    def with_options(self, **options: Any) -> DemoConfig:
        """A copy with demo options (``out``, ``data``, ``download``) and training options (``epochs``, ...)."""
        own = {f.name for f in fields(self) if f.name != "train"}
        demo = {k: v for k, v in options.items() if k in own}
        training = {k: v for k, v in options.items() if k not in own}
        if "split_file" in training:
            raise UserError("expected no split_file for the demo, got one: the demo makes its own exam split")
        return DemoConfig(
            **{**{k: getattr(self, k) for k in own}, **demo}, train=self.train.replace(**training)
        )


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
    cached = default_cache_dir() / "data" / "hc18"
    if (cached / "images").is_dir():
        return cached
    if not download:
        raise FileNotFoundError(
            f"no HC18 data: set {DATA_ENV} to a folder holding hc18/ (images/, masks/), or pass --download "
            f"to fetch the official archive (about 50 MB, Zenodo record 1327317) into {cached}"
        )
    from .data.prepare import fetch_hc18

    print(f"downloading HC18 (Zenodo record 1327317) and preparing it into {cached}")
    return fetch_hc18(cached, download_dir=default_cache_dir() / "downloads", progress=progress)


def run_demo(config: DemoConfig | None = None, **overrides: Any) -> DemoResult:
    """Run the main job end to end and return where everything is (see module docstring)."""
    from .data.index import discover
    from .data.split import HC18_GROUP, ensure_split
    from .engine.predict import Segmenter, predict_paths
    from .engine.report import build_report
    from .engine.train import fit

    cfg = (config or DemoConfig()).with_options(**overrides)
    train = cfg.train
    t0 = time.perf_counter()
    out = Path(cfg.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    data_dir = locate_hc18(cfg.data, download=cfg.download, progress=train.progress)
    index = discover(data_dir)
    print(f"[1/5] data: {data_dir} ({index.summary_line()})")

    # Frames of one exam share the 3-digit prefix: split by exam so no patient straddles train and test.
    split, split_file, created = ensure_split(
        data_dir, group=HC18_GROUP, val=0.1, test=0.2, seed=train.seed, out=out / "splits.json", index=index
    )
    print(f"[2/5] split by exam ({'created' if created else 'reused'} {split_file}): {split.describe()}")

    run_dir = out / "run"
    size = (
        "x".join(str(v) for v in train.img_hw) if train.img_hw[0] != train.img_hw[1] else str(train.img_hw[0])
    )
    print(f"[3/5] training {train.model} ({train.epochs} epochs, {size}px) into {run_dir}")
    if (run_dir / "last.pt").exists():
        result = fit(resume=run_dir, progress=train.progress)
    else:
        result = fit(train, data=str(data_dir), out=str(run_dir), split_file=str(split_file), eval_test=True)

    test_summary = result.eval.get("test") if isinstance(result.eval, dict) else None
    test_dice = None
    if isinstance(test_summary, dict):  # per-image mean Dice over the foreground classes
        test_dice = float(test_summary["headline"]["value"])
    print(f"[4/5] evaluated best.pt on the held-out exams: {run_dir / 'eval' / 'test'}")

    test_ids = split.ids("test")
    if train.limit:
        test_ids = test_ids[: train.limit]
    pred_dir = out / "predictions"
    segmenter = Segmenter.from_checkpoint(
        result.best_checkpoint, device="cpu" if train.device == "auto" else train.device
    )
    summary = predict_paths(
        segmenter, [index.image_path(i) for i in test_ids], pred_dir, progress=train.progress
    )
    print(f"[5/5] predicted {len(test_ids)} test images into {pred_dir}")
    if summary.failed:
        print(f"      {len(summary.failed)} inputs failed: {summary.failed[:3]}")

    report = build_report(run_dir)
    minutes = (time.perf_counter() - t0) / 60
    res = DemoResult(
        data_dir, split_file, run_dir, result.best_checkpoint, pred_dir, report, test_dice, minutes
    )
    atomic_write_json(
        out / "demo_result.json", {k: (str(v) if isinstance(v, Path) else v) for k, v in res.__dict__.items()}
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
