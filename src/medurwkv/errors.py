"""Errors that are the user's to fix (a missing folder, an unreadable image, a wrong checkpoint, a failed download).

The command line prints them as one line, ``medurwkv CMD: error: ...``, on stderr and exits with code 2; every
other exception is an internal error and keeps its traceback. Library callers catch them like any
``ValueError``. Messages say what was expected, what was found and how to fix it.
"""

from __future__ import annotations

__all__ = ["UserError", "DownloadError"]


class UserError(ValueError):
    """Bad input from the user: the message says what was expected, what was found and how to fix it."""


class DownloadError(UserError):
    """A download that failed (network, HTTP status, checksum); nothing partial is left behind."""
