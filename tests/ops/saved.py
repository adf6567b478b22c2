"""What autograd keeps for the backward: the memory half of the lean ops' contract."""

from __future__ import annotations

from collections.abc import Callable

import torch


def saved_bytes(forward: Callable[[], object]) -> int:
    """Bytes of the distinct storages that autograd saves for the backward while ``forward()`` runs."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())
