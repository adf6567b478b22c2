"""MSD Hippocampus (3D MR volumes, 2 structures): Med-URWKV-T vs the U-Net, 2D slices, same split and budget.

Both models are trained from scratch on axial-index slices (array axis 2) of the training cases with the same
options and the same number of optimiser steps (``--epochs`` x ``--steps``, batch ``--batch-size``), then each
best checkpoint segments the held-out test volumes slice by slice and is scored **per volume in 3D** (Dice,
HD95 in mm from the NIfTI spacing; mean over cases per class, then over classes). The case split (70/10/20,
seed 0) is saved in the output folder and shared by every model. Prints a Markdown table of per-class test
Dice and HD95, parameters and training time (with the ratio to the first model, measured in this run). The
command behind docs/results_hippocampus.md:

    MEDURWKV_DATA=../shared/data python benchmarks/bench_hippocampus.py --out runs/hippocampus
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
    p.add_argument("--data", default=None, help="MSD Task04 folder (default $MEDURWKV_DATA/msd-hippocampus)")
    p.add_argument("--out", default="runs/hippocampus")
    p.add_argument("--models", nargs="+", default=["med_urwkv_t", "unet"])
    p.add_argument("--img-size", type=int, default=64, help="slices (about 35x50 voxels) are resized to this")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--steps", type=int, default=60, help="optimiser steps per epoch (max_train_batches)")
    p.add_argument("--val-batches", type=int, default=20, help="validation batches per epoch (picks best.pt)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from medurwkv.data.split import ensure_split
    from medurwkv.engine.train import fit

    data = Path(args.data or Path(os.environ["MEDURWKV_DATA"]) / "msd-hippocampus")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split, split_file, _ = ensure_split(data, val=0.1, test=0.2, seed=args.seed, out=out / "splits.json")
    print(f"split {split_file}: {split.describe()}", flush=True)
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        # an interrupted run continues; a finished one is only evaluated
        if (out / name / "last.pt").is_file():
            print(f"{name}: resuming {out / name}", flush=True)
            res = fit(resume=str(out / name), progress=False, tensorboard=False)
        else:
            res = fit(
                data=str(data),
                out=str(out / name),
                split_file=str(split_file),
                model=name,
                pretrained=False,  # from scratch, as docs/results_hippocampus.md reports
                img_size=args.img_size,
                epochs=args.epochs,
                max_train_batches=args.steps,
                max_val_batches=args.val_batches,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                seed=args.seed,
                progress=False,
                tensorboard=False,
            )
        train_s = sum(r["epoch_time_s"] for r in res.history)
        test = res.eval.get("test")
        if not isinstance(test, dict):
            raise SystemExit(f"{name}: test evaluation failed: {test}")
        n_params = sum(
            v.numel()
            for v in torch.load(res.best_checkpoint, map_location="cpu", weights_only=False)[
                "state_dict"
            ].values()
        )
        rows.append(
            {
                "model": name,
                "params_M": n_params / 1e6,
                "train_s": train_s,
                "total_s": time.perf_counter() - t0,
                "best_epoch": res.best_epoch,
                "best_val_slice_dice": res.best_metric,
                "test": test,
            }
        )
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)

    classes = rows[0]["test"]["evaluated_classes"]
    unit = rows[0]["test"]["distance_unit"]
    head = ["model", "params (M)", "train time (ratio)"]
    head += [f"{c} Dice" for c in classes] + ["mean Dice"] + [f"{c} HD95 ({unit})" for c in classes]
    head += [f"mean HD95 ({unit})", "pooled Dice (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows[0]["train_s"]
    for r in rows:
        t, g = r["test"]["classes"], r["test"]["mean"]

        def ms(d: dict, m: str) -> str:
            return f"{d['mean_over_cases'][m]:.4f} ± {d['std_over_cases'][m]:.4f}"

        cells = [
            r["model"],
            f"{r['params_M']:.2f}",
            f"{r['train_s'] / 60:.1f} min ({r['train_s'] / base:.2f}x)",
        ]
        cells += [ms(t[c], "dice") for c in classes] + [f"{g['mean_over_cases']['dice']:.4f}"]
        cells += [ms(t[c], "hd95") for c in classes] + [f"{g['mean_over_cases']['hd95']:.3f}"]
        cells += [f"{g['pooled']['dice']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    n_test = rows[0]["test"]["n_cases"]
    print(
        f"\nMSD Hippocampus, {n_test} test volumes, {args.epochs} x {args.steps} steps of batch {args.batch_size} at "
        f"{args.img_size}x{args.img_size}, {args.threads} threads:\n{table}"
    )
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    (out / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
