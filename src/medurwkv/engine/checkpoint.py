"""Self-describing checkpoints: the file alone rebuilds the model (name + config), its preprocessing and state.

Layout (``format = "medurwkv-checkpoint-v1"``)::

    {"format", "version", "model": {"name", "kwargs"}, "state_dict", "preprocess": {...},
     "train_config", "epoch", "global_step", "metrics", "best_metric", "best_epoch", "monitor", "history",
     "split", "optimizer", "scheduler", "scaler", "rng", "world_size", "postprocess"}

The training part (from ``train_config`` on) is written and read back in one place, :class:`TrainState`.
``postprocess`` (only in ``best.pt``, absent from older checkpoints) is the post-processing decision chosen on the
validation split after training (:mod:`medurwkv.engine.postprocess`, JSON dict), written by
:func:`store_postprocess`; predict and evaluate apply it.
Files are written atomically (temporary file in the same folder, fsync, rename), so a run killed at any moment
leaves either the previous or the new checkpoint, never a truncated one (docs/training.md, "Resume").
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import UserError
from ..utils import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainState",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "store_postprocess",
    "atomic_torch_save",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "medurwkv-checkpoint-v1"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`medurwkv.utils.atomic_write` (temporary file, fsync, rename)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(path: str | Path, model: nn.Module, *, preprocess: dict[str, Any], **state: Any) -> Path:
    """Write a self-describing checkpoint for ``model`` (which must carry ``model_spec`` from create_model)."""
    spec = getattr(model, "model_spec", None)
    if spec is None:
        raise ValueError(
            "expected a model created with medurwkv.create_model (it carries .model_spec), got a "
            f"{type(model).__name__} without one; build it with create_model(name, ...)"
        )
    module = model.module if hasattr(model, "module") else model  # unwrap DistributedDataParallel
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "model": {"name": spec["name"], "kwargs": dict(spec["kwargs"])},
        "state_dict": module.state_dict(),
        "preprocess": dict(preprocess),
        **state,
    }
    return atomic_torch_save(ckpt, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a medurwkv checkpoint; clear errors for missing, foreign or corrupt files."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(
                f"expected a checkpoint file or a run folder with best.pt/last.pt, got {path}"
            )
    if not path.is_file():
        raise FileNotFoundError(f"expected a checkpoint file, got {path} which does not exist")
    try:
        # Full unpickling is needed for optimizer/RNG states; only load checkpoints you trust.
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - report any unpickling failure uniformly
        raise UserError(f"expected a readable torch checkpoint at {path}, got an error: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format", sorted(ckpt)[:5]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(
            f"expected a medurwkv checkpoint (format {CHECKPOINT_FORMAT!r}), got {found!r} in {path}; "
            "official Vision-RWKV weights are loaded with create_model(..., pretrained=PATH) instead"
        )
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model described by a checkpoint, load its weights, move it to ``device``, eval mode."""
    from ..models.builder import model_from_spec

    ckpt = load_checkpoint(path, map_location="cpu")
    model = model_from_spec(ckpt["model"])  # the config in the file, not today's registry defaults
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.to(device).eval(), ckpt


def store_postprocess(path: str | Path, decision: Mapping[str, Any] | None) -> Path:
    """Write ``decision`` (a post-processing decision's JSON dict; ``None`` removes it) into the checkpoint at
    ``path`` under the top-level key ``postprocess``, atomically; the rest of the file is kept as it was."""
    if Path(path).is_dir():
        raise UserError(f"expected a checkpoint file to store the post-processing in, got the folder {path}")
    ckpt = load_checkpoint(path, map_location="cpu")
    if decision is None:
        ckpt.pop("postprocess", None)
    else:
        ckpt["postprocess"] = dict(decision)
    return atomic_torch_save(ckpt, path)


# ---------------------------------------------------------------------------------------- training state


def rng_state() -> dict[str, Any]:
    """The global RNG states: python ``random``, numpy, torch CPU and (when present) every CUDA device."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only when CUDA is available)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """Where a training run is between two epochs; with the model, optimizer, schedule, GradScaler and RNG
    states it is everything ``last.pt`` holds to continue the run exactly (:meth:`save` / :meth:`restore`)."""

    epoch: int = 0  # finished epochs
    global_step: int = 0  # optimizer steps taken
    best_metric: float = -math.inf  # of the monitored metric, higher is better
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics.csv row per finished epoch

    def end_epoch(self, row: dict[str, Any], current: float) -> bool:
        """Record a finished epoch's row; True when ``current`` (the monitored value) beats the best so far."""
        self.epoch = int(row["epoch"])
        self.history.append(row)
        improved = not math.isnan(current) and current > self.best_metric
        if improved:
            self.best_metric, self.best_epoch = float(current), self.epoch
        return improved

    def save(
        self,
        path: str | Path,
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        preprocess: dict[str, Any],
        train_config: dict[str, Any],
        monitor: str,
        split: dict[str, Any],
        world_size: int,
    ) -> Path:
        """Write a training checkpoint (after :meth:`end_epoch`: ``metrics`` is the last history row)."""
        return save_checkpoint(
            path,
            model,
            preprocess=preprocess,
            train_config=train_config,
            epoch=self.epoch,
            global_step=self.global_step,
            metrics=dict(self.history[-1]),
            best_metric=self.best_metric,
            best_epoch=self.best_epoch,
            monitor=monitor,
            history=self.history,
            split=split,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler.is_enabled() else None,
            rng=rng_state(),
            world_size=world_size,
        )

    @classmethod
    def restore(
        cls,
        ckpt: Mapping[str, Any],
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
    ) -> TrainState:
        """Load a training checkpoint's states into ``model`` / ``optimizer`` / ... and the global RNGs."""
        model.load_state_dict(ckpt["state_dict"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        return cls(
            epoch=int(ckpt["epoch"]),
            global_step=int(ckpt["global_step"]),
            best_metric=float(ckpt["best_metric"]),
            best_epoch=int(ckpt.get("best_epoch", 0)),
            history=list(ckpt.get("history", [])),
        )
