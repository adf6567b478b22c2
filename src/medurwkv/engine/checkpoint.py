"""Self-describing checkpoints: the file alone rebuilds the model (name + config), its preprocessing and state.

Layout (``format = "medurwkv-checkpoint-v1"``)::

    {"format", "version", "model": {"name", "kwargs"}, "state_dict", "preprocess": {...},
     "train_config", "epoch", "global_step", "metrics", "best_metric",
     "optimizer", "scheduler", "scaler", "rng"}

Files are written atomically (temporary file in the same folder, fsync, rename), so a run killed at any moment
leaves either the previous or the new checkpoint, never a truncated one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "load_model", "atomic_torch_save"]

CHECKPOINT_FORMAT = "medurwkv-checkpoint-v1"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename over it (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
        raise ValueError(f"expected a readable torch checkpoint at {path}, got an error: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format", sorted(ckpt)[:5]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"expected a medurwkv checkpoint (format {CHECKPOINT_FORMAT!r}), got {found!r} in {path}; "
            "official Vision-RWKV weights are loaded with create_model(..., pretrained=PATH) instead"
        )
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model described by a checkpoint, load its weights, move it to ``device``, eval mode."""
    from ..models import create_model

    ckpt = load_checkpoint(path, map_location="cpu")
    model = create_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.to(device).eval(), ckpt
