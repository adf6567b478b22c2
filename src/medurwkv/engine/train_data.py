"""The data side of :func:`medurwkv.engine.train.fit`: check, split and index once, then the loaders.

:func:`prepare_data` is one step on rank 0 (the dataset check, the split loaded or created, the classes and
input channels decided) followed by one broadcast of its result, so every process trains on the same split
and classes without scanning the masks again. :func:`make_loaders` builds the DataLoaders of one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UserError
from ..models.pretrained import default_normalization
from ..utils import top_counts
from .config import TrainConfig
from .distributed import DistInfo, broadcast_object

if TYPE_CHECKING:  # albumentations is imported only when the loaders are built
    from ..data.transforms import AugmentConfig

__all__ = [
    "PreparedData",
    "Loaders",
    "prepare_data",
    "make_loaders",
    "auto_in_channels",
    "train_augmentation",
]

Log = Callable[[str], None]


@dataclass
class PreparedData:
    """What every process knows about the data before the model is built."""

    index: Any  # medurwkv.data.index.DatasetIndex
    class_names: list[str]
    in_channels: int
    normalize: str
    split: dict[str, Any]  # path, created, fold, checksum and the train / val / test ids
    volume: dict[str, Any] | None = None  # VolumeSpec.to_dict() when training 2D on a volume dataset

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Loaders:
    """The DataLoaders of one process and the numbers the schedule needs."""

    train_ds: Any  # SegmentationDataset (set_epoch seeds its augmentation)
    sampler: Any  # DistributedSampler (set_epoch fixes the data order)
    train: Any
    val: Any | None  # this process's disjoint share of the validation images, None if it has none
    ids: dict[str, list[str]]  # the ids used per split (after --limit); case ids for volumes
    steps_per_epoch: int


def auto_in_channels(channels: list[int]) -> int:
    """Model input channels from the channel counts found in the data."""
    # gray everywhere -> 1; any colour image -> 3 (gray images are repeated, RGBA drops alpha)
    if not channels or set(channels) <= {1}:
        return 1
    return 3 if max(channels) in (3, 4) else max(channels)


def prepare_data(
    cfg: TrainConfig, run_dir: Path, info: DistInfo, log: Log, resume: dict[str, Any] | None = None
) -> PreparedData:
    """Check ``cfg.data``, load or create the split (or take it from the ``resume`` checkpoint) and index the
    dataset: one step on rank 0, then one broadcast of its result to the other processes.

    Raises:
        DatasetCheckError: the dataset check found errors (nothing is trained).
    """
    index, result = None, None
    if info.is_main:
        try:
            index, result = _inspect(cfg, run_dir, log, resume)
        except Exception as e:
            if info.enabled:  # the other processes wait for the broadcast: tell them to stop too
                broadcast_object(
                    {"error": f"{type(e).__name__}: {e}", "user": isinstance(e, UserError)}, info
                )
            raise
    result = broadcast_object(result, info)
    if "error" in result:
        error = UserError if result["user"] else RuntimeError
        raise error(f"rank 0 could not prepare the data: {result['error']}")
    if index is None:
        index = _index_like_main(cfg, run_dir, result, info)
    return PreparedData(index=index, **result)


def _inspect(
    cfg: TrainConfig, run_dir: Path, log: Log, resume: dict[str, Any] | None
) -> tuple[Any, dict[str, Any]]:
    """Rank 0: the dataset check, then the split, the input channels and the normalisation."""
    from ..data.check import DatasetCheckError, check_dataset

    report = check_dataset(cfg.data, progress=cfg.progress)
    if not report.ok:
        log(report.format())
        raise DatasetCheckError(
            f"dataset {cfg.data} failed its check with {len(report.errors)} error(s); training refused:\n"
            + "\n".join(f"  - {e}" for e in report.errors[:20])
        )
    volumes = getattr(report, "volumes", None)  # a VolumeCheckReport: 3D volumes, trained as 2D slices
    index, s = (volumes if volumes is not None else report.index), report.summary
    log(f"data: {index.summary_line()}")
    if volumes is not None:
        log(
            f"data check: ok ({s.get('cases')} cases, spacings {top_counts(s.get('spacings') or {}, 3)}, "
            f"orientations {s.get('orientations')})"
        )
    else:
        sizes = top_counts(s.get("sizes") or {}, 3)
        log(f"data check: ok ({s.get('pairs')} pairs, sizes {sizes}, channels {s.get('channels')})")
    for w in report.warnings[:10]:
        log(f"data warning: {w}")
    if len(report.warnings) > 10:
        log(f"data warning: ... {len(report.warnings) - 10} more (run `medurwkv data check {cfg.data}`)")
    if resume is not None:
        split = _split_of_checkpoint(resume, cfg, index, log)
    else:
        split = _load_or_create_split(cfg, run_dir, index, log)
    if volumes is not None:
        return _inspect_volumes(cfg, run_dir, volumes, split, log, resume)
    if resume is not None:
        in_channels = int(resume["preprocess"]["in_channels"])
        normalize = resume["preprocess"]["normalize"]
    else:
        in_channels = cfg.in_channels or auto_in_channels([int(c) for c in (s.get("channels") or {})])
        normalize = cfg.normalize or default_normalization(cfg.pretrained)
    result = dict(class_names=index.class_names, in_channels=in_channels, normalize=normalize, split=split)
    return index, result


def _inspect_volumes(
    cfg: TrainConfig,
    run_dir: Path,
    volumes: Any,
    split: dict[str, Any],
    log: Log,
    resume: dict[str, Any] | None,
) -> tuple[Any, dict[str, Any]]:
    """Rank 0, volume datasets: the slicing and intensity spec (fitted on the training cases, or the resumed
    run's), then the normalised slice cache of the train and val cases (data/volume_slices.py)."""
    from ..data.volume_slices import (
        VolumeSpec,
        build_slice_index,
        fit_intensity,
        intensity_schemes,
        resolve_axis,
    )
    from ..data.volumes import read_volume

    train_cases = _limited(split["train"], cfg.limit)
    if resume is not None:
        spec = VolumeSpec.from_dict(resume["preprocess"].get("volume"), "the resumed checkpoint")
    else:
        spacings = [read_volume(volumes.image_paths[c][0], data=False).spacing for c in train_cases]
        spec = VolumeSpec(
            axis=resolve_axis(cfg.slice_axis, spacings),
            context=cfg.context_slices,
            channel_names=list(volumes.channel_names),
            intensity=fit_intensity(
                volumes,
                train_cases,
                intensity_schemes(volumes.channel_names, cfg.intensity),
                seed=cfg.seed,
                progress=cfg.progress,
            ),
            median_spacing=[float(v) for v in np.median(np.asarray(spacings), axis=0)] if spacings else None,
            target_spacing=cfg.target_spacing,
        )
        if cfg.in_channels is not None and cfg.in_channels != spec.in_channels:
            raise UserError(
                f"expected --in-channels {spec.in_channels} for these volumes ({spec.num_channels} channel(s) x "
                f"{2 * spec.context + 1} slices), got {cfg.in_channels}; drop --in-channels"
            )
        if cfg.normalize not in (None, "none"):
            raise UserError(
                f"expected no --normalize for volumes (their intensity rule comes from the modality, see "
                f"--intensity), got {cfg.normalize!r}; drop it"
            )
    log(f"volumes: {spec.describe()}")
    cases = train_cases + _limited(split["val"], cfg.limit)
    slices = build_slice_index(
        volumes, cases, spec, run_dir / "slices", list(volumes.class_names), progress=cfg.progress, log=log
    )
    result = dict(
        class_names=list(volumes.class_names),
        in_channels=spec.in_channels,
        normalize="none",
        split=split,
        volume=spec.to_dict(),
    )
    return slices, result


def _limited(ids: list[str], limit: int | None) -> list[str]:
    return list(ids) if limit is None else list(ids)[:limit]


def _split_of_checkpoint(ckpt: dict[str, Any], cfg: TrainConfig, index: Any, log: Log) -> dict[str, Any]:
    split = ckpt["split"]
    known = set(index.ids)
    missing = [i for k in ("train", "val", "test") for i in split[k] if i not in known]
    if missing:
        raise UserError(
            f"the run's split names {len(missing)} ids that are not in {cfg.data} (e.g. {missing[:5]}); "
            "resume with the same dataset (--data)"
        )
    log(
        f"split: from the checkpoint ({split['path']}, train {len(split['train'])} / val "
        f"{len(split['val'])} / test {len(split['test'])})"
    )
    return split


def _load_or_create_split(cfg: TrainConfig, run_dir: Path, index: Any, log: Log) -> dict[str, Any]:
    """Split ids (ensure_split; if DATA is read-only the new split file goes to RUN_DIR)."""
    from ..data.split import ensure_split

    kwargs = dict(
        val=cfg.val_fraction,
        test=cfg.test_fraction,
        group=cfg.group_by,
        folds=cfg.folds,
        fold=cfg.fold,
        index=index,
        verbose=False,
    )
    out = Path(cfg.split_file).expanduser() if cfg.split_file else None
    try:
        split, path, created = ensure_split(cfg.data, out=out, **kwargs)
    except PermissionError:
        if out is not None:
            raise
        out = run_dir / "splits.json"
        split, path, created = ensure_split(cfg.data, out=out, **kwargs)
        if created:
            log(
                f"split: the dataset folder {cfg.data} is read-only, so the new split was saved in the run "
                f"folder instead: {path}"
            )
    log(f"split: {'created and saved' if created else 'loaded'} {path}: {split.describe()}")
    return {
        "path": str(path),
        "created": bool(created),
        "fold": split.fold,
        "checksum": split.checksum,
        "train": split.ids("train"),
        "val": split.ids("val"),
        "test": split.ids("test"),
    }


def _index_like_main(cfg: TrainConfig, run_dir: Path, result: dict[str, Any], info: DistInfo) -> Any:
    """Other ranks: the same folder (or rank 0's slice cache), the classes from rank 0 (no second scan)."""
    from ..data.index import discover

    class_names = result["class_names"]
    if result.get("volume") is not None:
        from ..data.volume_slices import SliceIndex

        return SliceIndex.open(run_dir / "slices", Path(cfg.data), class_names)
    index = discover(cfg.data)
    if not index.classes_known:
        index.set_inferred_classes(len(class_names) - 1)
    if index.class_names != class_names:
        raise RuntimeError(f"rank {info.rank} sees classes {index.class_names}, rank 0 {class_names}")
    return index


def train_augmentation(cfg: TrainConfig) -> AugmentConfig | bool:
    """The training split's augmentation: False without ``augment``, else the default augmentation at
    ``augment_strength`` (1.0: exactly the default, :meth:`AugmentConfig.scaled`)."""
    from ..data.transforms import AugmentConfig

    return AugmentConfig().scaled(cfg.augment_strength) if cfg.augment else False


def make_loaders(
    cfg: TrainConfig, data: PreparedData, info: DistInfo, *, pin_memory: bool = False
) -> Loaders:
    """This process's training loader (its DistributedSampler share) and validation loader."""
    from torch.utils.data import DataLoader, DistributedSampler

    from ..data.dataset import SegmentationDataset

    ids = {k: _limited(data.split[k], cfg.limit) for k in ("train", "val", "test")}
    if not ids["train"]:
        raise UserError(f"expected training images, got an empty train split in {data.split['path']}")
    if cfg.batch_size % info.world_size:
        raise UserError(
            f"expected --batch-size (the global batch) divisible by the {info.world_size} processes, got "
            f"{cfg.batch_size}; use a multiple of {info.world_size}"
        )
    # volumes resampled to a target spacing keep their pixel scale: pad / crop to img_size, never resize
    fit = "crop" if (data.volume or {}).get("target_spacing") else "resize"
    common = dict(
        img_size=cfg.img_hw, in_channels=data.in_channels, normalize=data.normalize, seed=cfg.seed, fit=fit
    )
    train_ids, val_ids = ids["train"], ids["val"]
    augment = train_augmentation(cfg)
    if data.volume is not None:  # ids are cases; the datasets hold their slices
        from ..data.volume_slices import VolumeSliceDataset

        train_ids, val_ids = data.index.slice_ids(train_ids), data.index.slice_ids(val_ids)
        train_ds: Any = VolumeSliceDataset(
            data.index,
            train_ids,
            foreground_ratio=cfg.foreground_oversample,
            train=True,
            augment=augment,
            **common,
        )
    else:
        train_ds = SegmentationDataset(data.index, train_ids, train=True, augment=augment, **common)
    # Every process validates a disjoint share (no padding duplicates); sums are all-reduced.
    val_ids = val_ids[info.rank :: info.world_size]
    val_ds = (
        SegmentationDataset(data.index, val_ids, train=False, augment=False, **common) if val_ids else None
    )
    local_bs = cfg.batch_size // info.world_size
    # The same sampler with one process keeps the data order identical to a DDP run with the same
    # global batch (the union of the processes' batch k is the single-process batch k).
    sampler = DistributedSampler(
        train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed, drop_last=False
    )
    loader_kw: dict[str, Any] = dict(num_workers=cfg.num_workers, pin_memory=pin_memory)
    if cfg.num_workers > 0:
        loader_kw["persistent_workers"] = True
    gen = torch.Generator().manual_seed(cfg.seed)
    train = DataLoader(
        train_ds, batch_size=local_bs, sampler=sampler, drop_last=False, generator=gen, **loader_kw
    )
    val = DataLoader(val_ds, batch_size=max(1, local_bs), shuffle=False, **loader_kw) if val_ds else None
    steps = math.ceil(len(sampler) / local_bs)
    if cfg.max_train_batches is not None:
        steps = min(steps, cfg.max_train_batches)
    return Loaders(train_ds, sampler, train, val, ids, steps)
