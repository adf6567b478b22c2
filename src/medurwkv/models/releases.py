"""The official Vision-RWKV (v1) weight releases and how their checkpoints are laid out (``docs/pretrained.md``).

A leaf: it imports nothing from the package, so the model modules (which name their release), the registry and
the loader all read the one table here. A :class:`PretrainedCfg` says where a file lives, which Bi-WKV kernel
constants trained it (``docs/vrwkv.md``, *Which kernel trained which checkpoint*) and, through its ``layout``,
how its tensors map onto a model (:data:`LAYOUTS`).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "HF_BASE",
    "LAYOUTS",
    "TASK_HEAD_PREFIXES",
    "CheckpointLayout",
    "PretrainedCfg",
    "detect_layout",
    "find_release",
    "official_releases",
    "release",
]

HF_BASE = "https://huggingface.co/OpenGVLab/Vision-RWKV/resolve/main/"

# Task heads of the official trainers (mmcls classifier ``head``, mmseg ``decode_head``/``auxiliary_head``, mmdet
# ``neck``/``rpn_head``/``roi_head``). None is ever part of a backbone, so every layout skips all of them: a file
# saved by one trainer and named like another's release still loads.
TASK_HEAD_PREFIXES = ("head.", "decode_head.", "auxiliary_head.", "neck.", "rpn_head.", "roi_head.")

_PATCH_STEM = "patch_embed.projection.weight"  # (C, 3, 16, 16): the trunk's patchify conv
_SPM_STEM = "spm.stem.0.weight"  # (inplanes, 3, 3, 3): the adapter's spatial-prior conv stem


@dataclass(frozen=True)
class CheckpointLayout:
    """How an official checkpoint's tensors map onto the module that receives them.

    ``prefix`` is stripped from every key that has it (the backbone's keys are ``backbone.<module path>``);
    keys under ``head_prefixes`` are task heads, skipped; ``stem_keys`` are the RGB input filters
    ``(O, 3, kh, kw)`` that may be adapted to a model built with another ``in_channels``.
    """

    prefix: str
    head_prefixes: tuple[str, ...]
    stem_keys: tuple[str, ...]


LAYOUTS: dict[str, CheckpointLayout] = {
    # ImageNet classifiers: backbone.* (plain VRWKV) + head.*
    "mmcls": CheckpointLayout("backbone.", TASK_HEAD_PREFIXES, (_PATCH_STEM,)),
    # ADE20K UperNet: backbone.* (VRWKV_Adapter) + decode_head.* + auxiliary_head.*
    "mmseg": CheckpointLayout("backbone.", TASK_HEAD_PREFIXES, (_PATCH_STEM, _SPM_STEM)),
    # COCO Mask R-CNN: backbone.* (VRWKV_Adapter) + neck.* + rpn_head.* + roi_head.*
    "mmdet": CheckpointLayout("backbone.", TASK_HEAD_PREFIXES, (_PATCH_STEM, _SPM_STEM)),
}


def detect_layout(keys: Iterable[str]) -> str | None:
    """The layout of a checkpoint that is not named like a release, from its keys (module. already stripped).

    Official layouts hold their backbone under ``backbone.``; without such a key it is not an official layout
    (None: the user's own weights). Otherwise the task heads tell the trainer: ``decode_head.`` /
    ``auxiliary_head.`` mmseg, ``neck.`` / ``rpn_head.`` / ``roi_head.`` mmdet, anything else mmcls.
    """
    keys = list(keys)
    if not any(k.startswith("backbone.") for k in keys):
        return None
    if any(k.startswith(("decode_head.", "auxiliary_head.")) for k in keys):
        return "mmseg"
    if any(k.startswith(("neck.", "rpn_head.", "roi_head.")) for k in keys):
        return "mmdet"
    return "mmcls"


@dataclass(frozen=True)
class PretrainedCfg:
    """An official weight release: where it lives, how it is laid out, which Bi-WKV constants trained it."""

    file: str
    url: str
    layout: str  # a key of LAYOUTS: "mmcls" (ImageNet classifier), "mmseg" (ADE20K UperNet), "mmdet" (COCO)
    wkv_token_split: int | None
    wkv_eps: float
    sha256: str | None = None
    description: str = ""


def _official(file: str, layout: str, token_split: int, eps: float, description: str) -> PretrainedCfg:
    return PretrainedCfg(file, HF_BASE + file, layout, token_split, eps, description=description)


_SIZES = {"tiny": "T", "small": "S", "base": "B", "large": "L"}

# The kernel constants are those of the CUDA kernel that trained each file: ImageNet T/S/B 32 chunks / EPS 1e-6,
# VRWKV-L 16 / 1e-6, ADE20K UperNet 16 / 0, COCO Mask R-CNN 32 / 0 (docs/vrwkv.md). No checksums are published.
_RELEASES: tuple[PretrainedCfg, ...] = (
    *(
        _official(
            f"vrwkv_{s}_in1k_224.pth",
            "mmcls",
            32,
            1e-6,
            f"VRWKV-{s.upper()} ImageNet-1k classifier, 224 px (model vrwkv_{s})",
        )
        for s in "tsb"
    ),
    _official(
        "vrwkv_l_in22k_192.pth",
        "mmcls",
        16,
        1e-6,
        "VRWKV-L ImageNet-22k pre-training, 192 px, 12x12 pos grid (model vrwkv_l)",
    ),
    _official(
        "vrwkv_l_22kto1k_384.pth",
        "mmcls",
        16,
        1e-6,
        "VRWKV-L ImageNet-22k -> 1k fine-tune, 384 px (model vrwkv_l; MLP head skipped)",
    ),
    *(
        _official(
            f"upernet_vrwkv_adapter_{size}_512_160k_ade20k.pth",
            "mmseg",
            16,
            0.0,
            f"VRWKV-{letter} adapter + UperNet, ADE20K 512 px (VRWKV_Adapter encoder; the tiny one is "
            "Med-URWKV's encoder source)",
        )
        for size, letter in _SIZES.items()
    ),
    *(
        _official(
            f"mask_rcnn_vrwkv_adapter_{size}_fpn_1x_coco.pth",
            "mmdet",
            32,
            0.0,
            f"VRWKV-{letter} adapter + Mask R-CNN FPN 1x, COCO (VRWKV_Adapter encoder)",
        )
        for size, letter in _SIZES.items()
    ),
)
_BY_FILE = {cfg.file: cfg for cfg in _RELEASES}


def official_releases() -> list[PretrainedCfg]:
    """Every official Vision-RWKV (v1) release (``docs/pretrained.md`` has the table)."""
    return list(_RELEASES)


def release(file: str) -> PretrainedCfg:
    """The release named ``file`` (e.g. ``"vrwkv_t_in1k_224.pth"``); KeyError names the known files."""
    if file not in _BY_FILE:
        raise KeyError(f"expected an official release file name, one of {sorted(_BY_FILE)}, got {file!r}")
    return _BY_FILE[file]


def _base_name(source: str) -> str:
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https", "file"):
        return urllib.parse.unquote(PurePosixPath(parsed.path).name)
    return Path(source).name


def find_release(source: object) -> PretrainedCfg | None:
    """The release whose file name is the base name of ``source`` (a path or URL), else None.

    Anything else (an in-memory checkpoint dict, None) is no release.
    """
    if isinstance(source, PretrainedCfg):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return None
    return _BY_FILE.get(_base_name(os.fspath(source)))
