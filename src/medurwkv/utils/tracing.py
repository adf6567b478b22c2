"""One answer to "is this forward being traced, compiled or exported?" (ops and models branch on it)."""

from __future__ import annotations

import torch

__all__ = ["is_exporting", "is_tracing"]


def is_exporting() -> bool:
    """True while a graph is captured for export: ``torch.export`` / the dynamo ONNX exporter,
    ``torch.jit.trace`` and the TorchScript ONNX exporter. Ops pick their export-friendly path then."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def is_tracing() -> bool:
    """:func:`is_exporting`, or compiling under ``torch.compile``: Python-side checks on tensor values (which
    would break the graph) must not run."""
    return torch.compiler.is_compiling() or is_exporting()
