"""Custom operators of medurwkv in pure PyTorch: Bi-WKV and multi-scale deformable attention.

One entry point per op: :func:`bi_wkv` (package :mod:`.bi_wkv`: naive reference, chunked and scan paths) and
:func:`ms_deform_attn` (module :mod:`.msda`).
"""

from __future__ import annotations

from .bi_wkv import bi_wkv
from .msda import ms_deform_attn

__all__ = ["bi_wkv", "ms_deform_attn"]
