"""``create_model``: build a registered model by name and, on request, load its weights (``docs/models.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import UserError
from .pretrained import load_pretrained
from .registry import get_model_entry

__all__ = ["create_model", "model_from_spec"]


def create_model(name: str, *, pretrained: bool | str | Path = False, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a name from :func:`~medurwkv.models.list_models`.
        pretrained: ``False`` (random init); ``True`` (the official release of the model's registry entry,
            downloaded on request into the cache); or a local path / URL: an official-layout checkpoint, or your
            own weights of this model (see ``docs/pretrained.md`` for the rule that tells them apart).
        **kwargs: overrides of the variant's config (e.g. ``in_channels=1, num_classes=4, depth=2``).

    The model carries ``model_spec = {"name", "kwargs"}``, from which a checkpoint rebuilds the architecture.
    """
    entry = get_model_entry(name)
    kw = {**entry.default_kwargs, **kwargs}
    model = entry.builder(**kw)
    model.model_spec = {"name": name, "kwargs": kw}
    if pretrained is True:
        if entry.pretrained is None:
            raise UserError(
                f"expected a model with an official pretrained release, got {name!r} which has none; "
                "pass pretrained=PATH (CLI: --pretrained PATH) to load your own weights"
            )
        load_pretrained(model, entry.pretrained, sha256=entry.pretrained.sha256)
    elif pretrained is not False and pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model from a saved ``model_spec`` (``{"name", "kwargs"}``, e.g. a checkpoint's ``model``).

    The saved kwargs are the model's whole config, so they are passed to the builder as they are, without the
    registry's *current* defaults: a checkpoint written before a variant's default changed (say its decoder
    widths) rebuilds the architecture it was trained with. Weights are not loaded here.
    """
    entry = get_model_entry(spec["name"])
    model = entry.builder(**spec["kwargs"])
    model.model_spec = {"name": spec["name"], "kwargs": dict(spec["kwargs"])}
    return model
