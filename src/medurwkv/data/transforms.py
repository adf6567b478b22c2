"""Image/mask transforms: training augmentation, deterministic evaluation preprocessing.

Pipeline for every image (train, val, test, predict)::

    stored dtype --to_float01--> float32 [0, 1] --adapt_channels--> (H, W, in_channels)
        --geometry (train: augment + resize/crop; eval: resize to img_size)--> --normalize--> (C, H, W) tensor

* ``to_float01``: uint8 / 255, uint16 / 65535 (16-bit images are scaled by their dtype maximum, not by
  their own range, so intensities stay comparable between images), float images are used as stored.
* ``adapt_channels``: gray -> 3 channels by repetition when the model takes 3; RGB -> gray by ITU-R 601
  luminance (0.299 R + 0.587 G + 0.114 B) when it takes 1.
* ``normalize``: ``"imagenet"``: (x - mean) / std with mean (0.485, 0.456, 0.406), std (0.229, 0.224,
  0.225) on the [0, 1] scale (1-channel or non-RGB images use the means of the three values);
  ``"per_image"``: per-channel zero mean / unit std over the image (constant channels become 0);
  ``"none"``: as given (slices of volumes, normalised per volume before slicing: data/volume_slices.py).
* Geometry uses albumentations: images bilinear, masks nearest. Evaluation resizes straight to
  ``img_size`` (aspect ratio is not kept), so predictions must be resized back to the original size.

``preprocess_image`` is exactly the evaluation path for an image, used by predict/evaluate/export.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import albumentations as A
import cv2
import numpy as np
import torch

from ..errors import UserError

__all__ = [
    "AugmentConfig",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZE_MODES",
    "SegTransform",
    "adapt_channels",
    "build_transform",
    "normalize_image",
    "preprocess_image",
    "to_float01",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE_MODES = ("imagenet", "per_image", "none")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_float01(image: np.ndarray) -> np.ndarray:
    """Convert to float32 scaled to [0, 1] by the dtype maximum (uint8: 255, uint16: 65535)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1.0 / 255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1.0 / 65535.0)
    if image.dtype == bool:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    raise ValueError(f"unsupported image dtype {image.dtype}; expected uint8, uint16 or float")


def adapt_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """(H, W) or (H, W, C) float image -> (H, W, in_channels): gray->RGB by repetition, RGB->gray by luma."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    c = image.shape[2]
    if c == in_channels:
        return image
    if c == 1:
        return np.repeat(image, in_channels, axis=2)
    if c in (3, 4) and in_channels == 1:
        return (image[..., :3] @ _LUMA.astype(image.dtype))[..., None]
    if c == 4 and in_channels == 3:
        return image[..., :3]
    raise UserError(
        f"image has {c} channels but the model expects in_channels={in_channels}; only gray<->RGB are "
        "converted automatically: build the model with the matching in_channels"
    )


def normalize_image(image: np.ndarray, mode: str) -> np.ndarray:
    """Normalise a float32 (H, W, C) image in [0, 1] (``"imagenet"`` or ``"per_image"``)."""
    c = image.shape[2]
    if mode == "imagenet":
        if c == 3:
            mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
        else:
            # 1-channel (or other) images: one mean/std, the mean of ImageNet's three values
            mean = np.full(c, np.mean(IMAGENET_MEAN), np.float32)
            std = np.full(c, np.mean(IMAGENET_STD), np.float32)
        return (image - mean) / std
    if mode == "per_image":
        mean = image.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)  # (C,)
        std = image.std(axis=(0, 1), dtype=np.float64).astype(np.float32)  # (C,)
        return (image - mean) / np.maximum(std, np.float32(1e-6))
    if mode == "none":  # already normalised (volume slices: data/volume_slices.py)
        return image
    raise UserError(f"normalize must be one of {NORMALIZE_MODES}, got {mode!r}")


def _size(img_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if img_size is None:
        return None
    if isinstance(img_size, int):
        return (img_size, img_size)
    size = tuple(int(s) for s in img_size)
    if len(size) != 2 or min(size) < 1:
        raise UserError(f"img_size must be an int or (H, W) with positive values, got {img_size!r}")
    return size  # type: ignore[return-value]


FIT_MODES = ("resize", "crop")


def _pad(size: tuple[int, int]) -> A.PadIfNeeded:
    # zero padding: the mean intensity of an image normalised to zero mean, background for the mask
    return A.PadIfNeeded(
        min_height=size[0], min_width=size[1], border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0
    )


def _eval_geometry(size: tuple[int, int] | None, fit: str = "resize") -> A.Compose:
    if size is None:
        return A.Compose([])
    if fit == "crop":  # keep the pixel scale: pad small images, cut the centre of large ones
        return A.Compose([_pad(size), A.CenterCrop(size[0], size[1], p=1.0)])
    return A.Compose(
        [A.Resize(size[0], size[1], interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]
    )


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation strengths (probabilities and ranges), defaults tuned for 2D medical images."""

    hflip: float = 0.5
    vflip: float = 0.5
    affine: float = 0.5
    scale: tuple[float, float] = (0.85, 1.15)
    rotate: float = 15.0  # degrees, symmetric
    translate: float = 0.0625  # fraction of the size, symmetric
    resized_crop: float = 0.5  # probability of a random resized crop instead of a plain resize
    crop_scale: tuple[float, float] = (0.5, 1.0)
    brightness_contrast: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2

    def scaled(self, strength: float) -> AugmentConfig:
        """This augmentation at ``strength`` s > 0 (``--augment-strength``); s = 1 returns it unchanged.

        * rotation and shift ranges x s (at most 180 degrees and half the size);
        * the zoom range ``scale`` and the crop-area range ``crop_scale`` to the power s: both are factors
          around 1, so the power scales their log range and they stay positive (s = 2: zoom 0.72-1.32, crop
          area 25-100 %; s = 0.5: 0.92-1.07, 71-100 %);
        * brightness and contrast limits x s (at most 1 and 0.9: the contrast factor 1 +- c stays positive);
        * the probabilities of the affine warp, the random resized crop and the jitter x s (at most 1);
        * the flips keep p = 0.5: it is already the most varied choice, and a flip changes no intensity or shape.
        """
        if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength > 0):
            raise UserError(
                f"expected an augmentation strength > 0 (1.0: the default augmentation), got {strength!r}"
            )
        if strength == 1:
            return self  # exactly the default numbers, not a recomputation that could round differently
        s = float(strength)
        return replace(
            self,
            affine=min(1.0, self.affine * s),
            scale=(self.scale[0] ** s, self.scale[1] ** s),
            rotate=min(180.0, self.rotate * s),
            translate=min(0.5, self.translate * s),
            resized_crop=min(1.0, self.resized_crop * s),
            crop_scale=(self.crop_scale[0] ** s, self.crop_scale[1] ** s),
            brightness_contrast=min(1.0, self.brightness_contrast * s),
            brightness=min(1.0, self.brightness * s),
            contrast=min(0.9, self.contrast * s),
        )


