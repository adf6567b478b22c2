"""Training-recipe study of the default ``med_urwkv_t``, from scratch, at equal CPU time, on HC18 and Kvasir-SEG.

Each recipe changes one thing of a base recipe (``BASE``: the recipe of ``bench_decoder.py``'s study) through
the options of ``medurwkv.engine.fit`` (``RECIPES``): learning rate, warm-up, batch size, image size, loss
weights, augmentation strength and deep supervision. Two phases, each resumable (a finished run is read back):

* ``train``: first the CPU time of one training step (``bench_decoder.step_time``: fwd, DiceCE, bwd, clip,
  AdamW, in CPU seconds) for every distinct (image size, batch, deep supervision) of the recipes, all measured
  in this one process, one after the other (kept in ``static.json``). Then every recipe trains on every
  dataset for the SAME CPU time, ``--budget-cpu-s`` (360 CPU-s = 3 minutes on 2 idle cores): ``budget /
  step_time`` steps in 3 epochs, one validation after each. The best checkpoint (on the training-size
  validation Dice) is then scored on the validation split at the ORIGINAL resolution, which is what the
  choice reads, since recipes of different image sizes cannot be compared at their own sizes. No test image is
  seen.
* ``test``: the recipes named by ``--test`` are scored once on the test split.

Example (the commands behind docs/results_recipe.md):

    MEDURWKV_DATA=../shared/data python benchmarks/bench_recipe.py train --out runs/recipe
    MEDURWKV_DATA=../shared/data python benchmarks/bench_recipe.py test --out runs/recipe --test base lr1e-3
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from bench_decoder import DATASETS, fixed_split, score_test, step_time, study_fit

# The base recipe (that of the decoder study) and one change per recipe. warmup_epochs is in epochs of the
# 3-epoch run: 0.3 is 10 % of the steps.
BASE: dict[str, Any] = dict(
    lr=3e-4,
    warmup_epochs=0.3,
    batch_size=8,
    img_size=128,
    dice_weight=1.0,
    ce_weight=1.0,
    augment_strength=1.0,
    model_kwargs={},
)
RECIPES: dict[str, tuple[dict[str, Any], str]] = {
    "base": (
        {},
        "lr 3e-4, warm-up 10 %, batch 8, 128², Dice 1 + CE 1, augmentation 1.0, no deep supervision",
    ),
    "lr1e-3": ({"lr": 1e-3}, "a 3.3x larger learning rate"),
    "warmup30": ({"warmup_epochs": 0.9}, "warm-up over 30 % of the steps instead of 10 %"),
    "batch16": ({"batch_size": 16}, "batch 16 (about half the steps for the same CPU time)"),
    "size192": ({"img_size": 192}, "192² inputs (about 2.3x the cost of a step)"),
    "dice2": ({"dice_weight": 2.0}, "loss = 2 Dice + 1 CE"),
    "aug0.5": ({"augment_strength": 0.5}, "half-strength augmentation"),
    "ds": ({"model_kwargs": {"deep_supervision": True}}, "deep supervision (heads at strides 16 and 8)"),
}


def recipe(name: str) -> dict[str, Any]:
    return {**BASE, **RECIPES[name][0]}


def cost_key(r: dict[str, Any], ds: str) -> str:
    """What the CPU time of a step depends on: image size, batch, the auxiliary heads and the channels."""
    return f"{ds}_{r['img_size']}_b{r['batch_size']}_ds{int(bool(r['model_kwargs'].get('deep_supervision')))}"


def measure_costs(names: list[str], datasets: list[str], static: dict[str, float]) -> None:
    """Step CPU seconds of every cost key not yet in ``static`` (in place), one after the other."""
    for ds in datasets:
        for name in names:
            r = recipe(name)
            key = cost_key(r, ds)
            if key not in static:
                static[key] = step_time(
                    "med_urwkv_t", r["model_kwargs"], r["img_size"], r["batch_size"], DATASETS[ds]
                )
                print(json.dumps({"cost": key, "step_cpu_s": static[key]}), flush=True)


def run_one(name: str, ds: str, steps: int, args: argparse.Namespace, split_file: Path) -> dict[str, Any]:
    """Train recipe ``name`` on ``ds`` for ``steps`` optimizer steps (3 epochs), then score its best checkpoint
    on the validation split at the original resolution (once: added to ``study.json``)."""
    run_dir = Path(args.out) / ds / name
    spe = math.ceil(steps / 3)
    row = study_fit(
        run_dir,
        ds,
        split_file,
        {"recipe": name, "dataset": ds, "steps": 3 * spe},
        model="med_urwkv_t",
        pretrained=False,
        epochs=3,
        max_train_batches=spe,
        seed=args.seed,
        **recipe(name),
    )
    if "val_dice_orig" not in row:
        val = score_test(run_dir, ds, split_file, split="val")
        row.update(val_dice_orig=val["test_dice"], val_hd95_orig=val["test_hd95"])
        (run_dir / "study.json").write_text(json.dumps(row, indent=2))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("train", "test"))
    p.add_argument("--out", default="runs/recipe")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--budget-cpu-s", type=float, default=360.0, help="CPU seconds of training per run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test", nargs="+", default=[], help="test phase: recipes to score on the test split")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    static_file = out / "static.json"
    static = json.loads(static_file.read_text()) if static_file.exists() else {}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if args.phase == "train":
        measure_costs(args.recipes, args.datasets, static)
        static_file.write_text(json.dumps(static, indent=2))
    for ds in args.datasets:
        split_file = fixed_split(ds)
        for name in args.recipes:
            cell = out / ds / name
            if args.phase == "train":
                steps = max(3, round(args.budget_cpu_s / static[cost_key(recipe(name), ds)]))
                print(json.dumps(run_one(name, ds, steps, args, split_file)), flush=True)
            elif name in args.test and not (cell / "test.json").exists():  # scored once
                if not (cell / "study.json").exists():
                    raise SystemExit(f"{cell} is not trained yet: run the train phase first")
                (cell / "test.json").write_text(json.dumps(score_test(cell, ds, split_file)))
                print((cell / "test.json").read_text(), flush=True)
    print(f"load average at end: {os.getloadavg()}", flush=True)
    print_table(out, args, static)


def print_table(out: Path, args: argparse.Namespace, static: dict[str, float]) -> None:
    """The Markdown table of every finished run (test Dice where scored)."""
    print(
        "\n| dataset | recipe | step (CPU s) | steps | val Dice 1/3, 2/3, 3/3 (train size) | val Dice (orig.) "
        "| val HD95 | test Dice | test HD95 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for ds in args.datasets:
        for name in args.recipes:
            cell = out / ds / name
            if not (cell / "study.json").exists():
                continue
            r = json.loads((cell / "study.json").read_text())
            t = json.loads((cell / "test.json").read_text()) if (cell / "test.json").exists() else {}
            curve = " / ".join(f"{v:.4f}" for v in r["val_dice"])
            test = f"{t['test_dice']:.4f} | {t['test_hd95']:.2f}" if t else "– | –"
            print(
                f"| {ds} | {name} | {static[cost_key(recipe(name), ds)]:.2f} | {r['steps']} | {curve} | "
                f"{r['val_dice_orig']:.4f} | {r['val_hd95_orig']:.2f} | {test} |"
            )


if __name__ == "__main__":
    main()
