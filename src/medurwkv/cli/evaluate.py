"""``medurwkv evaluate``: metrics of a checkpoint on a dataset split (per-image CSV, summary JSON/Markdown).

Exit codes: 0 on success, 2 for a wrong checkpoint, dataset, split or option (docs/predict.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from .predict import add_inference_arguments, window_option

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="metrics of a checkpoint on a dataset split (per-image CSV, summary JSON/Markdown, overlays)",
        description="Predict every image of a split and score it against the original masks at the original "
        "resolution (HD95/ASSD in mm when the dataset gives a pixel spacing), with the checkpoint's "
        "post-processing applied (see --no-postprocess). Writes to "
        "RUN_DIR/eval/<split>/ when the checkpoint is in a run folder, else to --out.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint .pt, run folder (best.pt) or exported .onnx")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test", "all"),
        help="which split to evaluate (default test; 'all' = every image)",
    )
    p.add_argument(
        "--split-file",
        default=None,
        help="split JSON (default: the training's split when it used this dataset, else DATA/splits.json)",
    )
    p.add_argument("--fold", type=int, default=None, help="fold of a k-fold split file")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/eval/<split>)")
    add_inference_arguments(p)
    p.add_argument("--include-background", action="store_true", help="also score the background class")
    p.add_argument("--no-thumbnails", action="store_true", help="do not write cases/*.png")
    p.add_argument("--no-report", action="store_true", help="do not rebuild RUN_DIR/report.html")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.distributed import resolve_device
    from ..engine.evaluation import evaluate

    evaluate(
        args.ckpt,
        args.data,
        split=args.split,
        split_file=args.split_file,
        fold=args.fold,
        out_dir=args.out,
        tta=args.tta,
        native=args.native,
        window=window_option(args.window),
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
        include_background=args.include_background,
        thumbnails=not args.no_thumbnails,
        report=not args.no_report,
        progress=not args.quiet,
        postprocess=not args.no_postprocess,
    )
    return 0
