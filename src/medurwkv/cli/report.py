"""``medurwkv report``: TEMPORARY shim over the old in-module parser (to be replaced by the real command layer)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    from ..engine.report import add_parser

    add_parser(subparsers)
