"""Data layer: dataset discovery, checks, frozen splits, prepare recipes, transforms and torch datasets.

See docs/data.md for the dataset layouts and file formats.
"""

from __future__ import annotations

from .check import CheckReport, DatasetCheckError, check_dataset
from .dataset import SegmentationDataset, make_datasets
from .index import DatasetIndex, discover
from .io import IMAGE_EXTENSIONS, ImageReadError, read_image, read_mask, write_mask
from .prepare import RECIPES, PrepareResult, fetch_hc18, fill_outline, prepare
from .split import Split, auto_group, ensure_split, load_split, make_split, save_split
from .transforms import (
    AugmentConfig,
    SegTransform,
    adapt_channels,
    build_transform,
    normalize_image,
    preprocess_image,
    to_float01,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "RECIPES",
    "AugmentConfig",
    "CheckReport",
    "DatasetCheckError",
    "DatasetIndex",
    "ImageReadError",
    "PrepareResult",
    "SegTransform",
    "SegmentationDataset",
    "Split",
    "adapt_channels",
    "auto_group",
    "build_transform",
    "check_dataset",
    "discover",
    "ensure_split",
    "fetch_hc18",
    "fill_outline",
    "load_split",
    "make_datasets",
    "make_split",
    "normalize_image",
    "prepare",
    "preprocess_image",
    "read_image",
    "read_mask",
    "save_split",
    "to_float01",
    "write_mask",
]
