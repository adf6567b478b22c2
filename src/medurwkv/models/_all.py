"""Import every model module so that it registers its variants (see registry._ensure_loaded)."""

from __future__ import annotations

import importlib

for _mod in ("vrwkv", "adapter", "unet", "med_urwkv"):
    try:
        importlib.import_module(f"{__package__}.{_mod}")
    except ModuleNotFoundError as e:  # a model module not written yet must not break the others
        if e.name != f"{__package__}.{_mod}":
            raise
