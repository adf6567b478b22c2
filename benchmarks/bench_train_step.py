"""Training-step time and peak memory of segmentation models, as ratios to a baseline measured in the same run.

Full measurement (full-size models, 256² batch 8, 2 threads; minutes per model on a 2-core CPU)::

    python benchmarks/bench_train_step.py --models monai_unet med_urwkv_t --baseline monai_unet \\
        --config const='{"model": "med_urwkv_t", "kwargs": {"decoder_width_mults": [1, 1, 1, 1]}}' \\
        --threads 2 --json bench_train_step.json

Smoke test (tiny configs of ``medurwkv.models.QUICK_OVERRIDES``, seconds)::

    python benchmarks/bench_train_step.py --quick --models unet med_urwkv_t --baseline unet --threads 1

Every model (or ``--config NAME=JSON`` variant) runs in a FRESH subprocess (this script with a hidden
``--worker`` argument), so the peak resident memory it reports (``ru_maxrss``) is that model's alone. The worker
builds the model with ``create_model(name, in_channels=C, num_classes=K, **kwargs)``, trains it like
``medurwkv.engine.train_loop`` does (the model's AdamW parameter groups, lr 3e-4, weight decay 1e-4, MONAI
``DiceCELoss(to_onehot_y=True, softmax=True)``, gradient norm clipped to 1.0) on one random batch: warm-up steps,
then timed full steps (zero_grad, forward, loss, backward, clip, optimizer step). It then measures eval-mode
inference latency (batch 1, ``torch.inference_mode``) at ``--latency-sizes``. Each worker first raises glibc's
malloc thresholds as the ``medurwkv`` command does (``medurwkv.utils.tune_malloc``; ``--malloc default`` keeps
glibc's own, under which large buffers are page-faulted anew on every forward). The parent prints a Markdown table
with the ratios to ``--baseline`` and PASS/FAIL against the targets (exit code 1 on a FAIL only with
``--strict``; a model whose worker failed is an error row and gives exit code 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_TARGETS = {"max_step_ratio": 4.0, "max_rss_ratio": 2.5, "max_latency_growth": 4.2}


# ---------------------------------------------------------------------------------------------- worker side


def _maxrss_gb() -> float:
    """Peak resident memory of this process so far, in GB (2**30 bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Measure one model in this process (called in a fresh subprocess); returns the result row."""
    import torch
    from monai.losses import DiceCELoss

    from medurwkv.models import create_model
    from medurwkv.utils import tune_malloc

    # As the medurwkv command does at start-up (utils/malloc.py), unless --malloc default.
    malloc_tuned = tune_malloc() if job["malloc"] == "tuned" else False
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    # Memory of the interpreter + torch + MONAI + medurwkv alone, so a reader can tell it from the model's part.
    import_rss = _maxrss_gb()
    c, k, b, s = job["in_channels"], job["num_classes"], job["batch_size"], job["img_size"]
    model = create_model(job["model"], in_channels=c, num_classes=k, **job["kwargs"])
    params = sum(p.numel() for p in model.parameters())
    # As build_trainer: every parameter trains (nothing pretrained here), AdamW over the model's own groups so
    # that no-decay tensors are treated as in real training.
    model.freeze_encoder(False)
    model.train()
    lr, wd = 3e-4, 1e-4
    optimizer = torch.optim.AdamW(model.param_groups(lr, weight_decay=wd), lr=lr, weight_decay=wd)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    # One fixed batch: the step time is the model's, not the data pipeline's.
    x = torch.randn(b, c, s, s)
    y = torch.randint(0, k, (b, 1, s, s))
    # Deep supervision (models with auxiliary heads) adds heads and losses to every step, as in the trainer.
    aux_on = bool(getattr(model, "aux_strides", ()))

    def step() -> float:
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        if aux_on:
            logits, aux = model(x, aux=True)
            loss = loss_fn(logits, y)
            # the trainer's weights: 1/2, 1/4, ... for the auxiliary heads, normalised to sum 1
            w = [0.5 ** (i + 1) for i in range(len(aux))]
            loss = (loss + sum(wi * loss_fn(a, y) for wi, a in zip(w, aux))) / (1 + sum(w))
        else:
            loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        # .item() would sync an asynchronous device; on the CPU the step is done here, so it costs nothing
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"{job['label']}: loss became {loss.item()}")
        return time.perf_counter() - t0

    for _ in range(job["warmup"]):
        step()
    times = [step() for _ in range(job["steps"])]
    # Read before the latency runs: the training peak (weights, AdamW state, activations, gradients) alone.
    peak_rss = _maxrss_gb()
    optimizer.zero_grad(set_to_none=True)  # the gradients are not needed for inference

    model.eval()
    latency: dict[str, float] = {}
    with torch.inference_mode():
        for size in job["latency_sizes"]:
            xi = torch.randn(1, c, size, size)
            model(xi)  # warm-up: allocator and kernel selection for this size
            runs = []
            for _ in range(job["latency_repeats"]):
                t0 = time.perf_counter()
                model(xi)
                runs.append(time.perf_counter() - t0)
            latency[str(size)] = statistics.median(runs)
    lo, hi = str(min(job["latency_sizes"])), str(max(job["latency_sizes"]))
    med = statistics.median(times)
    return {
        "label": job["label"],
        "model": job["model"],
        "kwargs": job["kwargs"],
        "params": params,
        "step_median_s": med,
        "step_min_s": min(times),
        "step_times_s": times,
        "img_per_s": b / med,
        "peak_rss_gb": peak_rss,
        "import_rss_gb": import_rss,
        "peak_rss_with_latency_gb": _maxrss_gb(),
        "latency_s": latency,
        "latency_growth": latency[hi] / latency[lo] if lo != hi else None,
        "threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------------------------------------- parent side


def parse_config(text: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME=JSON`` with ``{"model": str, "kwargs": {...}}`` -> ``(name, model, kwargs)``."""
    name, sep, spec = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected NAME=JSON, got {text!r}")
    try:
        d = json.loads(spec)
    except json.JSONDecodeError as e:
        raise ValueError(f"expected JSON after {name}=, got {spec!r} ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("model"), str):
        raise ValueError(f'expected {{"model": NAME, "kwargs": {{...}}}} for {name}, got {spec!r}')
    kwargs = d.get("kwargs", {})
    if not isinstance(kwargs, dict) or set(d) - {"model", "kwargs"}:
        raise ValueError(f'expected only "model" and a "kwargs" object for {name}, got {spec!r}')
    return name, d["model"], kwargs


def _run_isolated(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """:func:`run_worker` in a fresh interpreter; a crash, OOM kill or timeout becomes an error row."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    # the workers' warnings would only bury the error line we keep from stderr
    env = {**os.environ, "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore")}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        return {"label": job["label"], "model": job["model"], "error": f"timeout after {timeout:g} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit code {out.returncode}"]
        return {"label": job["label"], "model": job["model"], "error": tail[0][:300]}
    return json.loads(lines[-1])


def add_ratios(rows: list[dict[str, Any]], baseline: str, targets: dict[str, float | None]) -> None:
    """Ratios to the baseline row and the target verdict, in place (``step_ratio``, ``rss_ratio``, ``verdict``)."""
    base = next((r for r in rows if r["label"] == baseline and "error" not in r), None)
    for r in rows:
        if "error" in r:
            r["verdict"] = "ERROR"
            continue
        if base is None:
            r["step_ratio"] = r["rss_ratio"] = None
            r["verdict"] = "no baseline"
            continue
        r["step_ratio"] = r["step_median_s"] / base["step_median_s"]
        r["rss_ratio"] = r["peak_rss_gb"] / base["peak_rss_gb"]
        fails = []
        checks = (
            ("step", r["step_ratio"], targets["max_step_ratio"]),
            ("RSS", r["rss_ratio"], targets["max_rss_ratio"]),
            ("growth", r["latency_growth"], targets["max_latency_growth"]),
        )
        for what, val, limit in checks:
            if limit is not None and val is not None and val > limit:
                fails.append(f"{what} {val:.2f} > {limit:g}")
        r["verdict"] = "FAIL (" + "; ".join(fails) + ")" if fails else "PASS"


def format_table(rows: list[dict[str, Any]], latency_sizes: list[int], baseline: str) -> str:
    """The Markdown table of the parent (one row per model/config, ratios to ``baseline``)."""
    lo, hi = min(latency_sizes), max(latency_sizes)
    lat_cols = " | ".join(f"latency {s}² (ms)" for s in latency_sizes)
    growth = f"growth {hi}/{lo}" if hi != lo else "growth (needs 2 sizes)"
    head = (
        f"| model/config | params (M) | step s (median) | step s (min) | step x {baseline} | img/s "
        f"| peak RSS (GB) | RSS x {baseline} | {lat_cols} | {growth} | targets |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    ncols = head.count("|") - 1
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | " + " | ".join([""] * (ncols - 2)) + f" | ERROR: {r['error']} |")
            continue

        def ratio(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        lat = " | ".join(f"{r['latency_s'][str(s)] * 1e3:.1f}" for s in latency_sizes)
        lines.append(
            f"| {r['label']} | {r['params'] / 1e6:.3f} | {r['step_median_s']:.3g} | {r['step_min_s']:.3g} "
            f"| {ratio(r['step_ratio'])} | {r['img_per_s']:.2f} | {r['peak_rss_gb']:.2f} "
            f"| {ratio(r['rss_ratio'])} | {lat} | {ratio(r['latency_growth'])} | {r['verdict']} |"
        )
    return "\n".join(lines)


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # not available on every platform
        return "n/a"


def _build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--models",
        nargs="*",
        default=None,
        help="registered model names (default: med_urwkv_t; none: only the --config entries)",
    )
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='a model variant, e.g. const=\'{"model": "med_urwkv_t", "kwargs": {"decoder_width_mults": [1, 1, 1, 1]}}\'',
    )
    ap.add_argument(
        "--baseline", default="monai_unet", help="model or config the ratios refer to (added if absent)"
    )
    ap.add_argument("--in-channels", type=int, default=1, help="C (default 1, as HC18)")
    ap.add_argument("--num-classes", type=int, default=2, help="K (default 2, as HC18)")
    ap.add_argument("--img-size", type=int, default=None, help="training crop side (default 256; quick 64)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 8 (quick 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; quick 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 5; quick 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker")
    ap.add_argument(
        "--latency-sizes",
        nargs="+",
        type=int,
        default=None,
        help="inference sides (default 512 1024; quick 64 128)",
    )
    ap.add_argument("--latency-repeats", type=int, default=None, help="median of N runs (default 3; quick 2)")
    ap.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned: every worker raises glibc's malloc thresholds as the medurwkv command does "
        "(medurwkv.utils.tune_malloc); default: glibc's own (default tuned)",
    )
    for key, val in DEFAULT_TARGETS.items():
        ap.add_argument(
            "--" + key.replace("_", "-"),
            type=float,
            default=val,
            help=f"target (default {val}; <= 0 disables)",
        )
    ap.add_argument("--strict", action="store_true", help="exit code 1 when a target FAILs")
    ap.add_argument(
        "--quick", action="store_true", help="tiny sizes and QUICK_OVERRIDES configs (smoke test)"
    )
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per model worker")
    ap.add_argument("--json", default=None, help="write the raw rows to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one model, JSON job
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _build_parser()
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0

    from medurwkv.models import QUICK_OVERRIDES, list_models

    q = args.quick

    def pick(given: Any, quick: Any, full: Any) -> Any:  # an explicit option wins over both modes' defaults
        return given if given is not None else quick if q else full

    img = pick(args.img_size, 64, 256)
    batch = pick(args.batch_size, 2, 8)
    warmup = pick(args.warmup, 1, 2)
    steps = pick(args.steps, 1, 5)
    lat_sizes = pick(args.latency_sizes, [64, 128], [512, 1024])
    lat_rep = pick(args.latency_repeats, 2, 3)
    targets = {k: (v if (v := getattr(args, k)) > 0 else None) for k in DEFAULT_TARGETS}

    entries: list[tuple[str, str, dict[str, Any]]] = [
        (m, m, {}) for m in (["med_urwkv_t"] if args.models is None else args.models)
    ]
    try:
        entries += [parse_config(c) for c in args.config]
    except ValueError as e:
        ap.error(str(e))
    if args.baseline not in {label for label, _, _ in entries}:
        entries.insert(0, (args.baseline, args.baseline, {}))
    labels = [label for label, _, _ in entries]
    if len(set(labels)) != len(labels):
        ap.error(f"expected distinct model/config names, got {labels}")
    unknown = sorted({m for _, m, _ in entries} - set(list_models()))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; the registered ones: {', '.join(list_models())}")
    if min(img, batch, steps, args.threads, lat_rep, *lat_sizes) < 1 or warmup < 0:
        ap.error("expected sizes, batch, steps, threads and repeats >= 1 and warmup >= 0")

    print(
        f"# torch threads={args.threads}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"train {img}² batch {batch}, {warmup} warm-up + {steps} timed steps; latency at {lat_sizes} "
        f"(median of {lat_rep}); malloc {args.malloc}; quick={q}",
        flush=True,
    )
    load_start = _loadavg()
    print(f"# load average (1/5/15 min) at start: {load_start}", flush=True)
    rows = []
    for label, model, kwargs in entries:
        # user kwargs win over the tiny config, so a variant's keyword is also exercised in quick mode
        kw = {**QUICK_OVERRIDES.get(model, {}), **kwargs} if q else kwargs
        job = {
            "label": label,
            "model": model,
            "kwargs": kw,
            "in_channels": args.in_channels,
            "num_classes": args.num_classes,
            "img_size": img,
            "batch_size": batch,
            "warmup": warmup,
            "steps": steps,
            "threads": args.threads,
            "latency_sizes": lat_sizes,
            "latency_repeats": lat_rep,
            "malloc": args.malloc,
        }
        t0 = time.perf_counter()
        r = _run_isolated(job, args.timeout)
        rows.append(r)
        if "error" in r:
            print(f"{label}: ERROR {r['error']}", flush=True)
        else:
            print(
                f"{label}: step {r['step_median_s']:.3f} s (min {r['step_min_s']:.3f}), peak RSS "
                f"{r['peak_rss_gb']:.2f} GB (imports {r['import_rss_gb']:.2f}), worker {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    load_end = _loadavg()
    add_ratios(rows, args.baseline, targets)
    print()
    print(format_table(rows, lat_sizes, args.baseline))
    print()
    limits = ", ".join(f"{k} {v:g}" for k, v in targets.items() if v is not None) or "none"
    print(f"targets: {limits}" + (" (quick mode: tiny configs, the verdicts mean nothing)" if q else ""))
    print(f"# load average (1/5/15 min) at end: {load_end}", flush=True)
    if args.json:
        meta = {
            "argv": sys.argv[1:] if argv is None else argv,
            "img_size": img,
            "batch_size": batch,
            "warmup": warmup,
            "steps": steps,
            "threads": args.threads,
            "latency_sizes": lat_sizes,
            "latency_repeats": lat_rep,
            "malloc": args.malloc,
            "baseline": args.baseline,
            "targets": targets,
            "quick": q,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    if any("error" in r for r in rows):
        return 1
    return 1 if args.strict and any(r["verdict"] != "PASS" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
