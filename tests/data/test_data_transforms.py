from __future__ import annotations

import numpy as np
import pytest
import torch

from medurwkv.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    adapt_channels,
    build_transform,
    preprocess_image,
    to_float01,
)


def test_to_float01_scales_by_dtype_max():
    assert to_float01(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    u16 = to_float01(np.array([0, 65535, 32768], np.uint16))
    np.testing.assert_allclose(u16, [0.0, 1.0, 32768 / 65535], rtol=1e-6)
    f = np.array([0.25], np.float32)
    assert to_float01(f)[0] == 0.25
    # the same picture stored in 8 and 16 bit gives the same model input
    img8 = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    a = preprocess_image(img8, in_channels=1, normalize="imagenet")
    b = preprocess_image(img8.astype(np.uint16) * 257, in_channels=1, normalize="imagenet")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_channel_adaptation():
    gray = np.random.default_rng(0).random((4, 5)).astype(np.float32)
    rgb = adapt_channels(gray, 3)
    assert rgb.shape == (4, 5, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
    colour = np.random.default_rng(1).random((4, 5, 3)).astype(np.float32)
    luma = adapt_channels(colour, 1)
    expected = 0.299 * colour[..., 0] + 0.587 * colour[..., 1] + 0.114 * colour[..., 2]
    np.testing.assert_allclose(luma[..., 0], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="in_channels=2"):
        adapt_channels(colour, 2)


def test_imagenet_normalisation_values():
    v = 0.6
    img = np.full((6, 7, 3), v, np.float32)
    x = preprocess_image(img, in_channels=3, normalize="imagenet")
    assert x.shape == (3, 6, 7) and x.dtype == torch.float32
    for c in range(3):
        assert x[c, 0, 0].item() == pytest.approx((v - IMAGENET_MEAN[c]) / IMAGENET_STD[c], rel=1e-5)
    g = preprocess_image(img[..., 0], in_channels=1, normalize="imagenet")
    assert g[0, 0, 0].item() == pytest.approx((v - np.mean(IMAGENET_MEAN)) / np.mean(IMAGENET_STD), rel=1e-5)


def test_per_image_normalisation():
    img = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    x = preprocess_image(img, in_channels=3, normalize="per_image")
    torch.testing.assert_close(x.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(1, 2), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    flat = preprocess_image(np.full((5, 5), 7, np.uint8), in_channels=1, normalize="per_image")
    assert torch.count_nonzero(flat) == 0  # constant image: no division blow-up
    with pytest.raises(ValueError, match="normalize"):
        preprocess_image(img, in_channels=3, normalize="minmax")


def test_preprocess_resizes_and_is_deterministic():
    img = np.random.default_rng(3).integers(0, 256, (50, 70), dtype=np.uint8)
    a = preprocess_image(img, in_channels=3, normalize="imagenet", img_size=(32, 48))
    b = preprocess_image(img, in_channels=3, normalize="imagenet", img_size=(32, 48))
    assert a.shape == (3, 32, 48) and torch.equal(a, b)
    assert preprocess_image(img, in_channels=1, normalize="imagenet", img_size=16).shape == (1, 16, 16)


def test_eval_transform_matches_preprocess_image():
    img = np.random.default_rng(4).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), np.int64)
    mask[10:30, 20:50] = 2
    tf = build_transform(train=False, img_size=(24, 32), in_channels=1, normalize="per_image")
    x, m = tf(img, mask)
    torch.testing.assert_close(
        x, preprocess_image(img, in_channels=1, normalize="per_image", img_size=(24, 32)), atol=0, rtol=0
    )
    assert m.dtype == torch.int64 and m.shape == (24, 32) and set(m.unique().tolist()) == {0, 2}


def test_train_transform_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(5)
    mask = np.zeros((64, 80), np.int64)
    mask[16:48, 20:60] = 1
    img = np.where(mask[..., None] == 1, 230, 20).astype(np.uint8).repeat(3, axis=2)
    img = np.clip(img.astype(int) + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
    cfg = AugmentConfig(brightness_contrast=0.0)  # keep intensities so the image still encodes the mask
    tf = build_transform(train=True, img_size=(48, 64), in_channels=3, normalize="per_image", augment=cfg)
    changed = 0
    for s in range(12):
        tf.set_seed(s)
        x, m = tf(img, mask)
        assert x.shape == (3, 48, 64) and m.shape == (48, 64)
        assert set(m.unique().tolist()) <= {0, 1}  # nearest-neighbour: no new labels
        bright = x[0] > 0.0
        inner = (m == 1) & bright
        # away from interpolated edges the bright pixels are exactly the foreground
        agree = (bright == (m == 1)).float().mean().item()
        assert agree > 0.95, (s, agree)
        changed += int(inner.sum() != (mask == 1).sum())
    assert changed > 0


def test_train_transform_seeding():
    img = np.random.default_rng(6).integers(0, 256, (40, 40), dtype=np.uint8)
    mask = (np.random.default_rng(7).random((40, 40)) > 0.5).astype(np.int64)
    tf = build_transform(train=True, img_size=(32, 32), in_channels=1, normalize="imagenet")
    tf.set_seed(11)
    a = tf(img, mask)
    tf.set_seed(11)
    b = tf(img, mask)
    tf.set_seed(12)
    c = tf(img, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_mask_size_mismatch_raises():
    tf = build_transform(train=False, img_size=None, in_channels=1, normalize="imagenet")
    with pytest.raises(ValueError, match="sizes must match"):
        tf(np.zeros((4, 4), np.uint8), np.zeros((5, 4), np.int64))
