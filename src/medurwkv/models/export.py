"""ONNX export of medurwkv models, verified with onnxruntime.

``export_onnx(model, path)`` writes an ONNX file whose input is ``image`` (B, C, H, W) and output ``logits``
(B, num_classes, H, W), then (``verify=True``) runs it with onnxruntime and reports the largest absolute
difference to PyTorch.

How the Bi-WKV operator is exported (findings with torch 2.13, see ``docs/models.md``):

* the fast chunked implementation (``medurwkv.ops._wkv_chunked``) does not export (custom autograd Function,
  Python loops over sizes, ``cummax``); while tracing, ``bi_wkv(impl="auto")`` therefore switches to the
  export-friendly ``"scan"`` path (``medurwkv.ops._wkv_scan``): the same exact arithmetic, O(T) memory, built
  from ONNX-supported ops with the token count kept symbolic;
* the graph is size-dynamic where every traced size stays symbolic (the pad step pads at every size while
  tracing, see ``SegmentationModel.forward``). A dynamic export is verified at a second size and refused with a
  clear error when it is not truly dynamic (export those with ``dynamic=False``).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import SegmentationModel

__all__ = ["export_onnx", "run_onnx", "DEFAULT_OPSET"]

# GridSample (deformable attention) needs opset >= 16; 17 adds LayerNormalization.
DEFAULT_OPSET = 17


@contextlib.contextmanager
def _unbanded(model: nn.Module) -> Iterator[None]:
    """Switch off the decoder's row banding (a Python loop over traced sizes) while tracing."""
    from .decoder import DecoderBlock

    blocks = [m for m in model.modules() if isinstance(m, DecoderBlock)]
    saved = [b.tile_tokens for b in blocks]
    for b in blocks:
        b.tile_tokens = 0
    try:
        yield
    finally:
        for b, t in zip(blocks, saved):
            b.tile_tokens = t


def run_onnx(path: str | Path, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Run an exported model with onnxruntime (CPU) on one float32 NCHW batch; returns the logits."""
    import onnxruntime as ort

    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _compare(model: nn.Module, path: Path, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model(x).numpy()
    try:
        out = run_onnx(path, x)
    except Exception:  # noqa: BLE001 - onnxruntime rejects a shape the graph baked in
        return float("inf")
    return float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")


def export_onnx(
    model: SegmentationModel,
    path: str | Path,
    *,
    sample_shape: tuple[int, int, int, int] | None = None,
    dynamic: bool = True,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Export ``model`` (eval mode, float32, CPU) to ONNX at ``path`` and optionally verify it.

    Args:
        model: a segmentation model (B, C, H, W) -> (B, K, H, W); it is put in eval mode (restored afterwards).
        path: output ``.onnx`` file (parent folders are created).
        sample_shape: the tracing input shape; default ``(1, model.in_channels, 64, 64)``. For a static export
            this is the only shape the file accepts.
        dynamic: mark batch, height and width as dynamic axes (``B``, ``H``, ``W``). With ``verify`` the file is
            also checked at a second shape (batch + 1, H + pad_multiple + 1, W + 2·pad_multiple + 3); a graph
            that baked a size in raises ``RuntimeError`` (export with ``dynamic=False`` instead).
        opset: ONNX opset (default :data:`DEFAULT_OPSET`).
        verify: run the file with onnxruntime on random inputs and compare with PyTorch.
        atol: tolerance of the verification; a larger difference raises ``RuntimeError``.
        seed: seed of the random inputs.

    Returns:
        ``{"path", "opset", "dynamic", "sample_shape", "export_s", "size_mb", "bi_wkv": "scan"}`` plus, with
        ``verify``, ``"max_abs_diff"``, ``"ok"`` and for dynamic exports ``"second_shape"``,
        ``"max_abs_diff_second"``.

    Raises:
        RuntimeError: if the export fails, the outputs differ by more than ``atol``, or a dynamic export is not
            dynamic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if sample_shape is None:
        sample_shape = (1, model.in_channels, 64, 64)
    if len(sample_shape) != 4:
        raise ValueError(f"expected sample_shape (B, C, H, W), got {sample_shape}")
    was_training = model.training
    model = model.eval().float().cpu()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*sample_shape, generator=gen)
    dyn = {"image": {0: "B", 2: "H", 3: "W"}, "logits": {0: "B", 2: "H", 3: "W"}} if dynamic else None
    report: dict[str, Any] = {"path": str(path), "opset": opset, "dynamic": dynamic, "bi_wkv": "scan"}
    try:
        with _unbanded(model):
            t0 = time.perf_counter()
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # tracer warnings about Python shape arithmetic
                    torch.onnx.export(
                        model,
                        (x,),
                        str(path),
                        input_names=["image"],
                        output_names=["logits"],
                        dynamic_axes=dyn,
                        opset_version=opset,
                        dynamo=False,
                    )
            except Exception as e:  # noqa: BLE001 - re-raised with context
                raise RuntimeError(
                    f"ONNX export of {type(model).__name__} failed: {type(e).__name__}: {e}"
                ) from e
            report.update(
                sample_shape=list(sample_shape),
                export_s=round(time.perf_counter() - t0, 3),
                size_mb=round(path.stat().st_size / 2**20, 3),
            )
            if verify:
                diff = _compare(model, path, x)
                report.update(max_abs_diff=diff, ok=diff <= atol)
                if diff > atol:
                    raise RuntimeError(
                        f"expected onnxruntime outputs within {atol} of PyTorch, got max |diff| = {diff:.3g} "
                        f"for {path}"
                    )
                if dynamic:
                    m = model.pad_multiple
                    B, C, H, W = sample_shape
                    shape2 = (B + 1, C, H + m + 1, W + 2 * m + 3)
                    x2 = torch.randn(*shape2, generator=gen)
                    diff2 = _compare(model, path, x2)
                    report.update(second_shape=list(shape2), max_abs_diff_second=diff2, ok=diff2 <= atol)
                    if diff2 > atol:
                        raise RuntimeError(
                            f"expected a size-dynamic graph, got max |diff| = {diff2:.3g} at a second shape "
                            f"{shape2} (the graph baked in sizes of the tracing input {tuple(sample_shape)}: "
                            "Bi-WKV kernel chunking, deformable-attention levels or Swin window partitions); export with "
                            "dynamic=False"
                        )
    except BaseException:
        path.unlink(missing_ok=True)  # never leave an unverified or failed file behind
        raise
    finally:
        model.train(was_training)
    return report