def _train_geometry(
    size: tuple[int, int] | None,
    cfg: AugmentConfig,
    seed: int | None,
    fit: str = "resize",
    intensity: bool = True,
) -> A.Compose:
    ops: list = []
    if size is not None and fit == "crop":  # keep the pixel scale: pad, then a random window of img_size
        ops += [_pad(size), A.RandomCrop(size[0], size[1], p=1.0)]
    elif size is not None:
        # OneOf uses the children's p as relative weights: crop with probability cfg.resized_crop
        crop_p = min(max(cfg.resized_crop, 0.0), 1.0)
        choices = []
        if crop_p > 0:
            choices.append(
                A.RandomResizedCrop(
                    size=size,
                    scale=cfg.crop_scale,
                    # aspect ratios around the target's, so crops are not distorted more than resizing
                    ratio=(3 / 4 * size[1] / size[0], 4 / 3 * size[1] / size[0]),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    p=crop_p,
                )
            )
        if crop_p < 1:
            choices.append(
                A.Resize(
                    size[0],
                    size[1],
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    p=1.0 - crop_p,
                )
            )
        ops.append(A.OneOf(choices, p=1.0))
    if cfg.hflip > 0:
        ops.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.vflip > 0:
        ops.append(A.VerticalFlip(p=cfg.vflip))
    if cfg.affine > 0:
        ops.append(
            A.Affine(
                scale=cfg.scale,
                rotate=(-cfg.rotate, cfg.rotate),
                translate_percent=(-cfg.translate, cfg.translate),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=cfg.affine,
            )
        )
    if intensity and cfg.brightness_contrast > 0:  # albumentations clips float images to [0, 1]
        ops.append(
            A.RandomBrightnessContrast(
                brightness_limit=cfg.brightness, contrast_limit=cfg.contrast, p=cfg.brightness_contrast
            )
        )
    return A.Compose(ops, seed=seed)


