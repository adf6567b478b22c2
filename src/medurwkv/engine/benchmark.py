"""Model benchmark core: parameters, GFLOPs, CPU latency and peak memory of the registered models.

Shared by ``medurwkv models`` / ``medurwkv benchmark`` (:mod:`medurwkv.cli.models`) and
``benchmarks/bench_models.py``. :func:`benchmark_models` measures, for every model, parameters, GFLOPs
(``torch.utils.flop_counter``), CPU inference latency (batch 1, best and median of repeats) and peak memory at
several square sizes, each (model, size) in a fresh subprocess (``python -m medurwkv.engine.benchmark
--bench-worker JSON``) so that its peak resident memory is its own. :func:`model_table` lists the registry.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from ..errors import UserError
from ..models import QUICK_OVERRIDES

__all__ = ["BENCH_MODELS", "benchmark_models", "format_benchmark", "measure", "model_table"]

# The segmentation models of the default benchmark (``medurwkv benchmark`` without --models).
BENCH_MODELS = ("unet", "med_urwkv_t", "med_urwkv_s", "med_urwkv_t_pure", "med_urwkv_t_dagger")


def model_table(pattern: str | None = None) -> list[dict[str, Any]]:
    """One row per registered model: name, parameters (full config), pretrained file, description.

    Parameters are counted on the ``meta`` device, so listing large models costs no memory.
    """
    import torch

    from ..models import create_model, get_model_entry, list_models

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

    from ..models import create_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(name, **(overrides or {})).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, model.in_channels, size, size)
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
    cmd = [sys.executable, "-m", __name__, "--bench-worker", job]
    # warnings of the worker would only clutter the captured stderr, whose last line is an error's message
    env = {**os.environ, "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore")}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        return {"model": name, "size": size, "error": f"timeout after {timeout} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit code {out.returncode}"]
        return {"model": name, "size": size, "error": tail[0][:300]}
    return json.loads(lines[-1])


def _check_benchmark_args(
    models: list[str] | tuple[str, ...],
    sizes: list[int] | tuple[int, ...],
    repeats: int | None,
    threads: int | None,
    max_mem_gb: float,
) -> None:
    from ..models import list_models

    known = set(list_models())
    unknown = [m for m in models if m not in known]
    if unknown:
        raise UserError(
            f"expected registered model names, got unknown {', '.join(map(repr, unknown))}; "
            "list the names with `medurwkv models`"
        )
    if not models or not sizes:
        raise UserError(
            f"expected at least one model and one size, got models={list(models)} sizes={list(sizes)}"
        )
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 1]
    if bad:
        raise UserError(f"expected square sizes in pixels >= 1, got {bad}")
    for name, val in (("repeats", repeats), ("threads", threads)):
        if val is not None and val < 1:
            raise UserError(f"expected {name} >= 1 (or unset for the default), got {val}")
    if not max_mem_gb > 0:
        raise UserError(f"expected a memory limit > 0 GB, got {max_mem_gb}")


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
    would exceed ``max_mem_gb`` (row with ``"skipped"``). A (model, size) that fails (an exception, a crash
    or a timeout of its subprocess) is a measurement result, a row with ``"error"``; unknown model names and
    non-positive sizes, repeats, threads or memory limits are the caller's mistake and raise :class:`UserError`
    before anything runs.
    """
    _check_benchmark_args(models, sizes, repeats, threads, max_mem_gb)
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


def _worker_main(argv: list[str]) -> int:
    """Subprocess entry of :func:`_measure_isolated`: measure the job given as JSON, print the row as JSON."""
    from ..utils import tune_malloc

    job = json.loads(argv[argv.index("--bench-worker") + 1])
    name, size = job.pop("name"), job.pop("size")
    tune_malloc()  # what `medurwkv predict` runs with (MEDURWKV_MALLOC=default in the environment: glibc's own)
    print(json.dumps(measure(name, size, **job)))
    return 0


if __name__ == "__main__":  # subprocess worker of benchmark_models
    sys.exit(_worker_main(sys.argv))
