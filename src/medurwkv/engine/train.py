"""Training: :func:`fit`, the Python side of ``medurwkv train`` (the command line is ``medurwkv/cli/train.py``).

One run folder holds everything a run produces::

    RUN_DIR/config.yaml      the resolved TrainConfig (what --resume reads back)
    RUN_DIR/last.pt          checkpoint after the last finished epoch (resume point)
    RUN_DIR/best.pt          checkpoint of the best validation Dice so far
    RUN_DIR/metrics.csv      one row per epoch (epoch, train_loss, val_loss, val_dice, lr, epoch_time_s, ...)
    RUN_DIR/train.log        what was printed
    RUN_DIR/tb/              TensorBoard event files
    RUN_DIR/eval/<split>/    evaluation of best.pt after training (engine/evaluation.py)
    RUN_DIR/report.html      the run report (engine/report.py)

:func:`fit` reads top to bottom: resolve the config, prepare the data once (``engine/train_data.py``), build the
model, the optimizer and its schedule (``engine/train_loop.py``), then for each epoch train, validate and write
the checkpoints (:class:`~medurwkv.engine.checkpoint.TrainState`); finally choose best.pt's post-processing on
the validation split, store it in best.pt, and evaluate best.pt with it. The recipe and which defaults are the
paper's are in docs/training.md.

Reproducibility: the data order of an epoch is ``DistributedSampler(seed, epoch)`` (also with one process),
the augmentation of a sample is seeded from ``(seed, epoch, sample)`` by the dataset, and the global RNGs are
re-seeded from ``(seed, epoch, rank)`` at the start of every epoch. A resumed run therefore replays exactly
the epochs an uninterrupted run would have done; checkpoints also carry the RNG states for completeness.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .checkpoint import TrainState, load_checkpoint
from .config import (
    TrainConfig,
    as_options,
    load_yaml_config,
    resolve_config,
    resolve_pretrained,
    resume_changes,
    save_yaml_config,
)
from .distributed import DistInfo, barrier, cleanup, init_distributed, resolve_device
from .run_files import RunLog, refuse_existing_run, resumable_config, start_run, write_metrics_csv
from .train_data import make_loaders, prepare_data
from .train_loop import (
    PolyWarmup,
    TrainingDiverged,
    build_model,
    build_trainer,
    freeze_epochs,
    seed_everything,
)

__all__ = ["fit", "FitResult", "TrainingDiverged", "METRIC_COLUMNS", "PolyWarmup", "seed_everything"]

METRIC_COLUMNS = (
    "epoch",
    "global_step",
    "train_loss",
    "val_loss",
    "val_dice",
    "lr",
    "epoch_time_s",
    "train_img_per_s",
    "encoder_frozen",
)


@dataclass
class FitResult:
    """What :func:`fit` produced. ``eval`` maps a split name to its metric summary (or an error string)."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_metric: float
    best_epoch: int
    epochs_completed: int
    history: list[dict[str, Any]]
    config: TrainConfig
    eval: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None


# ---------------------------------------------------------------------------------------- fit


def fit(
    config: TrainConfig | Mapping[str, Any] | str | Path | None = None,
    *,
    resume: str | Path | None = None,
    net: nn.Module | None = None,
    **overrides: Any,
) -> FitResult:
    """Train a segmentation model; the Python equivalent of ``medurwkv train``.

    Args:
        config: a :class:`TrainConfig`, a dict of options, or a YAML file (same keys as the CLI flags with
            underscores). Precedence: defaults < ``config`` < ``overrides``.
        resume: a run folder to continue from its ``last.pt`` with its saved ``config.yaml`` (only ``device``,
            ``num_workers``, ``progress``, ``eval_test``, ``tensorboard`` and ``data`` may change).
        net: an already built model (from ``create_model``, e.g. with hooks attached) to train instead of
            building ``config.model``; its ``model_spec`` replaces ``model``/``model_kwargs`` of the config, and
            ``pretrained`` then only says whether its encoder counts as pretrained (for freezing).
        **overrides: option overrides, e.g. ``epochs=2``.

    Returns:
        :class:`FitResult` (paths, best metric, per-epoch history, evaluation summaries).

    Raises:
        DatasetCheckError: the data check found errors (nothing is trained).
        TrainingDiverged: the loss became NaN/inf (the message names the epoch, step and batch ids).
        UserError: an option, the run folder or the data does not fit (the message says how to fix it).
    """
    if resume is not None:
        run_dir = Path(resume).expanduser()
        cfg = _resume_config(run_dir, config, overrides)
    else:
        cfg = _fresh_config(config, net, overrides)
        run_dir = Path(cfg.out)
    device = resolve_device(cfg.device)  # under torchrun: cuda:LOCAL_RANK
    info = init_distributed(device)
    prev_det = torch.are_deterministic_algorithms_enabled()
    try:
        return _fit(cfg, run_dir, resume is not None, net, device, info)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        cleanup(info)


