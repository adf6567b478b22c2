from __future__ import annotations

import numpy as np
import pytest
import torch
from data_synth import make_dataset, save, tiny_dataset
from torch.utils.data import DataLoader

from medurwkv.data import (
    SegmentationDataset,
    discover,
    make_datasets,
    make_split,
    preprocess_image,
    read_image,
)


def _ds(root, **kw):
    index = discover(root)
    kw = {"train": True, "img_size": (16, 24), "in_channels": 3, "normalize": "imagenet", **kw}
    return SegmentationDataset(index, index.ids, **kw)


def test_items_have_the_contract_shapes(tmp_path):
    ds = _ds(tiny_dataset(tmp_path))
    item = ds[0]
    assert set(item) == {"image", "mask", "id"}
    assert item["image"].shape == (3, 16, 24) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (16, 24) and item["mask"].dtype == torch.int64
    assert item["id"] == ds.ids[0]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 24) and len(batch["id"]) == 4


def test_val_items_equal_preprocess_image(tmp_path):
    root = tiny_dataset(tmp_path)
    ds = _ds(root, train=False, in_channels=1, normalize="per_image")
    item = ds[2]
    expected = preprocess_image(
        read_image(root / "images" / f"{item['id']}.png"),
        in_channels=1,
        normalize="per_image",
        img_size=(16, 24),
    )
    assert torch.equal(item["image"], expected)
    assert torch.equal(ds[2]["image"], item["image"])


def test_augmentation_is_deterministic_and_epoch_dependent(tmp_path):
    root = tiny_dataset(tmp_path)
    a, b = _ds(root, seed=1), _ds(root, seed=1)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))
    epoch0 = [a[i]["image"] for i in range(len(a))]
    a.set_epoch(1)
    assert a.epoch == 1
    assert any(not torch.equal(epoch0[i], a[i]["image"]) for i in range(len(a)))
    c = _ds(root, seed=2)
    assert any(not torch.equal(epoch0[i], c[i]["image"]) for i in range(len(c)))


def _collect(ds, workers, epochs, persistent=False):
    loader = DataLoader(ds, batch_size=3, num_workers=workers, persistent_workers=persistent)
    out = []
    for e in epochs:
        ds.set_epoch(e)
        out.append(torch.cat([batch["image"] for batch in loader]))
    return out


def test_workers_do_not_change_augmentation(tmp_path):
    root = tiny_dataset(tmp_path)
    serial = _collect(_ds(root, seed=4), 0, [0, 1])
    parallel = _collect(_ds(root, seed=4), 2, [0, 1], persistent=True)  # set_epoch reaches live workers
    for s, p in zip(serial, parallel):
        assert torch.equal(s, p)
    assert not torch.equal(serial[0], serial[1])


def test_bad_ids_and_labels_raise(tmp_path):
    root = tiny_dataset(tmp_path)
    index = discover(root)
    with pytest.raises(ValueError, match="not image/mask pairs"):
        SegmentationDataset(index, ["nope"], train=False, img_size=None, in_channels=1)
    save(root / "masks" / "001_HC.png", np.full((24, 32), 3, np.uint8))
    ds = SegmentationDataset(discover(root), ["001_HC"], train=False, img_size=None, in_channels=1)
    with pytest.raises(ValueError, match=r"001_HC.png.*\[3\]"):
        ds[0]


def test_make_datasets_from_split(tmp_path):
    root = make_dataset(tmp_path / "d", [f"{k:03d}_HC" for k in range(10)], rgb=True)
    index = discover(root)
    split = make_split(index.ids, val=0.2, test=0.2, seed=0)
    sets = make_datasets(index, split, img_size=(8, 8), in_channels=1)
    assert {k: len(v) for k, v in sets.items()} == split.counts()
    assert sets["train"].augmenting and not sets["val"].augmenting and not sets["test"].augmenting
    assert sets["val"][0]["image"].shape == (1, 8, 8)
