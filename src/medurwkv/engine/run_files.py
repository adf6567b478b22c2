"""What a run folder of ``medurwkv train`` and ``medurwkv pretrain`` has in common: starting the run (folder,
log, determinism switches), the log (``RUN_DIR/train.log``) and ``metrics.csv``."""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..utils import atomic_write_text
from .distributed import DistInfo, barrier

__all__ = [
    "RunLog",
    "start_run",
    "format_metric",
    "write_metrics_csv",
    "refuse_existing_run",
    "resumable_config",
]


class RunLog:
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


def start_run(cfg: Any, run_dir: Path, resuming: bool, device: torch.device, info: DistInfo) -> RunLog:
    """Create the run folder, start the log, set the determinism switches (``cfg.deterministic``)."""
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(info)
    log = RunLog(run_dir, info.is_main)
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
    return log


def format_metric(v: Any) -> str:
    """A metrics.csv cell: '' for None / NaN, 0/1 for booleans, 8 significant digits for floats."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.8g}"
    return str(v)


def write_metrics_csv(path: Path, history: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rewrite metrics.csv from the history (atomic), so a resumed run never duplicates or loses rows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in history:
        w.writerow([format_metric(row.get(k)) for k in columns])
    atomic_write_text(path, buf.getvalue())


def refuse_existing_run(out: str | Path, api: str) -> None:
    """A fresh run must not overwrite one: ``FileExistsError`` when ``out`` holds a ``last.pt``
    (``api``: the Python call that resumes it, e.g. ``"fit"``)."""
    if (Path(out) / "last.pt").exists():
        raise FileExistsError(
            f"{out} already holds a run (last.pt); continue it with --resume {out} "
            f"(Python: {api}(resume=...)) or choose another --out"
        )


def resumable_config(run_dir: Path, what: str = "a run folder") -> Path:
    """``RUN_DIR/config.yaml`` of a run that can be resumed; ``FileNotFoundError`` saying which of config.yaml
    and last.pt is missing (``what`` names the kind of run folder expected)."""
    cfg_path, last = run_dir / "config.yaml", run_dir / "last.pt"
    if not cfg_path.is_file() or not last.is_file():
        raise FileNotFoundError(
            f"expected {what} with config.yaml and last.pt to resume, got {run_dir} "
            f"(config.yaml {'found' if cfg_path.is_file() else 'missing'}, last.pt "
            f"{'found' if last.is_file() else 'missing'}); a run killed during its first epoch has nothing "
            "to resume: start it again"
        )
    return cfg_path