def _fit(
    cfg: TrainConfig,
    run_dir: Path,
    resuming: bool,
    net: nn.Module | None,
    device: torch.device,
    info: DistInfo,
) -> FitResult:
    log = start_run(cfg, run_dir, resuming, device, info)
    seed_everything(cfg.seed)

    # ---- data: one rank-0 step (check, split, index), one broadcast
    ckpt = load_checkpoint(run_dir / "last.pt", map_location="cpu") if resuming else None
    data = prepare_data(cfg, run_dir, info, log, resume=ckpt)
    cfg = cfg.replace(in_channels=data.in_channels, normalize=data.normalize)
    loaders = make_loaders(cfg, data, info, pin_memory=device.type == "cuda")
    unit = "cases" if data.volume is not None else "images"
    slices = f" ({len(loaders.train_ds)} training slices)" if data.volume is not None else ""
    log(
        f"data: train {len(loaders.ids['train'])} / val {len(loaders.ids['val'])} / test "
        f"{len(loaders.ids['test'])} {unit}{slices} at {cfg.img_hw[0]}x{cfg.img_hw[1]}, {data.in_channels} channel(s), "
        f"normalize={data.normalize}, {data.num_classes} classes {data.class_names}; "
        f"{loaders.steps_per_epoch} steps/epoch of global batch {cfg.batch_size}"
    )

    # ---- model (seeded again: identical initial weights whatever the data code consumed)
    seed_everything(cfg.seed)
    model = net if net is not None else build_model(cfg, data, ckpt, info)
    if model.num_classes != data.num_classes:
        raise UserError(f"expected a model with {data.num_classes} output classes, got {model.num_classes}")
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"model: {model.model_spec['name']} ({n_params / 1e6:.3f} M parameters) kwargs {model.model_spec['kwargs']}"
    )
    frozen_epochs = freeze_epochs(cfg, model, log)

    # ---- optimizer, schedule, AMP, loss; then the state: fresh or from last.pt
    trainer = build_trainer(cfg, model, loaders.steps_per_epoch, device, info, log)
    has_val = bool(loaders.ids["val"])
    monitor = "val_dice" if has_val else "train_loss"
    if not has_val:
        log("warning: no validation images: best.pt tracks the lowest training loss instead of val Dice")
    state = TrainState()
    if ckpt is not None:
        state = TrainState.restore(
            ckpt,
            trainer.model,
            optimizer=trainer.optimizer,
            scheduler=trainer.scheduler,
            scaler=trainer.scaler,
        )
        log(
            f"resume: continuing after epoch {state.epoch}/{cfg.epochs} (global step {state.global_step}, best "
            f"{monitor} {state.best_metric:.4f} at epoch {state.best_epoch})"
        )
    files = _RunFiles(run_dir, cfg, data, monitor, info) if info.is_main else None
    if files is not None:
        files.start(state)

    # ---- the loop: train, validate, checkpoint
    start_epoch = state.epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            trainer.set_frozen(epoch < frozen_epochs, epoch, log)
            row = trainer.train_epoch(epoch, loaders, state, files.writer if files else None)
            if has_val and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
                # volumes: Dice pooled over the validation slices, the slice-wise stand-in of a volume Dice
                pooled = data.volume is not None
                row["val_loss"], row["val_dice"] = trainer.validate(loaders.val, pooled=pooled)
            row["epoch_time_s"] = time.perf_counter() - t0
            improved = state.end_epoch(row, row["val_dice"] if has_val else -row["train_loss"])
            log(_epoch_line(cfg, row, improved))
            if files is not None:
                files.end_epoch(state, trainer, improved)
            barrier(info)
    finally:
        if files is not None:
            files.close()

    if start_epoch >= cfg.epochs:
        log(f"run already finished ({cfg.epochs} epochs); nothing to train")
    return _finish(cfg, run_dir, state, monitor, loaders.ids, device, info, log)


