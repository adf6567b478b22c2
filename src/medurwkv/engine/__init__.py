"""Training, evaluation, prediction, export and reporting for medurwkv.

Submodules (``metrics``, ``visualize``, ``report``, ...) are imported on demand, so ``import medurwkv.engine``
stays cheap and does not pull in torch or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule that defines it; resolved on first attribute access (PEP 562).
_LAZY = {
    "fit": "train",
    "FitResult": "train",
    "TrainConfig": "config",
    # not the function pretrain: its name is the submodule's, which importing it binds on this package
    "PretrainConfig": "pretrain",
    "PretrainResult": "pretrain",
    "TrainState": "checkpoint",
    "evaluate": "evaluation",
    "Segmenter": "predict",
    "predict_paths": "predict",
    "export_checkpoint": "export",
    "build_report": "report",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
