"""Small shared helpers below every other layer: atomic file writes, downloads with a checksum, tracing checks,
the progress bar, count summaries for logs, the allocator tuning of the command line."""

from __future__ import annotations

from .download import default_cache_dir, download, sha256_file
from .files import atomic_write, atomic_write_json, atomic_write_text
from .malloc import tune_malloc
from .progress import progress_bar
from .text import top_counts
from .tracing import is_exporting, is_tracing

__all__ = [
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "default_cache_dir",
    "download",
    "is_exporting",
    "is_tracing",
    "progress_bar",
    "sha256_file",
    "top_counts",
    "tune_malloc",
]
