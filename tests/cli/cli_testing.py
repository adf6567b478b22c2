"""Shared check of the CLI's one error policy (``medurwkv.cli``): one stderr line, no traceback."""

from __future__ import annotations


def one_error_line(err: str, command: str) -> str:
    """The single non-empty stderr line; fails unless it is ``medurwkv COMMAND: error: ...`` with no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"medurwkv {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]