def _fresh_config(config: Any, net: nn.Module | None, overrides: dict[str, Any]) -> TrainConfig:
    cfg = resolve_config(config, **overrides)
    if net is not None:
        spec = getattr(net, "model_spec", None)
        if spec is None:
            raise ValueError(
                "expected a model from medurwkv.create_model (with .model_spec), got one without"
            )
        kw = {k: v for k, v in spec["kwargs"].items() if k not in ("in_channels", "num_classes")}
        cfg = cfg.replace(model=spec["name"], model_kwargs=kw)
    if not cfg.data or not cfg.out:
        raise UserError(f"expected both --data DIR and --out RUN_DIR, got data={cfg.data!r}, out={cfg.out!r}")
    # absolute paths: config.yaml must still point at the data when resumed from another folder
    cfg = cfg.replace(
        data=str(Path(cfg.data).expanduser().resolve()),
        out=str(Path(cfg.out).expanduser().resolve()),
        split_file=str(Path(cfg.split_file).expanduser().resolve()) if cfg.split_file else None,
    )
    refuse_existing_run(cfg.out, "fit")
    # once, before any work: "auto" -> True / False, and weights that cannot be had stop the run here
    return resolve_pretrained(cfg, net_given=net is not None)


def _resume_config(run_dir: Path, config: Any, overrides: dict[str, Any]) -> TrainConfig:
    """The run's saved config; only options that do not change results may be overridden."""
    cfg_path = resumable_config(run_dir)
    saved = TrainConfig.from_dict(load_yaml_config(cfg_path), source=str(cfg_path))
    asked = {**as_options(config), **{k: v for k, v in overrides.items() if v is not None}}
    cfg = resume_changes(saved, asked, run_dir)
    if not cfg.data:
        raise UserError(f"expected {cfg_path} to name the dataset (data: DIR), got none; pass --data DIR")
    return cfg.replace(data=str(Path(cfg.data).expanduser().resolve()))


def _epoch_line(cfg: TrainConfig, row: dict[str, Any], improved: bool) -> str:
    val = (
        ""
        if math.isnan(row["val_dice"])
        else f", val_loss {row['val_loss']:.4f}, val_dice {row['val_dice']:.4f}"
    )
    return (
        f"epoch {row['epoch']}/{cfg.epochs}: train_loss {row['train_loss']:.4f}{val}, lr {row['lr']:.3g}, "
        f"{row['epoch_time_s']:.1f} s, {row['train_img_per_s']:.1f} img/s"
        + (" (encoder frozen)" if row["encoder_frozen"] else "")
        + (" *best*" if improved else "")
    )


# ---------------------------------------------------------------------------------------- run folder


