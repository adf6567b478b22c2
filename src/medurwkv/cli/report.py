"""``medurwkv report RUN_DIR``: write a self-contained HTML report of a run and print the headline Dice.

Exit codes: 0 on success, 2 when RUN_DIR is not a run folder (docs/predict.md, "medurwkv report").
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run",
        description="Write RUN_DIR/report.html: headline Dice, metrics of every evaluated split, per-image "
        "Dice histogram, best/median/worst overlays, learning curves and the config. Works on partial runs.",
    )
    p.add_argument("run_dir", type=Path, help="run directory (contains config.yaml, metrics.csv, eval/)")
    p.add_argument("--out", type=Path, default=None, help="output HTML path (default RUN_DIR/report.html)")
    p.add_argument("--title", default=None, help="page title (default: the run directory name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.report import build_report, headline_dice, require_run_dir

    run_dir = require_run_dir(args.run_dir)
    path = build_report(run_dir, args.out, title=args.title)
    h = headline_dice(run_dir)
    if h is None:
        print("headline Dice: n/a (no evaluation and no val_dice in metrics.csv)")
    elif h["source"] == "eval":
        print(f"headline Dice ({h['split']}, {h['statistic']}): {h['value']:.4f}")
    else:
        ep = h["epoch"]
        print(f"headline Dice (best val_dice during training, epoch {ep}; not evaluated): {h['value']:.4f}")
    print(f"report: {path}")
    return 0
