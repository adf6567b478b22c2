"""Model registry: every model is created by name from a config that is data, not code.

``create_model(name, pretrained=..., **overrides)`` looks up the registered builder, merges the variant's
default keyword arguments with the caller's overrides, builds the module and attaches ``model.model_spec``
(``{"name", "kwargs"}``) so that a checkpoint can rebuild the exact same architecture from the file alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["PretrainedCfg", "ModelEntry", "register_model", "create_model", "list_models", "get_model_entry"]

HF_BASE = "https://huggingface.co/OpenGVLab/Vision-RWKV/resolve/main/"


@dataclass(frozen=True)
class PretrainedCfg:
    """An official weight release: where it lives and which Bi-WKV kernel constants trained it."""

    file: str
    url: str
    layout: str  # "mmcls" (ImageNet classifier) or "mmseg" (ADE20K UperNet)
    wkv_token_split: int | None
    wkv_eps: float
    sha256: str | None = None
    description: str = ""

    @classmethod
    def official(cls, file: str, **kwargs: Any) -> PretrainedCfg:
        return cls(file=file, url=HF_BASE + file, **kwargs)


@dataclass(frozen=True)
class ModelEntry:
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


def _ensure_loaded() -> None:
    # Model modules register themselves on import; importing the package pulls them all in.
    from . import _all  # noqa: F401


def get_model_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"expected one of {sorted(_REGISTRY)}, got unknown model name {name!r}")
    return _REGISTRY[name]


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models, optionally filtered by a ``fnmatch`` pattern (e.g. ``"med_urwkv*"``)."""
    import fnmatch

    _ensure_loaded()
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def create_model(name: str, *, pretrained: bool | str | Path = False, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a name from :func:`list_models`.
        pretrained: ``False`` (random init), ``True`` (the official release named in the model's config,
            downloaded on request into the cache), or a local path / URL of an official-layout checkpoint.
        **kwargs: overrides of the variant's config (e.g. ``in_channels=1, num_classes=4, depth=2``).
    """
    entry = get_model_entry(name)
    kw = {**entry.default_kwargs, **kwargs}
    model = entry.builder(**kw)
    model.model_spec = {"name": name, "kwargs": kw}
    if pretrained is not False and pretrained is not None:
        from .pretrained import load_pretrained

        if pretrained is True:
            if entry.pretrained is None:
                raise ValueError(
                    f"expected a model with an official pretrained release, got {name!r} which has none; "
                    "pass pretrained=PATH to load your own weights"
                )
            load_pretrained(model, entry.pretrained.url, sha256=entry.pretrained.sha256)
        else:
            load_pretrained(model, pretrained)
    return model
