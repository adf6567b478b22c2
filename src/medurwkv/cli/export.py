"""``medurwkv export``: a checkpoint to an ONNX file with its preprocessing, verified with onnxruntime.

Exit codes: 0 on success; 2 for a wrong checkpoint or option. A verification failure (onnxruntime output
differs from PyTorch beyond ``--atol``) is not the user's to fix: it keeps its traceback and exits 1, and no
output file is left behind (docs/predict.md, "ONNX export").
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    import torch

    from ..engine.export import export_checkpoint

    with torch.no_grad():  # scoped: the CLI runs in-process too (tests, notebooks)
        rep = export_checkpoint(
            args.ckpt,
            args.out,
            size=tuple(args.size) if args.size else None,
            opset=args.opset,
            dynamic=not args.static,
            atol=args.atol,
        )
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
