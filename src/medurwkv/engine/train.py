"""Training: ``medurwkv train`` and its Python equivalent :func:`fit`.

One run folder holds everything a run produces::

    RUN_DIR/config.yaml      the resolved TrainConfig (what --resume reads back)
    RUN_DIR/last.pt          checkpoint after the last finished epoch (resume point)
    RUN_DIR/best.pt          checkpoint of the best validation Dice so far
    RUN_DIR/metrics.csv      one row per epoch (epoch, train_loss, val_loss, val_dice, lr, epoch_time_s, ...)
    RUN_DIR/train.log        what was printed
    RUN_DIR/tb/              TensorBoard event files
    RUN_DIR/eval/<split>/    evaluation of best.pt after training (engine/evaluation.py)
    RUN_DIR/report.html      the run report (engine/report.py)

Recipe (``spec/med-urwkv.md`` §3; ``docs/training.md`` says which defaults are the paper's, which ours):
AdamW, poly learning-rate schedule with linear warm-up (per iteration), MONAI ``DiceCELoss`` (softmax,
one-hot targets, equal weights), a *pretrained* encoder frozen for the first ``freeze_encoder_epochs``
epochs, gradient clipping, mixed precision on CUDA, fixed seeds.

Reproducibility: the data order of an epoch is ``DistributedSampler(seed, epoch)`` (also with one process),
the augmentation of a sample is seeded from ``(seed, epoch, sample)`` by the dataset, and the global RNGs are
re-seeded from ``(seed, epoch, rank)`` at the start of every epoch. A resumed run therefore replays exactly
the epochs an uninterrupted run would have done; checkpoints also carry the RNG states for completeness.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import random
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import (
    FIELD_HELP,
    RESUME_OVERRIDABLE,
    TrainConfig,
    _coerce,
    load_yaml_config,
    resolve_config,
    save_yaml_config,
)
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, cleanup, init_distributed

__all__ = [
    "fit",
    "FitResult",
    "TrainingDiverged",
    "METRIC_COLUMNS",
    "PolyWarmup",
    "seed_everything",
    "add_parser",
    "run",
    "main",
]

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


class TrainingDiverged(FloatingPointError):
    """The training loss (or gradient norm) became NaN/inf; the message names the epoch and batch ids."""


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


# ----------------------------------------------------------------------------------------------------
# Schedule, seeding, small helpers
# ----------------------------------------------------------------------------------------------------


class PolyWarmup:
    """LR factor at optimizer step ``s``: linear warm-up over ``warmup`` steps, times ``(1 - s/total)**power``.

    A callable object (not a lambda) so that ``LambdaLR.state_dict()`` stores it.
    """

    def __init__(self, total_steps: int, warmup_steps: int, power: float) -> None:
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.power = float(power)

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        poly = max(0.0, 1.0 - min(step, self.total_steps) / self.total_steps) ** self.power
        return warm * poly


def _derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resolve_device(name: str, dist_local_rank: int | None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("expected a CUDA device for --device cuda, got none available; use --device cpu")
        if dist_local_rank is not None and dev.index is None:
            dev = torch.device("cuda", dist_local_rank)
        elif dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.8g}"
    return str(v)


def _write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv from the history (atomic), so a resumed run never duplicates or loses rows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRIC_COLUMNS)
    for row in history:
        w.writerow([_fmt(row.get(k)) for k in METRIC_COLUMNS])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


class _Log:
    """Prints on rank 0 and appends the same lines to RUN_DIR/train.log."""

    def __init__(self, run_dir: Path | None, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "train.log" if (run_dir is not None and enabled) else None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        print(msg, flush=True)
        if self.path is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.path, "a", encoding="utf-8") as f:
                for line in msg.splitlines() or [""]:
                    f.write(f"[{stamp}] {line}\n")


def _dice_per_image(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Foreground-mean Dice of each image: pred/target (B, H, W) labels -> (B,) float64.

    Same rule as engine/metrics.py: Dice = 2TP / (2TP + FP + FN) per class, 0/0 -> 1, averaged over classes
    1..K-1 (background excluded).
    """
    dices = []
    for c in range(1, num_classes):
        p, t = pred == c, target == c
        tp = (p & t).flatten(1).sum(1).double()  # (B,)
        den = p.flatten(1).sum(1).double() + t.flatten(1).sum(1).double()  # 2TP + FP + FN
        dices.append(torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.ones_like(den)))
    return torch.stack(dices, 1).mean(1)


