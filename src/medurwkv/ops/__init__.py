"""Custom operators of medurwkv in pure PyTorch: Bi-WKV and multi-scale deformable attention."""

from __future__ import annotations

from .bi_wkv import bi_wkv

try:  # msda.py is added separately; keep bi_wkv importable without it
    from .msda import ms_deform_attn
except ImportError as err:  # pragma: no cover
    if getattr(err, "name", None) not in (f"{__name__}.msda", None):
        raise  # msda.py exists but one of its own imports failed: do not hide that
    ms_deform_attn = None  # type: ignore[assignment]

__all__ = ["bi_wkv", "ms_deform_attn"]
