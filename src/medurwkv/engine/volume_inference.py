"""Volumes through a 2D model: :func:`segment_volume` (one (C, X, Y, Z) array) and :func:`predict_volumes`
(NIfTI files in, NIfTI label maps out).

A model trained on a volume dataset carries its :class:`~medurwkv.data.volume_slices.VolumeSpec` in
``preprocess["volume"]`` (checkpoint or ONNX metadata): the slicing axis, the 2.5D context and the intensity
rule per channel. A volume is normalised with exactly that rule, cut into slices along the same axis, the
slices go through the :class:`~medurwkv.engine.predict.Segmenter` in batches (resized to the training size
and back, optional flip TTA, as for 2D images), and the per-slice argmax is put back in place, so the label
map has the input's shape. The checkpoint's post-processing decision (largest connected component per class,
chosen on the validation volumes after training; :mod:`medurwkv.engine.postprocess`) is then applied to the
whole volume in 3D (26-connected) unless ``postprocess=False``. ``predict_volumes`` writes it with the input's affine and header
(:func:`~medurwkv.data.volumes.write_label_volume`, uint8 or uint16).

Input naming (``--input`` files, folders or globs of ``.nii.gz`` / ``.nii``): nnU-Net's ``CASE_0000.nii.gz``,
``CASE_0001.nii.gz`` ... (one file per channel; the output is ``CASE.nii.gz``), or one file per case
(``CASE.nii.gz``, a 4D file holding all channels last as in the MSD layout).
"""

from __future__ import annotations

import glob
import re
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F

from ..data.index import NIFTI_ENDINGS, _nifti_ending
from ..data.volume_slices import (
    VolumeSpec,
    inplane_zoom,
    normalize_volume,
    num_slices,
    require_spacing,
    resample,
    slice_image,
)
from ..data.volumes import Volume, read_volume, stack_channels, write_label_volume
from ..errors import UserError
from ..utils import progress_bar
from .predict import PredictSummary, Segmenter

__all__ = ["volume_spec", "segment_volume", "collect_volume_cases", "read_volume_case", "predict_volumes"]

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def volume_spec(seg: Segmenter) -> VolumeSpec:
    """The volume preprocessing of a model trained on volumes; a clear error for a 2D model."""
    d = seg.preprocess.get("volume")
    if d is None:
        raise UserError(
            f"{seg.source or 'this model'} was trained on 2D images, so it cannot segment volumes; train on a "
            "volume dataset (`medurwkv train --data DIR` with imagesTr/ + labelsTr/ NIfTI) to get one"
        )
    return VolumeSpec.from_dict(d, str(seg.source or "the model"))


def segment_volume(
    seg: Segmenter,
    image: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    tta: bool = False,
    batch_size: int = 16,
    name: str = "volume",
    postprocess: bool = True,
) -> np.ndarray:
    """Label map (X, Y, Z) int64 of a raw (C, X, Y, Z) volume (channels as in training), slice by slice.

    ``spacing`` (mm along X, Y, Z) is needed by a model trained with a target spacing: the volume is then
    resampled in-plane to it, each slice runs whole at that scale (native mode), and its probabilities are
    resampled back to the volume's grid (bilinear) before the argmax.

    ``postprocess``: apply the model's post-processing decision (if it has one) to the assembled 3D label map.
    """
    spec = volume_spec(seg)
    image = np.asarray(image)
    if image.ndim == 3 and spec.num_channels == 1:
        image = image[None]
    vol = normalize_volume(image, spec.intensity)  # (C, X, Y, Z) float32
    grid = vol.shape[1:]  # the label map's (X, Y, Z)
    if spec.target_spacing:
        if spacing is None:
            raise UserError(
                f"{name}: the model was trained on slices resampled to {spec.target_spacing:g} mm, so the "
                "volume's voxel spacing is needed; pass spacing=(sx, sy, sz)"
            )
        vol = resample(vol, inplane_zoom(spacing, spec.axis, spec.target_spacing), order=1)
        mode, size = seg.resolve_mode(native=True)  # the training scale, whole slices
    else:
        mode, size = seg.resolve_mode()  # as in training: resize each slice to img_size and back
    plane = tuple(int(grid[a]) for a in range(3) if a != spec.axis)  # (H, W) of a slice of the label map
    n = num_slices(vol.shape, spec.axis)
    out = np.zeros(grid, dtype=np.int64)
    where: list[Any] = [slice(None)] * 3
    bs = max(1, int(batch_size))
    for start in range(0, n, bs):
        ks = range(start, min(n, start + bs))
        items = [
            seg.prepare(
                slice_image(vol, spec.axis, k, spec.context), f"{name} slice {k}", mode=mode, size=size
            )
            for k in ks
        ]
        probs = seg.infer_prepared(items, mode=mode, size=size, tta=tta, overlap=0.25, batch_size=bs)
        for k, p in zip(ks, probs):  # p: (K, h, w) on the slice's grid (resampled when a target spacing)
            if tuple(p.shape[-2:]) != plane:
                p = F.interpolate(p[None], size=plane, mode="bilinear", align_corners=False)[0]
            where[spec.axis] = k
            out[tuple(where)] = p.argmax(0).numpy()  # (H, W)
    # on the whole volume: a structure's largest component is a 3D notion (the decision was chosen that way)
    return seg.postprocess_labels(out, postprocess)


