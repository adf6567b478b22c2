"""Models: registry, pretrained loading, VRWKV layers and backbone, adapter encoder, decoders, full models."""

from __future__ import annotations

from .base import Encoder, SegmentationModel, pad_to_multiple
from .registry import PretrainedCfg, create_model, get_model_entry, list_models, register_model
from .tiny import QUICK_OVERRIDES
from .vrwkv import VRWKV

__all__ = [
    "Encoder",
    "SegmentationModel",
    "pad_to_multiple",
    "QUICK_OVERRIDES",
    "PretrainedCfg",
    "create_model",
    "get_model_entry",
    "list_models",
    "register_model",
    "VRWKV",
]

try:  # pretrained.py provides load_pretrained / LoadReport
    from .pretrained import LoadReport, load_pretrained  # noqa: F401

    __all__ += ["LoadReport", "load_pretrained"]
except ModuleNotFoundError as e:  # pragma: no cover
    if e.name != f"{__name__}.pretrained":
        raise
