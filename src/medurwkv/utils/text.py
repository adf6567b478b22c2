"""Short text for logs and reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


def top_counts(counts: Mapping[object, int], k: int = 8) -> str:
    """The ``k`` most frequent entries of ``{value: count}`` as ``"v: n, v: n, ... (M more)"``.

    Real datasets can have hundreds of distinct image sizes (Kvasir-SEG: 300 in 1000 images); a log line or a
    report names the common ones and counts the rest instead of printing them all."""
    top = Counter(counts).most_common()
    shown = ", ".join(f"{v}: {n}" for v, n in top[:k])
    return shown + (f", ... ({len(top) - k} more)" if len(top) > k else "")
