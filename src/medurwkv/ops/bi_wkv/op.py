"""Bi-WKV as ``torch.library`` custom operators: one opaque node for ``torch.compile``, with fake and autograd.

Two operators are registered when this module is imported (nothing is compiled then; Triton kernels are built
on first use by :mod:`.triton`)::

    medurwkv::bi_wkv(Tensor w, Tensor u, Tensor k, Tensor v, SymInt? token_split, float eps, str impl)
        -> (Tensor y, Tensor no)
    medurwkv::bi_wkv_backward(Tensor gy, Tensor w, Tensor u, Tensor k, Tensor v, Tensor no,
        SymInt? token_split, float eps, str impl) -> (Tensor dw, Tensor du, Tensor dk, Tensor dv)

``w, u`` are (C,), ``k, v, gy, y`` (B, T, C). ``no`` is the kernel stabiliser (B, T, C) that the chunked forward
hands to its backward (held constant there, as in the golden gradients), or an empty (0,) tensor when there
is nothing to keep (eps = 0, or the Triton path, whose backward recomputes what it needs from the inputs).

``impl`` (already resolved by :func:`medurwkv.ops.bi_wkv.bi_wkv`):

- ``"chunked"``: the pure-PyTorch O(T) path of :mod:`.chunked`, any device, computed in float32 (float64 if
  any input is float64); y is cast to v's dtype and each gradient to its input's dtype.
- ``"triton"``: the fused kernels of :mod:`.triton`, strictly: CUDA tensors, or any tensors while Triton's
  interpreter runs (``TRITON_INTERPRET=1``, for tests); errors propagate.
- ``"triton_or_chunked"`` (what ``impl="auto"`` picks for CUDA tensors): the Triton kernels, and on their first
  failure (compile or launch error) the chunked path for the rest of the process, after exactly one
  ``RuntimeWarning``. Never silent.

The fake (meta) implementations give the output shapes without computing, so ``torch.compile`` traces the
operator as one node (no graph break) with symbolic B, T, C. The backward is a second custom op, so the
compiled backward graph holds one node too. Only first-order gradients are registered.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

import torch
from torch import Tensor

from ...errors import UserError
from .chunked import bi_wkv_chunked_backward, bi_wkv_chunked_forward, bi_wkv_chunked_forward_with_stabiliser

__all__ = ["OP_IMPLS", "bi_wkv_backward_op", "bi_wkv_op", "check_triton_request", "triton_usable"]

OP_IMPLS = ("chunked", "triton", "triton_or_chunked")

# Why the Triton path was given up in this process (None while it has not failed). Set once, with the warning.
_triton_failure: str | None = None


def _tri() -> ModuleType:
    """The Triton kernels module (imported on first use; it imports ``triton`` itself only lazily)."""
    from . import triton as tri

    return tri


def triton_interpreting() -> bool:
    """True when Triton's interpreter is requested (``TRITON_INTERPRET=1``): kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@torch.compiler.assume_constant_result
def _triton_importable() -> bool:
    # a constant for torch.compile: evaluated once while tracing, so the compiler never traces the import
    return _tri().triton_available()


def triton_usable(k: Tensor, compute_dtype: torch.dtype) -> bool:
    """The ``impl="auto"`` rule: CUDA tensors, a float32-accumulated dtype, Triton importable, no failure yet."""
    return k.is_cuda and compute_dtype != torch.float64 and _triton_failure is None and _triton_importable()


def check_triton_request(k: Tensor, dtypes: set[torch.dtype]) -> None:
    """Refuse an explicit ``impl="triton"`` that cannot run, saying what to change."""
    if torch.float64 in dtypes:
        raise UserError(
            "expected float32, float16 or bfloat16 inputs for impl='triton' (it accumulates in float32), "
            "got float64; use impl='chunked' or 'auto' for float64"
        )
    if not _tri().triton_available():
        raise UserError(
            "expected the 'triton' package for impl='triton', but it cannot be imported; install it "
            "(pip install 'medurwkv[gpu]') or use impl='auto'"
        )
    if not (k.is_cuda or triton_interpreting()):
        raise UserError(
            f"expected CUDA tensors for impl='triton', got {k.device.type} tensors; move them to a CUDA device, "
            "use impl='auto' / 'chunked', or set TRITON_INTERPRET=1 to run the kernels in Triton's "
            "interpreter on the CPU (slow: tests only)"
        )


def _give_up_triton(exc: Exception) -> None:
    """Record the first Triton failure and warn once; the caller then runs the chunked path."""
    global _triton_failure
    if isinstance(exc, torch.OutOfMemoryError):
        raise exc  # the chunked path needs more memory, not less: falling back would only hide the cause
    if _triton_failure is None:
        _triton_failure = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"the Triton Bi-WKV kernel failed ({_triton_failure}); falling back to the chunked PyTorch path for "
            "the rest of this process (slower on a GPU). Pass impl='triton' to see the full error.",
            RuntimeWarning,
            stacklevel=3,
        )