# ----------------------------------------------------------------------------------------------------
# Config resolution (fresh run or resume)
# ----------------------------------------------------------------------------------------------------


def _as_override_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, TrainConfig):
        return config.to_dict()
    if isinstance(config, (str, Path)):
        return load_yaml_config(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise ValueError(f"expected a TrainConfig, dict or YAML path as config, got {type(config).__name__}")


def _resume_config(run_dir: Path, config: Any, overrides: dict[str, Any]) -> TrainConfig:
    """The run's saved config; only options that do not change results may be overridden."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file() or not (run_dir / "last.pt").is_file():
        raise FileNotFoundError(
            f"expected a run folder with config.yaml and last.pt to resume, got {run_dir} "
            f"(config.yaml {'found' if cfg_path.is_file() else 'missing'}, last.pt "
            f"{'found' if (run_dir / 'last.pt').is_file() else 'missing'}); a run killed during its first "
            "epoch has nothing to resume: start it again"
        )
    saved = TrainConfig.from_dict(load_yaml_config(cfg_path), source=str(cfg_path))
    asked = {**_as_override_dict(config), **{k: v for k, v in overrides.items() if v is not None}}
    changes: dict[str, Any] = {}
    conflicts = []
    for k, v in asked.items():
        if k == "out":
            if v is not None and Path(v).resolve() != run_dir.resolve():
                conflicts.append(f"out: asked {v!r}, resuming {str(run_dir)!r}")
            continue
        cv = _coerce(k, v, "resume") if k in saved.to_dict() else v
        if k in RESUME_OVERRIDABLE:
            changes[k] = cv
        elif cv != getattr(saved, k, cv):
            conflicts.append(f"{k}: asked {cv!r}, run has {getattr(saved, k)!r}")
    if conflicts:
        raise ValueError(
            f"--resume continues {run_dir} with its saved config; these options differ: {'; '.join(conflicts)}. "
            f"Only {sorted(RESUME_OVERRIDABLE)} may change on resume; start a new run (--out) to change others"
        )
    return saved.replace(**changes, out=str(run_dir)) if changes else saved.replace(out=str(run_dir))


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------


def _check_data(cfg: TrainConfig, info: DistInfo, log: _Log) -> Any:
    """Run the dataset check on rank 0 (refuse to train on errors); every rank gets the same index."""
    from ..data.check import DatasetCheckError, check_dataset
    from ..data.index import discover

    payload: dict[str, Any] = {}
    index = None
    if info.is_main:
        report = check_dataset(cfg.data, progress=cfg.progress)
        if not report.ok:
            log(report.format())
            payload = {"errors": report.errors}
        else:
            index = report.index
            s = report.summary
            log(f"data: {index.summary_line()}")
            log(
                f"data check: ok ({s.get('pairs')} pairs, sizes {s.get('sizes')}, channels {s.get('channels')})"
            )
            for w in report.warnings[:10]:
                log(f"data warning: {w}")
            if len(report.warnings) > 10:
                log(
                    f"data warning: ... {len(report.warnings) - 10} more (run `medurwkv data check {cfg.data}`)"
                )
            channels = [int(c) for c in (s.get("channels") or {})]
            payload = {
                "class_names": index.class_names,
                "channels": channels,
            }
    payload = all_gather_objects(payload, info)[0]
    if "errors" in payload:
        raise DatasetCheckError(
            f"dataset {cfg.data} failed its check with {len(payload['errors'])} error(s); training refused:\n"
            + "\n".join(f"  - {e}" for e in payload["errors"][:20])
        )
    if index is None:  # other ranks: same folder, classes from rank 0 (no second scan of the masks)
        index = discover(cfg.data)
        if not index.classes_known:
            index.set_inferred_classes(len(payload["class_names"]) - 1)
        if index.class_names != payload["class_names"]:
            raise RuntimeError(
                f"rank {info.rank} sees classes {index.class_names}, rank 0 {payload['class_names']}"
            )
    return index, payload


def _auto_in_channels(channels: list[int]) -> int:
    # gray everywhere -> 1; any colour image -> 3 (gray images are repeated, RGBA drops alpha)
    if not channels or set(channels) <= {1}:
        return 1
    return 3 if max(channels) in (3, 4) else max(channels)


def _load_or_create_split(cfg: TrainConfig, run_dir: Path, index: Any, info: DistInfo, log: _Log) -> dict:
    """Split ids (ensure_split on rank 0; if DATA is read-only the new split file goes to RUN_DIR)."""
    from ..data.split import ensure_split

    result: dict[str, Any] = {}
    if info.is_main:
        kwargs = dict(
            val=cfg.val_fraction,
            test=cfg.test_fraction,
            group=cfg.group_by,
            folds=cfg.folds,
            fold=cfg.fold,
            index=index,
            verbose=False,
        )
        out = Path(cfg.split_file).expanduser() if cfg.split_file else None
        try:
            split, path, created = ensure_split(cfg.data, out=out, **kwargs)
        except PermissionError:
            if out is not None:
                raise
            out = run_dir / "splits.json"
            split, path, created = ensure_split(cfg.data, out=out, **kwargs)
            if created:
                log(
                    f"split: the dataset folder {cfg.data} is read-only, so the new split was saved in the run "
                    f"folder instead: {path}"
                )
        verb = "created and saved" if created else "loaded"
        log(f"split: {verb} {path}: {split.describe()}")
        result = {
            "path": str(path),
            "created": bool(created),
            "fold": split.fold,
            "checksum": split.checksum,
            "train": split.ids("train"),
            "val": split.ids("val"),
            "test": split.ids("test"),
        }
    return all_gather_objects(result, info)[0]


def _make_loaders(
    cfg: TrainConfig,
    index: Any,
    split: dict,
    in_channels: int,
    normalize: str,
    info: DistInfo,
    pin_memory: bool = False,
) -> tuple[Any, Any, Any, Any, dict[str, list[str]]]:
    from torch.utils.data import DataLoader, DistributedSampler

    from ..data.dataset import SegmentationDataset

    ids = {k: list(split[k]) for k in ("train", "val", "test")}
    if cfg.limit is not None:
        ids = {k: v[: cfg.limit] for k, v in ids.items()}
    if not ids["train"]:
        raise ValueError(f"expected training images, got an empty train split in {split['path']}")
    common = dict(img_size=cfg.img_hw, in_channels=in_channels, normalize=normalize, seed=cfg.seed)
    train_ds = SegmentationDataset(index, ids["train"], train=True, augment=cfg.augment, **common)
    # Every process validates a disjoint share (no padding duplicates); sums are all-reduced.
    val_ids = ids["val"][info.rank :: info.world_size]
    val_ds = SegmentationDataset(index, val_ids, train=False, augment=False, **common) if val_ids else None
    if cfg.batch_size % info.world_size:
        raise ValueError(
            f"expected --batch-size (the global batch) divisible by the {info.world_size} processes, got "
            f"{cfg.batch_size}; use a multiple of {info.world_size}"
        )
    local_bs = cfg.batch_size // info.world_size
    # The same sampler with one process keeps the data order identical to a DDP run with the same
    # global batch (the union of the processes' batch k is the single-process batch k).
    sampler = DistributedSampler(
        train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed, drop_last=False
    )
    workers = cfg.num_workers
    loader_kw: dict[str, Any] = dict(num_workers=workers, pin_memory=pin_memory)
    if workers > 0:
        loader_kw["persistent_workers"] = True
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_ds, batch_size=local_bs, sampler=sampler, drop_last=False, generator=gen, **loader_kw
    )
    val_loader = (
        DataLoader(val_ds, batch_size=max(1, local_bs), shuffle=False, **loader_kw)
        if val_ds is not None
        else None
    )
    return train_ds, sampler, train_loader, val_loader, ids


# ----------------------------------------------------------------------------------------------------
# Model, optimizer
# ----------------------------------------------------------------------------------------------------


def _build_model(
    cfg: TrainConfig, in_channels: int, num_classes: int, resuming: bool, info: DistInfo, log: _Log
) -> nn.Module:
    from ..models import create_model

    kw = dict(cfg.model_kwargs)
    for key, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if key in kw and kw[key] != value:
            raise ValueError(
                f"model_kwargs sets {key}={kw[key]} but the data gives {key}={value}; drop it from "
                f"--model-kwargs (it is set from the data){' or change --in-channels' if key == 'in_channels' else ''}"
            )
        kw[key] = value
    pretrained = False if resuming else cfg.pretrained
    if pretrained is not False and info.enabled and not info.is_main:
        barrier(info)  # rank 0 downloads into the cache first
    model = create_model(cfg.model, pretrained=pretrained, **kw)
    if pretrained is not False and info.enabled and info.is_main:
        barrier(info)
    return model


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    if hasattr(model, "param_groups"):
        if hasattr(model, "freeze_encoder"):
            model.freeze_encoder(False)  # every parameter must be in the optimizer, frozen or not
        return model.param_groups(
            cfg.lr, encoder_lr_scale=cfg.encoder_lr_scale, weight_decay=cfg.weight_decay
        )
    from ..models.modules import split_decay_params

    return split_decay_params(model.named_parameters(), cfg.lr, cfg.weight_decay)


def _wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None)


# ----------------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------------


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
    """
    resuming = resume is not None
    if resuming:
        run_dir = Path(resume).expanduser()
        cfg = _resume_config(run_dir, config, overrides)
        cfg = cfg.replace(data=str(Path(cfg.data).expanduser().resolve()) if cfg.data else None)
    else:
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
            raise ValueError(
                f"expected both --data DIR and --out RUN_DIR, got data={cfg.data!r}, out={cfg.out!r}"
            )
        # absolute paths: config.yaml must still point at the data when resumed from another folder
        cfg = cfg.replace(
            data=str(Path(cfg.data).expanduser().resolve()),
            out=str(Path(cfg.out).expanduser().resolve()),
            split_file=str(Path(cfg.split_file).expanduser().resolve()) if cfg.split_file else None,
        )
        run_dir = Path(cfg.out)
        if (run_dir / "last.pt").exists():
            raise FileExistsError(
                f"{run_dir} already holds a run (last.pt); continue it with --resume {run_dir} "
                "(Python: fit(resume=...)) or choose another --out"
            )
    if not cfg.data:
        raise ValueError("expected --data DIR")

    # under torchrun each process drives the GPU of its LOCAL_RANK
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    device = _resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0") or 0) if launched else None)
    info = init_distributed(device)
    prev_det = torch.are_deterministic_algorithms_enabled()
    try:
        return _fit(cfg, run_dir, resuming, net, device, info)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        cleanup(info)


def _fit(
    cfg: TrainConfig,
    run_dir: Path,
    resuming: bool,
    given_model: nn.Module | None,
    device: torch.device,
    info: DistInfo,
) -> FitResult:
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(info)
    log = _Log(run_dir, info.is_main)
    log(
        f"{'resuming' if resuming else 'training'} run {run_dir} on {device}"
        + (f" x {info.world_size} processes ({info.backend})" if info.enabled else "")
    )

    if cfg.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cudnn.deterministic = cfg.deterministic
    seed_everything(cfg.seed)

    # ---- data: check, split, loaders
    index, data_info = _check_data(cfg, info, log)
    class_names = list(data_info["class_names"])
    num_classes = len(class_names)
    ckpt = load_checkpoint(run_dir / "last.pt", map_location="cpu") if resuming else None
    if ckpt is not None:
        in_channels = int(ckpt["preprocess"]["in_channels"])
        normalize = ckpt["preprocess"]["normalize"]
        split = ckpt["split"]
        missing = [i for k in ("train", "val", "test") for i in split[k] if i not in set(index.ids)]
        if missing:
            raise ValueError(
                f"the run's split names {len(missing)} ids that are not in {cfg.data} (e.g. {missing[:5]}); "
                "resume with the same dataset (--data)"
            )
        log(
            f"split: from the checkpoint ({split['path']}, train {len(split['train'])} / val "
            f"{len(split['val'])} / test {len(split['test'])})"
        )
    else:
        in_channels = cfg.in_channels or _auto_in_channels(data_info["channels"])
        normalize = cfg.normalize or ("imagenet" if cfg.pretrained is not False else "per_image")
        split = _load_or_create_split(cfg, run_dir, index, info, log)
        cfg = cfg.replace(in_channels=in_channels, normalize=normalize)
    train_ds, sampler, train_loader, val_loader, used_ids = _make_loaders(
        cfg, index, split, in_channels, normalize, info, pin_memory=device.type == "cuda"
    )
    local_bs = cfg.batch_size // info.world_size
    steps_per_epoch = math.ceil(len(sampler) / local_bs)
    if cfg.max_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_train_batches)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    log(
        f"data: train {len(used_ids['train'])} / val {len(used_ids['val'])} / test {len(used_ids['test'])} "
        f"images at {cfg.img_hw[0]}x{cfg.img_hw[1]}, {in_channels} channel(s), normalize={normalize}, "
        f"{num_classes} classes {class_names}; {steps_per_epoch} steps/epoch of global batch {cfg.batch_size}"
    )

    # ---- model
    seed_everything(cfg.seed)  # identical initial weights whatever the data code consumed
    model = (
        given_model
        if given_model is not None
        else _build_model(cfg, in_channels, num_classes, resuming, info, log)
    )
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise ValueError(f"expected a model with {num_classes} output classes, got {model.num_classes}")
    spec = model.model_spec
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {spec['name']} ({n_params / 1e6:.3f} M parameters) kwargs {spec['kwargs']}")
    encoder_pretrained = cfg.pretrained is not False
    can_freeze = hasattr(model, "freeze_encoder")
    freeze_epochs = cfg.freeze_encoder_epochs if (encoder_pretrained and can_freeze) else 0
    if not encoder_pretrained:
        log(
            "encoder: trained from scratch (no pretrained weights), so nothing is frozen "
            f"(freeze_encoder_epochs={cfg.freeze_encoder_epochs} applies only to a pretrained encoder)"
        )
    elif freeze_epochs:
        log(
            f"encoder: pretrained ({cfg.pretrained}); frozen for epochs 1-{freeze_epochs}, then trained "
            f"with lr x {cfg.encoder_lr_scale}"
        )
    else:
        log(f"encoder: pretrained ({cfg.pretrained}); not frozen (freeze_encoder_epochs=0)")

    groups = _param_groups(model, cfg)
    if info.enabled and device.type == "cuda" and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        log("ddp: BatchNorm layers converted to SyncBatchNorm")
    elif info.enabled and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        log(
            "ddp: SyncBatchNorm needs CUDA (NCCL); on CPU/gloo each process keeps its own BatchNorm statistics "
            f"over its {local_bs} images per step"
        )
    model.to(device)
    # The optimizer holds the parameter objects; .to() and the SyncBN conversion keep them (BN weights reused).
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, PolyWarmup(total_steps, warmup_steps, cfg.poly_power)
    )
    use_amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    amp_dtype = torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=bool(use_amp and amp_dtype == torch.float16))
    if use_amp:
        log(
            f"mixed precision: autocast {cfg.amp_dtype}"
            + (" + GradScaler" if scaler.is_enabled() else "")
            + " (WKV runs in fp32)"
        )

    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.dice_weight, lambda_ce=cfg.ce_weight)

    preprocess = {
        "in_channels": in_channels,
        "img_size": list(cfg.img_hw),
        "normalize": normalize,
        "num_classes": num_classes,
        "class_names": class_names,
    }
    has_val = bool(used_ids["val"])
    monitor = "val_dice" if has_val else "train_loss"
    if not has_val:
        log("warning: no validation images: best.pt tracks the lowest training loss instead of val Dice")

    start_epoch, global_step = 0, 0
    best_metric, best_epoch = -math.inf, 0
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        best_metric = float(ckpt["best_metric"])
        best_epoch = int(ckpt.get("best_epoch", 0))
        history = list(ckpt.get("history", []))
        if ckpt.get("rng"):
            _set_rng_state(ckpt["rng"])
        log(
            f"resume: continuing after epoch {start_epoch}/{cfg.epochs} (global step {global_step}, best "
            f"{monitor} {best_metric:.4f} at epoch {best_epoch})"
        )

    if info.is_main:
        save_yaml_config(cfg, run_dir / "config.yaml")
        _write_metrics_csv(run_dir / "metrics.csv", history)
    writer = None
    if cfg.tensorboard and info.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed run logged after its last checkpoint (all of them when a run
            # killed in its first epoch is started again)
            writer = SummaryWriter(str(run_dir / "tb"), purge_step=global_step)
        except ImportError as e:  # pragma: no cover - tensorboard is a dependency
            log(f"warning: TensorBoard logging disabled ({e})")

    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    train_module = model
    frozen_state: bool | None = None
    train_cfg_dict = cfg.to_dict()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            frozen = epoch < freeze_epochs
            model.train()
            if can_freeze:
                model.freeze_encoder(frozen)
            if frozen != frozen_state:
                if frozen_state is not None:
                    log(f"encoder: {'frozen' if frozen else 'unfrozen'} from epoch {epoch + 1}")
                # DDP registers gradient hooks for the parameters that require grad when it is built
                train_module = _wrap_ddp(model, info, device)
                frozen_state = frozen
            seed_everything(_derive_seed(cfg.seed, epoch, info.rank))
            sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            loss_sum, n_seen, lr_used = 0.0, 0, 0.0
            bar = None
            if cfg.progress and info.is_main:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=steps_per_epoch,
                    desc=f"epoch {epoch + 1}/{cfg.epochs}",
                    leave=False,
                    dynamic_ncols=True,
                    file=sys.stderr,
                )
            for step, batch in enumerate(train_loader):
                if step >= steps_per_epoch:
                    break
                x = batch["image"].to(device, non_blocking=True)  # (B, C, H, W)
                y = batch["mask"].to(device, non_blocking=True)  # (B, H, W) int64
                amp_ctx = torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext()
                with amp_ctx:
                    logits = train_module(x)  # (B, K, H, W)
                loss = loss_fn(logits.float(), y.unsqueeze(1))
                # [sum of losses, images, non-finite flag] over all processes: one small all-reduce per step
                stats = torch.stack(
                    [
                        loss.detach() * x.shape[0],
                        torch.tensor(float(x.shape[0]), device=device),
                        (~torch.isfinite(loss.detach())).float(),
                    ]
                ).double()
                all_reduce_sum(stats, info)
                if stats[2].item() > 0:
                    bad_ids = all_gather_objects(list(batch["id"]), info)
                    ids_txt = ", ".join(i for ids in bad_ids for i in ids)
                    raise TrainingDiverged(
                        f"training loss became {loss.item()} at epoch {epoch + 1}/{cfg.epochs}, step "
                        f"{step + 1} (global step {global_step + 1}), on the batch with image ids [{ids_txt}]. "
                        f"Nothing was saved for this epoch; last.pt holds epoch {epoch}. Check those images and "
                        f"masks, lower --lr (now {cfg.lr}) or keep --grad-clip."
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
                gnorm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                if not scaler.is_enabled() and not torch.isfinite(gnorm):
                    # gradients are already averaged over processes, so every rank takes this branch
                    raise TrainingDiverged(
                        f"gradient norm became {gnorm.item()} at epoch {epoch + 1}/{cfg.epochs}, step {step + 1} "
                        f"(global step {global_step + 1}), batch ids [{', '.join(batch['id'])}] (rank "
                        f"{info.rank}); lower --lr or check those images"
                    )
                lr_used = max(g["lr"] for g in optimizer.param_groups)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                global_step += 1
                batch_loss = stats[0].item() / stats[1].item()
                loss_sum += stats[0].item()
                n_seen += int(stats[1].item())
                if writer is not None:
                    writer.add_scalar("train/loss", batch_loss, global_step)
                    writer.add_scalar("train/lr", lr_used, global_step)
                if bar is not None:
                    dt = time.perf_counter() - t0
                    bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}", img_s=f"{n_seen / max(dt, 1e-9):.1f}")
                    bar.update(1)
            if bar is not None:
                bar.close()
            train_time = time.perf_counter() - t0
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "global_step": global_step,
                "train_loss": loss_sum / max(n_seen, 1),
                "val_loss": math.nan,
                "val_dice": math.nan,
                "lr": lr_used,
                "epoch_time_s": math.nan,
                "train_img_per_s": n_seen / max(train_time, 1e-9),
                "encoder_frozen": bool(frozen),
            }
            is_last = epoch + 1 == cfg.epochs
            if has_val and ((epoch + 1) % cfg.val_every == 0 or is_last):
                row["val_loss"], row["val_dice"] = _validate(
                    model,
                    val_loader,
                    loss_fn,
                    device,
                    use_amp,
                    amp_dtype,
                    num_classes,
                    cfg.max_val_batches,
                    info,
                )
            row["epoch_time_s"] = time.perf_counter() - t0
            history.append(row)
            current = row["val_dice"] if has_val else -row["train_loss"]
            improved = not math.isnan(current) and current > best_metric
            if improved:
                best_metric, best_epoch = float(current), epoch + 1
            msg = (
                f"epoch {epoch + 1}/{cfg.epochs}: train_loss {row['train_loss']:.4f}"
                + (
                    f", val_loss {row['val_loss']:.4f}, val_dice {row['val_dice']:.4f}"
                    if not math.isnan(row["val_dice"])
                    else ""
                )
                + f", lr {lr_used:.3g}, {row['epoch_time_s']:.1f} s, {row['train_img_per_s']:.1f} img/s"
                + (" (encoder frozen)" if frozen else "")
                + (" *best*" if improved else "")
            )
            log(msg)
            if info.is_main:
                state = dict(
                    train_config=train_cfg_dict,
                    epoch=epoch + 1,
                    global_step=global_step,
                    metrics={k: row[k] for k in METRIC_COLUMNS},
                    best_metric=best_metric,
                    best_epoch=best_epoch,
                    monitor=monitor,
                    history=history,
                    split=split,
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict() if scaler.is_enabled() else None,
                    rng=_rng_state(),
                    world_size=info.world_size,
                )
                _write_metrics_csv(run_dir / "metrics.csv", history)
                if improved:
                    save_checkpoint(best_path, model, preprocess=preprocess, **state)
                # last.pt is written last: after a kill, it never claims an epoch whose files are missing
                save_checkpoint(last_path, model, preprocess=preprocess, **state)
                if writer is not None:
                    for k in ("val_loss", "val_dice", "epoch_time_s", "train_img_per_s"):
                        if not math.isnan(row[k]):
                            writer.add_scalar(f"epoch/{k}", row[k], global_step)
                    writer.add_scalar("epoch/train_loss", row["train_loss"], global_step)
                    writer.flush()
            barrier(info)
    finally:
        if writer is not None:
            writer.close()

    if start_epoch >= cfg.epochs:
        log(f"run already finished ({cfg.epochs} epochs); nothing to train")
    log(
        f"training done: best {monitor} {best_metric:.4f} at epoch {best_epoch}; checkpoints {best_path}, "
        f"{last_path}"
    )
    result = FitResult(
        run_dir=run_dir,
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        best_metric=best_metric,
        best_epoch=best_epoch,
        epochs_completed=len(history),
        history=history,
        config=cfg,
    )
    if cfg.eval_test and info.is_main:
        result.eval, result.report = _final_evaluation(cfg, run_dir, split, used_ids, device, log)
    barrier(info)
    return result


