"""Minimal DistributedDataParallel plumbing for ``medurwkv train`` under ``torchrun``.

``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them and starts a process group (NCCL on CUDA, Gloo on CPU).
Without them it returns a single-process :class:`DistInfo` and every helper here is a no-op, so the training
code has one path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import UserError

__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup",
    "all_reduce_sum",
    "barrier",
    "all_gather_objects",
    "broadcast_object",
    "resolve_device",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: ``enabled`` is False for a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and logs."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def resolve_device(name: str | None = "auto") -> torch.device:
    """The torch device for ``--device``: 'auto' (or None) is CUDA when available, else the CPU; a bare 'cuda'
    is ``cuda:LOCAL_RANK`` under torchrun (each process drives its own GPU), else the current CUDA device."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"expected --device auto, cpu, cuda or cuda:N, got {name!r}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"expected a CUDA device for --device {name}, got none available; use --device cpu"
            )
        if dev.index is None:
            launched = _env_int("WORLD_SIZE", 1) > 1
            dev = torch.device("cuda", _env_int("LOCAL_RANK", 0) if launched else torch.cuda.current_device())
    return dev


def init_distributed(device: torch.device) -> DistInfo:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1), else return a 1-process info.

    ``device`` decides the backend: NCCL for CUDA, Gloo otherwise. An already initialised group is reused.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available():
        raise RuntimeError(
            f"expected torch.distributed for WORLD_SIZE={world}, got a torch build without it; "
            "run a single process instead"
        )
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, enabled=True, backend=backend)


def cleanup(info: DistInfo) -> None:
    """Tear down the process group started by :func:`init_distributed` (no-op for single process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over processes in place (returns it); no-op for single process."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    """Wait for every process; no-op for single process."""
    if info.enabled:
        dist.barrier()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` for single process."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` (picklable) on every process; ``obj`` itself for a single process."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
