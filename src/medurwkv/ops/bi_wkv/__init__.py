"""Bi-WKV: the bidirectional WKV operator of Vision-RWKV (v1), exactly as the official CUDA kernel computes it.

The arithmetic is written out in ``docs/vrwkv.md`` ("Bi-WKV kernel arithmetic"). Channels are independent.
For one channel with decay ``w`` and bonus ``u`` (both already divided by the token count T) and kernel chunk
size ``Tc = ceil(T / token_split)``, with ``s = floor(t / Tc) * Tc`` the start of the chunk of token ``t``::

    num_t = Σ_{i<s}     e^{k_i - w(t-i)}   v_i          # earlier chunks
          + Σ_{s≤i<t}   e^{k_i - w(t-i-1)} v_i          # same chunk, before t
          + Σ_{i>t}     e^{k_i - w(i-t)}   v_i          # after t
          + Σ_{s<i≤t}  (e^{k_i + w(t-i)} - e^{k_i + w(t-i+1)}) v_i   # "ghost" terms of the kernel
          + e^{u + k_t} v_t
    den_t = the same with v ≡ 1
    y_t   = num_t / (den_t + eps · e^{no_t})

where ``no_t`` is the kernel's running-max stabiliser (``docs/vrwkv.md``). ``token_split=None`` gives the
artefact-free "ideal" form (one token per chunk).

One package, one entry point (:func:`bi_wkv`) over four implementations of the same formula:

- :mod:`.naive`: the O(T²) reference, every term written out (tests only: memory grows with T²);
- :mod:`.chunked`: the fast O(T) pure-PyTorch path with a hand-written backward (the default on the CPU);
- :mod:`.triton`: fused Triton kernels, forward and backward (the default for CUDA tensors);
- :mod:`.scan`: the O(T) export-friendly path (plain tensor ops with symbolic shapes; the default while a graph
  is recorded for export).

The chunked and Triton paths run inside the custom operator ``medurwkv::bi_wkv`` (:mod:`.op`, registered when
this package is imported), so ``torch.compile`` sees one node with a fake implementation and an autograd formula
instead of hundreds of small ops or a graph break.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ...utils import is_exporting
from . import op
from .chunked import bi_wkv_chunked
from .naive import bi_wkv_naive
from .scan import bi_wkv_scan

__all__ = ["bi_wkv", "bi_wkv_chunked", "bi_wkv_naive", "bi_wkv_scan"]

_IMPLS = ("auto", "naive", "chunked", "triton", "scan")


def _validate(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, token_split: int | None, eps: float, impl: str
) -> None:
    for name, x in (("w", w), ("u", u), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise ValueError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(
                f"expected {name} to have a floating-point dtype, got {x.dtype}; cast it with .float()"
            )
    if k.ndim != 3:
        raise ValueError(
            f"expected k of shape (B, T, C), got shape {tuple(k.shape)}; flatten the token grid to (B, H*W, C)"
        )
    # While exporting (torch.jit.trace and the TorchScript ONNX exporter in particular) sizes may be traced
    # tensors and comparing them would only emit TracerWarnings; the check already ran eagerly when the model
    # was tested: check the ranks only.
    exporting = is_exporting()
    if (v.ndim != 3) if exporting else (v.shape != k.shape):
        raise ValueError(f"expected v of the same shape as k {tuple(k.shape)}, got {tuple(v.shape)}")
    C = k.shape[-1]
    for name, x in (("w", w), ("u", u)):
        if x.ndim != 1 or (not exporting and x.shape[0] != C):
            raise ValueError(
                f"expected {name} of shape (C,) = ({C},) matching k.shape[-1], got shape {tuple(x.shape)}; "
                "pass the per-channel parameter divided by T as a 1-D tensor"
            )
    devices = {x.device for x in (w, u, k, v)}
    if len(devices) != 1:
        raise ValueError(
            f"expected w, u, k, v on one device, got w:{w.device} u:{u.device} k:{k.device} v:{v.device}; "
            "move them with .to(device)"
        )
    if impl not in _IMPLS:
        raise ValueError(f"expected impl in {_IMPLS}, got {impl!r}")
    if token_split is not None and (
        isinstance(token_split, bool) or not isinstance(token_split, numbers.Integral) or token_split < 1
    ):
        raise ValueError(f"expected token_split to be None or an int >= 1, got {token_split!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"expected eps to be a finite float >= 0, got {eps!r}")


def bi_wkv(
    w: Tensor,
    u: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    token_split: int | None = 32,
    eps: float = 1e-6,
    impl: str = "auto",
) -> Tensor:
    """Bidirectional WKV of Vision-RWKV, matching the official chunked CUDA kernel (``docs/vrwkv.md``).

    Args:
        w: (C,) per-channel decay, already divided by T (``spatial_decay / T``); may be negative.
        u: (C,) per-channel bonus, already divided by T (``spatial_first / T``).
        k: (B, T, C) keys.
        v: (B, T, C) values.
        token_split: the kernel's chunk count (32 for the ImageNet checkpoints, 16 for the ADE20K adapter
            checkpoints); ``None`` computes the artefact-free "ideal" form (one token per chunk).
        eps: the kernel's EPS, added to the stabilised denominator (``den + eps·e^{no_t}``); 1e-6 or 0.
        impl: ``"chunked"`` (fast O(T) pure-PyTorch path with a hand-written backward, any device; runs in the
            custom op ``medurwkv::bi_wkv``, which ``torch.compile`` traces as one node but an exporter cannot
            translate), ``"triton"`` (fused Triton kernels in the same custom op: CUDA tensors, or CPU tensors
            under ``TRITON_INTERPRET=1``; float32 accumulation, so float64 inputs are refused), ``"scan"`` (O(T)
            export-friendly path: plain differentiable tensor ops, shapes derived symbolically from
            ``k.shape``, so one ONNX graph serves every T; slower than "chunked"), ``"naive"`` (O(T²)
            reference, differentiated by autograd) or ``"auto"``: ``"scan"`` while a graph is recorded for
            export (:func:`medurwkv.utils.is_exporting`: ``torch.onnx`` / ``torch.export`` /
            ``torch.jit.trace``); otherwise the custom op with the Triton kernels for CUDA tensors when Triton
            imports and no input is float64 (on their first failure: one ``RuntimeWarning``, then the chunked
            path for the rest of the process), else the chunked path (also under ``torch.compile``, which is
            not an export).

    Returns:
        (B, T, C) tensor in the dtype of ``v``. The computation runs in float32 (float64 if any input is
        float64); half/bfloat16 inputs are upcast (the Triton kernels read them as they are and accumulate in
        float32) and the result is cast back.

    Gradients: first order, for all four inputs. The kernel's stabiliser ``no_t`` is held constant, exactly as
    in the reference gradients (this is exact for ``eps = 0``).

    Numerical stability (all implementations): keys are shifted by their per-(b, c) maximum, so any key range
    is safe. The chunked path multiplies by e^{±w} per step like the kernel, so its intermediate sums stay
    within e^{|w|·T} of the true ones: safe for |w|·T up to about 60 in float32; the scan path uses position
    factors up to e^{|w|·T} directly: safe for |w|·T up to about 40 in float32. The official init has
    |w|·T <= 5; the tests cover ±10, T up to 65 536 and key ranges > 100. With ``token_split`` < ~8 and a
    large |w|·T, the kernel formula itself is ill-conditioned: its in-chunk "ghost" terms cancel part of the
    denominator. No implementation can fix that.

    Raises:
        ValueError: on wrong shapes, non-floating dtypes, mixed devices, unknown ``impl``, ``token_split < 1``
            or a negative ``eps``; :class:`medurwkv.errors.UserError` (a ``ValueError``) for ``impl="triton"``
            without Triton, on CPU tensors outside the interpreter, or with float64 inputs.
    """
    _validate(w, u, k, v, token_split, eps, impl)
    if not is_exporting() and k.numel() == 0:  # (a traced numel() would only emit a TracerWarning)
        return torch.zeros_like(v)
    dtypes = {w.dtype, u.dtype, k.dtype, v.dtype}
    cdt = torch.float64 if torch.float64 in dtypes else torch.float32
    ts = None if token_split is None else int(token_split)
    if impl == "auto":
        # is_exporting, not is_tracing: torch.compile traces the custom op (one node), and compiling is no
        # reason to take the slower scan; exporters cannot translate the custom op, so they get the scan.
        if is_exporting():
            impl = "scan"
        else:
            impl = "triton_or_chunked" if op.triton_usable(k, cdt) else "chunked"
    elif impl == "triton":
        op.check_triton_request(k, dtypes)
    if impl in ("triton", "triton_or_chunked"):
        # The kernels read low-precision k, v as they are (float32 accumulation inside); the (C,) parameters
        # are tiny, so they go in float32. Mixed k/v dtypes are unified in float32.
        kv = k.dtype if k.dtype == v.dtype else torch.float32
        y, _ = torch.ops.medurwkv.bi_wkv(w.float(), u.float(), k.to(kv), v.to(kv), ts, float(eps), impl)
        return y.to(v.dtype)
    w_, u_, k_, v_ = (x.to(cdt) for x in (w, u, k, v))
    if impl == "naive":
        y = bi_wkv_naive(w_, u_, k_, v_, ts, float(eps))
    elif impl == "scan":
        y = bi_wkv_scan(w_, u_, k_, v_, ts, float(eps))
    else:
        y, _ = torch.ops.medurwkv.bi_wkv(w_, u_, k_, v_, ts, float(eps), "chunked")
    return y.to(v.dtype)
