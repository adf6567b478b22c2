from __future__ import annotations

import numpy as np
import pytest
import torch

from medurwkv.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    SegTransform,
    adapt_channels,
    build_transform,
    preprocess_image,
    to_float01,
)
from medurwkv.errors import UserError


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


def test_crop_fit_keeps_the_pixel_scale():
    # 20x12 image, 16x16 target: rows are cut (centre), columns padded with zeros; no resampling
    img = np.arange(20 * 12, dtype=np.float32).reshape(20, 12)
    mask = (img % 2).astype(np.int64)
    x, m = build_transform(train=False, img_size=16, in_channels=1, normalize="none", fit="crop")(img, mask)
    assert x.shape == (1, 16, 16) and m.shape == (16, 16)
    assert torch.equal(x[0, :, 2:14], torch.from_numpy(img[2:18]))  # centre rows 2..17, columns padded 2 + 2
    assert (x[0, :, :2] == 0).all() and (x[0, :, 14:] == 0).all() and (m[:, :2] == 0).all()
    assert torch.equal(m[:, 2:14], torch.from_numpy(mask[2:18]))
    # training: a random 16x16 window of the padded image; its values are image values or the zero padding
    plain = AugmentConfig(hflip=0, vflip=0, affine=0, brightness_contrast=0)
    t = build_transform(
        train=True, img_size=16, in_channels=1, normalize="none", fit="crop", augment=plain, seed=0
    )
    xt, mt = t(img, mask)
    values = set(np.unique(xt.numpy()).tolist())
    assert values <= set(img.ravel().tolist()) | {0.0} and len(values) > 100
    with pytest.raises(UserError, match="fit"):
        build_transform(train=False, img_size=16, in_channels=1, fit="squash")


def test_prenormalised_images_get_an_unclipped_intensity_jitter():
    # z-scored slices (normalize "none") lie far outside [0, 1]; albumentations' brightness/contrast would
    # clip them there, so they get the same formula without clipping: x * (1 + c) + b, |c| <= 0.2, |b| <= 0.2
    img = np.linspace(-8, 8, 32 * 32, dtype=np.float32).reshape(32, 32)
    cfg = AugmentConfig(hflip=0, vflip=0, affine=0, resized_crop=0, brightness_contrast=1.0)
    t = SegTransform(train=True, img_size=32, in_channels=1, normalize="none", augment=cfg, seed=0)
    seen = []
    for seed in range(20):
        t.set_seed(seed)
        x = t(img)[0][0].numpy().astype(np.float64)
        # the jitter is affine: fit x = a * img + b exactly
        a, b = np.polyfit(img.ravel().astype(np.float64), x.ravel(), 1)
        assert np.allclose(x, a * img + b, atol=1e-4)
        assert 0.8 - 1e-6 <= a <= 1.2 + 1e-6 and abs(b) <= 0.2 + 1e-6
        assert x.min() < -6 and x.max() > 6  # not clipped to [0, 1]
        seen.append((round(a, 6), round(b, 6)))
    assert len(set(seen)) == 20  # a different draw per seed
    t.set_seed(3)
    again = t(img)[0]
    t.set_seed(3)
    assert torch.equal(again, t(img)[0])  # the same seed, the same jitter
    # 2D images in [0, 1] keep albumentations' transform (and its clipping)
    t2d = SegTransform(train=True, img_size=32, in_channels=1, normalize="per_image", augment=cfg, seed=0)
    assert not t2d._own_jitter
    assert any(type(op).__name__ == "RandomBrightnessContrast" for op in t2d.geometry.transforms)
    assert not any(type(op).__name__ == "RandomBrightnessContrast" for op in t.geometry.transforms)
