"""``--augment-strength``: 1.0 is exactly the augmentation the training split had before the option existed;
other strengths scale its ranges and probabilities (data/transforms.py ``AugmentConfig.scaled``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import albumentations as A
import pytest
import torch
import yaml
from engine_testing import make_disks

from medurwkv.cli.train import register
from medurwkv.data.dataset import SegmentationDataset
from medurwkv.data.index import discover
from medurwkv.data.transforms import AugmentConfig
from medurwkv.engine.checkpoint import load_checkpoint
from medurwkv.engine.config import TrainConfig, resolve_config
from medurwkv.engine.distributed import DistInfo
from medurwkv.engine.train import fit
from medurwkv.engine.train_data import PreparedData, make_loaders, train_augmentation
from medurwkv.errors import UserError


@pytest.fixture
def disks(tmp_path: Path) -> Path:
    return make_disks(tmp_path / "disks", n=8)


def _train_ds(disks: Path, **options):
    """The training dataset make_loaders builds for ``options`` (seed 0, 32 px, per-image normalisation)."""
    index = discover(disks)
    ids = sorted(index.ids)
    split = {"path": "-", "train": ids, "val": [], "test": []}
    data = PreparedData(
        index=index, class_names=index.class_names, in_channels=1, normalize="per_image", split=split
    )
    cfg = TrainConfig(data=str(disks), img_size=32, batch_size=4, num_workers=0, **options)
    return make_loaders(cfg, data, DistInfo()).train_ds, ids


def _samples(ds, epochs=(0, 1)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        out += [(s["image"], s["mask"]) for s in (ds[i] for i in range(len(ds)))]
    return out


def _ops(ds) -> dict[str, A.BasicTransform]:
    """The albumentations transforms of a training pipeline by class name (the OneOf's children included)."""
    found: dict[str, A.BasicTransform] = {}
    for t in ds.transform.geometry.transforms:
        for u in getattr(t, "transforms", [t]):
            found[type(u).__name__] = u
    return found


def test_strength_one_is_bit_identical_to_the_default_augmentation(disks: Path):
    ds, ids = _train_ds(disks)  # augment_strength defaults to 1.0
    assert TrainConfig().augment_strength == 1.0 and train_augmentation(TrainConfig()) == AugmentConfig()
    # the dataset as make_loaders built it before the option: augment=True, the default AugmentConfig
    before = SegmentationDataset(
        discover(disks),
        ids,
        train=True,
        img_size=(32, 32),
        in_channels=1,
        normalize="per_image",
        augment=True,
        seed=0,
    )
    got, want = _samples(ds), _samples(before)
    assert len(got) == 2 * len(ids)
    for (x, m), (x0, m0) in zip(got, want):
        assert torch.equal(x, x0) and torch.equal(m, m0)
    assert train_augmentation(TrainConfig(augment=False)) is False


@pytest.mark.parametrize("s", [0.5, 2.0])
def test_other_strengths_scale_the_ranges(disks: Path, s: float):
    base = AugmentConfig()
    cfg = base.scaled(s)
    assert cfg.rotate == base.rotate * s and cfg.translate == base.translate * s
    assert cfg.brightness == base.brightness * s and cfg.contrast == base.contrast * s
    assert cfg.scale == (base.scale[0] ** s, base.scale[1] ** s)  # zoom: log range x s
    assert cfg.crop_scale == (base.crop_scale[0] ** s, 1.0)
    assert cfg.affine == min(1.0, base.affine * s) and cfg.brightness_contrast == min(1.0, 0.5 * s)
    assert (cfg.hflip, cfg.vflip) == (base.hflip, base.vflip)  # flips are not scaled
    if s > 1:  # wider than the default in every range
        assert cfg.scale[0] < base.scale[0] and cfg.scale[1] > base.scale[1] and cfg.rotate > base.rotate
    else:
        assert cfg.scale[0] > base.scale[0] and cfg.scale[1] < base.scale[1] and cfg.rotate < base.rotate

    ds, _ = _train_ds(disks, augment_strength=s)
    ops = _ops(ds)  # the pipeline make_loaders builds has them
    assert ops["Affine"].rotate == (-base.rotate * s, base.rotate * s) and ops["Affine"].p == cfg.affine
    assert ops["Affine"].scale["x"] == cfg.scale
    assert ops["RandomBrightnessContrast"].brightness_limit == (-cfg.brightness, cfg.brightness)
    assert ops["RandomResizedCrop"].scale == cfg.crop_scale
    default, _ = _train_ds(disks)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(_samples(ds, (0,)), _samples(default, (0,))))


def test_large_strengths_stay_valid():
    cfg = AugmentConfig().scaled(100.0)
    assert cfg.rotate == 180.0 and cfg.translate == 0.5 and cfg.contrast == 0.9 and cfg.brightness == 1.0
    assert cfg.affine == cfg.resized_crop == cfg.brightness_contrast == 1.0
    assert 0 < cfg.scale[0] < 1 < cfg.scale[1] and 0 < cfg.crop_scale[0] < 1


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, math.nan, math.inf])
def test_strength_must_be_positive(bad: float):
    with pytest.raises(
        UserError, match=r"expected augment_strength to be a .*number > 0 .*got .*--augment-strength"
    ):
        TrainConfig(augment_strength=bad)
    with pytest.raises(UserError, match="augment_strength"):
        resolve_config({"augment_strength": "strong"})
    with pytest.raises(UserError, match="expected an augmentation strength > 0"):
        AugmentConfig().scaled(bad)


def test_cli_flag_and_the_run_records_it(disks: Path, tmp_path: Path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--augment-strength", "0.5"])
    assert args.augment_strength == 0.5
    out = tmp_path / "run"
    fit(
        data=disks,
        out=out,
        model="unet",
        model_kwargs={"base_channels": 4, "depth": 2},
        augment_strength=0.5,
        epochs=1,
        max_train_batches=1,
        img_size=32,
        batch_size=4,
        num_workers=0,
        progress=False,
        eval_test=False,
        tensorboard=False,
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["augment_strength"] == 0.5
    assert load_checkpoint(out / "last.pt")["train_config"]["augment_strength"] == 0.5
    # an option that changes the numbers: it may not change on resume
    with pytest.raises(UserError, match="augment_strength: asked 2.0, run has 0.5"):
        fit(resume=out, augment_strength=2.0)
