"""Model registry: names -> builders with their default configuration (data, not code).

Every model module registers its variants on import (``medurwkv.models`` imports them all), each with the
official release its pretrained part comes from (:mod:`.releases`). :func:`~medurwkv.models.create_model`
(``builder.py``) builds them; ``docs/models.md`` lists them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import UserError
from .releases import PretrainedCfg

__all__ = ["ModelEntry", "register_model", "get_model_entry", "list_models"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``builder(**default_kwargs)`` builds it; ``pretrained`` is its official release."""

    name: str
    builder: Callable[..., nn.Module]
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: PretrainedCfg | None = None
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    builder: Callable[..., nn.Module],
    *,
    default_kwargs: dict[str, Any] | None = None,
    pretrained: PretrainedCfg | None = None,
    description: str = "",
) -> ModelEntry:
    """Register ``builder(**kwargs)`` under ``name`` with variant defaults (``default_kwargs``)."""
    if name in _REGISTRY:
        raise ValueError(f"expected a new model name, got {name!r} which is already registered")
    entry = ModelEntry(name, builder, dict(default_kwargs or {}), pretrained, description)
    _REGISTRY[name] = entry
    return entry


def get_model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise UserError(f"expected one of {sorted(_REGISTRY)}, got unknown model name {name!r}")
    return _REGISTRY[name]


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models, optionally filtered by a ``fnmatch`` pattern (e.g. ``"med_urwkv*"``)."""
    return [n for n in sorted(_REGISTRY) if pattern is None or fnmatch.fnmatch(n, pattern)]
