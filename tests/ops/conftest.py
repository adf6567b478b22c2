"""Helpers shared by the Bi-WKV tests (reference pack, error measures, random inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def golden(golden_dir: Path) -> dict:
    return torch.load(golden_dir / "bi_wkv_cases.pt", weights_only=True)
