"""The medurwkv ONNX metadata: the one place that knows its key, format version and fields (write and read).

``medurwkv export`` stores, in the ONNX file's ``metadata_props`` under the key ``"medurwkv"``, one JSON object::

    {"format": "medurwkv-onnx-v1", "version": ..., "model": {"name", "kwargs"},
     "preprocess": {"in_channels", "img_size", "normalize", "num_classes", "class_names"},
     "pad_multiple": int, "pad_mode": str, "dynamic": bool, "input_size": [H, W], "opset": int,
     "source_checkpoint": str, "epoch": int | null, "postprocess": {...} | null}

so that ``Segmenter.from_checkpoint("model.onnx")`` preprocesses, pads and crops images exactly like the
PyTorch checkpoint it came from, and post-processes its label maps the same way (``postprocess``: the
checkpoint's decision, :mod:`medurwkv.engine.postprocess`; ``null`` or absent, as in files exported before it
existed: none) (docs/predict.md, "ONNX export").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..utils import atomic_write

__all__ = [
    "ONNX_METADATA_KEY",
    "ONNX_METADATA_FORMAT",
    "CHECKPOINT_EXPECTED",
    "make_onnx_metadata",
    "write_onnx_metadata",
    "read_onnx_metadata",
    "pad_settings",
]

ONNX_METADATA_KEY = "medurwkv"
ONNX_METADATA_FORMAT = "medurwkv-onnx-v1"

#: the start of every "wrong checkpoint" message of predict, evaluate and export (defined here, the lowest module
#: that raises one; :mod:`medurwkv.engine.predict` uses it for .pt files)
CHECKPOINT_EXPECTED = (
    "expected a medurwkv checkpoint (.pt written by `medurwkv train`) or an .onnx from `medurwkv export`"
)


def make_onnx_metadata(
    model: Any,
    checkpoint: dict[str, Any],
    *,
    dynamic: bool,
    input_size: tuple[int, int],
    opset: int | None,
    source: str | Path,
) -> dict[str, Any]:
    """The metadata dict of an export of ``model`` (a ``SegmentationModel``) loaded from ``checkpoint``."""
    return {
        "format": ONNX_METADATA_FORMAT,
        "version": checkpoint.get("version"),
        "model": checkpoint.get("model"),
        "preprocess": dict(checkpoint.get("preprocess") or {}),
        "pad_multiple": int(model.pad_multiple),
        "pad_mode": str(model.pad_mode),
        "dynamic": bool(dynamic),
        "input_size": [int(input_size[0]), int(input_size[1])],
        "opset": opset,
        "source_checkpoint": str(source),
        "epoch": checkpoint.get("epoch"),
        "postprocess": checkpoint.get("postprocess"),  # a JSON dict already (or None)
    }


def write_onnx_metadata(src: str | Path, dst: str | Path, meta: dict[str, Any]) -> Path:
    """Copy ONNX file ``src`` to ``dst`` (atomically) with ``meta`` as JSON under :data:`ONNX_METADATA_KEY`."""
    import onnx

    model = onnx.load(str(src))
    for prop in list(model.metadata_props):
        if prop.key == ONNX_METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = json.dumps(meta, default=str, sort_keys=True)
    # the serialized proto, as onnx.save writes it (a model under protobuf's 2 GB limit, no external data)
    return atomic_write(dst, lambda f: f.write(model.SerializeToString()))


def _not_ours(path: Path, why: str) -> UserError:
    return UserError(
        f"{CHECKPOINT_EXPECTED}, got {path}: {why}; export the checkpoint again with `medurwkv export --ckpt RUN_DIR --out FILE.onnx`"
    )


def read_onnx_metadata(path: str | Path) -> dict[str, Any] | None:
    """The metadata dict stored by ``medurwkv export`` in ONNX file ``path``; ``None`` when it has none.

    Raises :class:`~medurwkv.errors.UserError` for a file that is not an ONNX model, or whose medurwkv entry is
    not valid JSON, has another format version or lacks ``preprocess``.
    """
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a file that is not ONNX
        raise _not_ours(path, f"not a readable ONNX model ({type(e).__name__}: {e})") from e
    for prop in model.metadata_props:
        if prop.key != ONNX_METADATA_KEY:
            continue
        try:
            meta = json.loads(prop.value)
        except json.JSONDecodeError as e:
            raise _not_ours(path, f"its metadata {ONNX_METADATA_KEY!r} is not valid JSON ({e})") from e
        if not isinstance(meta, dict) or "preprocess" not in meta:
            raise _not_ours(path, f"its metadata {ONNX_METADATA_KEY!r} lacks 'preprocess'")
        if meta.get("format", ONNX_METADATA_FORMAT) != ONNX_METADATA_FORMAT:
            raise _not_ours(
                path,
                f"its metadata format is {meta.get('format')!r}, this version reads {ONNX_METADATA_FORMAT!r}",
            )
        return meta
    return None


def pad_settings(meta: dict[str, Any] | None) -> tuple[int, str]:
    """``(pad_multiple, pad_mode)`` of an export; ``(1, "constant")`` (no padding) for a file without metadata."""
    meta = meta or {}
    return int(meta.get("pad_multiple") or 1), str(meta.get("pad_mode") or "constant")
