"""``medurwkv`` command line: a thin layer over the importable API.

Each area registers its own subcommand through ``add_parser(subparsers)``; the handlers return exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# (module, what it adds) in the order shown by --help.
_COMMAND_MODULES = (
    "medurwkv.data.commands",  # data check | split | prepare
    "medurwkv.engine.train",  # train
    "medurwkv.engine.evaluation",  # evaluate
    "medurwkv.engine.predict",  # predict
    "medurwkv.engine.export",  # export
    "medurwkv.engine.report",  # report
    "medurwkv.pipeline",  # demo (the main job)
    "medurwkv.commands",  # models, benchmark
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medurwkv",
        description="Med-URWKV: medical image segmentation with pretrained Vision-RWKV encoders.",
    )
    parser.add_argument("--version", action="version", version=f"medurwkv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