def collect_volume_cases(
    inputs: str | Path | Iterable[str | Path], num_channels: int
) -> tuple[dict[str, list[Path]], list[tuple[str, str]]]:
    """Group NIfTI inputs (files, folders, globs) into cases: ``{case: channel files in order}``, and the
    problems ``(input, reason)`` (inputs matching nothing, cases lacking a channel file)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and _nifti_ending(f.name))
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(f) for f in glob.glob(str(p)) if _nifti_ending(Path(f).name))
        if not found:
            problems.append((str(item), f"no NIfTI volume ({' or '.join(NIFTI_ENDINGS)}) found"))
        files.extend(found)
    cases: dict[str, dict[int, Path]] = {}
    for f in dict.fromkeys(files):  # keep order, drop repeats
        stem = f.name[: -len(_nifti_ending(f.name) or "")]
        m = _CHANNEL_FILE.match(stem)
        case, ch = (m["case"], int(m["ch"])) if m else (stem, 0)
        if ch in cases.setdefault(case, {}):
            problems.append(
                (str(f), f"case {case!r} has two files for channel {ch}: {cases[case][ch]} and {f}")
            )
            continue
        cases[case][ch] = f
    out: dict[str, list[Path]] = {}
    for case, chans in cases.items():
        if (
            len(chans) == 1
            and num_channels > 1
            and 0 in chans
            and not _CHANNEL_FILE.match(chans[0].name[: -len(_nifti_ending(chans[0].name) or "")])
        ):
            out[case] = [chans[0]]  # one 4D file holding all channels (checked when read)
            continue
        missing = [c for c in range(num_channels) if c not in chans]
        extra = sorted(c for c in chans if c >= num_channels)
        if missing or extra:
            ending = _nifti_ending(next(iter(chans.values())).name)
            what = (
                f"lacks channel file(s) {', '.join(f'{case}_{c:04d}{ending}' for c in missing)}"
                if missing
                else f"has channel files {[f'_{c:04d}' for c in extra]} beyond the model's {num_channels}"
            )
            problems.append((case, f"case {case!r} {what} (the model takes {num_channels} channel(s))"))
            continue
        out[case] = [chans[c] for c in range(num_channels)]
    return out, problems


def read_volume_case(case: str, files: list[Path]) -> tuple[np.ndarray, Volume]:
    """(C, X, Y, Z) float32 image and the 3D reference volume of a case's channel files."""
    return stack_channels([read_volume(f) for f in files], case)


def predict_volumes(
    seg: Segmenter,
    inputs: str | Path | Iterable[str | Path],
    out_dir: str | Path,
    *,
    tta: bool = False,
    batch_size: int = 16,
    progress: bool = True,
    postprocess: bool = True,
) -> PredictSummary:
    """Segment NIfTI volumes and write ``out_dir/<case>.nii.gz`` (the input's ending, affine, header and
    shape; uint8 labels, uint16 beyond 255 classes), with the model's post-processing applied unless
    ``postprocess=False``. A case that cannot be read or predicted is recorded in ``summary.failed`` and
    skipped; the others are still written."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    spec = volume_spec(seg)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(
        out_dir=out,
        mode=seg.describe_mode(tta=tta) + f"; volumes: {spec.describe()}",
    )
    cases, problems = collect_volume_cases(inputs, spec.num_channels)
    summary.failed.extend(problems)
    # a plain CASE.nii.gz predicted into its own folder would be replaced by its label map
    sources = {f.resolve() for files in cases.values() for f in files}
    for case, files in progress_bar(cases.items(), desc="predict", unit="vol", progress=progress):
        try:
            ending = _nifti_ending(files[0].name) or ".nii.gz"
            target = out / f"{case}{ending}"
            if target.resolve() in sources:
                raise UserError(
                    f"expected an output folder apart from the inputs, got {out}, where the label map of case "
                    f"{case!r} would overwrite the input {target}; pass another --out"
                )
            image, ref = read_volume_case(case, files)
            spacing = require_spacing(ref, case) if spec.target_spacing else None
            labels = segment_volume(
                seg,
                image,
                spacing=spacing,
                tta=tta,
                batch_size=batch_size,
                name=f"case {case!r}",
                postprocess=postprocess,
            )
            summary.outputs[str(files[0])] = [write_label_volume(target, labels, ref)]
        except Exception as e:  # noqa: BLE001 - isolate the failing case (as 2D predict does), keep going
            msg = str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"
            summary.failed.append((case, msg))
            if progress:
                tqdm.write(f"skipped {case}: {msg}", file=sys.stderr)
    summary.seconds = time.perf_counter() - t0
    return summary
