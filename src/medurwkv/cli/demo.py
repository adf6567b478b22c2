"""``medurwkv demo``: the main job. Its training flags are TrainConfig's (``cli/train.py``) with the demo's
defaults (:data:`medurwkv.pipeline.DEMO_TRAINING`); a boolean option is offered as ``--no-X`` only."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from ..engine.config import train_options
from .train import add_option


def register(subparsers: Any) -> argparse.ArgumentParser:
    from .. import pipeline

    p = subparsers.add_parser(
        "demo",
        help="the main job: HC18 -> exam split -> train med_urwkv_t -> evaluate -> predict -> report",
        description=pipeline.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for f in fields(pipeline.DemoConfig):
        if f.name == "train":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            p.add_argument(flag, default=f.default, help=f"{f.metadata['help']} [default: {f.default}]")
    specs = {o.name: o for o in train_options()}
    for name, default in pipeline.DEMO_TRAINING.items():
        o = specs[name]
        if o.parse is None:
            p.add_argument("--no-" + o.flag[2:], dest=name, action="store_false", help=f"turn off: {o.help}")
        else:
            add_option(p, o, default=default)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the demo; a missing dataset or a bad option reaches ``cli.main`` as a user error."""
    from ..pipeline import DEMO_TRAINING, DemoConfig, demo_training_config, run_demo

    training = demo_training_config(**{k: getattr(args, k) for k in DEMO_TRAINING})
    run_demo(DemoConfig(out=args.out, data=args.data, download=args.download, train=training))
    return 0
