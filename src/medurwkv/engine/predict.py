"""Inference anywhere: :class:`Segmenter` (Python API) and ``medurwkv predict`` (command line).

A :class:`Segmenter` wraps a trained model with the exact preprocessing it was trained with (the checkpoint's
``preprocess`` dict: ``in_channels``, ``normalize``, ``img_size``, ``num_classes``, ``class_names``), so that
``Segmenter.from_checkpoint("runs/x").predict(image)`` returns a label map of the same size as ``image``.
It runs a PyTorch checkpoint (a ``.pt`` file or a run folder, which means its ``best.pt``) or an ONNX file
written by ``medurwkv export`` (onnxruntime backend; the preprocessing travels in the file's metadata).

Inference modes (see docs/predict.md):

* **resize** (default when the checkpoint has ``img_size``, i.e. the model was trained on resized images):
  the image is resized to ``img_size`` (bilinear, exactly the validation transform of training), the model
  runs, and the class probabilities are resized back to the original size (bilinear) before the argmax.
* **native** (``native=True``, or the default when the checkpoint has no ``img_size``): the whole image at its
  own resolution; the model pads it to its ``pad_multiple`` and crops the logits back.
* **window** (``window=(h, w)`` or an int): MONAI ``sliding_window_inference`` at native resolution with
  Gaussian weighting of overlapping windows (``overlap``), for images larger than what the model saw.

``tta=True`` averages the softmax over the identity and the horizontal, vertical and both flips.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Segmenter",
    "PredictSummary",
    "predict_paths",
    "collect_inputs",
    "ONNX_METADATA_KEY",
    "add_parser",
    "run",
]

# Key of the JSON entry that ``medurwkv export`` stores in the ONNX file's metadata_props.
ONNX_METADATA_KEY = "medurwkv"
ONNX_METADATA_FORMAT = "medurwkv-onnx-v1"
_TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))  # identity, h, v, hv


# ------------------------------------------------------------------------------------------------------------
# backends: a callable (B, C, h, w) float32 -> (B, K, h, w) float32 logits


class _TorchBackend:
    name = "torch"

    def __init__(self, model: nn.Module, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.fixed_size: tuple[int, int] | None = None
        self.pad_multiple = int(getattr(model, "pad_multiple", 1) or 1)

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            # the model pads to its pad_multiple itself and crops the logits back
            return self.model(x.to(self.device, non_blocking=True)).float()


class _OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, device: str | torch.device, meta: dict[str, Any]) -> None:
        import onnxruntime as ort

        dev = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if dev.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError(
                    f"expected onnxruntime with CUDA for device={device!r}, got providers "
                    f"{ort.get_available_providers()}; install onnxruntime-gpu or use --device cpu"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.device = torch.device("cpu")  # inputs/outputs cross as numpy on the host
        self.session = ort.InferenceSession(str(path), providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)  # e.g. ['B', 3, 'H', 'W'] (dynamic) or [1, 3, 256, 256] (fixed)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        hw = shape[2:4]
        self.fixed_size = (int(hw[0]), int(hw[1])) if all(isinstance(s, int) for s in hw) else None
        self.pad_multiple = int(meta.get("pad_multiple") or 1)
        self.pad_mode = str(meta.get("pad_mode") or "constant")

    def _pad(self, x: Tensor) -> Tensor:
        # The traced graph may only contain the padding branch of the size it was exported at, so the
        # input is padded here exactly like the model pads it (bottom/right, the model's pad mode); the
        # model's own padding then has nothing left to do.
        H, W = x.shape[-2:]
        m = self.pad_multiple
        pad = (0, (-W) % m, 0, (-H) % m)
        if not (pad[1] or pad[3]):
            return x
        mode = self.pad_mode
        if mode == "reflect" and (pad[1] >= W or pad[3] >= H):
            mode = "replicate"
        return F.pad(x, pad, mode=mode) if mode != "constant" else F.pad(x, pad)

    def _run(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def __call__(self, x: Tensor) -> Tensor:
        x = x.detach().float().cpu()
        H, W = x.shape[-2:]
        if self.fixed_size is not None:
            if self.fixed_size != (H, W):
                raise ValueError(
                    f"this ONNX model was exported with a fixed input size {self.fixed_size}, got {(H, W)}; "
                    "re-export without --static for any size, or use the default resize mode"
                )
        else:
            x = self._pad(x)
        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            return torch.cat([self._run(x[i : i + 1]) for i in range(x.shape[0])])[..., :H, :W]
        return self._run(x)[..., :H, :W]


# ------------------------------------------------------------------------------------------------------------
# input handling


@dataclass
class _Item:
    """One image ready for the model: ``tensor`` (C, h, w) float32 and its original (H, W)."""

    name: str
    tensor: Tensor
    size: tuple[int, int]


def _window_size(window: int | Sequence[int] | None) -> tuple[int, int] | None:
    if window is None:
        return None
    if isinstance(window, (int, np.integer)):
        size = (int(window), int(window))
    else:
        vals = [int(v) for v in window]
        if len(vals) == 1:
            vals = vals * 2
        if len(vals) != 2:
            raise ValueError(f"expected window as an int or (h, w), got {window!r}")
        size = (vals[0], vals[1])
    if min(size) < 1:
        raise ValueError(f"expected a positive window size, got {window!r}")
    return size


def _is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _tensor_to_hwc(t: Tensor) -> np.ndarray:
    a = t.detach().cpu().numpy()
    return a if a.ndim == 2 else np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)


def _split_input(x: Any) -> tuple[list[Any], list[str], str]:
    """Turn a predict() input into (images or paths, names, kind) with kind in single | stack | list."""
    if _is_pathlike(x):
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
            if _is_pathlike(v):
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


# ------------------------------------------------------------------------------------------------------------
# the Segmenter


class Segmenter:
    """A trained segmentation model plus its preprocessing; ``predict`` maps images to same-size label maps.

    Build it with :meth:`from_checkpoint` (``.pt`` file, run folder or exported ``.onnx``) or
    :meth:`from_model` (an in-memory model created with ``create_model``).
    """

    def __init__(
        self,
        backend: Any,
        preprocess: dict[str, Any],
        *,
        source: str | Path | None = None,
        model_spec: dict[str, Any] | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        for key in ("in_channels", "normalize", "num_classes"):
            if key not in preprocess:
                raise ValueError(
                    f"expected a preprocess dict with in_channels, normalize, num_classes (img_size, "
                    f"class_names optional), got keys {sorted(preprocess)}; it comes from the checkpoint's "
                    "'preprocess'"
                )
        self._backend = backend
        self.preprocess: dict[str, Any] = dict(preprocess)
        self.source = Path(source) if source is not None else None
        self.model_spec = model_spec
        #: the checkpoint dict without the weights (epoch, metrics, train_config, ...) when loaded from a .pt
        self.checkpoint_info = checkpoint or {}
        size = preprocess.get("img_size")
        if isinstance(size, (int, np.integer)):
            size = (int(size), int(size))
        self.img_size: tuple[int, int] | None = tuple(int(s) for s in size) if size else None  # type: ignore
        self.in_channels = int(preprocess["in_channels"])
        self.normalize = str(preprocess["normalize"])
        self.num_classes = int(preprocess["num_classes"])
        names = preprocess.get("class_names")
        if not names or len(names) != self.num_classes:
            from ..data.index import default_class_names

            names = default_class_names(self.num_classes)
        self.class_names: list[str] = [str(n) for n in names]

    # ----- construction

    @classmethod
    def from_model(
        cls, model: nn.Module, preprocess: dict[str, Any], device: str | torch.device = "cpu"
    ) -> Segmenter:
        """Wrap an in-memory model (e.g. during training) with its preprocessing dict.

        The model is moved to ``device`` and put in eval mode (call ``model.train()`` again to keep training).
        """
        return cls(_TorchBackend(model, device), preprocess, model_spec=getattr(model, "model_spec", None))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        *,
        preprocess: dict[str, Any] | None = None,
    ) -> Segmenter:
        """Load a ``.pt`` checkpoint, a run folder (its ``best.pt``, else ``last.pt``) or an exported .onnx.

        ``preprocess`` overrides the stored preprocessing (needed only for ONNX files not written by
        ``medurwkv export``, which carry no metadata).
        """
        p = Path(path).expanduser()
        if p.suffix.lower() == ".onnx":
            if not p.is_file():
                raise FileNotFoundError(f"expected an ONNX file, got {p} which does not exist")
            meta = read_onnx_metadata(p)
            if meta is None and preprocess is None:
                raise ValueError(
                    f"ONNX file {p} has no medurwkv metadata (key {ONNX_METADATA_KEY!r}); export it with "
                    "`medurwkv export`, or pass preprocess={'in_channels', 'normalize', 'num_classes', ...}"
                )
            meta = meta or {}
            pre = dict(preprocess if preprocess is not None else meta["preprocess"])
            return cls(_OnnxBackend(p, device, meta), pre, source=p, model_spec=meta.get("model"))
        from .checkpoint import load_model

        if p.is_dir() and not (p / "best.pt").is_file() and not (p / "last.pt").is_file():
            raise FileNotFoundError(f"expected a run folder with best.pt or last.pt, got {p} without them")
        src = (
            p / "best.pt" if p.is_dir() and (p / "best.pt").is_file() else p / "last.pt" if p.is_dir() else p
        )
        model, ckpt = load_model(src, device=device)
        pre = dict(preprocess if preprocess is not None else ckpt.get("preprocess") or {})
        if "num_classes" not in pre and hasattr(model, "num_classes"):
            pre["num_classes"] = int(model.num_classes)
        info = {
            k: v
            for k, v in ckpt.items()
            if k not in ("state_dict", "optimizer", "scheduler", "scaler", "rng")
        }
        return cls(
            _TorchBackend(model, device), pre, source=src, model_spec=ckpt.get("model"), checkpoint=info
        )

    # ----- properties

    @property
    def backend(self) -> str:
        """``"torch"`` or ``"onnx"``."""
        return self._backend.name

    @property
    def device(self) -> torch.device:
        return self._backend.device

    @property
    def model(self) -> nn.Module | None:
        """The PyTorch model (``None`` for the ONNX backend)."""
        return getattr(self._backend, "model", None)

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """Input size an ONNX model was exported with ``--static`` (``None``: any size)."""
        return self._backend.fixed_size

    def resolve_mode(
        self, *, native: bool = False, window: int | Sequence[int] | None = None
    ) -> tuple[str, tuple[int, int] | None]:
        """The inference mode for these options: ``("resize", size)``, ``("native", None)`` or
        ``("window", size)``.

        ``window`` wins over ``native``. A fixed-size ONNX model cannot run native: it then slides windows of
        its input size over the image (keeping the native scale).
        """
        win = _window_size(window)
        fixed = self.fixed_size
        if win is not None:
            if fixed is not None and win != fixed:
                raise ValueError(
                    f"window {win} differs from the fixed input size {fixed} of this ONNX model; use "
                    f"--window {fixed[0]} {fixed[1]} or re-export without --static"
                )
            return "window", win
        if native or self.img_size is None:
            if fixed is not None:
                return "window", fixed
            return "native", None
        return "resize", fixed if fixed is not None else self.img_size

    def describe_mode(self, *, native: bool = False, window: Any = None, tta: bool = False) -> str:
        """One line saying how images will be processed (printed by the CLIs)."""
        mode, size = self.resolve_mode(native=native, window=window)
        if mode == "resize":
            text = (
                f"resize to {size[0]}x{size[1]} (as in training), probabilities resized back to each "  # type: ignore[index]
                "image's size (bilinear)"
            )
        elif mode == "native":
            text = "whole image at native resolution (padded to the model's multiple, cropped back)"
        else:
            text = f"sliding window {size[0]}x{size[1]} at native resolution, Gaussian-weighted overlap"  # type: ignore[index]
        return text + (", TTA over flips (h, v, hv)" if tta else "")

    # ----- preprocessing

    def prepare(
        self,
        image: np.ndarray,
        name: str = "image",
        *,
        mode: str = "resize",
        size: tuple[int, int] | None = None,
    ) -> _Item:
        """Preprocess one (H, W) / (H, W, C) image like training's val transform; errors name ``name``."""
        from ..data.transforms import preprocess_image

        a = np.asarray(image)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3) or min(a.shape[:2]) < 1:
            raise ValueError(f"{name}: expected an image (H, W) or (H, W, C), got shape {a.shape}")
        try:
            t = preprocess_image(
                a,
                in_channels=self.in_channels,
                normalize=self.normalize,
                img_size=size if mode == "resize" else None,
            )
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        return _Item(name, t, (int(a.shape[0]), int(a.shape[1])))

    # ----- model calls

    def _probs(self, x: Tensor, tta: bool) -> Tensor:
        """(B, C, h, w) -> (B, K, h, w) softmax, averaged over flips with ``tta``."""
        if not tta:
            return torch.softmax(self._backend(x), dim=1)
        acc: Tensor | None = None
        for dims in _TTA_FLIPS:
            xi = x.flip(dims) if dims else x
            p = torch.softmax(self._backend(xi), dim=1)
            p = p.flip(dims) if dims else p
            acc = p if acc is None else acc + p
        assert acc is not None
        return acc / len(_TTA_FLIPS)

    def _window_probs(
        self, x: Tensor, size: tuple[int, int], overlap: float, batch_size: int, tta: bool
    ) -> Tensor:
        from monai.inferers import sliding_window_inference

        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"expected 0 <= overlap < 1, got {overlap}")
        with torch.inference_mode():
            out = sliding_window_inference(
                x.to(self.device),
                roi_size=size,
                sw_batch_size=max(1, int(batch_size)),
                predictor=lambda w: self._probs(w, tta),
                overlap=overlap,
                mode="gaussian",
            )
        return torch.as_tensor(out).float()

    def _infer_items(
        self,
        items: Sequence[_Item],
        *,
        mode: str,
        size: tuple[int, int] | None,
        tta: bool,
        overlap: float,
        batch_size: int,
    ) -> Iterator[Tensor]:
        """Yield (K, H, W) float32 CPU probabilities at each item's original size, in order."""
        bs = max(1, int(batch_size))
        if mode == "window":
            assert size is not None
            for it in items:
                yield self._window_probs(it.tensor[None], size, overlap, bs, tta)[0].cpu()
            return
        i = 0
        while i < len(items):
            # batch consecutive items of the same model-input shape (all of them in resize mode)
            j = i + 1
            while j < len(items) and j - i < bs and items[j].tensor.shape == items[i].tensor.shape:
                j += 1
            batch = torch.stack([it.tensor for it in items[i:j]])  # (B, C, h, w)
            probs = self._probs(batch, tta)  # (B, K, h, w)
            for k, it in enumerate(items[i:j]):
                p = probs[k : k + 1]
                if tuple(p.shape[-2:]) != it.size:
                    # resize mode: back to the original size, bilinear on probabilities
                    p = F.interpolate(p, size=it.size, mode="bilinear", align_corners=False)
                yield p[0].float().cpu()
            i = j

    def predict_items(
        self,
        images: Sequence[np.ndarray],
        names: Sequence[str] | None = None,
        *,
        tta: bool = False,
        native: bool = False,
        window: int | Sequence[int] | None = None,
        overlap: float = 0.25,
        batch_size: int = 4,
    ) -> Iterator[Tensor]:
        """Lower-level: yield (K, H, W) probabilities for each image (preprocessing errors name the image)."""
        mode, size = self.resolve_mode(native=native, window=window)
        names = list(names) if names is not None else [f"image[{i}]" for i in range(len(images))]
        items = [self.prepare(im, n, mode=mode, size=size) for im, n in zip(images, names)]
        yield from self._infer_items(
            items, mode=mode, size=size, tta=tta, overlap=overlap, batch_size=batch_size
        )

    def predict(
        self,
        x: Any,
        *,
        return_probs: bool = False,
        tta: bool = False,
        window: int | Sequence[int] | None = None,
        overlap: float = 0.25,
        batch_size: int = 4,
        native: bool = False,
    ) -> Any:
        """Segment one image or a batch; label maps have the size of each input image.

        Args:
            x: a path; a list of paths / arrays / tensors; a numpy array ``(H, W)`` or ``(H, W, C)`` (C <= 4,
                one image) or ``(N, H, W)`` / ``(N, H, W, C)`` (a batch); a torch tensor ``(H, W)`` or
                ``(C, H, W)`` (C <= 4, one image) or ``(N, H, W)`` / ``(N, C, H, W)``. Arrays are raw images
                (uint8, uint16 or float in [0, 1]) like ``read_image`` returns; the checkpoint's preprocessing
                is applied here.
            return_probs: also return the softmax probabilities ``(num_classes, H, W)`` float32.
            tta: average the softmax over flips (identity, h, v, hv).
            window: sliding-window size ``(h, w)`` or an int, at native resolution (MONAI, Gaussian weights).
            overlap: window overlap fraction in ``[0, 1)``.
            batch_size: images (or windows) per forward pass.
            native: whole image at native resolution instead of resizing to the training ``img_size``.

        Returns:
            one image: ``labels`` (H, W) int64, or ``(labels, probs)`` with ``return_probs``; a stacked array
            or tensor batch: ``(N, H, W)`` (and ``(N, K, H, W)``); a list input: lists of those per image.
        """
        items, names, kind = _split_input(x)
        if kind != "single" and not items:
            return ([], []) if return_probs else []
        images = [self._load(v, n) for v, n in zip(items, names)]
        labels: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        for p in self.predict_items(
            images, names, tta=tta, native=native, window=window, overlap=overlap, batch_size=batch_size
        ):
            labels.append(p.argmax(0).numpy().astype(np.int64))
            if return_probs:
                probs.append(p.numpy())
        if kind == "single":
            return (labels[0], probs[0]) if return_probs else labels[0]
        if kind == "stack":
            return (np.stack(labels), np.stack(probs)) if return_probs else np.stack(labels)
        return (labels, probs) if return_probs else labels

    __call__ = predict

    @staticmethod
    def _load(v: Any, name: str) -> np.ndarray:
        if _is_pathlike(v):
            from ..data.io import read_image

            return read_image(v)
        return np.asarray(v)

    def __repr__(self) -> str:
        spec = (self.model_spec or {}).get("name", "?")
        return (
            f"Segmenter({spec}, backend={self.backend}, in_channels={self.in_channels}, "
            f"num_classes={self.num_classes}, img_size={self.img_size}, normalize={self.normalize!r}, "
            f"source={str(self.source) if self.source else None!r})"
        )


