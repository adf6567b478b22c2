"""Custom operators of medurwkv: Bi-WKV and multi-scale deformable attention.

One entry point per op: :func:`bi_wkv` (package :mod:`.bi_wkv`: naive reference, chunked, Triton and scan
paths) and :func:`ms_deform_attn` (module :mod:`.msda`, pure PyTorch). Importing this package registers the
``torch.library`` custom operators ``medurwkv::bi_wkv``, ``medurwkv::bi_wkv_backward``,
``medurwkv::ms_deform_attn`` and ``medurwkv::ms_deform_attn_backward`` (fake implementations and autograd
included, so ``torch.compile`` traces each call as one node); no kernel is built at import.
"""

from __future__ import annotations

from .bi_wkv import bi_wkv
from .msda import ms_deform_attn

__all__ = ["bi_wkv", "ms_deform_attn"]
