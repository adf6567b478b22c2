"""PyTorch dataset over a ``DatasetIndex``.

Determinism: each training sample is augmented with albumentations re-seeded from
``(seed, epoch, sample position)`` (``numpy.random.SeedSequence``), so the augmentation of a sample is
the same whatever the number of DataLoader workers or their scheduling, and changes with the epoch.
Call ``dataset.set_epoch(epoch)`` at the start of every epoch (like ``DistributedSampler.set_epoch``);
the epoch lives in a shared-memory tensor, so the call reaches persistent DataLoader workers too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .index import DatasetIndex
from .transforms import AugmentConfig, SegTransform

__all__ = ["SegmentationDataset", "make_datasets"]


class SegmentationDataset(Dataset):
    """Samples ``{"image": (C,H,W) float32, "mask": (H,W) int64, "id": str}`` for the given ids.

    ``train=True`` with ``augment=True`` applies the training augmentation; otherwise the deterministic
    evaluation transform (identical to ``preprocess_image``). ``fit``: ``"resize"`` to ``img_size`` or
    ``"crop"`` (pad and cut, keeping the pixel scale; see ``SegTransform``). Mask values are validated against
    the index's ``num_classes``.
    """

    def __init__(
        self,
        index: DatasetIndex,
        ids: Sequence[str],
        *,
        train: bool,
        img_size: int | Sequence[int] | None,
        in_channels: int,
        normalize: str = "imagenet",
        augment: bool | AugmentConfig = True,
        seed: int = 0,
        fit: str = "resize",
    ) -> None:
        known = set(index.ids)
        missing = [i for i in ids if i not in known]
        if missing:
            raise UserError(
                f"{len(missing)} ids are not image/mask pairs of {index.root} (e.g. {missing[:5]}); "
                "the split does not match the dataset"
            )
        self.index = index
        self.ids = list(ids)
        self.train = train
        self.seed = int(seed)
        self.augmenting = bool(train and augment)
        cfg = augment if isinstance(augment, AugmentConfig) else None
        self.num_classes = index.num_classes  # resolves (or infers) classes once, up front
        self.transform = SegTransform(
            train=self.augmenting,
            img_size=img_size,
            in_channels=in_channels,
            normalize=normalize,
            augment=cfg,
            seed=self.seed,
            fit=fit,
        )
        # shared memory: set_epoch in the main process is seen by (persistent) worker processes
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of an epoch (call before iterating the DataLoader)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def sample_seed(self, position: int) -> int:
        """Seed of the augmentation of sample ``position`` in the current epoch."""
        return int(np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(1)[0])

    def __getitem__(self, position: int) -> dict:
        return self._sample(self.ids[position], position)

    def _sample(self, sample_id: str, position: int) -> dict:
        """Sample ``sample_id`` with the augmentation stream of ``position`` in this epoch."""
        image = self.index.load_image(sample_id)
        mask = self.index.load_mask(sample_id)
        if self.augmenting:
            self.transform.set_seed(self.sample_seed(position))
        x, m = self.transform(image, mask)
        return {"image": x, "mask": m, "id": sample_id}


def make_datasets(
    index: DatasetIndex,
    split,
    *,
    img_size: int | Sequence[int] | None,
    in_channels: int,
    normalize: str = "imagenet",
    augment: bool | AugmentConfig = True,
    seed: int = 0,
) -> dict[str, SegmentationDataset]:
    """Train (augmented), val and test datasets for a ``Split`` (empty splits are left out)."""
    out = {}
    for name in ("train", "val", "test"):
        ids = split.ids(name)
        if ids:
            out[name] = SegmentationDataset(
                index,
                ids,
                train=name == "train",
                img_size=img_size,
                in_channels=in_channels,
                normalize=normalize,
                augment=augment,
                seed=seed,
            )
    return out