class _RunFiles:
    """Rank 0's files of the run folder: config.yaml, metrics.csv, best.pt / last.pt and TensorBoard."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, data: Any, monitor: str, info: DistInfo) -> None:
        self.run_dir, self.cfg = run_dir, cfg
        self.last, self.best = run_dir / "last.pt", run_dir / "best.pt"
        self.preprocess = {
            "in_channels": data.in_channels,
            "img_size": list(cfg.img_hw),
            "normalize": data.normalize,
            "num_classes": data.num_classes,
            "class_names": list(data.class_names),
        }
        if data.volume is not None:
            self.preprocess["volume"] = data.volume
        self.run = dict(
            train_config=cfg.to_dict(), monitor=monitor, split=data.split, world_size=info.world_size
        )
        self.writer: Any = None

    def start(self, state: TrainState) -> None:
        save_yaml_config(self.cfg, self.run_dir / "config.yaml")
        write_metrics_csv(self.run_dir / "metrics.csv", state.history, METRIC_COLUMNS)
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed run logged after its last checkpoint (all of them when a run
            # killed in its first epoch is started again)
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=state.global_step)

    def end_epoch(self, state: TrainState, trainer: Any, improved: bool) -> None:
        write_metrics_csv(self.run_dir / "metrics.csv", state.history, METRIC_COLUMNS)
        parts = dict(optimizer=trainer.optimizer, scheduler=trainer.scheduler, scaler=trainer.scaler)
        if improved:
            state.save(self.best, trainer.model, preprocess=self.preprocess, **parts, **self.run)
        # last.pt is written last: after a kill, it never claims an epoch whose files are missing
        state.save(self.last, trainer.model, preprocess=self.preprocess, **parts, **self.run)
        if self.writer is not None:
            row = state.history[-1]
            for k in ("val_loss", "val_dice", "epoch_time_s", "train_img_per_s"):
                if not math.isnan(row[k]):
                    self.writer.add_scalar(f"epoch/{k}", row[k], state.global_step)
            self.writer.add_scalar("epoch/train_loss", row["train_loss"], state.global_step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------------------- after training


def _finish(
    cfg: TrainConfig,
    run_dir: Path,
    state: TrainState,
    monitor: str,
    used_ids: dict[str, list[str]],
    device: torch.device,
    info: DistInfo,
    log: RunLog,
) -> FitResult:
    best, last = run_dir / "best.pt", run_dir / "last.pt"
    log(
        f"training done: best {monitor} {state.best_metric:.4f} at epoch {state.best_epoch}; checkpoints {best}, {last}"
    )
    result = FitResult(
        run_dir=run_dir,
        best_checkpoint=best,
        last_checkpoint=last,
        best_metric=state.best_metric,
        best_epoch=state.best_epoch,
        epochs_completed=len(state.history),
        history=state.history,
        config=cfg,
    )
    if cfg.eval_test and info.is_main:
        result.eval, result.report = _final_evaluation(cfg, run_dir, used_ids, device, log)
    barrier(info)
    return result


def _final_evaluation(
    cfg: TrainConfig, run_dir: Path, used_ids: dict[str, list[str]], device: torch.device, log: RunLog
) -> tuple[dict[str, Any], Path | None]:
    """Evaluate best.pt on val (and test) with engine.evaluate, then build report.html (both optional).

    The validation evaluation also chooses best.pt's post-processing on the raw validation predictions
    (``choose_postprocess``, engine/postprocess.py) and scores val with it; the decision is then written into
    best.pt (key ``postprocess``), so the test evaluation, ``predict`` and ``export`` apply it too. Without
    validation images, or when that evaluation fails, best.pt is left as it is (a best.pt written by this run's
    epochs has no decision: no post-processing).
    """
    from .checkpoint import store_postprocess
    from .evaluation import evaluate
    from .postprocess import PostprocessDecision
    from .report import build_report

    results: dict[str, Any] = {}
    best = run_dir / "best.pt"
    if not best.is_file():
        log("evaluation skipped: no best.pt")
        return results, None
    for name in ("val", "test"):
        ids = used_ids.get(name) or []
        if not ids:
            continue
        try:
            summary = evaluate(
                best,
                cfg.data,
                ids=ids,
                split=name,
                out=run_dir / "eval" / name,
                device=str(device),
                progress=cfg.progress,
                report=False,
                choose_postprocess=name == "val",
            )
            results[name] = summary
            if name == "val":
                # test is evaluated after this, from best.pt: the decision must be in the file by then
                decision = summary["evaluation"]["postprocess_decision"]
                store_postprocess(best, decision)
                for line in PostprocessDecision.from_dict(decision).log_lines(summary["class_names"]):
                    log(line)
            log(f"evaluation of best.pt on {name}: Dice {_headline(summary, len(ids))}")
        except Exception as e:  # noqa: BLE001 - training succeeded; report the evaluation problem
            results[name] = f"error: {e}"
            log(f"evaluation on {name} failed: {type(e).__name__}: {e}")
    report_path = None
    try:
        report_path = build_report(run_dir)
        log(f"report: {report_path}")
    except Exception as e:  # noqa: BLE001 - the report is a convenience
        log(f"report skipped: {type(e).__name__}: {e}")
    return results, report_path


def _headline(summary: Any, n: int) -> str:
    try:
        value = f"{summary['headline']['value']:.4f}"
    except (KeyError, TypeError):
        return "n/a"
    if summary.get("format") == "medurwkv-volume-metrics-v1":
        return f"{value} ({n} volumes, 3D per case, mean over cases then over foreground classes)"
    return f"{value} ({n} images at their original resolution, per-image mean over foreground classes)"
