"""HC18 head-to-head: Med-URWKV-T vs the U-Net baseline, same exam-grouped split, size and epoch budget.

Trains both models from scratch (pretrained weights cannot be downloaded on the benchmark machine) with the
same options, evaluates each best checkpoint on the held-out exams at the original 800x540 resolution (HD95 in
mm from HC18's pixel sizes) and prints a Markdown table. Example (the command behind docs/results_hc18.md):

    MEDURWKV_DATA=../shared/data python benchmarks/bench_hc18.py --models med_urwkv_t unet --img-size 128 \
        --epochs 10 --out runs/hc18_128
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="prepared HC18 folder (default $MEDURWKV_DATA/hc18)")
    p.add_argument("--out", default="runs/hc18_bench")
    p.add_argument("--models", nargs="+", default=["unet", "med_urwkv_t"])
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dice-weight",
        type=float,
        default=1.0,
        help="Dice weight of the loss (1.0: the published rows; train's default is 2.0 since the recipe study)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from medurwkv.data.split import HC18_GROUP, ensure_split
    from medurwkv.engine.checkpoint import load_model
    from medurwkv.engine.train import fit
    from medurwkv.utils import tune_malloc

    # as `medurwkv train` does at start-up (rows measured before 2026-12-04 ran with glibc's own thresholds)
    print(f"malloc tuned: {tune_malloc()}", flush=True)

    data = Path(args.data or Path(os.environ["MEDURWKV_DATA"]) / "hc18")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # 70/10/20 by exam, shared by every model.
    split, split_file, _ = ensure_split(
        data, group=HC18_GROUP, val=0.1, test=0.2, seed=args.seed, out=out / "splits.json"
    )
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        res = fit(
            data=str(data),
            out=str(out / name),
            split_file=str(split_file),
            model=name,
            pretrained=False,  # from scratch, as docs/results_hc18.md reports (the default would load a release)
            img_size=args.img_size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            dice_weight=args.dice_weight,
            seed=args.seed,
            progress=False,
        )
        minutes = (time.perf_counter() - t0) / 60
        train_min = sum(h.get("epoch_time_s", 0.0) for h in res.history) / 60
        s = res.eval["test"]
        mean = s["mean"]  # averaged over the foreground classes
        n_params = sum(p.numel() for p in load_model(res.best_checkpoint)[0].parameters())  # not buffers
        rows.append(
            dict(
                model=name,
                params_m=n_params / 1e6,
                dice=mean["per_image_mean"]["dice"],
                dice_std=mean["per_image_std"]["dice"],
                dice_pooled=mean["pooled"]["dice"],
                iou=mean["per_image_mean"]["iou"],
                hd95=mean["per_image_mean"]["hd95"],
                unit=s["distance_unit"],
                best_epoch=res.best_epoch,
                train_min=train_min,
                total_min=minutes,
                val_dice_per_epoch=[h.get("val_dice") for h in res.history],
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(
        f"\nHC18 test split ({len(split.test)} images, {len(split.train)} train / {len(split.val)} val), "
        f"{args.img_size}px, {args.epochs} epochs, batch {args.batch_size}, {args.threads} threads\n"
    )
    print(
        "| model | params (M) | Dice (per-image mean ± std) | Dice (pooled) | IoU | HD95 | best epoch | train time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params_m']:.2f} | {r['dice']:.4f} ± {r['dice_std']:.4f} | {r['dice_pooled']:.4f} "
            f"| {r['iou']:.4f} | {r['hd95']:.2f} {r['unit']} | {r['best_epoch']} | {r['train_min']:.1f} min |"
        )
    # Learning curves: validation Dice (per-image mean, at the training size) after each epoch.
    print("\n| epoch | " + " | ".join(f"{r['model']} val Dice" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for e in range(max(len(r["val_dice_per_epoch"]) for r in rows)):
        cells = [r["val_dice_per_epoch"][e] if e < len(r["val_dice_per_epoch"]) else None for r in rows]
        print(f"| {e + 1} | " + " | ".join("" if c is None else f"{c:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
