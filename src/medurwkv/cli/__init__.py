"""``medurwkv`` command line: the one command-line layer, thin over the importable API.

Each command lives in ``medurwkv/cli/<name>.py`` with ``register(subparsers)``, which adds its parser(s) and
sets ``func`` to a handler ``handler(args) -> int | None``. One policy for every command (see :func:`main`):

- a user error (:class:`~medurwkv.errors.UserError`, or a missing / existing / unreadable path) prints one line,
  ``medurwkv CMD: error: ...``, on stderr, with no traceback, and exits with code 2 (argparse does the same for
  bad options);
- Ctrl-C exits 130;
- any other exception is an internal error: it keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import UserError
from ..utils import tune_malloc

__all__ = ["USER_ERRORS", "build_parser", "main", "one_line"]

# Subcommand modules in the order shown by --help.
_COMMANDS = ("data", "train", "pretrain", "evaluate", "predict", "export", "report", "demo", "models")

# What counts as the user's to fix. OSError in general does not (a full disk is not a typo).
USER_ERRORS = (
    UserError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medurwkv",
        description="Med-URWKV: medical image segmentation with pretrained Vision-RWKV encoders.",
        epilog="Every command first raises glibc's malloc thresholds so that large tensors are reused "
        "(medurwkv.utils.tune_malloc); MEDURWKV_MALLOC=default keeps glibc's own.",
    )
    parser.add_argument("--version", action="version", version=f"medurwkv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def one_line(message: object) -> str:
    """A message on one line: its non-empty lines joined with '; '."""
    return "; ".join(s.strip() for s in str(message).splitlines() if s.strip())


def main(argv: list[str] | None = None) -> int:
    """Run ``medurwkv ARGS``; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    prog = getattr(args, "prog", None) or f"medurwkv {args.command}"
    try:
        # Before any tensor: large activations are then reused instead of page-faulted anew (utils/malloc.py).
        tune_malloc()
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