def read_onnx_metadata(path: str | Path) -> dict[str, Any] | None:
    """The medurwkv metadata JSON stored in an ONNX file by ``medurwkv export`` (``None`` when absent)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            try:
                meta = json.loads(prop.value)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"ONNX file {path}: metadata {ONNX_METADATA_KEY!r} is not valid JSON ({e})"
                ) from e
            if not isinstance(meta, dict) or "preprocess" not in meta:
                raise ValueError(f"ONNX file {path}: metadata {ONNX_METADATA_KEY!r} lacks 'preprocess'")
            return meta
    return None


# ------------------------------------------------------------------------------------------------------------
# predicting files


def _atomic_write(path: Path, write: Callable[[Any], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(array))
    return _atomic_write(path, lambda f: img.save(f, format="PNG"))


def _write_npy(path: Path, array: np.ndarray) -> Path:
    return _atomic_write(path, lambda f: np.save(f, array))


_GLOB_CHARS = set("*?[")


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


@dataclass
class PredictSummary:
    """What :func:`predict_paths` did: outputs per input, failures with reasons, timing."""

    out_dir: Path
    mode: str
    outputs: dict[str, list[Path]] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_ok(self) -> int:
        return len(self.outputs)

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        return f"predicted {self.n_ok} image(s) into {self.out_dir} in {self.seconds:.1f} s" + (
            f"; {self.n_failed} failed" if self.failed else ""
        )


def _unique_stems(paths: Sequence[Path]) -> list[str]:
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


def predict_paths(
    segmenter: Segmenter,
    inputs: str | Path | Iterable[str | Path],
    out_dir: str | Path,
    *,
    tta: bool = False,
    native: bool = False,
    window: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    save_probs: bool = False,
    overlay: bool = True,
    overlay_mode: str = "contour",
    progress: bool = True,
) -> PredictSummary:
    """Predict image files and write, per image ``<stem>``, into ``out_dir``:

    ``<stem>.png`` label map (uint8 label values, same size as the input), ``<stem>_255.png`` (binary tasks:
    0/255), ``<stem>_overlay.png`` (prediction drawn over the image) and, with ``save_probs``,
    ``<stem>_probs.npy`` ((num_classes, H, W) float32). Every file is written atomically. Unreadable files and
    files whose channels the model cannot take are recorded in ``summary.failed`` and skipped.
    """
    from tqdm.auto import tqdm

    from ..data.io import read_image
    from .visualize import overlay as draw_overlay

    t0 = time.perf_counter()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    mode, size = segmenter.resolve_mode(native=native, window=window)
    summary = PredictSummary(out_dir=out, mode=segmenter.describe_mode(native=native, window=window, tta=tta))
    paths, problems = collect_inputs(inputs)
    summary.failed.extend(problems)
    stems = _unique_stems(paths)
    label_dtype = np.uint8 if segmenter.num_classes <= 256 else np.uint16
    bs = max(1, int(batch_size))

    def fail(name: str, err: BaseException) -> None:
        msg = str(err) if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {err}"
        summary.failed.append((name, msg))
        tqdm.write(f"skipped {name}: {msg}", file=sys.stderr)

    def write(path: Path, stem: str, image: np.ndarray, probs: Tensor) -> None:
        labels = probs.argmax(0).numpy().astype(label_dtype)  # (H, W)
        written = [_write_png(out / f"{stem}.png", labels)]
        if segmenter.num_classes == 2:
            written.append(_write_png(out / f"{stem}_255.png", (labels > 0).astype(np.uint8) * 255))
        if overlay:
            written.append(
                _write_png(out / f"{stem}_overlay.png", draw_overlay(image, labels, mode=overlay_mode))
            )
        if save_probs:
            written.append(_write_npy(out / f"{stem}_probs.npy", probs.numpy().astype(np.float32)))
        summary.outputs[str(path)] = written

    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=None if progress else True)
    for start in range(0, len(paths), bs):
        chunk: list[tuple[Path, str, np.ndarray, _Item]] = []
        for path, stem in zip(paths[start : start + bs], stems[start : start + bs]):
            try:
                image = read_image(path)
                chunk.append((path, stem, image, segmenter.prepare(image, str(path), mode=mode, size=size)))
            except (ValueError, OSError) as e:
                fail(str(path), e)
                bar.update(1)
        groups = [chunk]
        while groups:
            group = groups.pop(0)
            if not group:
                continue
            try:
                probs = list(
                    segmenter._infer_items(
                        [c[3] for c in group], mode=mode, size=size, tta=tta, overlap=overlap, batch_size=bs
                    )
                )
            except Exception as e:  # noqa: BLE001 - isolate the failing image, keep going with the others
                if len(group) > 1:
                    groups = [[c] for c in group] + groups
                else:
                    fail(str(group[0][0]), e)
                    bar.update(1)
                continue
            for (path, stem, image, _), p in zip(group, probs):
                try:
                    write(path, stem, image, p)
                except (ValueError, OSError) as e:
                    fail(str(path), e)
                bar.update(1)
    bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


# ------------------------------------------------------------------------------------------------------------
# command line


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by ``predict`` and ``evaluate`` (inference mode, TTA, batch size, device)."""
    p.add_argument("--tta", action="store_true", help="average softmax over flips (h, v, hv) (4x slower)")
    p.add_argument(
        "--native",
        action="store_true",
        help="run the whole image at native resolution instead of resizing to the training img_size",
    )
    p.add_argument(
        "--window",
        type=_positive_int,
        nargs="+",
        metavar="N",
        help="sliding-window inference at native resolution with windows N (or H W) pixels, "
        "Gaussian-weighted (MONAI)",
    )
    p.add_argument(
        "--overlap", type=float, default=0.25, help="sliding-window overlap in [0, 1) (default 0.25)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=4, help="images or windows per forward pass")
    p.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)"
    )


