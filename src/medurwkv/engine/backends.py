"""Inference backends of :class:`~medurwkv.engine.predict.Segmenter`: PyTorch and onnxruntime.

A backend is a callable ``(B, C, h, w) float32 -> (B, K, h, w) float32 logits`` for any ``h, w`` with the
attributes ``name`` (``"torch"`` / ``"onnx"``), ``device`` (where inputs go) and ``fixed_size`` (the input size of
an ONNX file exported with ``--static``, else ``None``). Both pad the input bottom/right to the model's
``pad_multiple`` and crop the logits back, with the one pad of the model contract
(:func:`medurwkv.models.base.pad_to_multiple`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..models.base import SegmentationModel, pad_to_multiple

__all__ = ["Backend", "TorchBackend", "OnnxBackend"]


class Backend(Protocol):
    name: str
    device: torch.device
    fixed_size: tuple[int, int] | None

    def __call__(self, x: Tensor) -> Tensor: ...


class TorchBackend:
    """A PyTorch model in eval mode on ``device``; the model pads and crops itself (``SegmentationModel.forward``)."""

    name = "torch"

    def __init__(self, model: SegmentationModel, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.fixed_size: tuple[int, int] | None = None

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.model(x.to(self.device, non_blocking=True)).float()


class OnnxBackend:
    """An ONNX file run by onnxruntime; inputs and outputs cross as numpy arrays on the host."""

    name = "onnx"

    def __init__(
        self, path: Path, device: str | torch.device, *, pad_multiple: int = 1, pad_mode: str = "constant"
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UserError(
                f"expected onnxruntime to run {path}, got it not installed; pip install 'medurwkv[export]'"
            ) from e
        dev = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if dev.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(
                    f"expected onnxruntime with CUDA for device={device!r}, got providers "
                    f"{ort.get_available_providers()}; install onnxruntime-gpu or use --device cpu"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.device = torch.device("cpu")
        self.session = ort.InferenceSession(str(path), providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)  # e.g. ['B', 3, 'H', 'W'] (dynamic) or [1, 3, 256, 256] (fixed)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        hw = shape[2:4]
        self.fixed_size = (int(hw[0]), int(hw[1])) if all(isinstance(s, int) for s in hw) else None
        self.pad_multiple = int(pad_multiple)
        self.pad_mode = str(pad_mode)

    def _run(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def __call__(self, x: Tensor) -> Tensor:
        x = x.detach().float().cpu()  # (B, C, H, W)
        H, W = x.shape[-2:]
        if self.fixed_size is not None:
            if self.fixed_size != (H, W):
                raise UserError(
                    f"this ONNX model was exported with a fixed input size {self.fixed_size}, got {(H, W)}; "
                    "re-export without --static for any size, or use the default resize mode"
                )
        else:
            # The traced graph may hold only the padding branch of the size it was exported at, so the input is
            # padded here exactly like the model pads it; the model's own padding then has nothing to do.
            x = pad_to_multiple(x, self.pad_multiple, self.pad_mode)
        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            return torch.cat([self._run(x[i : i + 1]) for i in range(x.shape[0])])[..., :H, :W]
        return self._run(x)[..., :H, :W]  # (B, K, H, W)
