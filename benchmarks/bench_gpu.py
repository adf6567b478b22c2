"""GPU benchmark: Triton vs chunked Bi-WKV, Med-URWKV-T training step vs the U-Net, inference latency.

Full run on a CUDA machine (a few minutes; ``benchmarks/gpu_check.sh`` calls it)::

    python benchmarks/bench_gpu.py --json gpu_bench.json --md gpu_bench.md

Smoke test (tiny sizes and models, seconds; on a CPU the chunked path only, unless Triton can run there,
i.e. ``TRITON_INTERPRET=1``)::

    python benchmarks/bench_gpu.py --quick --device cpu

One run measures, with every ratio formed from numbers of that same run (``docs/gpu.md`` describes the tables):

(a) Bi-WKV forward and forward+backward at T = 1024, 4096, 16384, 65536 (B = 8, C = 192, float32,
    token_split = 32, eps = 1e-6): ``impl="triton"`` vs ``impl="chunked"``, median of repeats after warm-up
    (CUDA events on a GPU);
(b) one training step of Med-URWKV-T (AdamW, bfloat16 autocast, DiceCE loss, batch 16) at 256² and 512²:
    images/s with the Triton and with the chunked Bi-WKV, and the ``unet`` baseline; peak GPU memory
    (``torch.cuda.max_memory_allocated``);
(c) inference latency (batch 1, bfloat16 autocast and float32) of ``med_urwkv_t`` (``impl="auto"``) and
    ``unet`` at 512², 1024², 2048²; a size that runs out of memory is reported as such in its row.

The official CUDA kernel of Vision-RWKV is not built or compared here (``docs/gpu.md`` says how to compare by
hand). Nothing outside the repository is needed.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

B, C = 8, 192
T_FULL = (1024, 4096, 16384, 65536)
T_QUICK = (64, 256)
TRAIN_SIZES, TRAIN_BATCH = (256, 512), 16
INFER_SIZES = (512, 1024, 2048)
TARGET_TRAIN_SPEEDUP = 3.0  # issue 12: Triton training step >= 3x the chunked path's images/s at 256²


# ------------------------------------------------------------------------------------------- timing helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after ``warmup`` runs (CUDA events on a GPU, so that the
    asynchronous launches are timed on the device)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _failure(exc: BaseException) -> str:
    """The note of a row whose measurement failed; the traceback goes to stderr (the run goes on)."""
    if _is_oom(exc):
        return "out of memory"
    traceback.print_exception(exc, file=sys.stderr)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"error: {type(exc).__name__}: {first}"[:160]


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


@contextmanager
def wkv_impl(impl: str) -> Iterator[None]:
    """Every Bi-WKV call of the models (they all go through ``medurwkv.models.layers.bi_wkv``) with ``impl``."""
    import medurwkv.models.layers as layers

    original = layers.bi_wkv
    layers.bi_wkv = functools.partial(original, impl=impl)
    try:
        yield
    finally:
        layers.bi_wkv = original


def triton_status(device: torch.device) -> str | None:
    """None when ``impl="triton"`` runs on ``device`` (checked with one tiny call), else why not."""
    from medurwkv.ops import bi_wkv

    x = torch.randn(1, 8, 4, device=device)
    try:
        bi_wkv(torch.zeros(4, device=device), torch.zeros(4, device=device), x, x, impl="triton")
        _sync(device)
    except Exception as e:  # any reason (no Triton, CPU without the interpreter, a kernel error) is reported
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    return None


# ------------------------------------------------------------------------------------------- (a) Bi-WKV


def bench_wkv(
    device: torch.device, Ts: tuple[int, ...], b: int, c: int, impls: list[str], reps: int
) -> list[dict]:
    from medurwkv.ops import bi_wkv

    rows = []
    for T in Ts:
        g = torch.Generator().manual_seed(0)
        w = ((torch.rand(c, generator=g) * 8 - 5) / T).to(device)  # official init range of spatial_decay
        u = ((torch.rand(c, generator=g) - 0.5) / T).to(device)
        k, v, gy = (torch.randn(b, T, c, generator=g).to(device) for _ in range(3))
        row: dict[str, Any] = {"T": T, "B": b, "C": c}
        for impl in impls:
            leaves = [x.clone().requires_grad_(True) for x in (w, u, k, v)]

            def fwd(impl: str = impl, ins: tuple = (w, u, k, v)) -> None:
                with torch.no_grad():
                    bi_wkv(*ins, token_split=32, eps=1e-6, impl=impl)

            def fwd_bwd(impl: str = impl, leaves: list = leaves, gy: torch.Tensor = gy) -> None:
                for x in leaves:
                    x.grad = None
                bi_wkv(*leaves, token_split=32, eps=1e-6, impl=impl).backward(gy)

            try:
                row[f"{impl}_fwd_ms"] = median_time(fwd, device, 2, reps) * 1e3
                row[f"{impl}_fwdbwd_ms"] = median_time(fwd_bwd, device, 2, reps) * 1e3
            except Exception as e:
                row[f"{impl}_note"] = f"{impl}: {_failure(e)}"
            del leaves
            _free(device)
        rows.append(row)
        print(f"# wkv T={T} done", file=sys.stderr, flush=True)
    return rows


def _ms(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "—"


def _ratio(row: dict, num: str, den: str) -> str:
    if num not in row or den not in row:
        return "—"
    r = row[num] / row[den]
    return f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def format_wkv(rows: list[dict], impls: list[str]) -> str:
    lines = [
        "| T | chunked fwd ms | triton fwd ms | fwd speed-up | chunked fwd+bwd ms | triton fwd+bwd ms | "
        "fwd+bwd speed-up | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        note = "; ".join(r[k] for k in r if k.endswith("_note"))
        lines.append(
            f"| {r['T']} | {_ms(r, 'chunked_fwd_ms')} | {_ms(r, 'triton_fwd_ms')} | "
            f"{_ratio(r, 'chunked_fwd_ms', 'triton_fwd_ms')} | {_ms(r, 'chunked_fwdbwd_ms')} | "
            f"{_ms(r, 'triton_fwdbwd_ms')} | {_ratio(r, 'chunked_fwdbwd_ms', 'triton_fwdbwd_ms')} | {note} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- (b) training step


def bench_train_step(
    name: str,
    overrides: dict | None,
    size: int,
    batch: int,
    device: torch.device,
    impl: str | None,
    steps: int,
    warmup: int,
) -> dict:
    """images/s of AdamW training steps under bfloat16 autocast (the trainer's step without its bookkeeping)."""
    from monai.losses import DiceCELoss

    from medurwkv import create_model

    row: dict[str, Any] = {"model": name, "wkv": impl or "-", "size": size, "batch": batch}
    try:
        torch.manual_seed(0)
        model = create_model(name, in_channels=3, num_classes=2, **(overrides or {})).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        x = torch.randn(batch, 3, size, size, device=device)  # (B, 3, H, W)
        y = torch.randint(0, 2, (batch, 1, size, size), device=device)  # (B, 1, H, W)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(x)  # (B, 2, H, W)
            loss_fn(logits.float(), y).backward()
            opt.step()

        with wkv_impl(impl) if impl else _nothing():
            for _ in range(warmup):
                step()
            _sync(device)
            _reset_peak(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            dt = time.perf_counter() - t0
        row.update(img_s=batch * steps / dt, step_ms=dt / steps * 1e3, peak_mb=_peak_mb(device))
    except Exception as e:
        row["note"] = _failure(e)
    return row


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def format_train(rows: list[dict]) -> str:
    lines = [
        "| model | Bi-WKV | size | batch | images/s | step ms | peak GPU MB | vs chunked | vs unet |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["model"], r["wkv"], r["size"]): r for r in rows}
    for r in rows:
        chunked = by.get(("med_urwkv_t", "chunked", r["size"]), {})
        unet = by.get(("unet", "-", r["size"]), {})
        if "img_s" not in r:
            lines.append(f"| {r['model']} | {r['wkv']} | {r['size']}² | {r['batch']} | {r['note']} | | | | |")
            continue
        vs_c = f"{r['img_s'] / chunked['img_s']:.2f}×" if r["model"] != "unet" and "img_s" in chunked else ""
        vs_u = f"{r['img_s'] / unet['img_s']:.2f}×" if "img_s" in unet else ""
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "—"
        lines.append(
            f"| {r['model']} | {r['wkv']} | {r['size']}² | {r['batch']} | {r['img_s']:.1f} | {r['step_ms']:.1f} | "
            f"{peak} | {vs_c} | {vs_u} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- (c) inference


def bench_infer(
    name: str, overrides: dict | None, size: int, device: torch.device, dtype: torch.dtype | None, reps: int
) -> dict:
    """Batch-1 latency of ``model(x)`` (eval, inference mode), autocast ``dtype`` or float32 when None."""
    from medurwkv import create_model

    row: dict[str, Any] = {"model": name, "size": size, "dtype": "bfloat16" if dtype else "float32"}
    try:
        torch.manual_seed(0)
        model = create_model(name, in_channels=3, num_classes=2, **(overrides or {})).to(device).eval()
        x = torch.randn(1, 3, size, size, device=device)  # (1, 3, H, W)

        def run() -> None:
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)),
            ):
                model(x)

        _reset_peak(device)
        row["latency_ms"] = median_time(run, device, 2, reps) * 1e3
        row["peak_mb"] = _peak_mb(device)
    except Exception as e:
        row["note"] = _failure(e) + " (skipped)"
    return row


def format_infer(rows: list[dict]) -> str:
    lines = ["| model | size | dtype | latency ms | peak GPU MB |", "|---|---|---|---|---|"]
    for r in rows:
        if "latency_ms" not in r:
            lines.append(f"| {r['model']} | {r['size']}² | {r['dtype']} | {r['note']} | |")
            continue
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "—"
        lines.append(f"| {r['model']} | {r['size']}² | {r['dtype']} | {r['latency_ms']:.1f} | {peak} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as e:  # reported, not fatal: the chunked path still runs
        env["triton"] = f"not importable ({type(e).__name__})"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["gpu"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}"
    else:
        env["cpu"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return env


def targets(train_rows: list[dict], train_size: int) -> list[str]:
    """The issue-12 verdicts this run can judge."""
    by = {(r["model"], r["wkv"], r["size"]): r for r in train_rows}
    tri, chk = (
        by.get(("med_urwkv_t", "triton", train_size), {}),
        by.get(("med_urwkv_t", "chunked", train_size), {}),
    )
    out = []
    if "img_s" in tri and "img_s" in chk:
        s = tri["img_s"] / chk["img_s"]
        verdict = "MET" if s >= TARGET_TRAIN_SPEEDUP else "MISSED"
        out.append(
            f"target Med-URWKV-T training step at {train_size}² with Triton >= {TARGET_TRAIN_SPEEDUP:.0f}x the "
            f"chunked path's images/s: {s:.2f}x -> {verdict}"
        )
    else:
        out.append(
            f"target training step Triton vs chunked at {train_size}²: not measured (Triton did not run)"
        )
    out.append(
        "target Triton fwd+bwd at least as fast as the official CUDA kernel at T=4096: not measured by this "
        "script (see docs/gpu.md)"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu"
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes and models (smoke test, seconds)")
    ap.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    ap.add_argument("--md", metavar="OUT", help="also write the Markdown report to this file")
    ap.add_argument("--sections", default="wkv,train,infer", help="comma-separated subset of wkv,train,infer")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"expected a CUDA device for --device {args.device}, got none; use --device cpu", file=sys.stderr
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # what training uses on a GPU (docs/training.md)
    sections = set(args.sections.split(","))

    from medurwkv.models import QUICK_OVERRIDES

    quick = args.quick
    tiny = (
        {m: QUICK_OVERRIDES[m] for m in ("med_urwkv_t", "unet")}
        if quick
        else {"med_urwkv_t": None, "unet": None}
    )
    Ts, (b, c) = (T_QUICK, (2, 16)) if quick else (T_FULL, (B, C))
    train_sizes, batch = ((32, 64), 2) if quick else (TRAIN_SIZES, TRAIN_BATCH)
    infer_sizes = (32, 64) if quick else INFER_SIZES
    reps, steps, warm = (2, 2, 1) if quick else (5, 10, 3)

    env = environment(device)
    why_not = triton_status(device)
    env["triton_runs"] = why_not is None
    impls = ["chunked"] + (["triton"] if why_not is None else [])
    report: dict[str, Any] = {"env": env, "quick": quick}
    md = [f"# bench_gpu{' --quick' if quick else ''}: " + ", ".join(f"{k} {v}" for k, v in env.items())]
    if why_not is not None:
        md.append(f"\nTriton Bi-WKV does not run on {device} ({why_not}): chunked only.")

    def save() -> None:
        """Write what is measured so far: a run stopped by a time limit keeps its finished sections."""
        if args.md:
            with open(args.md, "w") as f:
                f.write("\n".join(md) + "\n")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)

    if "wkv" in sections:
        rows = bench_wkv(device, Ts, b, c, impls, reps)
        report["wkv"] = rows
        md += [
            f"\n## (a) Bi-WKV, B={b}, C={c}, float32, token_split=32, eps=1e-6 (median of {reps}, after warm-up)\n",
            format_wkv(rows, impls),
            "\nspeed-up: chunked time / Triton time.",
        ]
        save()
    train_rows: list[dict] = []
    # On a CPU Triton runs only in its interpreter (minutes per training step, timings meaningless): (a) only
    train_impls = impls if device.type == "cuda" else ["chunked"]
    if "train" in sections:
        if train_impls != impls:
            md.append(
                "\nTriton runs in its interpreter on the CPU: the training step is timed with chunked only."
            )
        for size in train_sizes:
            for impl in train_impls:
                m = tiny["med_urwkv_t"]
                train_rows.append(bench_train_step("med_urwkv_t", m, size, batch, device, impl, steps, warm))
                _free(device)  # the model, optimizer and batch went with the call's frame
            train_rows.append(bench_train_step("unet", tiny["unet"], size, batch, device, None, steps, warm))
            _free(device)
            print(f"# train {size} done", file=sys.stderr, flush=True)
        report["train"] = train_rows
        md += [
            f"\n## (b) Training step (AdamW, bfloat16 autocast, DiceCE), batch {batch}, {steps} steps after {warm}\n",
            format_train(train_rows),
            "\nvs chunked / vs unet: images/s ratio to med_urwkv_t with the chunked Bi-WKV / to unet at that size.",
        ]
        save()
    if "infer" in sections:
        infer_rows = []
        for size in infer_sizes:
            for dt in (torch.bfloat16, None):
                for m in ("med_urwkv_t", "unet"):
                    infer_rows.append(bench_infer(m, tiny[m], size, device, dt, reps))
                    _free(device)
            print(f"# infer {size} done", file=sys.stderr, flush=True)
        report["infer"] = infer_rows
        md += [
            f"\n## (c) Inference latency, batch 1, Bi-WKV impl='auto' (median of {reps}, after warm-up)\n",
            format_infer(infer_rows),
        ]
    report["targets"] = targets(train_rows, train_sizes[0]) if train_rows else []
    if report["targets"]:
        md += ["\n## Targets\n", *(f"- {t}" for t in report["targets"])]
    save()
    print("\n".join(md))
    failed = [
        r for part in ("wkv", "train", "infer") for r in report.get(part, []) if "error:" in json.dumps(r)
    ]
    if failed:
        print(
            f"{len(failed)} measurement(s) failed with an error (tracebacks above): {failed}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