def resolve_device(device: str | None) -> str:
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {device} requested but CUDA is not available; use --device cpu")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def window_arg(window: Sequence[int] | None) -> tuple[int, int] | None:
    if not window:
        return None
    if len(window) > 2:
        raise ValueError(f"expected --window N or --window H W, got {len(window)} values")
    return _window_size(window)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="segment image files with a checkpoint, run folder or exported ONNX model",
        description="Write, per input image, <stem>.png (label values), <stem>_255.png (binary tasks), "
        "<stem>_overlay.png and, with --save-probs, <stem>_probs.npy into --out. Default mode: resize to the "
        "training img_size and resize the probabilities back (as in training); see --native and --window.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint .pt, run folder (best.pt) or exported .onnx")
    p.add_argument("--input", required=True, nargs="+", help="image file(s), folder(s) or glob pattern(s)")
    p.add_argument("--out", required=True, help="output folder")
    add_inference_arguments(p)
    p.add_argument("--save-probs", action="store_true", help="also write <stem>_probs.npy (K, H, W) float32")
    p.add_argument("--overlay-mode", choices=("contour", "fill"), default="contour", help="overlay drawing")
    p.add_argument("--no-overlay", action="store_true", help="do not write <stem>_overlay.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``medurwkv predict``: returns 0 when every input was written, 1 when any failed, 2 on bad arguments."""
    try:
        window = window_arg(args.window)
        segmenter = Segmenter.from_checkpoint(args.ckpt, device=resolve_device(args.device))
        mode_line = segmenter.describe_mode(native=args.native, window=window, tta=args.tta)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model: {segmenter}")
    print(f"mode: {mode_line}")
    summary = predict_paths(
        segmenter,
        args.input,
        args.out,
        tta=args.tta,
        native=args.native,
        window=window,
        overlap=args.overlap,
        batch_size=args.batch_size,
        save_probs=args.save_probs,
        overlay=not args.no_overlay,
        overlay_mode=args.overlay_mode,
        progress=not args.quiet,
    )
    print(summary)
    if summary.failed:
        print(f"{summary.n_failed} input(s) failed:", file=sys.stderr)
        for name, why in summary.failed:
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    if summary.n_ok == 0:
        print("error: no images to predict", file=sys.stderr)
        return 1
    return 0


def compress_labels(labels: np.ndarray) -> tuple[bytes, tuple[int, int], str]:
    """Compact in-memory form of a label map (evaluate keeps every prediction until the thumbnails)."""
    a = np.ascontiguousarray(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.int32))
    return zlib.compress(a.tobytes(), 1), a.shape, a.dtype.str  # type: ignore[return-value]


def decompress_labels(blob: tuple[bytes, tuple[int, int], str]) -> np.ndarray:
    data, shape, dtype = blob
    return np.frombuffer(zlib.decompress(data), dtype=np.dtype(dtype)).reshape(shape).astype(np.int64)
