"""Benchmark of the Bi-WKV operator (chunked fast path vs the naive O(T²) reference) on CPU.

Usage::

    python benchmarks/bench_bi_wkv.py [--threads 1] [--quick] [--naive-limit 120]

For B=2, C=192, float32 and T in {196, 1024, 4096, 16384, 65536} (``--quick``: up to 4096) it measures, each
configuration in a fresh subprocess:

* time of the forward and of forward+backward (min over repeats; wall clock and process CPU time),
* peak memory: growth of the peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of that subprocess over
  its baseline after the inputs are built.

The naive reference runs where it fits. Its forward cost is exactly linear in the channel count, because it is
blocked over channels and channels are independent. Where the full run would take longer than
``--naive-limit`` seconds, it is timed on a channel subset with the same public call and scaled by C / subset
(marked ``*``). Its backward keeps the whole O(B·T²·C) autograd graph, so it only runs below a memory cap.
The script prints a Markdown table and checks the targets of the project.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

B, C = 2, 192
T_ALL = (196, 1024, 4096, 16384, 65536)
T_QUICK = (196, 1024, 4096)
NAIVE_BWD_MAX_BYTES = 3 << 30  # the naive backward keeps ~10 float32 (B, T, T, C) tensors alive


def _child(impl: str, T: int, mode: str, threads: int, reps: int, channels: int) -> None:
    import torch

    from medurwkv.ops import bi_wkv

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    c = channels
    w = (torch.rand(c, generator=g) * 2 - 1) * 5 / T  # official init range: spatial_decay in [-5, 3]
    u = (torch.rand(c, generator=g) - 1.5) / T
    k = torch.randn(B, T, c, generator=g)
    v = torch.randn(B, T, c, generator=g)
    gy = torch.randn(B, T, c, generator=g)

    def run() -> None:
        if mode == "fwd":
            with torch.no_grad():
                bi_wkv(w, u, k, v, token_split=32, eps=1e-6, impl=impl)
        else:
            ins = [x.clone().requires_grad_() for x in (w, u, k, v)]
            y = bi_wkv(*ins, token_split=32, eps=1e-6, impl=impl)
            y.backward(gy)

    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    walls, cpus = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = {"wall": min(walls), "cpu": min(cpus), "peak_mb": (peak_kb - base_kb) / 1024, "channels": c}
    print("RESULT " + json.dumps(res))


def _measure(impl, T, mode, threads, reps, channels=C, timeout=None) -> dict | None:
    cmd = [sys.executable, __file__, "--child", impl, str(T), mode, str(threads), str(reps), str(channels)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=True).stdout
    except subprocess.TimeoutExpired:
        return None
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _fmt_t(r: dict | None, scale: float = 1.0) -> str:
    if r is None:
        return "—"
    star = "*" if r["channels"] != C else ""
    return f"{r['wall'] * scale * 1e3:.1f}{star} ({r['cpu'] * scale * 1e3:.0f})"


def _fmt_m(r: dict | None) -> str:
    return "—" if r is None or r["channels"] != C else f"{r['peak_mb']:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="T up to 4096 and fewer repeats")
    ap.add_argument("--naive-limit", type=float, default=120.0, help="seconds allowed for one naive forward")
    ap.add_argument("--T", type=int, nargs="+", help="override the sequence lengths")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, T, mode, threads, reps, channels = args.child
        _child(impl, int(T), mode, int(threads), int(reps), int(channels))
        return 0

    Ts = args.T or (T_QUICK if args.quick else T_ALL)
    load0 = os.getloadavg()
    print(f"# bench_bi_wkv: B={B}, C={C}, float32, token_split=32, eps=1e-6, threads={args.threads}")
    print(
        f"# python {platform.python_version()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
    )
    rows = {}
    naive_s_per_unit = None  # measured naive forward seconds per (T² · channel), to predict the next size
    for T in Ts:
        reps = 2 if (args.quick or T >= 16384) else 3
        r = {
            "c_fwd": _measure("chunked", T, "fwd", args.threads, reps),
            "c_bwd": _measure("chunked", T, "fwdbwd", args.threads, reps),
        }
        # naive forward: full if predicted to fit the limit, else on a channel subset (scaled, marked *)
        ch = C
        if naive_s_per_unit is not None and naive_s_per_unit * T * T * C > args.naive_limit:
            ch = min(C, int(args.naive_limit / 4 / (naive_s_per_unit * T * T)))
        nf = None
        if ch >= 1:  # else even one channel would exceed the limit
            nf = _measure("naive", T, "fwd", args.threads, 1, ch, timeout=args.naive_limit * 2 + 30)
        r["n_fwd"], r["n_scale"] = nf, (C / ch if nf else 1.0)
        if nf:
            naive_s_per_unit = nf["wall"] / (T * T * ch)
        fits = B * T * T * C * 4 * 10 <= NAIVE_BWD_MAX_BYTES
        r["n_bwd"] = (
            _measure("naive", T, "fwdbwd", args.threads, 1, timeout=args.naive_limit * 2 + 30)
            if fits
            else None
        )
        rows[T] = r
        print(f"# T={T} done", flush=True)
    load1 = os.getloadavg()

    print()
    print(
        "| T | chunked fwd ms | chunked fwd+bwd ms | chunked peak MB fwd / fwd+bwd | naive fwd ms | "
        "naive fwd+bwd ms | naive peak MB fwd / fwd+bwd | fwd speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for T, r in rows.items():
        speed = "—"
        if r["n_fwd"]:
            speed = f"{r['n_fwd']['wall'] * r['n_scale'] / r['c_fwd']['wall']:.0f}×"
        print(
            f"| {T} | {_fmt_t(r['c_fwd'])} | {_fmt_t(r['c_bwd'])} | {_fmt_m(r['c_fwd'])} / {_fmt_m(r['c_bwd'])} "
            f"| {_fmt_t(r['n_fwd'], r['n_scale'])} | {_fmt_t(r['n_bwd'])} | {_fmt_m(r['n_fwd'])} / "
            f"{_fmt_m(r['n_bwd'])} | {speed} |"
        )
    print()
    print(
        "Times: wall clock, min over repeats, process CPU time in parentheses. `*`: naive timed on a channel "
        "subset and scaled linearly to C=192. `—`: not run (time or memory cap)."
    )
    print(f"Load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")

    # targets
    print()
    if 16384 in rows:
        t = rows[16384]["c_bwd"]["wall"]
        print(f"target chunked fwd+bwd at T=16384 < 1 s: {t:.3f} s -> {'MET' if t < 1 else 'MISSED'}")
    if 65536 in rows and 16384 in rows:
        a, b = rows[65536], rows[16384]
        for key, name in (("c_fwd", "fwd"), ("c_bwd", "fwd+bwd")):
            rt = a[key]["wall"] / b[key]["wall"]
            rc = a[key]["cpu"] / b[key]["cpu"]
            rm = a[key]["peak_mb"] / max(b[key]["peak_mb"], 1e-9)
            ok = max(rt, rm) <= 4.5
            print(
                f"target T=65536 / T=16384 <= 4.5x ({name}): time {rt:.2f}x (CPU time {rc:.2f}x), "
                f"peak memory {rm:.2f}x -> {'MET' if ok else 'MISSED'}"
            )
    if 4096 in rows and rows[4096]["n_fwd"]:
        r = rows[4096]
        s = r["n_fwd"]["wall"] * r["n_scale"] / r["c_fwd"]["wall"]
        print(
            f"target chunked >= 500x faster than naive at T=4096 (fwd): {s:.0f}x -> {'MET' if s >= 500 else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
