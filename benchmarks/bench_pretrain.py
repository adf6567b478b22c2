"""Does ``medurwkv pretrain`` help? Masked-image pretraining vs from scratch with 10 / 25 / 100 % of the labels.

For each dataset (HC18 and Kvasir-SEG, the fixed splits of ``benchmarks/splits``):

* ``pretrain``: the encoder of ``med_urwkv_t`` is pretrained (``medurwkv pretrain``, its defaults unless set
  here) on the images of the training split only, without their labels; no validation or test image is seen.
* ``finetune``: ``med_urwkv_t`` is trained on 10 %, 25 % and 100 % of the training labels, once from the
  pretrained ``encoder.pt`` and once from scratch, with the SAME budget: ``--steps`` optimizer steps of batch
  ``--batch-size`` in every cell, whatever the subset's size (a smaller subset runs more epochs). The subsets are
  whole exams for HC18 (grouped by the split's exam pattern), images for Kvasir-SEG, nested (10 % within 25 %),
  drawn once with ``--seed`` and kept as split files in ``benchmarks/splits`` (same val and test ids as the
  full split). The pretrained runs keep the encoder frozen for the first ~20 % of the epochs, as ``train`` does
  for any pretrained encoder; both use per-image normalisation (the pretraining's). ``--inits
  pretrained_nofreeze`` adds the diagnostic cells that never freeze it.
* ``test``: every cell's best checkpoint (chosen on validation) is scored once on the test split.

Every run is resumable: a finished run is read back (``study.json``), not retrained; an interrupted pretraining
resumes from its ``last.pt``. ``all`` runs the three phases in order. Example (the commands behind
docs/results_pretrain.md):

    MEDURWKV_DATA=../shared/data python benchmarks/bench_pretrain.py all --out runs/pretrain
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import torch

from bench_decoder import SPLITS, fixed_split, score_test, study_fit

DATASETS = ("hc18", "kvasir-seg")
FRACTIONS = (10, 25, 100)
# initialisation of a fine-tuning cell -> (start from the pretrained encoder.pt, freeze it for ~20 % of the epochs)
INITS = {
    "pretrained": (True, True),
    "scratch": (False, False),
    "pretrained_nofreeze": (True, False),  # a diagnostic: is the frozen start what costs?
}


def label_subsets(ids: list[str], group: str | None, percents: list[int], seed: int) -> dict[int, list[str]]:
    """Nested subsets of ``ids`` holding about ``p`` % of them, by whole groups (``group``: a regex whose first
    capture names an id's group, e.g. HC18's exam; None: every id is its own group). The groups are shuffled once
    and taken in that order until the subset holds at least ``p`` % of the ids, so a smaller subset lies
    within every larger one."""
    groups: dict[str, list[str]] = {}
    for i in sorted(ids):
        m = re.match(group, i) if group else None
        groups.setdefault(m.group(1) if m else i, []).append(i)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    subsets = {}
    for p in percents:
        want, chosen = math.ceil(p / 100 * len(ids)), []
        for key in order:
            if len(chosen) >= want:
                break
            chosen += groups[key]
        subsets[p] = sorted(chosen)
    return subsets


def subset_splits(ds: str, percents: list[int], seed: int) -> dict[int, Path]:
    """Split files with p % of the training ids (val and test unchanged): ``splits/<ds>_labels<p>.json``,
    written once, then read (they are frozen like the full split; 100 % is the full split itself)."""
    from medurwkv.data.split import Split, load_split, save_split, split_checksum

    full_file = fixed_split(ds)
    full = load_split(full_file)
    files = {}
    for p, train in label_subsets(full.train, full.group, percents, seed).items():
        if p == 100:
            files[p] = full_file
            continue
        path = SPLITS / f"{ds}_labels{p}.json"
        if not path.exists():
            sub = Split(
                train=train,
                val=full.val,
                test=full.test,
                seed=seed,
                group=full.group,
                fractions={"train_of_full_train": p / 100},
                checksum=split_checksum(train, full.val, full.test),
                created=full.created,
                dataset=ds,
            )
            save_split(sub, path)
        files[p] = path
    return files


def pretrain_images(ds: str, out: Path) -> Path:
    """A flat folder of links to the training split's images (what ``pretrain`` reads; no val/test image)."""
    from medurwkv.data import discover_dataset

    folder = out / ds / "train_images"
    folder.mkdir(parents=True, exist_ok=True)
    index = discover_dataset(Path(os.environ["MEDURWKV_DATA"]) / ds)
    for i in load_ids(ds):
        (src,) = index.image_paths[i]
        link = folder / src.name
        if not link.exists():
            link.symlink_to(src.resolve())
    return folder


def run_pretrain(ds: str, args: argparse.Namespace) -> dict[str, Any]:
    from medurwkv.engine.pretrain import pretrain

    run_dir = Path(args.out) / ds / "pretrain"
    done = run_dir / "study.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    common = dict(progress=False, tensorboard=False, num_workers=1)
    if (run_dir / "last.pt").exists():
        res = pretrain(resume=str(run_dir), **common)
    else:
        res = pretrain(
            data=[str(pretrain_images(ds, Path(args.out)))],
            out=str(run_dir),
            model="med_urwkv_t",
            img_size=args.img_size,
            batch_size=args.batch_size,
            epochs=args.pretrain_epochs,
            max_train_batches=args.pretrain_batches,
            seed=args.seed,
            **common,
        )
    row = {
        "dataset": ds,
        "images": len(load_ids(ds)),
        "epochs": res.epochs_completed,
        "images_seen": res.images_seen,
        "train_min": sum(h["epoch_time_s"] for h in res.history) / 60,
        "wall_min_this_call": (time.perf_counter() - t0) / 60,
        "loss": [h["loss"] for h in res.history],
        "load": os.getloadavg()[0],
    }
    done.write_text(json.dumps(row, indent=2))
    return row


