"""``medurwkv export``: a checkpoint to a self-describing ONNX file that ``medurwkv predict`` can run.

The graph comes from :func:`medurwkv.models.export.export_onnx` (input ``image`` (B, C, H, W), output
``logits`` (B, K, H, W)); this module adds the checkpoint's preprocessing and model spec to the file's
``metadata_props`` under the key ``"medurwkv"`` (JSON)::

    {"format": "medurwkv-onnx-v1", "version": ..., "model": {"name", "kwargs"},
     "preprocess": {"in_channels", "img_size", "normalize", "num_classes", "class_names"},
     "pad_multiple": int, "pad_mode": str, "dynamic": bool, "input_size": [H, W], "opset": int,
     "source_checkpoint": str, "epoch": int | null}

so that ``Segmenter.from_checkpoint("model.onnx")`` preprocesses images exactly like the PyTorch checkpoint.
By default batch, height and width are dynamic; ``--static`` fixes the input to ``--size`` (then predict
resizes to that size, or slides windows of that size at native resolution).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .predict import ONNX_METADATA_FORMAT, ONNX_METADATA_KEY

__all__ = ["export_checkpoint", "write_onnx_metadata", "add_parser", "run"]


def write_onnx_metadata(src: str | Path, dst: str | Path, meta: dict[str, Any]) -> Path:
    """Copy ONNX file ``src`` to ``dst`` (atomically), ``meta`` as JSON under metadata key ``"medurwkv"``."""
    import onnx

    model = onnx.load(str(src))
    for prop in list(model.metadata_props):
        if prop.key == ONNX_METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = json.dumps(meta, default=str, sort_keys=True)
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


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
    from .checkpoint import load_model
    from .predict import Segmenter

    model, ck = load_model(ckpt, device="cpu")
    pre = dict(ck.get("preprocess") or {})
    pm = int(getattr(model, "pad_multiple", 1) or 1)
    h, w = size if size is not None else _default_size(pre, pm)
    in_ch = int(pre.get("in_channels", getattr(model, "in_channels", 3)))
    out = Path(out).expanduser()
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"expected an output path ending in .onnx, got {out}")
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
        meta = {
            "format": ONNX_METADATA_FORMAT,
            "version": ck.get("version"),
            "model": ck.get("model"),
            "preprocess": pre,
            "pad_multiple": pm,
            "pad_mode": str(getattr(model, "pad_mode", "constant")),
            "dynamic": bool(dynamic),
            "input_size": [int(h), int(w)],
            "opset": report.get("opset"),
            "source_checkpoint": str(Path(ckpt)),
            "epoch": ck.get("epoch"),
        }
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
        _, pt = seg_t.predict(img, return_probs=True, native=True)
        _, po = seg_o.predict(img, return_probs=True, native=True)
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


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (with preprocessing metadata), verified with onnxruntime",
        description="Export CKPT to an ONNX file that `medurwkv predict --ckpt FILE.onnx` runs with "
        "onnxruntime. Batch, height and width are dynamic unless --static.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint .pt or run folder (best.pt)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (only onnx)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="sample size for tracing/verification (default: training img_size, else 256); the fixed "
        "input size with --static",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--static", action="store_true", help="fix batch 1 and the input size to --size")
    p.add_argument("--atol", type=float, default=1e-4, help="verification tolerance on logits (default 1e-4)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``medurwkv export``: 0 on success, 1 when export or verification fails, 2 for bad arguments."""
    try:
        with torch.no_grad():  # scoped: the CLI runs in-process too (tests, notebooks)
            rep = export_checkpoint(
                args.ckpt,
                args.out,
                size=tuple(args.size) if args.size else None,
                opset=args.opset,
                dynamic=not args.static,
                atol=args.atol,
            )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = rep["metadata"]
    kind = "dynamic batch/height/width" if meta["dynamic"] else f"fixed input 1x{meta['input_size']}"
    print(f"wrote {rep['path']} ({rep.get('size_mb', '?')} MB, opset {rep.get('opset')}, {kind})")
    print(
        f"verified with onnxruntime on a {rep['sample_shape']} sample: "
        f"max |logits diff| = {rep['max_abs_diff']:.3g}"
    )
    if "max_abs_diff_probs" in rep:
        print(
            f"verified at size {rep['second_size']} through predict: max |probability diff| = "
            f"{rep['max_abs_diff_probs']:.3g}"
        )
    print(f"run it with: medurwkv predict --ckpt {rep['path']} --input IMAGES --out DIR")
    return 0
