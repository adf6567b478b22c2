"""``medurwkv models`` (list models with parameters and pretrained source) and ``medurwkv benchmark``.

The benchmark core lives here so that the CLI and ``benchmarks/bench_models.py`` share it:
:func:`benchmark_models` measures, for every model, parameters, GFLOPs (``torch.utils.flop_counter``), CPU
inference latency (batch 1, median of repeats) and peak memory at several square sizes, each (model, size) in a
fresh subprocess so that its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

__all__ = [
    "add_parser",
    "model_table",
    "benchmark_models",
    "measure",
    "format_benchmark",
    "BENCH_MODELS",
    "QUICK_OVERRIDES",
]

BENCH_MODELS = ("unet", "med_urwkv_t", "med_urwkv_s", "med_urwkv_t_pure", "med_urwkv_t_dagger")
from .models.tiny import QUICK_OVERRIDES  # noqa: E402  (re-exported until this module moves)

# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------


def model_table(pattern: str | None = None) -> list[dict[str, Any]]:
    """One row per registered model: name, parameters (full config), pretrained file, description.

    Parameters are counted on the ``meta`` device, so listing large models costs no memory.
    """
    import torch

    from .models import create_model, get_model_entry, list_models

    rows = []
    for name in list_models(pattern):
        entry = get_model_entry(name)
        try:
            with torch.device("meta"):
                n = sum(p.numel() for p in create_model(name).parameters())
        except Exception as e:  # noqa: BLE001 - a model that cannot be built still gets listed
            n = None
            err = f"{type(e).__name__}: {e}"
        else:
            err = ""
        pre = entry.pretrained
        rows.append(
            {
                "name": name,
                "params": n,
                "pretrained": pre.file if pre else None,
                "wkv_constants": f"{pre.wkv_token_split}/{pre.wkv_eps:g}" if pre else None,
                "description": entry.description or err,
            }
        )
    return rows


def _run_models(args: argparse.Namespace) -> int:
    rows = model_table(args.pattern)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print(f"{'name':<22} {'params':>9}  {'pretrained source':<50} {'wkv':<9} description")
    for r in rows:
        p = f"{r['params'] / 1e6:.2f}M" if r["params"] is not None else "?"
        print(
            f"{r['name']:<22} {p:>9}  {r['pretrained'] or '-':<50} {r['wkv_constants'] or '-':<9} {r['description']}"
        )
    return 0


# ---------------------------------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------------------------------


def _rss_gb(field: str) -> float:
    """VmHWM (peak) or VmRSS (current) of this process in GB (Linux); ru_maxrss as a fallback."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    import resource  # POSIX only; /proc is Linux only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(
    name: str,
    size: int,
    *,
    overrides: dict[str, Any] | None = None,
    repeats: int = 3,
    threads: int | None = None,
    count_flops: bool = True,
) -> dict[str, Any]:
    """Measure one model at one square size in this process (batch 1, float32, eval, no grad).

    The first forward runs under ``FlopCounterMode`` (GFLOPs; it also warms up), then ``repeats`` timed runs.
    Returns ``{"model", "size", "params", "gflops", "latency_s", "latency_median_s", "latencies_s",
    "peak_rss_gb", "model_rss_gb", "threads"}``. ``latency_s`` is the best (minimum) of the timed runs: on a
    shared CPU other jobs only ever add time, so the minimum is the least contaminated estimate.
    ``peak_rss_gb`` is the process peak (interpreter + torch + weights + activations).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .models import create_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(name, **(overrides or {})).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, int(getattr(model, "in_channels", 3)), size, size)
    model_rss = _rss_gb("VmRSS")
    gflops = None
    with torch.inference_mode():
        if count_flops:
            counter = FlopCounterMode(display=False)
            with counter:
                model(x)
            gflops = counter.get_total_flops() / 1e9
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return {
        "model": name,
        "size": size,
        "params": params,
        "gflops": gflops,
        "latency_s": min(times),
        "latency_median_s": statistics.median(times),
        "latencies_s": times,
        "peak_rss_gb": _rss_gb("VmHWM"),
        "model_rss_gb": model_rss,
        "threads": torch.get_num_threads(),
    }


def _measure_isolated(name: str, size: int, timeout: float | None, **kw: Any) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter (own peak memory; a crash or OOM does not end the run)."""
    job = json.dumps({"name": name, "size": size, **kw})
    cmd = [sys.executable, "-m", "medurwkv.commands", "--bench-worker", job]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"model": name, "size": size, "error": f"timeout after {timeout} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit code {out.returncode}"]
        return {"model": name, "size": size, "error": tail[0][:300]}
    return json.loads(lines[-1])


