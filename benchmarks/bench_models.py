"""Model benchmark: parameters, GFLOPs, CPU latency and peak memory of every segmentation model.

Full study (run once; takes a while on a shared 2-core CPU)::

    python benchmarks/bench_models.py --threads 2 --json bench_models.json

Smoke test (tiny configs, seconds)::

    python benchmarks/bench_models.py --quick

Each (model, size) runs in a fresh subprocess (its own peak RSS); latency is the best of several runs. The
targets are then also judged from an interleaved unet / med_urwkv_t comparison (same process, alternating
models, so both see the same load on a shared CPU). Sizes 256, 512, 1024 and 2048 px (2048 only
where the memory extrapolated from 1024 px stays below --max-mem-gb). Prints markdown tables with the throughput
ratio to ``unet`` and the growth ratio latency(1024²)/latency(512²), and checks the targets:
``med_urwkv_t`` >= 1.5x the throughput of ``unet`` at 512², growth ratio <= 4.4.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from medurwkv.engine.benchmark import BENCH_MODELS, benchmark_models, format_benchmark

TARGET_SPEEDUP_512 = 1.5
TARGET_GROWTH = 4.4


def paired_latencies(
    models: tuple[str, ...] = ("unet", "med_urwkv_t"),
    sizes: tuple[int, ...] = (512, 1024),
    rounds: int = 3,
    threads: int | None = None,
) -> dict[tuple[str, int], float]:
    """Best-of-``rounds`` latency of each (model, size), the models *interleaved* in one process.

    On a shared CPU the load changes over minutes; alternating models and sizes inside each round exposes them to
    the same load, so the ratios are far more stable than those of measurements taken minutes apart.
    """
    from medurwkv import create_model

    if threads:
        torch.set_num_threads(threads)
    nets = {m: create_model(m).eval() for m in models}
    inputs = {size: torch.randn(1, 3, size, size) for size in sizes}
    best: dict[tuple[str, int], float] = {}
    with torch.inference_mode():
        for x in inputs.values():  # warm-up
            for net in nets.values():
                net(x)
        # Sizes and models both alternate inside every round, so the throughput ratio and the growth ratio
        # are each formed from measurements taken under the same load.
        for r in range(rounds):
            for size, x in inputs.items():
                for m, net in nets.items():
                    t0 = time.perf_counter()
                    net(x)
                    dt = time.perf_counter() - t0
                    best[(m, size)] = min(dt, best.get((m, size), float("inf")))
            print(
                f"paired round {r + 1}: " + ", ".join(f"{m} {s}: {t:.3f} s" for (m, s), t in best.items()),
                flush=True,
            )
    return best


def check_targets(
    rows: list[dict] | dict[tuple[str, int], float], model: str = "med_urwkv_t", reference: str = "unet"
) -> list[str]:
    """Human-readable verdicts for the two targets (from benchmark rows or a paired latency dict)."""
    if isinstance(rows, dict):
        lat = dict(rows)
    else:
        lat = {(r["model"], r["size"]): r["latency_s"] for r in rows if "latency_s" in r}
    out = []
    if (model, 512) in lat and (reference, 512) in lat:
        s = lat[(reference, 512)] / lat[(model, 512)]
        verdict = "met" if s >= TARGET_SPEEDUP_512 else "MISSED"
        out.append(
            f"{model} throughput at 512² = {s:.2f}x {reference} (target >= {TARGET_SPEEDUP_512}): {verdict}"
        )
    if (model, 512) in lat and (model, 1024) in lat:
        g = lat[(model, 1024)] / lat[(model, 512)]
        verdict = "met" if g <= TARGET_GROWTH else "MISSED"
        out.append(
            f"{model} growth latency(1024²)/latency(512²) = {g:.2f} (target <= {TARGET_GROWTH}): {verdict}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(BENCH_MODELS))
    ap.add_argument(
        "--sizes", nargs="+", type=int, default=None, help="default 256 512 1024 2048 (quick: 64 128)"
    )
    ap.add_argument("--quick", action="store_true", help="tiny configs, 64/128 px, in-process")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs (default 5, 3 at 1024, 1 above)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--max-mem-gb", type=float, default=16.0)
    ap.add_argument("--json", default=None, help="write raw rows to this file")
    ap.add_argument(
        "--paired-rounds",
        type=int,
        default=3,
        help="rounds of the interleaved unet / med_urwkv_t comparison at 512 and 1024 px used for the targets "
        "(0: judge the targets from the main table)",
    )
    args = ap.parse_args(argv)
    sizes = args.sizes or ([64, 128] if args.quick else [256, 512, 1024, 2048])
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads={args.threads or torch.get_num_threads()}, quick={args.quick}",
        flush=True,
    )
    rows = benchmark_models(
        args.models,
        sizes,
        quick=args.quick,
        repeats=args.repeats,
        threads=args.threads,
        max_mem_gb=args.max_mem_gb,
        log=lambda s: print(s, flush=True),
    )
    print()
    print(format_benchmark(rows))
    paired = {}
    if not args.quick:
        print()
        print("targets from the main table:")
        for line in check_targets(rows):
            print("  " + line)
        if args.paired_rounds > 0:
            paired = paired_latencies(rounds=args.paired_rounds, threads=args.threads)
            print(f"targets from the interleaved comparison (best of {args.paired_rounds} rounds):")
            for line in check_targets(paired):
                print("  " + line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "paired": [[m, s, t] for (m, s), t in paired.items()]}, f, indent=2)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
