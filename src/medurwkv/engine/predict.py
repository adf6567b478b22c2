"""Inference anywhere: :class:`Segmenter` (Python API) and :func:`predict_paths` (image files to label files).

A :class:`Segmenter` wraps a trained model with the exact preprocessing it was trained with (the checkpoint's
``preprocess`` dict: ``in_channels``, ``normalize``, ``img_size``, ``num_classes``, ``class_names``), so that
``Segmenter.from_checkpoint("runs/x").predict(image)`` returns a label map of the same size as ``image``.
It runs a PyTorch checkpoint (a ``.pt`` file or a run folder, which means its ``best.pt``) or an ONNX file
written by ``medurwkv export`` (onnxruntime backend; the preprocessing travels in the file's metadata, see
:mod:`medurwkv.engine.onnx_metadata`). Backends live in :mod:`medurwkv.engine.backends`, input collection and
output writes in :mod:`medurwkv.engine.predict_io`; the command line is ``medurwkv/cli/predict.py``.

Inference modes (see docs/predict.md):

* **resize** (default when the checkpoint has ``img_size``, i.e. the model was trained on resized images):
  the image is resized to ``img_size`` (bilinear, exactly the validation transform of training), the model
  runs, and the class probabilities are resized back to the original size (bilinear) before the argmax.
* **native** (``native=True``, or the default when the checkpoint has no ``img_size``): the whole image at its
  own resolution; the model pads it to its ``pad_multiple`` and crops the logits back.
* **window** (``window=(h, w)`` or an int): MONAI ``sliding_window_inference`` at native resolution with
  Gaussian weighting of overlapping windows (``overlap``), for images larger than what the model saw.

``tta=True`` averages the softmax over the identity and the horizontal, vertical and both flips.

Post-processing: a checkpoint trained by ``medurwkv train`` carries the decision chosen on its validation split
(``ckpt["postprocess"]``, or the ONNX metadata's ``postprocess``; :mod:`medurwkv.engine.postprocess`): per class,
keep the largest connected component (and fill its holes). The label maps returned and written here have it
applied unless ``postprocess=False``; probabilities are always the model's own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..models.base import SegmentationModel
from ..utils import progress_bar
from .backends import Backend, OnnxBackend, TorchBackend
from .onnx_metadata import CHECKPOINT_EXPECTED, ONNX_METADATA_KEY, pad_settings, read_onnx_metadata
from .postprocess import PostprocessDecision, apply_postprocess, as_decision
from .predict_io import collect_inputs, is_pathlike, split_input, unique_stems, write_npy, write_png

__all__ = [
    "Segmenter",
    "PreparedImage",
    "PredictSummary",
    "predict_paths",
    "load_inference_checkpoint",
]

_TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))  # identity, h, v, hv


def load_inference_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[SegmentationModel, dict[str, Any], Path]:
    """Load a ``.pt`` checkpoint or a run folder (its ``best.pt``, else ``last.pt``) for inference.

    Returns ``(model in eval mode on device, checkpoint dict, the .pt path used)``. A missing path raises
    ``FileNotFoundError``; a file that is not a medurwkv checkpoint (foreign pickle, corrupt or text file)
    raises :class:`~medurwkv.errors.UserError`; both messages say what was expected and how to fix it.
    """
    from .checkpoint import load_model

    p = Path(path).expanduser()
    if p.is_dir():
        src = next((p / n for n in ("best.pt", "last.pt") if (p / n).is_file()), None)
        if src is None:
            raise FileNotFoundError(
                f"{CHECKPOINT_EXPECTED}, got the folder {p} without best.pt or last.pt; pass a run folder of "
                "`medurwkv train` or a checkpoint file"
            )
    elif not p.is_file():
        raise FileNotFoundError(f"{CHECKPOINT_EXPECTED}, got {p}, which does not exist; check the path")
    else:
        src = p
    try:
        model, ckpt = load_model(src, device=device)
    except (ValueError, FileNotFoundError) as e:  # load_checkpoint's "not a (readable) medurwkv checkpoint"
        raise UserError(
            f"{CHECKPOINT_EXPECTED}, got {src}, which cannot be loaded as one ({e}); pass a run folder of "
            "`medurwkv train` or its best.pt"
        ) from e
    return model, ckpt, src


# ------------------------------------------------------------------------------------------------------------
# input handling


@dataclass
class PreparedImage:
    """One image ready for the model (:meth:`Segmenter.prepare`): ``tensor`` (C, h, w) float32, original (H, W)."""

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
            raise UserError(f"expected window as an int or (h, w), got {window!r}")
        size = (vals[0], vals[1])
    if min(size) < 1:
        raise UserError(f"expected a positive window size, got {window!r}")
    return size


# ------------------------------------------------------------------------------------------------------------
# the Segmenter


class Segmenter:
    """A trained segmentation model plus its preprocessing; ``predict`` maps images to same-size label maps.

    Build it with :meth:`from_checkpoint` (``.pt`` file, run folder or exported ``.onnx``) or
    :meth:`from_model` (an in-memory model created with ``create_model``). ``postprocess`` is the checkpoint's
    post-processing decision (a :class:`~medurwkv.engine.postprocess.PostprocessDecision`, its dict form, or
    ``None`` for none), applied to the label maps by :meth:`postprocess_labels`.
    """

    def __init__(
        self,
        backend: Backend,
        preprocess: dict[str, Any],
        *,
        source: str | Path | None = None,
        model_spec: dict[str, Any] | None = None,
        checkpoint: dict[str, Any] | None = None,
        postprocess: PostprocessDecision | dict[str, Any] | None = None,
    ) -> None:
        for key in ("in_channels", "normalize", "num_classes"):
            if key not in preprocess:
                raise UserError(
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
        where = f"the post-processing of {self.source or 'the model'}"
        #: the post-processing decision stored with the model (``None``: none, e.g. an older checkpoint)
        self.postprocess: PostprocessDecision | None = as_decision(postprocess, where)
        if self.postprocess is not None:
            self.postprocess.check_classes(self.num_classes, where)

    # ----- construction

    @classmethod
    def from_model(
        cls,
        model: SegmentationModel,
        preprocess: dict[str, Any],
        device: str | torch.device = "cpu",
        *,
        postprocess: PostprocessDecision | dict[str, Any] | None = None,
    ) -> Segmenter:
        """Wrap an in-memory model (e.g. during training) with its preprocessing dict (and optionally a
        post-processing decision).

        The model is moved to ``device`` and put in eval mode (call ``model.train()`` again to keep training).
        """
        # model_spec is attached by create_model; a model built by hand (tests, notebooks) has none
        return cls(
            TorchBackend(model, device),
            preprocess,
            model_spec=getattr(model, "model_spec", None),
            postprocess=postprocess,
        )

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

        Raises:
            FileNotFoundError: ``path`` does not exist (or a folder holds neither best.pt nor last.pt).
            UserError: ``path`` is not a medurwkv checkpoint nor an ONNX file from ``medurwkv export``.
        """
        p = Path(path).expanduser()
        if p.suffix.lower() == ".onnx":
            if not p.is_file():
                raise FileNotFoundError(
                    f"{CHECKPOINT_EXPECTED}, got {p}, which does not exist; check the path"
                )
            meta = read_onnx_metadata(p)
            if meta is None and preprocess is None:
                raise UserError(
                    f"{CHECKPOINT_EXPECTED}, got {p}, which has no medurwkv metadata (key "
                    f"{ONNX_METADATA_KEY!r}); export it with `medurwkv export`, or in Python pass "
                    "preprocess={'in_channels', 'normalize', 'num_classes', ...}"
                )
            pad_multiple, pad_mode = pad_settings(meta)
            pre = dict(preprocess if preprocess is not None else meta["preprocess"])  # type: ignore[index]
            backend = OnnxBackend(p, device, pad_multiple=pad_multiple, pad_mode=pad_mode)
            meta = meta or {}
            return cls(
                backend, pre, source=p, model_spec=meta.get("model"), postprocess=meta.get("postprocess")
            )
        model, ckpt, src = load_inference_checkpoint(p, device)
        pre = dict(preprocess if preprocess is not None else ckpt.get("preprocess") or {})
        pre.setdefault("num_classes", int(model.num_classes))
        info = {
            k: v
            for k, v in ckpt.items()
            if k not in ("state_dict", "optimizer", "scheduler", "scaler", "rng")
        }
        return cls(
            TorchBackend(model, device),
            pre,
            source=src,
            model_spec=ckpt.get("model"),
            checkpoint=info,
            postprocess=ckpt.get("postprocess"),  # absent from checkpoints older than post-processing
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
    def model(self) -> SegmentationModel | None:
        """The PyTorch model (``None`` for the ONNX backend)."""
        return self._backend.model if isinstance(self._backend, TorchBackend) else None

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
                raise UserError(
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

    # ----- post-processing

    def postprocess_labels(self, labels: np.ndarray, enabled: bool = True) -> np.ndarray:
        """``labels`` (a 2D label map or a 3D label volume) with the stored decision applied; unchanged when
        ``enabled`` is False or the model has no decision."""
        return (
            apply_postprocess(labels, self.postprocess)
            if enabled and self.postprocess is not None
            else labels
        )

    def describe_postprocess(self, enabled: bool = True) -> str:
        """One line saying which post-processing the label maps get (printed by the CLIs)."""
        if self.postprocess is None:
            return "none (the checkpoint holds no post-processing decision)"
        if not enabled:
            return "off (--no-postprocess / postprocess=False)"
        return self.postprocess.describe(self.class_names)

    # ----- preprocessing

    def prepare(
        self,
        image: np.ndarray,
        name: str = "image",
        *,
        mode: str = "resize",
        size: tuple[int, int] | None = None,
    ) -> PreparedImage:
        """Preprocess one (H, W) / (H, W, C) image like training's val transform; errors name ``name``."""
        from ..data.transforms import preprocess_image

        a = np.asarray(image)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3) or min(a.shape[:2]) < 1:
            raise UserError(f"{name}: expected an image (H, W) or (H, W, C), got shape {a.shape}")
        try:
            t = preprocess_image(
                a,
                in_channels=self.in_channels,
                normalize=self.normalize,
                img_size=size if mode == "resize" else None,
            )
        except ValueError as e:
            raise UserError(f"{name}: {e}") from e
        return PreparedImage(name, t, (int(a.shape[0]), int(a.shape[1])))

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
            raise UserError(f"expected 0 <= overlap < 1, got {overlap}")
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

    def infer_prepared(
        self,
        items: Sequence[PreparedImage],
        *,
        mode: str,
        size: tuple[int, int] | None,
        tta: bool,
        overlap: float,
        batch_size: int,
    ) -> Iterator[Tensor]:
        """Run the model on images already prepared by :meth:`prepare`; the step after preprocessing.

        ``mode`` and ``size`` are what :meth:`resolve_mode` returned (and what ``prepare`` was called with).
        Yields ``(K, H, W)`` float32 CPU probabilities at each item's original size, in order. Callers that read
        and prepare images themselves (e.g. :func:`predict_paths`, which isolates a failing image) use this;
        :meth:`predict_items` is prepare + infer in one call.
        """
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
        yield from self.infer_prepared(
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
        postprocess: bool = True,
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
            postprocess: apply the checkpoint's post-processing decision to the label maps (when it has one;
                the probabilities are not changed).

        Returns:
            one image: ``labels`` (H, W) int64, or ``(labels, probs)`` with ``return_probs``; a stacked array
            or tensor batch: ``(N, H, W)`` (and ``(N, K, H, W)``); a list input: lists of those per image.
        """
        if self.preprocess.get("volume") is not None:  # raw 2D images would skip the volume's normalisation
            raise UserError(
                f"{self.source or 'this model'} was trained on volumes; segment a (C, X, Y, Z) volume with "
                "medurwkv.engine.volume_inference.segment_volume (or NIfTI files with predict_volumes)"
            )
        items, names, kind = split_input(x)
        if kind != "single" and not items:
            return ([], []) if return_probs else []
        images = [self._load(v, n) for v, n in zip(items, names)]
        labels: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        for p in self.predict_items(
            images, names, tta=tta, native=native, window=window, overlap=overlap, batch_size=batch_size
        ):
            labels.append(self.postprocess_labels(p.argmax(0).numpy().astype(np.int64), postprocess))
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
        if is_pathlike(v):
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


# ------------------------------------------------------------------------------------------------------------
# predicting files


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

    def failure_text(self) -> str:
        """One line naming each failed input and why (empty when nothing failed)."""
        if not self.failed:
            return ""
        total = self.n_ok + self.n_failed
        # a read error already names its file; say the name only where the reason does not
        items = "; ".join(why if name in why else f"{name}: {why}" for name, why in self.failed)
        return f"{self.n_failed} of {total} input(s) failed ({self.n_ok} written to {self.out_dir}): {items}"


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
    postprocess: bool = True,
) -> PredictSummary:
    """Predict image files and write, per image ``<stem>``, into ``out_dir``:

    ``<stem>.png`` label map (uint8 label values, same size as the input), ``<stem>_255.png`` (binary tasks:
    0/255), ``<stem>_overlay.png`` (prediction drawn over the image) and, with ``save_probs``,
    ``<stem>_probs.npy`` ((num_classes, H, W) float32). Every file is written atomically. Unreadable files and
    files whose channels the model cannot take are recorded in ``summary.failed`` and skipped (with
    ``progress``, also reported on stderr as they happen); the others are still written. The label maps (and
    the 0/255 masks and overlays drawn from them) have the checkpoint's post-processing applied unless
    ``postprocess=False``; ``_probs.npy`` holds the model's probabilities.
    """
    from tqdm.auto import tqdm

    from ..data.io import read_image
    from .visualize import overlay as draw_overlay

    if segmenter.preprocess.get("volume") is not None:
        raise UserError(
            f"{segmenter.source or 'this model'} was trained on volumes (slices of 3D scans); predict NIfTI "
            "volumes with medurwkv.engine.volume_inference.predict_volumes (`medurwkv predict` does so itself)"
        )
    t0 = time.perf_counter()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    mode, size = segmenter.resolve_mode(native=native, window=window)
    summary = PredictSummary(out_dir=out, mode=segmenter.describe_mode(native=native, window=window, tta=tta))
    paths, problems = collect_inputs(inputs)
    summary.failed.extend(problems)
    stems = unique_stems(paths)
    label_dtype = np.uint8 if segmenter.num_classes <= 256 else np.uint16
    bs = max(1, int(batch_size))

    def fail(name: str, err: BaseException) -> None:
        msg = str(err) if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {err}"
        summary.failed.append((name, msg))
        if progress:
            tqdm.write(f"skipped {name}: {msg}", file=sys.stderr)

    def write(path: Path, stem: str, image: np.ndarray, probs: Tensor) -> None:
        labels = segmenter.postprocess_labels(
            probs.argmax(0).numpy().astype(label_dtype), postprocess
        )  # (H, W)
        written = [write_png(out / f"{stem}.png", labels)]
        if segmenter.num_classes == 2:
            written.append(write_png(out / f"{stem}_255.png", (labels > 0).astype(np.uint8) * 255))
        if overlay:
            written.append(
                write_png(out / f"{stem}_overlay.png", draw_overlay(image, labels, mode=overlay_mode))
            )
        if save_probs:
            written.append(write_npy(out / f"{stem}_probs.npy", probs.numpy().astype(np.float32)))
        summary.outputs[str(path)] = written

    bar = progress_bar(total=len(paths), desc="predict", unit="img", progress=progress)
    for start in range(0, len(paths), bs):
        chunk: list[tuple[Path, str, np.ndarray, PreparedImage]] = []
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
                    segmenter.infer_prepared(
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