def benchmark_models(
    models: list[str] | tuple[str, ...] = BENCH_MODELS,
    sizes: list[int] | tuple[int, ...] = (256, 512, 1024, 2048),
    *,
    quick: bool = False,
    repeats: int | None = None,
    threads: int | None = None,
    max_mem_gb: float = 16.0,
    isolate: bool | None = None,
    timeout: float | None = 1800.0,
    log=print,
) -> list[dict[str, Any]]:
    """Benchmark ``models`` at ``sizes``; returns one dict per (model, size) (see :func:`measure`).

    ``quick`` uses the tiny configs of :data:`QUICK_OVERRIDES`, in-process, 3 repeats (smoke test). Otherwise
    every (model, size) runs in its own subprocess; repeats default to 5 below 1024², 3 at 1024², 1 above.
    A size is skipped for a model when its peak memory, extrapolated linearly in pixels from the previous size,
    would exceed ``max_mem_gb`` (row with ``"skipped"``).
    """
    isolate = (not quick) if isolate is None else isolate
    rows: list[dict[str, Any]] = []
    for name in models:
        prev: dict[str, Any] | None = None
        for size in sorted(sizes):
            if prev is not None and "peak_rss_gb" in prev:
                act = max(prev["peak_rss_gb"] - prev["model_rss_gb"], 0.0)
                est = prev["model_rss_gb"] + act * (size / prev["size"]) ** 2
                if est > max_mem_gb:
                    rows.append(
                        {"model": name, "size": size, "skipped": f"estimated {est:.1f} GB > {max_mem_gb} GB"}
                    )
                    log(f"{name} {size}: skipped (estimated {est:.1f} GB)")
                    continue
            reps = (
                repeats
                if repeats is not None
                else (3 if quick else 5 if size < 1024 else 3 if size == 1024 else 1)
            )
            kw = dict(overrides=QUICK_OVERRIDES.get(name) if quick else None, repeats=reps, threads=threads)
            r = _measure_isolated(name, size, timeout, **kw) if isolate else measure(name, size, **kw)
            rows.append(r)
            if "error" in r:
                log(f"{name} {size}: ERROR {r['error']}")
            else:
                log(
                    f"{name} {size}: {r['latency_s']:.3f} s, {r['gflops']:.1f} GFLOPs, "
                    f"peak {r['peak_rss_gb']:.2f} GB"
                )
                prev = r
    return rows


def format_benchmark(rows: list[dict[str, Any]], reference: str = "unet") -> str:
    """Markdown tables: per (model, size) latency/throughput/GFLOPs/memory and ratio to ``reference``;
    then per model the growth ratio latency(1024²)/latency(512²) (or of the two largest measured sizes)."""
    ok = {(r["model"], r["size"]): r for r in rows if "latency_s" in r}
    ref = {s: r["latency_s"] for (m, s), r in ok.items() if m == reference}
    lines = [
        "| model | size | params (M) | GFLOPs | latency best (s) | median (s) | img/s | x unet throughput "
        "| peak RSS (GB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "latency_s" not in r:
            why = r.get("skipped") or r.get("error")
            lines.append(f"| {r['model']} | {r['size']}² | | | {why} | | | | |")
            continue
        ratio = f"{ref[r['size']] / r['latency_s']:.2f}" if r["size"] in ref else "-"
        gf = f"{r['gflops']:.3g}" if r.get("gflops") is not None else "-"
        lines.append(
            f"| {r['model']} | {r['size']}² | {r['params'] / 1e6:.2f} | {gf} | {r['latency_s']:.3f} | "
            f"{r.get('latency_median_s', r['latency_s']):.3f} | "
            f"{1 / r['latency_s']:.2f} | {ratio} | {r['peak_rss_gb']:.2f} |"
        )
    lines += ["", "| model | growth ratio latency | sizes |", "|---|---|---|"]
    for m in dict.fromkeys(r["model"] for r in rows):
        sizes = sorted(s for (mm, s) in ok if mm == m)
        pair = (512, 1024) if {512, 1024} <= set(sizes) else tuple(sizes[-2:]) if len(sizes) >= 2 else None
        if pair:
            g = ok[(m, pair[1])]["latency_s"] / ok[(m, pair[0])]["latency_s"]
            lines.append(f"| {m} | {g:.2f} | {pair[1]}² / {pair[0]}² |")
    return "\n".join(lines)


def _run_benchmark(args: argparse.Namespace) -> int:
    models = args.models or list(BENCH_MODELS)
    sizes = args.sizes or ([64, 128] if args.quick else [256, 512])
    rows = benchmark_models(
        models,
        sizes,
        quick=args.quick,
        repeats=args.repeats,
        threads=args.threads,
        max_mem_gb=args.max_mem_gb,
    )
    print()
    print(format_benchmark(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"\nwrote {args.json}")
    return 1 if any("error" in r for r in rows) else 0


def add_parser(subparsers: Any) -> None:
    """Register ``medurwkv models`` and ``medurwkv benchmark``."""
    p = subparsers.add_parser(
        "models",
        help="list the available models with parameters and pretrained source",
        description="List every registered model (segmentation models and encoders) with its parameter count "
        "(full config), the official release it loads with pretrained=True, and the Bi-WKV kernel constants of "
        "that release (token_split/eps).",
    )
    p.add_argument("pattern", nargs="?", default=None, help="fnmatch filter, e.g. 'med_urwkv*'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run_models)

    b = subparsers.add_parser(
        "benchmark",
        help="measure parameters, GFLOPs, CPU latency and memory of the models",
        description="CPU inference benchmark (batch 1): parameters, GFLOPs, median latency, peak memory and the "
        "throughput ratio to unet. Default: full-size models at 256 and 512 px; --quick runs tiny configs at "
        "64 and 128 px in seconds. The full study (up to 2048 px) is benchmarks/bench_models.py.",
    )
    b.add_argument(
        "--models", nargs="+", default=None, help=f"model names (default: {' '.join(BENCH_MODELS)})"
    )
    b.add_argument("--sizes", nargs="+", type=int, default=None, help="square input sizes in pixels")
    b.add_argument("--quick", action="store_true", help="tiny configs, small sizes, in-process (smoke test)")
    b.add_argument("--repeats", type=int, default=None, help="timed runs per size (median is reported)")
    b.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    b.add_argument("--max-mem-gb", type=float, default=16.0, help="skip sizes estimated to need more memory")
    b.add_argument("--json", default=None, help="also write the raw rows to this JSON file")
    b.set_defaults(func=_run_benchmark)


def _worker_main(argv: list[str]) -> int:
    job = json.loads(argv[argv.index("--bench-worker") + 1])
    name, size = job.pop("name"), job.pop("size")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    print(json.dumps(measure(name, size, **job)))
    return 0


if __name__ == "__main__":  # subprocess worker of benchmark_models
    sys.exit(_worker_main(sys.argv))
