"""Data layer: dataset discovery, checks, frozen splits, prepare recipes, transforms and torch datasets.

See docs/data.md for the dataset layouts and file formats (3D volumes: its "Volumes" section).
"""

from __future__ import annotations

from .check import CheckReport, DatasetCheckError, VolumeCheckReport, check_dataset, check_volumes
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
from .volumes import (
    Volume,
    VolumeIndex,
    VolumeReadError,
    discover_dataset,
    discover_volumes,
    is_volume_dataset,
    load_case,
    read_volume,
    write_label_volume,
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
    "Volume",
    "VolumeCheckReport",
    "VolumeIndex",
    "VolumeReadError",
    "adapt_channels",
    "auto_group",
    "build_transform",
    "check_dataset",
    "check_volumes",
    "discover",
    "discover_dataset",
    "discover_volumes",
    "ensure_split",
    "fetch_hc18",
    "fill_outline",
    "is_volume_dataset",
    "load_case",
    "load_split",
    "make_datasets",
    "make_split",
    "normalize_image",
    "prepare",
    "preprocess_image",
    "read_image",
    "read_mask",
    "read_volume",
    "save_split",
    "to_float01",
    "write_label_volume",
    "write_mask",
]
