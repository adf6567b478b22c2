"""The data side of :func:`medurwkv.engine.pretrain.pretrain`: folders of images (masks ignored), read once,
and the dataset that gives each image with its random patch mask.

``--data`` takes one or more folders; each is one of (docs/pretrain.md, "Data"):

* a dataset folder of ``medurwkv train`` with ``images/`` (``masks/`` is ignored; images without a mask count);
* nnU-Net raw 2D with ``imagesTr/`` (``<case>_0000.png``; the channel files of a case are stacked, as in
  ``train``; ``labelsTr/`` is ignored);
* a flat folder: the image files directly inside it (not recursive).

3D volume datasets are refused with a clear error (not supported yet). :func:`collect_images` lists the files,
:func:`read_all_images` decodes every one of them once before any work starts (naming the unreadable ones) and
returns the channel counts, from which ``in_channels`` is decided as in ``train``.

Determinism (as ``data/dataset.py``): the augmentation and the patch mask of a sample are drawn from
``SeedSequence(seed, epoch, position)``, so they do not depend on the number of DataLoader workers, and a resumed
run sees the same masks as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.index import DatasetIndex, detect_volume_layout
from ..data.io import IMAGE_EXTENSIONS, is_image_file
from ..data.transforms import AugmentConfig, build_transform
from ..errors import UserError
from ..utils import progress_bar, top_counts

__all__ = [
    "ImageSummary",
    "MaskedImageDataset",
    "augment_config",
    "collect_images",
    "masked_count",
    "patch_mask",
    "read_all_images",
    "steps_per_epoch",
]

_NNUNET_CHANNEL = "_0000"  # channel suffix of the first (or only) channel file of an nnU-Net case


# ---------------------------------------------------------------------------------------- finding images


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _nnunet_cases(folder: Path) -> dict[str, tuple[Path, ...]]:
    """``imagesTr/`` -> {case: (channel 0, channel 1, ...)}; files not named ``<case>_XXXX`` are single images."""
    cases: dict[str, dict[int, Path]] = {}
    for p in _image_files(folder):
        stem, _, ch = p.stem.rpartition("_")
        if stem and len(ch) == 4 and ch.isdigit():
            cases.setdefault(stem, {})[int(ch)] = p
        else:
            cases.setdefault(p.stem, {})[0] = p
    return {case: tuple(chans[c] for c in sorted(chans)) for case, chans in cases.items()}


def _folder_images(root: Path) -> tuple[str, dict[str, tuple[Path, ...]]]:
    """(layout, {name: files}) of one ``--data`` folder; UserError when it holds no 2D images."""
    if not root.exists():
        raise FileNotFoundError(
            f"expected a folder of images for --data, got {root} which does not exist; check the path"
        )
    if not root.is_dir():
        raise UserError(
            f"expected a folder of images for --data, got the file {root}; pass the folder that holds it"
        )
    volume = detect_volume_layout(root)
    if volume is not None:
        raise UserError(
            f"expected 2D images for pretraining, got {root}, a dataset of 3D volumes ({volume}); pretrain "
            "does not read volumes yet: export 2D slices as PNG/TIFF into a folder and pass that folder"
        )
    if (root / "images").is_dir():
        return "images/", {p.stem: (p,) for p in _image_files(root / "images")}
    if (root / "imagesTr").is_dir():
        return "nnU-Net imagesTr/", _nnunet_cases(root / "imagesTr")
    return "flat", {p.stem: (p,) for p in _image_files(root)}


def collect_images(folders: Sequence[str | Path], limit: int | None = None) -> DatasetIndex:
    """Every image of the ``folders`` as a :class:`~medurwkv.data.index.DatasetIndex` without masks (ids
    ``<folder name>/<file stem>``, sorted per folder, folders in the given order); its ``load_image`` reads a
    sample (stacking nnU-Net channel files). ``limit`` keeps the first N.

    Raises:
        FileNotFoundError: a folder does not exist.
        UserError: a folder holds no images (its sub-folders are listed), or holds 3D volumes.
    """
    if not folders:
        raise UserError("expected at least one folder of images (--data DIR [DIR ...]), got none")
    ids: list[str] = []
    paths: dict[str, tuple[Path, ...]] = {}
    seen_names: Counter[str] = Counter()
    roots = [Path(f).expanduser() for f in folders]
    for root in roots:
        layout, found = _folder_images(root)
        if not found:
            subdirs = sorted(
                p.name + "/" for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
            raise UserError(
                f"expected image files ({', '.join(IMAGE_EXTENSIONS)}) in {root} ({layout} layout), got none "
                f"(sub-folders: {subdirs or 'none'}); pass a folder with the images directly inside, or a "
                "dataset folder with images/ (or nnU-Net imagesTr/)"
            )
        seen_names[root.name] += 1
        prefix = root.name if seen_names[root.name] == 1 else f"{root.name}#{seen_names[root.name]}"
        for name in sorted(found):
            ids.append(f"{prefix}/{name}")
            paths[ids[-1]] = found[name]
    if limit is not None:
        ids = ids[:limit]
        paths = {i: paths[i] for i in ids}
    return DatasetIndex(root=roots[0], layout="images", ids=ids, image_paths=paths, mask_paths={}, spacing={})


@dataclass
class ImageSummary:
    """What reading every image once found: channel counts (``{channels: images}``) and sizes (``{"HxW": n}``)."""

    channels: dict[int, int]
    sizes: dict[str, int]

    def describe(self) -> str:
        return f"{sum(self.channels.values())} images, channels {self.channels}, sizes {top_counts(self.sizes, 3)}"


def read_all_images(index: DatasetIndex, *, progress: bool = True) -> ImageSummary:
    """Decode every image of ``index`` once (``data.io.read_image``); raise one UserError naming every file that
    cannot be read, before any training starts."""
    channels: Counter[int] = Counter()
    sizes: Counter[str] = Counter()
    bad: list[str] = []
    for i in progress_bar(index.ids, desc="reading images", progress=progress, leave=False):
        try:
            image = index.load_image(i)  # (H, W) or (H, W, C)
        except (UserError, FileNotFoundError) as e:  # ImageReadError names the file and the decoder's reason
            bad.append(str(e))
            continue
        channels[1 if image.ndim == 2 else int(image.shape[2])] += 1
        sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
    if bad:
        raise UserError(
            f"expected every image to be readable, got {len(bad)} of {len(index.ids)} images that cannot be read: "
            + "; ".join(bad[:20])
            + (f"; ... and {len(bad) - 20} more" if len(bad) > 20 else "")
            + ". Fix or remove these files (nothing was trained)"
        )
    return ImageSummary(dict(sorted(channels.items())), dict(sizes))


# ---------------------------------------------------------------------------------------- masks


def masked_count(n_patches: int, ratio: float) -> int:
    """How many of ``n_patches`` mask patches are masked: ``round(ratio * n_patches)``."""
    return round(ratio * n_patches)


def patch_mask(grid: tuple[int, int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """(gh, gw) bool patch mask with exactly :func:`masked_count` True entries at random positions."""
    n = grid[0] * grid[1]
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: masked_count(n, ratio)]] = True
    return mask.reshape(grid)


def augment_config(strength: float) -> AugmentConfig:
    """Pretraining augmentation of strength ``s`` in (0, 1]: a random resized crop keeping 1 - 0.7 s to all of
    the image's area (s = 0.5: 65-100 %, about SimMIM's 67-100 %), horizontal and vertical flips (p = 0.5); no
    affine warp and no intensity jitter (the target is the image itself)."""
    return AugmentConfig(
        hflip=0.5,
        vflip=0.5,
        affine=0.0,
        resized_crop=1.0,
        crop_scale=(1.0 - 0.7 * strength, 1.0),
        brightness_contrast=0.0,
    )


class MaskedImageDataset(Dataset):
    """Samples ``{"image": (C, H, W) float32 normalised, "mask": (H/p, W/p) bool, "id": str}``.

    ``train``: augmented (strength ``augment``, 0 = resize only) with a new mask per epoch; otherwise the
    evaluation resize and the epoch-0 masks (the fixed images of the reconstruction preview). ``p`` is
    ``mask_patch``; ``img_size`` must be a multiple of it (checked by the caller).
    """

    def __init__(
        self,
        index: DatasetIndex,
        ids: Sequence[str],
        *,
        train: bool,
        img_size: tuple[int, int],
        in_channels: int,
        normalize: str,
        augment: float,
        mask_patch: int,
        mask_ratio: float,
        seed: int,
    ) -> None:
        self.index, self.ids, self.seed = index, list(ids), int(seed)
        self.augmenting = bool(train and augment > 0)
        self.grid = (img_size[0] // mask_patch, img_size[1] // mask_patch)
        self.mask_ratio = float(mask_ratio)
        self.transform = build_transform(
            train=self.augmenting,
            img_size=img_size,
            in_channels=in_channels,
            normalize=normalize,
            augment=augment_config(augment) if self.augmenting else None,
            seed=self.seed,
        )
        # shared memory: set_epoch in the main process reaches persistent DataLoader workers
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation and mask stream of an epoch (call before iterating the DataLoader)."""
        self._epoch.fill_(int(epoch))

    def __getitem__(self, position: int) -> dict[str, Any]:
        sample_id = self.ids[position]
        aug_seed, mask_seed = np.random.SeedSequence([self.seed, int(self._epoch), position]).generate_state(
            2
        )
        if self.augmenting:
            self.transform.set_seed(int(aug_seed))
        x, _ = self.transform(self.index.load_image(sample_id))  # (C, H, W)
        mask = patch_mask(self.grid, self.mask_ratio, np.random.default_rng(int(mask_seed)))  # (gh, gw)
        return {"image": x, "mask": torch.from_numpy(mask), "id": sample_id}


def steps_per_epoch(n_images: int, world_size: int, local_batch: int, max_batches: int | None) -> int:
    """Optimizer steps of one epoch: DistributedSampler's share of each process over its batch size."""
    steps = math.ceil(math.ceil(n_images / world_size) / local_batch)
    return steps if max_batches is None else min(steps, max_batches)
