"""Decoder and bottleneck design study of Med-URWKV-T, at equal CPU time, on HC18 and Kvasir-SEG.

Every configuration keeps the encoder (the official VRWKV-Adapter-T architecture) and changes only the
bottleneck / decoder through model keywords (``CONFIGS``). Three phases, each resumable (a finished run is
read back, not retrained):

* ``static``: parameters, GFLOPs at 256² and 512² (``torch.utils.flop_counter``: matrix products and
  convolutions; the Bi-WKV scan is not counted), the time of one training step (batch 8, fwd + bwd + AdamW, at
  the study size, in CPU seconds) and inference latency (batch 1) at 256² and 512², all measured in this one process, one
  configuration after the other, so the ratios between them are fair even on a busy machine.
* ``train``: each configuration is trained from scratch on each dataset for the SAME CPU time: the reference
  configuration (``--reference``, the first design) gets ``--budget-min`` minutes worth of steps at its measured
  step time (wall time = CPU time / threads on an idle machine), every other configuration
  ``reference_steps * t_reference / t_config`` steps, t being the CPU time of one step in the static phase. Three validation points per run. Validation only: no test image is seen.
* ``test``: the test split is scored once, for the configurations named by ``--test``.

Example (the commands behind docs/results_decoder.md):

    MEDURWKV_DATA=../shared/data python benchmarks/bench_decoder.py static --out runs/decoder
    MEDURWKV_DATA=../shared/data python benchmarks/bench_decoder.py train --out runs/decoder
    MEDURWKV_DATA=../shared/data python benchmarks/bench_decoder.py test --out runs/decoder --test const halve
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

HALVE = [0.25, 0.5, 1, 2]  # level widths 48 / 96 / 192 / 384 for strides 4 / 8 / 16 / 32 (decoder_dim 192)

# name -> (model, model kwargs, what it tests). Every Med-URWKV row spells out its decoder so that the rows do
# not move when the registered default changes.
CONFIGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "const": (
        "med_urwkv_t",
        dict(decoder_width_mults=[1, 1, 1, 1], decoder_depths=[2, 2, 2], bottleneck_depth=2),
        "the first design: 192 channels at every level, 2 blocks per stage, 2 in the bottleneck",
    ),
    "halve": (
        "med_urwkv_t",
        dict(decoder_width_mults=HALVE, decoder_depths=[2, 2, 2], bottleneck_depth=2),
        "widths halve as the resolution doubles (384 bottleneck -> 48 at stride 4), as Swin-Unet",
    ),
    "halve_ds": (
        "med_urwkv_t",
        dict(decoder_width_mults=HALVE, decoder_depths=[2, 2, 2], bottleneck_depth=2, deep_supervision=True),
        "halve + deep supervision (auxiliary heads at strides 16 and 8, weights 1/2 and 1/4)",
    ),
    "halve_hr1": (
        "med_urwkv_t",
        dict(decoder_width_mults=HALVE, decoder_depths=[2, 2, 1], bottleneck_depth=2),
        "halve with one block instead of two at stride 4",
    ),
    "halve_lite": (
        "med_urwkv_t",
        dict(decoder_width_mults=[0.25, 0.5, 1, 1], decoder_depths=[2, 2, 2], bottleneck_depth=2),
        "halve below stride 16 but a 192-wide bottleneck (lighter: outside the paper's parameter range)",
    ),
    # the models a user would pick instead (scored on Kvasir-SEG with --baselines)
    "unet": ("unet", {}, "the classic 31 M U-Net"),
    "monai_unet": ("monai_unet", {}, "MONAI UNet (32-512 channels, 2 residual units), 6.5 M"),
    "swin_unetr": ("swin_unetr", {}, "MONAI 2D SwinUNETR (feature size 24), 6.3 M"),
}
STUDY = ["const", "halve", "halve_ds", "halve_hr1", "halve_lite"]
BASELINES = ["unet", "monai_unet", "swin_unetr"]
DATASETS = {"hc18": 1, "kvasir-seg": 3}  # name -> image channels


def step_time(
    model_name: str, kw: dict[str, Any], size: int, batch: int, in_ch: int, steps: int = 3
) -> float:
    """CPU seconds (``time.process_time``, all threads) of one training step (fwd, DiceCE, bwd, clip, AdamW) on
    random data: the minimum over ``steps`` after a warm-up step.

    CPU time, not wall time: on a shared 2-core machine another job stretches the wall time of a step but
    hardly the CPU time it consumes, so the ratios between configurations (which set the training budgets)
    stay fair when the machine is busy."""
    from monai.losses import DiceCELoss

    from medurwkv.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, in_channels=in_ch, num_classes=2, **kw).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(batch, in_ch, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.5).long()
    times = []
    for i in range(steps + 1):
        t0 = time.process_time()
        if model.aux_strides:
            out, aux = model(x, aux=True)
            loss = loss_fn(out, y) + sum(0.5 ** (j + 1) * loss_fn(a, y) for j, a in enumerate(aux))
        else:
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i:  # the first step warms up the allocator and the kernels
            times.append(time.process_time() - t0)
    return min(times)


def static_phase(names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from medurwkv.engine.benchmark import measure

    rows: dict[str, Any] = {}
    for name in names:
        model_name, kw, _ = CONFIGS[name]
        row: dict[str, Any] = {"config": name}
        for size in (256, 512):
            m = measure(model_name, size, overrides=dict(kw, in_channels=1), repeats=2, threads=args.threads)
            row["params"] = m["params"]
            row[f"gflops_{size}"] = m["gflops"]
            row[f"latency_{size}_s"] = m["latency_s"]
        for ds, ch in DATASETS.items():
            row[f"step_s_{ds}"] = step_time(model_name, kw, args.img_size, args.batch_size, ch)
        rows[name] = row
        print(json.dumps(row), flush=True)
    return rows


SPLITS = Path(__file__).parent / "splits"
# fit options of every study run: one loader worker, quiet, and no test scoring (the test split is scored
# once, in a study's test phase)
STUDY_FIT = dict(num_workers=1, eval_test=False, progress=False, tensorboard=False)


def fixed_split(ds: str) -> Path:
    """The fixed split every run of the studies (and of docs/results_*.md) uses, kept in the repository:
    exam-grouped for HC18, by image otherwise, 70/10/20 %, seed 0 (made once if missing, then only read)."""
    from medurwkv.data.split import HC18_GROUP, ensure_split

    split_file = SPLITS / f"{ds}.json"
    ensure_split(
        Path(os.environ["MEDURWKV_DATA"]) / ds,
        group=HC18_GROUP if ds == "hc18" else "none",
        val=0.1,
        test=0.2,
        seed=0,
        out=split_file,
    )
    return split_file


def run_one(name: str, ds: str, steps: int, args: argparse.Namespace, split_file: Path) -> dict[str, Any]:
    """Train ``name`` on ``ds`` for ``steps`` optimizer steps (3 epochs of steps / 3), validation only."""
    model_name, kw, _ = CONFIGS[name]
    spe = math.ceil(steps / 3)
    return study_fit(
        Path(args.out) / ds / name,
        ds,
        split_file,
        {"config": name, "dataset": ds, "steps": 3 * spe},
        model=model_name,
        model_kwargs=kw,
        pretrained=False,
        img_size=args.img_size,
        batch_size=args.batch_size,
        epochs=3,
        max_train_batches=spe,
        warmup_epochs=0.3,  # 10 % of the run
        dice_weight=1.0,  # the loss of the published rows (train's default became 2 after the recipe study)
        seed=args.seed,
    )


def study_fit(run_dir: Path, ds: str, split_file: Path, row: dict[str, Any], **fit_kw: Any) -> dict[str, Any]:
    """One run of a study, trained once: ``fit`` on dataset ``ds`` with the fixed ``split_file``, the study's
    options (``STUDY_FIT``) and ``fit_kw``. Returns ``row`` plus what a study keeps of the result (training
    minutes (the epoch times), wall minutes, the validation Dice of the validated epochs, the best one and its
    epoch, the load average), also written to ``run_dir/study.json``; a finished run is read back from it."""
    from medurwkv.engine.train import fit

    done = run_dir / "study.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    res = fit(
        data=str(Path(os.environ["MEDURWKV_DATA"]) / ds),
        out=str(run_dir),
        split_file=str(split_file),
        **fit_kw,
        **STUDY_FIT,
    )
    row = {
        **row,
        "train_min": sum(h.get("epoch_time_s", 0.0) for h in res.history) / 60,
        "wall_min": (time.perf_counter() - t0) / 60,
        "val_dice": [v for h in res.history if (v := h.get("val_dice")) is not None and not math.isnan(v)],
        "best_val_dice": res.best_metric,
        "best_epoch": res.best_epoch,
        "load": os.getloadavg()[0],
    }
    done.write_text(json.dumps(row, indent=2))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("static", "train", "test"))
    p.add_argument("--out", default="runs/decoder")
    p.add_argument(
        "--configs",
        nargs="*",
        default=STUDY,
        choices=list(CONFIGS),
        help="configurations to measure / train / score (none: only the --baselines)",
    )
    p.add_argument(
        "--baselines",
        nargs="*",
        default=None,
        choices=BASELINES,
        help="also the baselines on Kvasir-SEG: the names given, or all of unet / monai_unet / swin_unetr",
    )
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--reference", default="const", help="the configuration whose step time sets the budget")
    p.add_argument("--budget-min", type=float, default=3.0, help="training minutes of the reference config")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test", nargs="+", default=[], help="test phase: configurations to score on test")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    static_file = out / "static.json"
    static = json.loads(static_file.read_text()) if static_file.exists() else {}
    baselines = [] if args.baselines is None else args.baselines or BASELINES
    names = list(dict.fromkeys(args.configs + baselines))
    measured = list(dict.fromkeys(names + [args.reference]))  # the reference's step time sets every budget

    if args.phase == "static":
        todo = [n for n in measured if n not in static]
        static.update(static_phase(todo, args))
        static_file.write_text(json.dumps(static, indent=2))
        print_static(static, args.reference)
        return

    missing = [n for n in measured if n not in static]
    if missing:
        raise SystemExit(f"run the static phase first for {missing} (step times set the budgets)")
    rows = []
    for ds in args.datasets:
        split_file = fixed_split(ds)
        key = f"step_s_{ds}"
        ref_steps = args.budget_min * 60 * args.threads / static[args.reference][key]  # CPU s
        for name in names:
            if ds != "kvasir-seg" and name in BASELINES:
                continue
            if args.phase == "train":
                steps = max(3, round(ref_steps * static[args.reference][key] / static[name][key]))
                rows.append(run_one(name, ds, steps, args, split_file))
                print(json.dumps(rows[-1]), flush=True)
            elif name in args.test:
                rows.append({"config": name, **score_test(out / ds / name, ds, split_file)})
                print(json.dumps(rows[-1]), flush=True)
    (out / f"{args.phase}.json").write_text(json.dumps(rows, indent=2))
    print_rows(rows, static, args.phase)


def score_test(run_dir: Path, ds: str, split_file: Path, split: str = "test") -> dict[str, Any]:
    """Score ``run_dir/best.pt`` on the ``split`` of ``split_file`` at the original resolution (written to
    ``run_dir/eval_<split>``; the keys say ``test_`` whatever the split). The test split is scored once."""
    from medurwkv.engine.evaluation import evaluate

    s = evaluate(
        run_dir / "best.pt",
        Path(os.environ["MEDURWKV_DATA"]) / ds,
        split=split,
        split_file=split_file,
        out_dir=run_dir / f"eval_{split}",
        thumbnails=False,
        report=False,
        progress=False,
        verbose=False,
    )
    mean = s["mean"]
    return {
        "dataset": ds,
        "test_dice": mean["per_image_mean"]["dice"],
        "test_dice_pooled": mean["pooled"]["dice"],
        "test_hd95": mean["per_image_mean"]["hd95"],
        "test_hd95_median": mean.get("per_image_median", {}).get("hd95"),
        "unit": s.get("distance_unit"),
        "n": s.get("n_cases") or s.get("n_images"),
    }


def print_static(static: dict[str, Any], ref: str) -> None:
    r = static[ref]
    print(
        "\n| config | params (M) | GFLOPs 256² | GFLOPs 512² | train step HC18 (× ref) | latency 256² | "
        "latency 512² (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, s in static.items():
        print(
            f"| {name} | {s['params'] / 1e6:.2f} | {s['gflops_256']:.2f} | {s['gflops_512']:.2f} | "
            f"{s['step_s_hc18']:.2f} CPU s ({s['step_s_hc18'] / r['step_s_hc18']:.2f}) | "
            f"{1e3 * s['latency_256_s']:.0f} | {1e3 * s['latency_512_s']:.0f} |"
        )


def print_rows(rows: list[dict[str, Any]], static: dict[str, Any], phase: str) -> None:
    print()
    if phase == "train":
        print("| dataset | config | steps | train min | val Dice after epoch 1 / 2 / 3 | best |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            curve = " / ".join(f"{v:.4f}" for v in r["val_dice"])
            print(
                f"| {r['dataset']} | {r['config']} | {r['steps']} | {r['train_min']:.1f} | {curve} | "
                f"{r['best_val_dice']:.4f} |"
            )
    else:
        print("| dataset | config | test Dice (per image) | pooled | HD95 mean | HD95 median |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            med = r["test_hd95_median"]
            print(
                f"| {r['dataset']} | {r['config']} | {r['test_dice']:.4f} | {r['test_dice_pooled']:.4f} | "
                f"{r['test_hd95']:.2f} | {'' if med is None else f'{med:.2f}'} {r['unit'] or ''} |"
            )


if __name__ == "__main__":
    main()
