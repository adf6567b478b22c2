"""``medurwkv models`` (the registered models, their size and pretrained source) and ``medurwkv benchmark``.

Thin over :mod:`medurwkv.engine.benchmark`: parse the options, call :func:`model_table` /
:func:`benchmark_models`, print the result.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..engine.benchmark import BENCH_MODELS, benchmark_models, format_benchmark, model_table
from ..errors import UserError
from ..utils import atomic_write_json

__all__ = ["register"]


def _run_models(args: argparse.Namespace) -> int:
    rows = model_table(args.pattern)
    if args.json:  # an empty list is a valid answer for a script
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        raise UserError(
            f"no model matches {args.pattern!r}; expected an fnmatch pattern such as 'med_urwkv*', "
            "run `medurwkv models` for every name"
        )
    print(f"{'name':<22} {'params':>9}  {'pretrained source':<50} {'wkv':<9} description")
    for r in rows:
        p = f"{r['params'] / 1e6:.2f}M" if r["params"] is not None else "?"
        print(
            f"{r['name']:<22} {p:>9}  {r['pretrained'] or '-':<50} {r['wkv_constants'] or '-':<9} {r['description']}"
        )
    return 0


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
        atomic_write_json(args.json, rows, indent=2)
        print(f"\nwrote {args.json}")
    # A (model, size) that failed is a measurement result (its row says why), not a user error: exit 1.
    return 1 if any("error" in r for r in rows) else 0


def register(subparsers: Any) -> None:
    """Add ``medurwkv models`` and ``medurwkv benchmark``."""
    p = subparsers.add_parser(
        "models",
        help="list the available models with parameters and pretrained source",
        description="List every registered model (segmentation models and encoders) with its parameter count "
        "(full config), the official release it loads with pretrained=True, and the Bi-WKV kernel constants of "
        "that release (token_split/eps). Exit code 2 when PATTERN matches no model (with --json: an empty list, "
        "exit code 0).",
    )
    p.add_argument("pattern", nargs="?", default=None, help="fnmatch filter, e.g. 'med_urwkv*'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run_models)

    b = subparsers.add_parser(
        "benchmark",
        help="measure parameters, GFLOPs, CPU latency and memory of the models",
        description="CPU inference benchmark (batch 1): parameters, GFLOPs, median latency, peak memory and the "
        "throughput ratio to unet. Default: full-size models at 256 and 512 px; --quick runs tiny configs at "
        "64 and 128 px in seconds. The full study (up to 2048 px) is benchmarks/bench_models.py. Exit codes: 0 "
        "when every (model, size) was measured or skipped, 1 when one failed (its row in the table says why), 2 "
        "on a usage error (e.g. an unknown model name).",
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