class SegTransform:
    """Joint image/mask transform: ``(image ndarray, mask ndarray|None) -> (C,H,W) float32, (H,W) int64``.

    ``train=True`` applies the augmentation (seeded through ``set_seed``), otherwise only the
    deterministic evaluation resize. ``fit="crop"`` keeps the pixel scale instead of resizing to ``img_size``:
    images are zero-padded to at least ``img_size`` and cut to it (a random window when training, the centre
    otherwise); volumes resampled to a target spacing use it. Built by ``build_transform``.
    """

    def __init__(
        self,
        *,
        train: bool,
        img_size: int | Sequence[int] | None,
        in_channels: int,
        normalize: str,
        augment: AugmentConfig | None = None,
        seed: int | None = None,
        fit: str = "resize",
    ) -> None:
        if fit not in FIT_MODES:
            raise UserError(f"expected fit one of {FIT_MODES}, got {fit!r}")
        if normalize not in NORMALIZE_MODES:
            raise UserError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if in_channels < 1:
            raise UserError(f"in_channels must be >= 1, got {in_channels}")
        self.train = train
        self.img_size = _size(img_size)
        self.in_channels = in_channels
        self.normalize = normalize
        self.augment = augment or AugmentConfig()
        # Images already normalised (normalize "none": z-scored volume slices) are not in [0, 1], where
        # albumentations' RandomBrightnessContrast would clip them; they get the same jitter unclipped instead.
        self._own_jitter = train and normalize == "none" and self.augment.brightness_contrast > 0
        self._rng = np.random.default_rng(seed)
        self.geometry = (
            _train_geometry(self.img_size, self.augment, seed, fit, intensity=not self._own_jitter)
            if train
            else _eval_geometry(self.img_size, fit)
        )

    def set_seed(self, seed: int) -> None:
        """Re-seed albumentations' random state (all transforms of the pipeline) and the intensity jitter's."""
        self.geometry.set_random_seed(int(seed))
        self._rng = np.random.default_rng(int(seed))

    def _jitter(self, x: np.ndarray) -> np.ndarray:
        """x * (1 + U(-contrast, contrast)) + U(-brightness, brightness), with probability brightness_contrast:
        albumentations' brightness/contrast formula on a z-score scale, without its clipping."""
        cfg = self.augment
        if self._rng.random() >= cfg.brightness_contrast:
            return x
        alpha = 1.0 + self._rng.uniform(-cfg.contrast, cfg.contrast)
        beta = self._rng.uniform(-cfg.brightness, cfg.brightness)
        return x * np.float32(alpha) + np.float32(beta)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = adapt_channels(to_float01(image), self.in_channels)  # (H, W, C) float32 in [0, 1]
        if mask is not None:
            if mask.shape[:2] != x.shape[:2]:
                raise UserError(
                    f"image is {x.shape[:2]} but mask is {mask.shape[:2]} (HxW); sizes must match"
                )
            # int32: OpenCV warps/resizes do not accept int64 masks
            out = self.geometry(image=x, mask=mask.astype(np.int32, copy=False))
            x, m = out["image"], out["mask"]
        else:
            x, m = self.geometry(image=x)["image"], None
        if x.ndim == 2:  # OpenCV drops a trailing singleton channel
            x = x[..., None]
        x = normalize_image(np.asarray(x, dtype=np.float32), self.normalize)
        if self._own_jitter:
            x = self._jitter(x)
        tx = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # (C, H, W)
        tm = None if m is None else torch.from_numpy(np.ascontiguousarray(m).astype(np.int64))  # (H, W)
        return tx, tm


def build_transform(
    *,
    train: bool,
    img_size: int | Sequence[int] | None,
    in_channels: int,
    normalize: str = "imagenet",
    augment: AugmentConfig | None = None,
    seed: int | None = None,
    fit: str = "resize",
) -> SegTransform:
    """Training (augmenting) or evaluation (resize-only) transform; see the module docstring."""
    return SegTransform(
        train=train,
        img_size=img_size,
        in_channels=in_channels,
        normalize=normalize,
        augment=augment,
        seed=seed,
        fit=fit,
    )


def preprocess_image(
    image: np.ndarray,
    *,
    in_channels: int,
    normalize: str,
    img_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Deterministic model input for one image: (C, H, W) float32, identical to the val/test transform.

    ``image`` is what ``read_image`` returns ((H, W) or (H, W, C), uint8/uint16/float). ``img_size``
    (H, W) resizes bilinearly; None keeps the size.
    """
    x, _ = _eval_transform(in_channels, normalize, _size(img_size))(image)
    return x


_EVAL_CACHE: dict[tuple, SegTransform] = {}


def _eval_transform(in_channels: int, normalize: str, size: tuple[int, int] | None) -> SegTransform:
    key = (in_channels, normalize, size)
    if key not in _EVAL_CACHE:
        _EVAL_CACHE[key] = SegTransform(
            train=False, img_size=size, in_channels=in_channels, normalize=normalize
        )
    return _EVAL_CACHE[key]
