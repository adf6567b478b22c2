"""Helpers for the data-layer tests: tiny synthetic datasets written into tmp_path."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Write an array with Pillow (format from the extension), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def disk_mask(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def make_dataset(
    root: Path,
    ids: list[str],
    *,
    size: tuple[int, int] = (24, 32),
    rgb: bool = False,
    labels: dict | None = None,
    seed: int = 0,
) -> Path:
    """images/<id>.png (random texture) + masks/<id>.png (0/255 disk) [+ dataset.json]."""
    rng = np.random.default_rng(seed)
    h, w = size
    for k, sample_id in enumerate(ids):
        shape = (h, w, 3) if rgb else (h, w)
        save(root / "images" / f"{sample_id}.png", rng.integers(0, 256, shape, dtype=np.uint8))
        m = disk_mask(h, w, h / 2, w / 2 + (k % 5) - 2, min(h, w) / 4).astype(np.uint8) * 255
        save(root / "masks" / f"{sample_id}.png", m)
    if labels is not None:
        (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    return root


HC18_LIKE_IDS = ["000_HC", "000_2HC", "001_HC", "002_HC", "002_2HC", "002_3HC", "003_HC", "004_HC"]


def tiny_dataset(tmp_path: Path) -> Path:
    """Eight HC18-style ids in five exams (groups 000..004), with dataset.json."""
    return make_dataset(tmp_path / "ds", HC18_LIKE_IDS, labels={"background": 0, "head": 1})


def ellipse(shape, cy, cx, ry, rx, angle=0.0, pad=40):
    """Filled rotated ellipse on `shape`, and its 1-px outline (drawn on a padded canvas, then cropped)."""
    h, w = shape
    yy, xx = np.mgrid[-pad : h + pad, -pad : w + pad].astype(float)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    filled = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    outline = filled & ~ndi.binary_erosion(filled)  # pixels with a 4-neighbour outside: 8-connected curve
    crop = (slice(pad, pad + h), slice(pad, pad + w))
    return filled[crop], outline[crop]


def hc18_archive(tmp: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Official-style training_set.zip (4 annotated frames, 2 cut by the border) + pixel-size CSV."""
    rng = np.random.default_rng(0)
    truth = {}
    specs = {
        "000_HC": (30, 40, 0.2),
        "000_2HC": (31, 41, 0.3),
        "001_HC": (6, 40, 0.0),
        "002_HC": (30, 74, 0.4),
    }
    folder = tmp / "training_set"
    for sid, (cy, cx, a) in specs.items():
        filled, outline = ellipse((60, 80), cy, cx, 15, 22, a)
        truth[sid] = filled
        save(folder / f"{sid}.png", rng.integers(0, 256, (60, 80), dtype=np.uint8))
        save(folder / f"{sid}_Annotation.png", outline.astype(np.uint8) * 255)
    save(tmp / "test_set" / "100_HC.png", np.zeros((60, 80), np.uint8))  # test image: no annotation
    archive = tmp / "training_set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted((tmp / "training_set").iterdir()):
            zf.write(p, f"training_set/{p.name}")
        zf.write(tmp / "test_set" / "100_HC.png", "test_set/100_HC.png")
        zf.writestr("__MACOSX/training_set/._000_HC.png", b"junk")
    csv = tmp / "training_set_pixel_size_and_HC.csv"
    csv.write_text(
        "filename,pixel size(mm),head circumference (mm)\n"
        + "".join(f"{sid}.png,0.{k + 1},{50 + k}\n" for k, sid in enumerate(specs))
    )
    return archive, truth
