"""Helpers shared by the engine tests: a synthetic disk dataset and the metrics.csv reader."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def make_disks(root: Path, n: int = 16, size: int = 40, seed: int = 0) -> Path:
    """n gray images with a bright disk (the foreground) on noise, 0/255 masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
        r = rng.uniform(0.15 * size, 0.3 * size)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img = (rng.normal(80, 20, (size, size)) + 90 * m).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"case{i:03d}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(root / "masks" / f"case{i:03d}.png")
    return root


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv, as strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
