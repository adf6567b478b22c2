"""Inputs and outputs of prediction: the forms ``Segmenter.predict`` takes, input collection (files, folders,
globs), output names and atomic writes."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..utils import atomic_write

__all__ = ["is_pathlike", "split_input", "collect_inputs", "unique_stems", "write_png", "write_npy"]

_GLOB_CHARS = set("*?[")


def is_pathlike(x: Any) -> bool:
    """A ``str`` or ``os.PathLike`` (a file to read), not an array."""
    return isinstance(x, (str, os.PathLike))


def _tensor_to_hwc(t: Tensor) -> np.ndarray:
    a = t.detach().cpu().numpy()
    return a if a.ndim == 2 else np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)


def split_input(x: Any) -> tuple[list[Any], list[str], str]:
    """Turn a ``Segmenter.predict`` input into (images or paths, names, kind), kind in single | stack | list.

    Images come out as numpy ``(H, W)`` / ``(H, W, C)`` (tensors are moved to channels last).
    """
    if is_pathlike(x):
        return [x], [str(x)], "single"
    if isinstance(x, Tensor):
        if x.ndim == 2 or (x.ndim == 3 and x.shape[0] <= 4):  # (H, W) or (C, H, W)
            return [_tensor_to_hwc(x)], ["image"], "single"
        if x.ndim in (3, 4):  # (N, H, W) or (N, C, H, W)
            return [_tensor_to_hwc(t) for t in x], [f"image[{i}]" for i in range(len(x))], "stack"
        raise ValueError(
            f"expected a tensor (H, W), (C, H, W), (N, H, W) or (N, C, H, W), got {tuple(x.shape)}"
        )
    if isinstance(x, np.ndarray):
        if x.ndim == 2 or (x.ndim == 3 and x.shape[-1] <= 4):  # (H, W) or (H, W, C)
            return [x], ["image"], "single"
        if x.ndim in (3, 4):  # (N, H, W) or (N, H, W, C)
            return list(x), [f"image[{i}]" for i in range(len(x))], "stack"
        raise ValueError(f"expected an array (H, W), (H, W, C), (N, H, W) or (N, H, W, C), got {x.shape}")
    if isinstance(x, (list, tuple)):
        items, names = [], []
        for i, v in enumerate(x):
            if is_pathlike(v):
                items.append(v)
                names.append(str(v))
            elif isinstance(v, Tensor):
                items.append(_tensor_to_hwc(v))
                names.append(f"image[{i}]")
            elif isinstance(v, np.ndarray):
                items.append(v)
                names.append(f"image[{i}]")
            else:
                raise ValueError(
                    f"expected paths, arrays or tensors in the list, got {type(v).__name__} at {i}"
                )
        return items, names, "list"
    raise ValueError(
        f"expected a path, a list of paths, a numpy array or a torch tensor, got {type(x).__name__}"
    )


def collect_inputs(inputs: str | Path | Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (their image files, sorted, not recursive) and glob patterns.

    Returns ``(paths, problems)``; ``problems`` lists ``(input, reason)`` for inputs that matched nothing.
    Files named explicitly are kept whatever their extension (reading them reports the problem).
    """
    from ..data.io import is_image_file

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            paths.append(p)

    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and is_image_file(q))
            if not found:
                problems.append((str(raw), "folder contains no image files (.png, .jpg, .bmp, .tif, ...)"))
            for q in found:
                add(q)
        elif p.is_file():
            add(p)
        elif _GLOB_CHARS & set(str(raw)):
            found = sorted(Path(q) for q in glob.glob(str(p), recursive=True))
            found = [q for q in found if q.is_file() and is_image_file(q)]
            if not found:
                problems.append((str(raw), "glob pattern matched no image files"))
            for q in found:
                add(q)
        else:
            problems.append((str(raw), "no such file or folder"))
    return paths, problems


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output stems: file stems, made unique when two inputs share one (``a.png``, ``a.jpg`` -> ``a_jpg``)."""
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    used: set[str] = set()
    stems = []
    for p in paths:
        s = p.stem if counts[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower() or 'noext'}"
        base, k = s, 2
        while s in used:
            s, k = f"{base}_{k}", k + 1
        used.add(s)
        stems.append(s)
    return stems


def write_png(path: Path, array: np.ndarray) -> Path:
    """``(H, W)`` uint8/uint16 or ``(H, W, 3)`` uint8 as a PNG, atomically."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda f: img.save(f, format="PNG"))


def write_npy(path: Path, array: np.ndarray) -> Path:
    """``array`` as ``.npy``, atomically."""
    return atomic_write(path, lambda f: np.save(f, array))