def _compute_dtype(*xs: Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _saves_stabiliser(impl: str, eps: float) -> bool:
    return impl == "chunked" and eps > 0


# ----------------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("medurwkv::bi_wkv", mutates_args=())
def bi_wkv_op(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, token_split: int | None, eps: float, impl: str
) -> tuple[Tensor, Tensor]:
    """y (B, T, C) in v's dtype and the stabiliser kept for the backward (see the module docstring)."""
    if impl == "chunked":
        cdt = _compute_dtype(w, u, k, v)
        w_, u_, k_, v_ = (x.to(cdt) for x in (w, u, k, v))
        if eps > 0:
            y, no = bi_wkv_chunked_forward_with_stabiliser(w_, u_, k_, v_, token_split, eps)
            return y.to(v.dtype), no
        return bi_wkv_chunked_forward(w_, u_, k_, v_, token_split, eps).to(v.dtype), k.new_empty((0,))
    if impl == "triton":
        return _tri().bi_wkv_triton_forward(
            w, u, k.contiguous(), v.contiguous(), token_split, eps
        ), k.new_empty(0)
    if impl != "triton_or_chunked":
        raise ValueError(f"expected impl in {OP_IMPLS}, got {impl!r}")
    if _triton_failure is None:
        try:
            y = _tri().bi_wkv_triton_forward(w, u, k.contiguous(), v.contiguous(), token_split, eps)
            return y, k.new_empty((0,))
        except Exception as exc:  # compile / launch errors of any kind; see _give_up_triton
            _give_up_triton(exc)
    # no stabiliser kept: the fake implementation promised an empty one for this impl (the backward recomputes it)
    cdt = _compute_dtype(w, u, k, v)
    y = bi_wkv_chunked_forward(*(x.to(cdt) for x in (w, u, k, v)), token_split, eps)
    return y.to(v.dtype), k.new_empty((0,))


@bi_wkv_op.register_fake
def _bi_wkv_fake(w, u, k, v, token_split, eps, impl):
    y = torch.empty_like(v, memory_format=torch.contiguous_format)
    if _saves_stabiliser(impl, eps):
        return y, torch.empty(k.shape, dtype=_compute_dtype(w, u, k, v), device=k.device)
    return y, k.new_empty((0,))


# ----------------------------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------------------------
def _chunked_backward(gy, w, u, k, v, no, token_split, eps):
    cdt = _compute_dtype(w, u, k, v)
    grads = bi_wkv_chunked_backward(
        *(x.to(cdt) for x in (w, u, k, v)), token_split, eps, gy.to(cdt), no=no if no.numel() else None
    )
    return tuple(g.to(x.dtype) for g, x in zip(grads, (w, u, k, v)))


@torch.library.custom_op("medurwkv::bi_wkv_backward", mutates_args=())
def bi_wkv_backward_op(
    gy: Tensor,
    w: Tensor,
    u: Tensor,
    k: Tensor,
    v: Tensor,
    no: Tensor,
    token_split: int | None,
    eps: float,
    impl: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dw, du, dk, dv) of <gy, y>, each in its input's dtype; ``no`` held constant (or recomputed if empty)."""
    if impl == "chunked" or (impl == "triton_or_chunked" and _triton_failure is not None):
        return _chunked_backward(gy, w, u, k, v, no, token_split, eps)
    args = (w, u, k.contiguous(), v.contiguous(), token_split, eps, gy.contiguous())
    if impl == "triton":
        return tuple(_tri().bi_wkv_triton_backward(*args))
    if impl != "triton_or_chunked":
        raise ValueError(f"expected impl in {OP_IMPLS}, got {impl!r}")
    try:
        return tuple(_tri().bi_wkv_triton_backward(*args))
    except Exception as exc:  # see _give_up_triton
        _give_up_triton(exc)
    return _chunked_backward(gy, w, u, k, v, no, token_split, eps)


@bi_wkv_backward_op.register_fake
def _bi_wkv_backward_fake(gy, w, u, k, v, no, token_split, eps, impl):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (w, u, k, v))


def _setup_context(ctx, inputs, output) -> None:
    w, u, k, v, token_split, eps, impl = inputs
    ctx.save_for_backward(w, u, k, v, output[1])
    ctx.cfg = (token_split, eps, impl)


def _backward(ctx, gy, _gno):
    w, u, k, v, no = ctx.saved_tensors
    token_split, eps, impl = ctx.cfg
    dw, du, dk, dv = bi_wkv_backward_op(gy, w, u, k, v, no, token_split, eps, impl)
    return dw, du, dk, dv, None, None, None


bi_wkv_op.register_autograd(_backward, setup_context=_setup_context)
