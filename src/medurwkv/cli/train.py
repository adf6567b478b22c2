"""``medurwkv train``: the options are derived from :class:`~medurwkv.engine.config.TrainConfig` (one table).

Every option defaults to 'not given' (``argparse.SUPPRESS``), so a value from ``--config YAML`` is only
overridden by a flag that is actually on the command line. Under torchrun:
``torchrun --nproc_per_node N -m medurwkv.cli train ...`` (docs/training.md).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..engine.config import CLI_ONLY_OPTIONS, OptionSpec, train_options

DESCRIPTION = (
    "Train Med-URWKV (or another registered model) on DATA. A model with an official release starts from it "
    "(--pretrained auto, downloaded once; --pretrained false trains from scratch). Options come from the "
    "defaults, then --config YAML, then these flags. Writes RUN_DIR/{config.yaml,best.pt,last.pt,metrics.csv,tb/}, then evaluates best.pt and "
    "writes report.html. Multi-GPU: torchrun --nproc_per_node N -m medurwkv.cli train ... (see docs/training.md)."
)


def add_option(p: argparse.ArgumentParser, o: OptionSpec, *, default: Any = argparse.SUPPRESS) -> None:
    """Add one training option to ``p``: ``--x`` / ``--no-x`` for a boolean, else ``--x VALUE``. ``default``:
    the parsed value when the flag is absent (help shows it, or TrainConfig's default when it is SUPPRESS)."""
    help_text = f"{o.help} [default: {o.default if default is argparse.SUPPRESS else default}]"
    if o.parse is None:
        p.add_argument(
            o.flag, dest=o.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
        )
    else:
        p.add_argument(
            o.flag,
            dest=o.name,
            type=o.parse,
            default=default,
            choices=o.choices,
            metavar=o.metavar,
            help=help_text,
        )


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a segmentation model on a dataset folder", description=DESCRIPTION
    )
    for name, metavar, help_text in CLI_ONLY_OPTIONS:  # both name a path
        p.add_argument(f"--{name}", type=Path, default=argparse.SUPPRESS, metavar=metavar, help=help_text)
    for o in train_options():
        add_option(p, o)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Train; errors the user must fix (data, options, divergence) reach ``cli.main`` as ``UserError``."""
    from ..engine.train import fit

    options = {o.name for o in train_options()}
    given = {k: v for k, v in vars(args).items() if k in options}
    result = fit(getattr(args, "config", None), resume=getattr(args, "resume", None), **given)
    if result.best_epoch:
        val = result.history and not math.isnan(result.history[-1]["val_dice"])
        print(
            f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, "
            f"{'val_dice' if val else 'metric'} {result.best_metric:.4f})"
        )
    return 0
