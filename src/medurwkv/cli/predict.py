"""``medurwkv predict``: segment image files with a checkpoint, run folder or exported ONNX model.

Also home of the inference options shared with ``medurwkv evaluate`` (:func:`add_inference_arguments`,
:func:`window_option`). Exit codes: 0 when every input was written; 2 (one ``error:`` line naming each failed
input and why) when some input could not be read or predicted, after the others were written, when no input
was found, or for a wrong checkpoint or option (docs/predict.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..errors import UserError

__all__ = ["register", "add_inference_arguments", "window_option", "positive_int"]


def positive_int(s: str) -> int:
    """argparse type: an integer >= 1."""
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by ``predict`` and ``evaluate`` (inference mode, TTA, batch size, post-processing,
    device)."""
    p.add_argument("--tta", action="store_true", help="average softmax over flips (h, v, hv) (4x slower)")
    p.add_argument(
        "--native",
        action="store_true",
        help="run the whole image at native resolution instead of resizing to the training img_size",
    )
    p.add_argument(
        "--window",
        type=positive_int,
        nargs="+",
        metavar="N",
        help="sliding-window inference at native resolution with windows N (or H W) pixels, "
        "Gaussian-weighted (MONAI)",
    )
    p.add_argument(
        "--overlap", type=float, default=0.25, help="sliding-window overlap in [0, 1) (default 0.25)"
    )
    p.add_argument("--batch-size", type=positive_int, default=4, help="images or windows per forward pass")
    p.add_argument(
        "--no-postprocess",
        action="store_true",
        help="do not apply the checkpoint's post-processing (largest connected component per class, chosen on "
        "the validation split after training); label maps as the model predicts them",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)"
    )


def window_option(window: Sequence[int] | None) -> tuple[int, int] | None:
    """``--window N`` or ``--window H W`` as ``(h, w)``; ``None`` when not given."""
    if not window:
        return None
    if len(window) > 2:
        raise UserError(f"expected --window N or --window H W, got {len(window)} values")
    return (int(window[0]), int(window[-1]))


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment image files with a checkpoint, run folder or exported ONNX model",
        description="Write, per input image, <stem>.png (label values), <stem>_255.png (binary tasks), "
        "<stem>_overlay.png and, with --save-probs, <stem>_probs.npy into --out. Default mode: resize to the "
        "training img_size and resize the probabilities back (as in training); see --native and --window. "
        "A model trained on volumes takes NIfTI volumes (CASE_0000.nii.gz ... or CASE.nii.gz) and writes "
        "CASE.nii.gz label maps with the input's affine, header and shape.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint .pt, run folder (best.pt) or exported .onnx")
    p.add_argument("--input", required=True, nargs="+", help="image file(s), folder(s) or glob pattern(s)")
    p.add_argument("--out", required=True, help="output folder")
    add_inference_arguments(p)
    p.add_argument("--save-probs", action="store_true", help="also write <stem>_probs.npy (K, H, W) float32")
    p.add_argument("--overlay-mode", choices=("contour", "fill"), default="contour", help="overlay drawing")
    p.add_argument("--no-overlay", action="store_true", help="do not write <stem>_overlay.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.distributed import resolve_device
    from ..engine.predict import Segmenter

    window = window_option(args.window)
    segmenter = Segmenter.from_checkpoint(args.ckpt, device=resolve_device(args.device))
    mode_line = segmenter.describe_mode(native=args.native, window=window, tta=args.tta)
    print(f"model: {segmenter}")
    print(f"post-processing: {segmenter.describe_postprocess(not args.no_postprocess)}")
    if segmenter.preprocess.get("volume") is not None:  # trained on volumes: NIfTI in, NIfTI out
        summary = _predict_volumes(segmenter, args, window)
    else:
        print(f"mode: {mode_line}")
        summary = _predict_images(segmenter, args, window)
    print(summary)
    if summary.n_ok == 0 and not summary.failed:
        raise UserError(
            f"expected image files, folders or glob patterns in --input, got none in {args.input}"
        )
    if summary.failed:
        raise UserError(summary.failure_text())
    return 0


def _predict_volumes(segmenter: Any, args: argparse.Namespace, window: Any) -> Any:
    from ..engine.volume_inference import predict_volumes

    refused = [
        flag
        for flag, on in (("--native", args.native), ("--window", window), ("--save-probs", args.save_probs))
        if on
    ]
    if refused:
        raise UserError(
            f"expected none of {', '.join(refused)} for a model trained on volumes (slices are resized as in "
            "training); drop them"
        )
    return predict_volumes(
        segmenter,
        args.input,
        args.out,
        tta=args.tta,
        batch_size=args.batch_size,
        progress=not args.quiet,
        postprocess=not args.no_postprocess,
    )


def _predict_images(segmenter: Any, args: argparse.Namespace, window: Any) -> Any:
    from ..engine.predict import predict_paths

    return predict_paths(
        segmenter,
        args.input,
        args.out,
        tta=args.tta,
        native=args.native,
        window=window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        save_probs=args.save_probs,
        overlay=not args.no_overlay,
        overlay_mode=args.overlay_mode,
        progress=not args.quiet,
        postprocess=not args.no_postprocess,
    )
