"""``medurwkv pretrain``: the options are derived from :class:`~medurwkv.engine.pretrain.PretrainConfig`.

Every option defaults to 'not given' (``argparse.SUPPRESS``), so a value from ``--config YAML`` is only
overridden by a flag that is actually on the command line (as ``medurwkv train``). Under torchrun:
``torchrun --nproc_per_node N -m medurwkv.cli pretrain ...`` (docs/pretrain.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .train import add_option

__all__ = ["register"]

DESCRIPTION = (
    "Pretrain the encoder of a Med-URWKV model on folders of unlabeled images by masked image modeling "
    "(SimMIM on the full token grid; masks of the folders are ignored). Writes RUN_DIR/{encoder.pt,last.pt,"
    "metrics.csv,preview.png,tb/,config.yaml,report.html}; fine-tune with medurwkv train --pretrained "
    "RUN_DIR/encoder.pt. See docs/pretrain.md."
)


def register(subparsers: Any) -> argparse.ArgumentParser:
    from ..engine.pretrain import CLI_ONLY_OPTIONS, pretrain_options

    p = subparsers.add_parser(
        "pretrain",
        help="pretrain an encoder on unlabeled images (masked image modeling)",
        description=DESCRIPTION,
    )
    for name, metavar, help_text in CLI_ONLY_OPTIONS:  # both name a path
        p.add_argument(f"--{name}", type=Path, default=argparse.SUPPRESS, metavar=metavar, help=help_text)
    for o in pretrain_options():
        if o.name == "data":  # the one option that takes several values
            p.add_argument(
                o.flag,
                dest=o.name,
                nargs="+",
                default=argparse.SUPPRESS,
                metavar="DIR",
                help=f"{o.help} [required]",
            )
        else:
            add_option(p, o)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Pretrain; errors the user must fix (folders, images, options) reach ``cli.main`` as ``UserError``."""
    from ..engine.pretrain import finetune_command, pretrain, pretrain_options

    options = {o.name for o in pretrain_options()}
    given = {k: v for k, v in vars(args).items() if k in options}
    result = pretrain(getattr(args, "config", None), resume=getattr(args, "resume", None), **given)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    last = result.history[-1]["loss"] if result.history else float("nan")
    print(
        f"encoder: {result.encoder} ({result.epochs_completed} epochs, {result.images_seen} images seen, "
        f"last loss {last:.4f}); preview: {result.preview}"
    )
    print(f"fine-tune: {finetune_command(result.config, result.encoder)}")
    return 0