def load_ids(ds: str) -> list[str]:
    """The training ids of the dataset's fixed split."""
    from medurwkv.data.split import load_split

    return load_split(fixed_split(ds)).train


def schedule(n_train: int, steps: int, batch: int) -> dict[str, Any]:
    """Epochs and batches per epoch giving about ``steps`` optimizer steps on ``n_train`` images (at least 5
    epochs, so that freezing ~20 % of them and validating 3 times have a meaning)."""
    per_epoch = math.ceil(n_train / batch)
    epochs = max(5, math.ceil(steps / per_epoch))
    batches = min(per_epoch, math.ceil(steps / epochs))
    return {
        "epochs": epochs,
        "max_train_batches": batches,
        "steps": epochs * batches,
        "freeze_encoder_epochs": max(1, round(0.2 * epochs)),
        "val_every": max(1, round(epochs / 3)),
        "warmup_epochs": 0.1 * epochs,
    }


def run_finetune(ds: str, pct: int, init: str, split_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    from medurwkv.data.split import load_split

    n_train = len(load_split(split_file).train)
    plan = schedule(n_train, args.steps, args.batch_size)
    if not INITS[init][1]:
        plan["freeze_encoder_epochs"] = 0  # (nothing to freeze from scratch: train ignores it anyway)
    encoder = Path(args.out) / ds / "pretrain" / "encoder.pt"
    return study_fit(
        Path(args.out) / ds / f"{init}_{pct}",
        ds,
        split_file,
        {"dataset": ds, "labels_pct": pct, "init": init, "n_train": n_train, **plan},
        model="med_urwkv_t",
        pretrained=str(encoder) if INITS[init][0] else False,
        normalize="per_image",
        img_size=args.img_size,
        batch_size=args.batch_size,
        epochs=plan["epochs"],
        max_train_batches=plan["max_train_batches"],
        freeze_encoder_epochs=plan["freeze_encoder_epochs"],
        val_every=plan["val_every"],
        warmup_epochs=plan["warmup_epochs"],
        dice_weight=1.0,  # the loss of the published rows (train's default became 2 after the recipe study)
        seed=args.seed,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("pretrain", "finetune", "test", "all"))
    p.add_argument("--out", default="runs/pretrain")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--fractions", nargs="+", type=int, default=list(FRACTIONS), help="label percentages")
    p.add_argument("--inits", nargs="+", default=["pretrained", "scratch"], choices=list(INITS))
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument(
        "--pretrain-batches", type=int, default=None, help="cap per pretraining epoch (smoke runs)"
    )
    p.add_argument("--steps", type=int, default=120, help="fine-tune optimizer steps in every cell")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phases = ["pretrain", "finetune", "test"] if args.phase == "all" else [args.phase]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for ds in args.datasets:
        splits = subset_splits(ds, args.fractions, args.seed)
        for phase in phases:
            if phase == "pretrain":
                print(json.dumps(run_pretrain(ds, args)), flush=True)
                continue
            for pct in args.fractions:
                for init in args.inits:
                    cell = out / ds / f"{init}_{pct}"
                    if phase == "finetune":
                        print(json.dumps(run_finetune(ds, pct, init, splits[pct], args)), flush=True)
                    elif not (cell / "study.json").exists():
                        raise SystemExit(f"{cell} is not trained yet: run the finetune phase first")
                    elif not (cell / "test.json").exists():  # scored once
                        (cell / "test.json").write_text(json.dumps(score_test(cell, ds, splits[pct])))
                        print((cell / "test.json").read_text(), flush=True)
    print(f"load average at end: {os.getloadavg()}", flush=True)
    print_table(out, args)


def print_table(out: Path, args: argparse.Namespace) -> None:
    """The Markdown table of every finished cell (test Dice where scored)."""
    print("\n| dataset | labels | images | init | steps | fine-tune min | best val Dice | test Dice | HD95 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ds in args.datasets:
        for pct in args.fractions:
            for init in args.inits:
                cell = out / ds / f"{init}_{pct}"
                if not (cell / "study.json").exists():
                    continue
                r = json.loads((cell / "study.json").read_text())
                t = json.loads((cell / "test.json").read_text()) if (cell / "test.json").exists() else {}
                test = f"{t['test_dice']:.4f}" if t else "–"
                hd = f"{t['test_hd95']:.2f} {t.get('unit') or ''}" if t else "–"
                print(
                    f"| {ds} | {pct} % | {r['n_train']} | {init} | {r['steps']} | {r['train_min']:.1f} | "
                    f"{r['best_val_dice']:.4f} | {test} | {hd} |"
                )
        pre = out / ds / "pretrain" / "study.json"
        if pre.exists():
            r = json.loads(pre.read_text())
            print(
                f"\n{ds} pretraining: {r['images']} images, {r['epochs']} epochs, {r['train_min']:.1f} min, "
                f"loss {r['loss'][0]:.4f} -> {r['loss'][-1]:.4f}"
            )


if __name__ == "__main__":
    main()
