"""The one progress bar: tqdm, shown on a terminal when ``progress`` is on, never when it is off."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(iterable: Any = None, *, progress: bool = True, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(iterable, **kwargs)``; ``progress=False`` disables it, ``True`` lets tqdm decide
    (``disable=None``: shown on a terminal, hidden when the output is not a TTY, as in CI logs)."""
    from tqdm.auto import tqdm  # lazy: importing tqdm costs time that most imports of medurwkv do not need

    return tqdm(iterable, disable=None if progress else True, **kwargs)
