"""A checkpoint to a self-describing ONNX file that ``medurwkv predict`` can run (``medurwkv export``).

The graph comes from :func:`medurwkv.models.export.export_onnx` (input ``image`` (B, C, H, W), output
``logits`` (B, K, H, W)); this module adds the checkpoint's preprocessing, model spec and post-processing
decision to the file's metadata (:mod:`medurwkv.engine.onnx_metadata` owns that format), so that
``Segmenter.from_checkpoint("model.onnx")`` preprocesses images and post-processes label maps exactly like the
PyTorch checkpoint. By default batch, height and width are dynamic;
``dynamic=False`` (``--static``) fixes the input to ``size`` (then predict resizes to that size, or slides
windows of that size at native resolution). The command line is ``medurwkv/cli/export.py``.

A verification failure (onnxruntime output differs from PyTorch beyond ``atol``) raises ``RuntimeError``: it is
not the user's input that is wrong but the model's graph, so the command line keeps the traceback (exit 1);
docs/predict.md, "ONNX export".
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .onnx_metadata import make_onnx_metadata, write_onnx_metadata

__all__ = ["export_checkpoint"]


def _default_size(preprocess: dict[str, Any], pad_multiple: int) -> tuple[int, int]:
    size = preprocess.get("img_size")
    if size:
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    # no training size: any multiple of the encoder stride traces the same dynamic graph
    m = max(1, pad_multiple)
    return (m * max(1, -(-256 // m)),) * 2  # type: ignore[return-value]


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    *,
    size: tuple[int, int] | None = None,
    opset: int | None = None,
    dynamic: bool = True,
    atol: float = 1e-4,
    check_second_size: bool = True,
) -> dict[str, Any]:
    """Export a checkpoint (or run folder) to ONNX with metadata and verify it with onnxruntime.

    Args:
        ckpt: ``.pt`` checkpoint or run folder (its ``best.pt``).
        out: ``.onnx`` path to write (replaced atomically).
        size: (H, W) of the tracing / verification sample (default: the checkpoint's ``img_size``, else 256
            rounded up to the model's ``pad_multiple``); with ``dynamic=False`` this is the fixed input size.
        opset: ONNX opset (default: ``models.export.DEFAULT_OPSET``).
        dynamic: batch, height and width dynamic (default) or fixed to ``size``.
        atol: largest accepted |logits difference| between onnxruntime and PyTorch.
        check_second_size: for a dynamic export, also verify through :class:`Segmenter` on an image of
            another, odd size (exercises the dynamic axes and the padding).

    Returns:
        ``models.export.export_onnx``'s report plus ``"metadata"`` and, if checked, ``"max_abs_diff_probs"``
        (probabilities of the second-size image, ONNX vs PyTorch).
    """
    from ..models.export import export_onnx
    from .predict import Segmenter, load_inference_checkpoint

    out = Path(out).expanduser()
    if out.suffix.lower() != ".onnx":
        raise UserError(f"expected an output path ending in .onnx, got {out}; pass --out FILE.onnx")
    model, ck, _ = load_inference_checkpoint(ckpt, device="cpu")
    pre = dict(ck.get("preprocess") or {})
    pm = int(model.pad_multiple)
    h, w = size if size is not None else _default_size(pre, pm)
    if min(h, w) < 1:
        raise UserError(f"expected a positive --size H W, got {h} {w}")
    in_ch = int(pre.get("in_channels", model.in_channels))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".raw.onnx", dir=out.parent)
    os.close(fd)
    try:
        try:
            report = export_onnx(
                model,
                raw,
                sample_shape=(1, in_ch, h, w),
                dynamic=dynamic,
                opset=opset,
                verify=True,
                atol=atol,
            )
        except RuntimeError as e:
            if not (dynamic and "size-dynamic" in str(e)):
                raise
            # Models whose graph bakes sizes (the adapter's deformable-attention levels) export at a fixed size;
            # predict then resizes to it or slides windows of it.
            print(f"note: {e}; exporting at the fixed size {h}x{w} instead", file=sys.stderr)
            dynamic = False
            report = export_onnx(
                model, raw, sample_shape=(1, in_ch, h, w), dynamic=False, opset=opset, verify=True, atol=atol
            )
        meta = make_onnx_metadata(
            model, ck, dynamic=dynamic, input_size=(h, w), opset=report.get("opset"), source=Path(ckpt)
        )
        write_onnx_metadata(raw, out, meta)
    finally:
        Path(raw).unlink(missing_ok=True)
    report["path"] = str(out)
    report["metadata"] = meta
    if dynamic and check_second_size:
        # a second, odd-sized image through both backends: the full predict path incl. padding and resizing
        seg_t = Segmenter.from_model(model, pre)
        seg_o = Segmenter.from_checkpoint(out)
        hh, ww = h + pm // 2 + 3, w + pm + 1
        rng = np.random.default_rng(0)
        shape = (hh, ww) if in_ch == 1 else (hh, ww, in_ch)
        img = rng.random(shape, dtype=np.float32)
        # predict_items: the image path below predict (which a volume model refuses for raw images)
        pt = next(seg_t.predict_items([img], native=True)).numpy()  # (K, hh, ww)
        po = next(seg_o.predict_items([img], native=True)).numpy()
        diff = float(np.abs(pt - po).max())
        report["max_abs_diff_probs"] = diff
        report["second_size"] = [hh, ww]
        if diff > atol:
            out.unlink(missing_ok=True)
            raise RuntimeError(
                f"expected ONNX probabilities within {atol} of PyTorch at size {(hh, ww)}, got {diff:.3g}; "
                "this model's graph is not size-dynamic: export with --static --size H W"
            )
    return report
