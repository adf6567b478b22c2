"""Custom operators of medurwkv: Bi-WKV, multi-scale deformable attention and lean-memory linear maps.

One entry point per op: :func:`bi_wkv` (package :mod:`.bi_wkv`: naive reference, chunked, Triton and scan
paths), :func:`ms_deform_attn` (module :mod:`.msda`, pure PyTorch), and :func:`mix_linear` and
:func:`squared_relu_linear` (module :mod:`.lean_linear`: a VRWKV block's linear maps of an elementwise input,
which recompute that input in the backward instead of keeping it). Importing this package registers the
``torch.library`` custom operators ``medurwkv::bi_wkv``, ``medurwkv::bi_wkv_backward``,
``medurwkv::ms_deform_attn`` and ``medurwkv::ms_deform_attn_backward`` (fake implementations and autograd
included, so ``torch.compile`` traces each call as one node); no kernel is built at import.
"""

from __future__ import annotations

from .bi_wkv import bi_wkv
from .lean_linear import mix_linear, squared_relu_linear
from .msda import ms_deform_attn

__all__ = ["bi_wkv", "mix_linear", "ms_deform_attn", "squared_relu_linear"]