@torch.no_grad()
def _validate(
    model: nn.Module,
    loader: Any,
    loss_fn: nn.Module,
    device: torch.device,
    use_amp: bool,
    amp_dtype: torch.dtype,
    num_classes: int,
    max_batches: int | None,
    info: DistInfo,
) -> tuple[float, float]:
    """Mean validation loss and per-image foreground-mean Dice over all processes' shares."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, dice sum, n
    if loader is not None:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x = batch["image"].to(device)
            y = batch["mask"].to(device)
            ctx = torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext()
            with ctx:
                logits = model(x)
            logits = logits.float()
            sums[0] += loss_fn(logits, y.unsqueeze(1)).double() * x.shape[0]
            sums[1] += _dice_per_image(logits.argmax(1), y, num_classes).sum()
            sums[2] += x.shape[0]
    all_reduce_sum(sums, info)
    model.train(was_training)
    n = sums[2].item()
    if n == 0:
        return math.nan, math.nan
    return sums[0].item() / n, sums[1].item() / n


def _final_evaluation(
    cfg: TrainConfig,
    run_dir: Path,
    split: dict,
    used_ids: dict[str, list[str]],
    device: torch.device,
    log: _Log,
) -> tuple[dict[str, Any], Path | None]:
    """Evaluate best.pt on val (and test) with engine.evaluate, then build report.html (both optional)."""
    results: dict[str, Any] = {}
    report_path = None
    best = run_dir / "best.pt"
    if not best.is_file():
        log("evaluation skipped: no best.pt")
        return results, None
    try:
        from . import evaluation as evaluate_mod
    except ImportError as e:
        log(f"evaluation skipped: medurwkv.engine.evaluation is not available ({e})")
        evaluate_mod = None
    if evaluate_mod is not None:
        for name in ("val", "test"):
            ids = used_ids.get(name) or []
            if not ids:
                continue
            try:
                summary = evaluate_mod.evaluate(
                    best,
                    cfg.data,
                    ids=ids,
                    split=name,
                    out=run_dir / "eval" / name,
                    device=str(device),
                    progress=cfg.progress,
                    report=False,
                )
                results[name] = summary
                headline = _headline(summary)
                log(
                    f"evaluation of best.pt on {name} ({len(ids)} images, original resolution): "
                    f"Dice {headline}"
                )
            except Exception as e:  # noqa: BLE001 - training succeeded; report the evaluation problem
                results[name] = f"error: {e}"
                log(f"evaluation on {name} failed: {type(e).__name__}: {e}")
    try:
        from .report import build_report

        report_path = build_report(run_dir)
        log(f"report: {report_path}")
    except Exception as e:  # noqa: BLE001 - the report is a convenience
        log(f"report skipped: {type(e).__name__}: {e}")
    return results, report_path


def _headline(summary: Any) -> str:
    try:
        v = summary["headline"]["value"]
        return f"{v:.4f} (per-image mean over foreground classes)"
    except (KeyError, TypeError):
        return "n/a"


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------

_BOOL_FLAGS = ("augment", "deterministic", "sync_bn", "eval_test", "progress", "tensorboard", "amp")


def _opt_float(s: str) -> float | str:
    # "none" stays a string: None would mean "flag not given" and keep the YAML / default value
    if s.strip().lower() in ("none", "null", "off"):
        return "none"
    try:
        return float(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {s!r}") from e


def _img_size(s: str) -> int | list[int]:
    parts = [int(p) for p in s.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts
    raise argparse.ArgumentTypeError(f"expected SIZE or H,W (e.g. 256 or 256,320), got {s!r}")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``medurwkv train``. Every option defaults to 'not given' so YAML values are kept."""
    p = subparsers.add_parser(
        "train",
        help="train a segmentation model on a dataset folder",
        description=(
            "Train Med-URWKV (or another registered model) on DATA. Options come from the defaults, then "
            "--config YAML, then these flags. Writes RUN_DIR/{config.yaml,best.pt,last.pt,metrics.csv,tb/}, "
            "then evaluates best.pt and writes report.html. Multi-GPU: torchrun --nproc_per_node N "
            "$(which medurwkv) train ... (see docs/training.md)."
        ),
    )
    S = argparse.SUPPRESS
    p.add_argument("--config", type=Path, default=S, help="YAML file of options (see configs/)")
    p.add_argument(
        "--resume",
        type=Path,
        default=S,
        metavar="RUN_DIR",
        help="continue RUN_DIR from last.pt with its saved config",
    )
    types: dict[str, Any] = {
        "data": str,
        "out": str,
        "split_file": str,
        "fold": int,
        "folds": int,
        "val_fraction": float,
        "test_fraction": float,
        "group_by": str,
        "img_size": _img_size,
        "in_channels": int,
        "normalize": str,
        "limit": int,
        "model": str,
        "pretrained": str,
        "model_kwargs": str,
        "epochs": int,
        "batch_size": int,
        "lr": float,
        "weight_decay": float,
        "encoder_lr_scale": float,
        "warmup_epochs": float,
        "poly_power": float,
        "freeze_encoder_epochs": int,
        "grad_clip": _opt_float,
        "loss": str,
        "dice_weight": float,
        "ce_weight": float,
        "amp_dtype": str,
        "device": str,
        "num_workers": int,
        "seed": int,
        "val_every": int,
        "max_train_batches": int,
        "max_val_batches": int,
    }
    choices = {
        "normalize": ["imagenet", "per_image"],
        "amp_dtype": ["float16", "bfloat16"],
        "loss": ["dice_ce"],
    }
    metavars = {
        "data": "DIR",
        "out": "RUN_DIR",
        "pretrained": "True|False|PATH|URL",
        "model_kwargs": "JSON",
        "split_file": "FILE",
        "img_size": "SIZE|H,W",
    }
    for name in TrainConfig.__dataclass_fields__:
        flag = "--" + name.replace("_", "-")
        default = getattr(TrainConfig(), name)
        help_text = f"{FIELD_HELP.get(name, '')} [default: {default}]"
        if name in _BOOL_FLAGS:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=S, help=help_text)
        else:
            p.add_argument(
                flag,
                dest=name,
                type=types[name],
                default=S,
                choices=choices.get(name),
                metavar=metavars.get(name),
                help=help_text,
            )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """CLI handler: returns 0 on success, 1 on a data / config / divergence error (message on stderr)."""
    from ..data.check import DatasetCheckError

    given = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    config = getattr(args, "config", None)
    resume = getattr(args, "resume", None)
    try:
        result = fit(config, resume=resume, **given)
    except (DatasetCheckError, TrainingDiverged, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"medurwkv train: error: {e}", file=sys.stderr)
        return 1
    if result.best_epoch:
        print(
            f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, "
            f"{'val_dice' if result.history and not math.isnan(result.history[-1]['val_dice']) else 'metric'} "
            f"{result.best_metric:.4f})"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m medurwkv.engine.train ...`` (same options as ``medurwkv train``; handy under torchrun)."""
    parser = argparse.ArgumentParser(prog="python -m medurwkv.engine.train")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses in tests
    sys.exit(main())
