"""Models: the model contract, the registry, the builder, pretrained loading, VRWKV layers, encoders, models.

Layers, from the leaves up: ``releases`` (official weight table, no package imports) -> ``registry`` (names ->
builders) -> the model modules (``vrwkv``, ``adapter``, ``encoders``, ``unet``, ``med_urwkv``,
``monai_models``), which register their variants on import -> ``pretrained`` (loading) -> ``builder``
(``create_model``). Importing this package imports every model module, so a broken one fails loudly. See
``docs/models.md`` and ``docs/pretrained.md``.
"""

from __future__ import annotations

from . import adapter, med_urwkv, monai_models, unet, vrwkv  # noqa: F401  (each registers its variants)
from .base import Encoder, SegmentationModel, pad_to_multiple
from .builder import create_model
from .pretrained import LoadReport, load_pretrained
from .registry import ModelEntry, get_model_entry, list_models, register_model
from .releases import PretrainedCfg, find_release, official_releases
from .tiny import QUICK_OVERRIDES
from .vrwkv import VRWKV

__all__ = [
    "Encoder",
    "SegmentationModel",
    "pad_to_multiple",
    "QUICK_OVERRIDES",
    "PretrainedCfg",
    "ModelEntry",
    "create_model",
    "find_release",
    "get_model_entry",
    "list_models",
    "load_pretrained",
    "LoadReport",
    "official_releases",
    "register_model",
    "VRWKV",
]
