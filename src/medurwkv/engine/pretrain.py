"""Self-supervised pretraining of a Med-URWKV encoder on unlabeled images: :func:`pretrain`, the Python side of
``medurwkv pretrain`` (the command line is ``medurwkv/cli/pretrain.py``; docs/pretrain.md).

Method: SimMIM-style masked image modeling on the FULL token grid. A random ``mask_ratio`` of square
``mask_patch`` patches of the input image is replaced by a learned per-channel fill value (so the adapter's conv
stem and the patch embedding both see no masked pixel), the encoder runs on the whole image, its deepest map
(stride 32) goes through a light head (1x1 conv to ``32² · C`` channels + pixel shuffle, as SimMIM's linear
head) and the loss is the L1 distance to the normalised input on the masked pixels only. Every token keeps its
place, so Q-Shift's 2D neighbourhoods and the adapter's deformable attention see the grid they see when
segmenting; an MAE-style token drop would break the grid and fits only the plain trunk.

One run folder holds everything a run produces::

    RUN_DIR/config.yaml      the resolved PretrainConfig (what --resume reads back)
    RUN_DIR/last.pt          resume point after the last finished epoch (encoder, head, fill, optimizer, RNG)
    RUN_DIR/encoder.pt       the pretrained encoder (format medurwkv-encoder-v1), for train --pretrained
    RUN_DIR/metrics.csv      epoch, global_step, loss, lr, epoch_time_s, img_per_s, images_seen
    RUN_DIR/preview.png      masked input / reconstruction / original of up to 4 fixed images
    RUN_DIR/train.log        what was printed
    RUN_DIR/tb/              TensorBoard event files
    RUN_DIR/report.html      the run report (engine/report.py)

:func:`pretrain` reads top to bottom: resolve the config, check the model and the masking geometry, list and read
every image once (``engine/pretrain_data.py``), build the model (``train_loop.build_model``) and its masked
image model, AdamW with warm-up + cosine, then for each epoch train and write the run files; finally the report.
Reproducibility is train's: data order ``DistributedSampler(seed, epoch)``, augmentation and masks from
``(seed, epoch, sample)``, global RNGs re-seeded from ``(seed, epoch, rank)`` every epoch, so a resumed run
replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import UserError
from ..models.pretrained import ENCODER_FORMAT, default_normalization
from ..utils import progress_bar
from .checkpoint import TrainState, atomic_torch_save, rng_state, set_rng_state
from .config import OptionSpec, OptionTable, TrainConfig, _opt, parse_img_size, parse_optional_float
from .distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    resolve_device,
)
from .pretrain_data import MaskedImageDataset, collect_images, masked_count, read_all_images, steps_per_epoch
from .run_files import refuse_existing_run, resumable_config, start_run, write_metrics_csv
from .train_data import auto_in_channels
from .train_loop import (
    TrainingDiverged,
    build_model,
    derive_seed,
    optimizer_step,
    reduce_loss_stats,
    seed_everything,
)

__all__ = [
    "ENCODER_FORMAT",
    "STATE_FORMAT",
    "METRIC_COLUMNS",
    "PretrainConfig",
    "PretrainResult",
    "MaskedImageModel",
    "CosineWarmup",
    "masked_l1",
    "CLI_ONLY_OPTIONS",
    "RESUME_OVERRIDABLE",
    "check_masking",
    "pretrain",
    "pretrain_options",
    "pretrain_options_markdown",
    "save_encoder",
    "save_preview",
]

STATE_FORMAT = "medurwkv-pretrain-state-v1"  # last.pt of a pretrain run (not a segmentation checkpoint)
METRIC_COLUMNS = ("epoch", "global_step", "loss", "lr", "epoch_time_s", "img_per_s", "images_seen")
PREVIEW_IMAGES = 4


# ---------------------------------------------------------------------------------------- the option table


@dataclass
class PretrainConfig(OptionTable):
    """All options of a pretraining run (docs/pretrain.md lists them; the CLI is derived from this table).

    Options shared with ``train`` have the same name and meaning; help texts mark a default ``[SimMIM]`` (the
    SimMIM paper's) or ``[ours]``.
    """

    # --- data
    data: list[str] | None = _opt(
        None,
        "one or more folders of images: dataset folders of `train` (images/ or nnU-Net imagesTr/; masks are "
        "ignored) or flat folders of image files",
        parse=str,
        metavar="DIR [DIR ...]",
        shown="required",
        resume=True,
    )
    out: str | None = _opt(
        None,
        "run folder (encoder.pt, last.pt, metrics.csv, preview.png, tb/, config.yaml, report.html); refused if "
        "it already holds a run (use --resume)",
        metavar="RUN_DIR",
        shown="required",
    )
    limit: int | None = _opt(None, "use only the first N images (folders in order, files sorted; smoke runs)")
    img_size: int | list[int] = _opt(
        224,
        "pretraining size: 224 or H,W, a multiple of --mask-patch and of 32 (YAML: 224 or [H, W]) [ours]",
        parse=parse_img_size,
        metavar="SIZE|H,W",
    )
    in_channels: int | None = _opt(
        None,
        "image channels fed to the model (null: from the data, 1 for grayscale, 3 if any image is colour); "
        "fine-tuning needs the same",
    )
    normalize: str | None = _opt(
        None,
        "'imagenet' or 'per_image' (null: per_image; with --pretrained an encoder.pt's own, else imagenet); "
        "fine-tune with the same --normalize",
        choices=("imagenet", "per_image"),
    )
    augment: float = _opt(
        0.5,
        "augmentation strength s in [0, 1]: random resized crops keeping 1 - 0.7 s to all of the image area, "
        "horizontal and vertical flips; 0: resize only [ours]",
    )
    # --- model
    model: str = _opt("med_urwkv_t", "registered Med-URWKV model whose encoder is pretrained")
    model_kwargs: dict[str, Any] = _opt(
        factory=dict,
        help='JSON object of model config overrides, e.g. \'{"encoder_overrides": {"depth": 4}}\'',
        parse=str,
        metavar="JSON",
    )
    pretrained: bool | str = _opt(
        False,
        "start from false (random init), true (the model's official release) or a path / URL of weights "
        "(e.g. an encoder.pt): continued pretraining in-domain",
        parse=str,
        metavar="True|False|PATH|URL",
    )
    # --- masked image modeling
    mask_ratio: float = _opt(0.6, "share of the mask patches that are masked, in (0, 1) [SimMIM]")
    mask_patch: int = _opt(
        32, "side of a square mask patch in pixels, a multiple of the encoder's patch stride (16) [SimMIM]"
    )
    # --- optimisation
    epochs: int = _opt(100, "number of epochs [ours]")
    batch_size: int = _opt(
        8, "GLOBAL batch size; under torchrun each of N processes gets batch_size / N [ours]"
    )
    lr: float = _opt(3e-4, "AdamW peak learning rate [ours]")
    weight_decay: float = _opt(
        0.05, "AdamW weight decay, not on norms, biases, RWKV decay/mix vectors, embeddings, the fill [ours]"
    )
    warmup_epochs: float = _opt(
        1.0, "linear warm-up length in epochs (fractions allowed; 0 disables), then cosine decay to 0 [ours]"
    )
    grad_clip: float | None = _opt(
        5.0, "max gradient norm; none / null disables clipping [ours]", parse=parse_optional_float
    )
    amp: bool | None = _opt(
        None, "mixed precision float16 + GradScaler (null: on for CUDA, off on CPU); WKV always runs in fp32"
    )
    # --- runtime
    device: str = _opt(
        "auto",
        "'auto', 'cpu', 'cuda', 'cuda:1' (under torchrun each process uses cuda:LOCAL_RANK)",
        resume=True,
    )
    num_workers: int = _opt(2, "DataLoader worker processes (persistent across epochs)", resume=True)
    seed: int = _opt(0, "seed of the model initialisation, data order, augmentation, masks and all RNGs")
    deterministic: bool = _opt(
        False, "torch.use_deterministic_algorithms(True) and no cuDNN autotuning (slower on GPU)"
    )
    max_train_batches: int | None = _opt(
        None, "stop each epoch after N batches (smoke runs and speed measurements; the schedule follows)"
    )
    progress: bool = _opt(True, "show a tqdm progress bar per epoch (running loss, img/s)", resume=True)
    tensorboard: bool = _opt(True, "write TensorBoard logs to RUN_DIR/tb/", resume=True)

    _kind = "pretraining"
    _command = "pretrain"

    @classmethod
    def coerce(cls, name: str, v: Any, source: str) -> Any:
        return _coerce(name, v, source)

    @classmethod
    def load_yaml(cls, path: str | Path) -> dict[str, Any]:
        return super().load_yaml(Path(path).expanduser())

    def validate(self) -> None:
        """Raise :class:`UserError` naming the option and how to fix it (the model-dependent checks of the
        mask geometry are in :func:`check_masking`)."""

        bad = self._bad
        self._check_img_size()
        self._check_ints(("epochs", "batch_size", "mask_patch"), 1)
        self._check_ints(("num_workers", "seed"), 0)
        self._check_ints(("limit", "in_channels", "max_train_batches"), 1, nullable=True)
        if not 0 < self.mask_ratio < 1:
            raise bad("mask_ratio", "in (0, 1) (0.6: 60 % of the patches masked)")
        if not 0 <= self.augment <= 1:
            raise bad("augment", "in [0, 1] (0: no augmentation)")
        if not self.lr > 0:
            raise bad("lr", "> 0")
        for name in ("weight_decay", "warmup_epochs"):
            if not getattr(self, name) >= 0:
                raise bad(name, ">= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", "> 0 or null (no clipping)")
        self._check_choices()  # normalize, the one option with choices
        if self.data is not None and not (isinstance(self.data, list) and self.data):
            raise bad("data", "to be one or more folders")
        self._check_model()


_FIELDS = PretrainConfig.option_fields()
RESUME_OVERRIDABLE = frozenset(name for name, f in _FIELDS.items() if f.metadata["resume"])
# `medurwkv pretrain` options that are not pretraining options: where the options come from.
CLI_ONLY_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("config", "CONFIG", "YAML file of options (same keys as the flags, with underscores)"),
    ("resume", "RUN_DIR", "continue RUN_DIR from last.pt with its saved config.yaml"),
)


def _coerce(name: str, v: Any, source: str) -> Any:
    """YAML / command-line values to the field's type. Options that ``train`` has with the same type are
    converted by train's own rules (engine/config.py); only the pretraining options are handled here."""
    ftype = str(_FIELDS[name].type)
    train_field = TrainConfig.option_fields().get(name)
    if train_field is not None and str(train_field.type) == ftype:
        return TrainConfig.coerce(name, v, source)
    if name == "data":
        if v is None:
            return None
        items = [v] if isinstance(v, (str, Path)) else v
        if not isinstance(items, (list, tuple)):
            raise UserError(f"expected data to be a folder or a list of folders in {source}, got {v!r}")
        return [str(x) for x in items]
    try:
        if ftype.startswith("int"):
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            return int(v)
        if ftype.startswith("float"):
            return float(v)
    except (TypeError, ValueError) as e:
        raise UserError(f"expected {name} of type {ftype} in {source}, got {v!r}; fix it or remove it") from e
    return v


def pretrain_options() -> list[OptionSpec]:
    """Every :class:`PretrainConfig` field as an :class:`~medurwkv.engine.config.OptionSpec` (declaration
    order), from which the command line and the docs table are derived."""
    return PretrainConfig.options()


def pretrain_options_markdown() -> str:
    """The options table of docs/pretrain.md (``flag | default | meaning``), generated from PretrainConfig."""
    return PretrainConfig.options_markdown(CLI_ONLY_OPTIONS)


# ---------------------------------------------------------------------------------------- the method


class CosineWarmup:
    """LR factor at optimizer step ``s``: linear warm-up over ``warmup`` steps, times a cosine from 1 to 0 over
    ``total`` steps. A callable object (not a lambda) so that ``LambdaLR.state_dict()`` stores it."""

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))


class MaskedImageModel(nn.Module):
    """SimMIM on the full grid around a segmentation model's encoder: ``(x, patch mask) -> reconstruction``.

    Args:
        encoder: the model's :class:`~medurwkv.models.base.Encoder` (shared, not copied: training it trains
            the segmentation model's encoder); its deepest map is ``(B, out_channels[-1], H/s, W/s)``,
            ``s = strides[-1]``.
        in_channels: image channels ``C``.
        mask_patch: side ``p`` of a mask patch in pixels; the patch mask is ``(B, H/p, W/p)``.

    ``mask_fill`` (C,) is the learned value every masked pixel takes in the normalised input (a pixel-level mask
    token: the conv stem and the patch embedding see it instead of the image). ``head`` is a 1x1 conv to
    ``s² · C`` channels followed by a pixel shuffle, i.e. one linear map per stride-``s`` cell (SimMIM's head).
    """

    def __init__(self, encoder: nn.Module, in_channels: int, mask_patch: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_patch = int(mask_patch)
        stride, width = int(encoder.strides[-1]), int(encoder.out_channels[-1])
        self.mask_fill = nn.Parameter(torch.zeros(in_channels))  # 0 = the mean of a normalised image
        self.head = nn.Sequential(nn.Conv2d(width, stride * stride * in_channels, 1), nn.PixelShuffle(stride))

    def pixel_mask(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, gh, gw) bool patch mask -> (B, 1, gh·p, gw·p) pixel mask, 1 where masked."""
        p = self.mask_patch
        return mask.to(dtype).repeat_interleave(p, dim=1).repeat_interleave(p, dim=2).unsqueeze(1)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` (B, C, H, W) normalised, ``mask`` (B, H/p, W/p) bool -> (reconstruction (B, C, H, W), pixel
        mask (B, 1, H, W), masked input (B, C, H, W))."""
        pm = self.pixel_mask(mask, x.dtype)  # (B, 1, H, W)
        xm = x * (1 - pm) + self.mask_fill.view(1, -1, 1, 1).to(x.dtype) * pm  # (B, C, H, W)
        rec = self.head(self.encoder(xm)[-1])  # deepest map (B, D, H/s, W/s) -> (B, C, H, W)
        return rec, pm, xm


def masked_l1(x: Tensor, rec: Tensor, pixel_mask: Tensor) -> Tensor:
    """Mean ``|rec - x|`` over the masked pixels and the channels; unmasked pixels do not count at all.

    ``x``, ``rec`` (B, C, H, W); ``pixel_mask`` (B, 1, H, W), 1 where masked (SimMIM's loss).
    """
    m = pixel_mask.bool().expand_as(x)  # (B, C, H, W)
    err = torch.where(m, (rec - x).abs(), torch.zeros((), dtype=rec.dtype, device=rec.device))
    return err.sum() / m.sum().clamp_min(1)


def check_masking(cfg: PretrainConfig, model: nn.Module) -> int:
    """The patch stride of ``model``'s VRWKV encoder, after checking that the model has one and that
    ``mask_patch``, ``img_size`` and ``mask_ratio`` fit it; UserError "expected X, got Y, how to fix" otherwise."""
    from ..models import list_models
    from ..models.base import SegmentationModel
    from ..models.vrwkv import VRWKVTrunk

    if not isinstance(model, SegmentationModel):
        raise UserError(
            f"expected a segmentation model, whose encoder is pretrained, got {cfg.model!r}, a "
            f"{type(model).__name__} backbone alone; use one of {list_models('med_urwkv*')} (--model), whose "
            "encoders are these backbones"
        )
    target = model.pretrained_target()
    if not isinstance(target, VRWKVTrunk):
        what = type(getattr(model, "encoder", model)).__name__
        raise UserError(
            f"expected a model with a VRWKV encoder, got {cfg.model!r} (encoder {what}), which has none to "
            f"pretrain; use one of {list_models('med_urwkv*')} (--model)"
        )
    stride, p = int(target.patch_size), cfg.mask_patch
    if p % stride:
        lo, hi = max(stride, p // stride * stride), (p // stride + 1) * stride
        raise UserError(
            f"expected --mask-patch to be a multiple of the encoder's patch stride {stride} px (so that each "
            f"token is either fully masked or fully visible), got {p}; use {lo} or {hi}"
        )
    H, W = cfg.img_hw
    multiple = math.lcm(p, int(model.encoder.pad_multiple))
    if H % multiple or W % multiple:
        fix = [max(multiple, round(v / multiple) * multiple) for v in (H, W)]
        raise UserError(
            f"expected --img-size to be a multiple of --mask-patch {p} and of the encoder's input multiple "
            f"{model.encoder.pad_multiple} (i.e. of {multiple}), got {H}x{W}; use --img-size {fix[0]},{fix[1]}"
        )
    n = (H // p) * (W // p)
    k = masked_count(n, cfg.mask_ratio)
    if not 0 < k < n:
        raise UserError(
            f"expected --mask-ratio to mask some but not all of the {n} mask patches of a {H}x{W} image, got "
            f"{cfg.mask_ratio} which masks {k}; use a ratio between {1 / n:.3g} and {1 - 1 / n:.3g}, or a "
            "larger --img-size / smaller --mask-patch"
        )
    return stride


# ---------------------------------------------------------------------------------------- the run


@dataclass
class PretrainResult:
    """What :func:`pretrain` produced."""

    run_dir: Path
    encoder: Path  # RUN_DIR/encoder.pt
    last_checkpoint: Path
    preview: Path
    epochs_completed: int
    images_seen: int
    history: list[dict[str, Any]]
    config: PretrainConfig
    report: Path | None = None


def pretrain(
    config: PretrainConfig | Mapping[str, Any] | str | Path | None = None,
    *,
    resume: str | Path | None = None,
    **overrides: Any,
) -> PretrainResult:
    """Pretrain a model's encoder by masked image modeling; the Python equivalent of ``medurwkv pretrain``.

    Args:
        config: a :class:`PretrainConfig`, a dict of options, or a YAML file (same keys as the CLI flags with
            underscores). Precedence: defaults < ``config`` < ``overrides``.
        resume: a run folder to continue from its ``last.pt`` with its saved ``config.yaml`` (only ``data``
            (same files, moved), ``device``, ``num_workers``, ``progress`` and ``tensorboard`` may change).
        **overrides: option overrides, e.g. ``epochs=2``, ``data=["scans/"]``.

    Returns:
        :class:`PretrainResult`; ``encoder`` is ``RUN_DIR/encoder.pt`` for ``train --pretrained``.

    Raises:
        UserError: before any work starts, for a folder without images, unreadable images (named), a model
            without a VRWKV encoder, a mask patch or image size that does not fit the encoder, a bad option;
            TrainingDiverged (a UserError) if the loss becomes NaN/inf.
    """
    if resume is not None:
        run_dir = Path(resume).expanduser()
        cfg = _resume_config(run_dir, config, overrides)
    else:
        cfg = _fresh_config(config, overrides)
        run_dir = Path(cfg.out)
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    prev_det = torch.are_deterministic_algorithms_enabled()
    try:
        return _pretrain(cfg, run_dir, resume is not None, device, info)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        cleanup(info)


def _fresh_config(config: Any, overrides: dict[str, Any]) -> PretrainConfig:
    merged = {**PretrainConfig.as_options(config), **{k: v for k, v in overrides.items() if v is not None}}
    cfg = PretrainConfig.from_dict(merged, source="config")
    if not cfg.data or not cfg.out:
        raise UserError(
            f"expected both --data DIR [DIR ...] and --out RUN_DIR, got data={cfg.data!r}, out={cfg.out!r}"
        )
    # absolute paths: config.yaml must still point at the data when resumed from another folder
    cfg = cfg.replace(
        data=[str(Path(d).expanduser().resolve()) for d in cfg.data],
        out=str(Path(cfg.out).expanduser().resolve()),
    )
    refuse_existing_run(cfg.out, "pretrain")
    return cfg


def _resume_config(run_dir: Path, config: Any, overrides: dict[str, Any]) -> PretrainConfig:
    """The run's saved config; only options that do not change the numbers may be given differently."""
    cfg_path = resumable_config(run_dir, "a pretrain run folder")
    saved = PretrainConfig.from_dict(PretrainConfig.load_yaml(cfg_path), source=str(cfg_path))
    asked = {**PretrainConfig.as_options(config), **{k: v for k, v in overrides.items() if v is not None}}
    PretrainConfig.check_keys(asked, "resume")
    changes, conflicts = {}, []
    for k, v in asked.items():
        if k == "out":
            if Path(v).expanduser().resolve() != run_dir.resolve():
                conflicts.append(f"out: asked {v!r}, resuming {str(run_dir)!r}")
            continue
        cv = _coerce(k, v, "resume")
        if k in RESUME_OVERRIDABLE:
            changes[k] = cv
        elif cv != getattr(saved, k):
            conflicts.append(f"{k}: asked {cv!r}, run has {getattr(saved, k)!r}")
    if conflicts:
        raise UserError(
            f"--resume continues {run_dir} with its saved config; these options differ: {'; '.join(conflicts)}. "
            f"Only {sorted(RESUME_OVERRIDABLE)} may change on resume; to train longer or differently, start a "
            f"new run from this one's encoder: --pretrained {run_dir / 'encoder.pt'} --out NEW_RUN"
        )
    cfg = saved.replace(**changes, out=str(run_dir))
    return cfg.replace(data=[str(Path(d).expanduser().resolve()) for d in cfg.data or []])


def _model_data(cfg: PretrainConfig, in_channels: int) -> SimpleNamespace:
    """What ``train_loop.build_model`` needs of the data: the input channels; the classes are the model's own
    (its decoder is not used here, only kept so that encoder.pt names the model it was pretrained for)."""
    return SimpleNamespace(in_channels=in_channels, num_classes=int(cfg.model_kwargs.get("num_classes", 2)))


def finetune_command(cfg: PretrainConfig, encoder: Path) -> str:
    """The ``medurwkv train`` command that fine-tunes from ``encoder``: the same model and kwargs, the
    pretraining's normalisation, and no frozen start (freezing an encoder pretrained here cost Dice in
    docs/results_pretrain.md; the freeze is meant for the official weights)."""
    kwargs = f" --model-kwargs '{json.dumps(cfg.model_kwargs)}'" if cfg.model_kwargs else ""
    return (
        f"medurwkv train --data DATA --out RUN --model {cfg.model}{kwargs} --pretrained {encoder} "
        f"--normalize {cfg.normalize} --freeze-encoder-epochs 0"
    )


def _pretrain(
    cfg: PretrainConfig, run_dir: Path, resuming: bool, device: torch.device, info: DistInfo
) -> PretrainResult:
    from ..models import create_model

    # ---- checks before any work: the model and the mask geometry (on the meta device: no memory, no init
    # cost), then every image read once (rank 0; one broadcast)
    kw = {**cfg.model_kwargs, "in_channels": cfg.in_channels or 3}
    with torch.device("meta"):
        check_masking(cfg, create_model(cfg.model, **kw))
    index = collect_images(cfg.data or [], cfg.limit)
    channels = _read_images_once(cfg, index, info)
    in_channels = cfg.in_channels or auto_in_channels(list(channels))
    cfg = cfg.replace(
        in_channels=in_channels, normalize=cfg.normalize or default_normalization(cfg.pretrained)
    )
    ckpt = _load_state(run_dir / "last.pt", index) if resuming else None

    log = start_run(cfg, run_dir, resuming, device, info)  # creates RUN_DIR, train.log, determinism switches
    seed_everything(cfg.seed)
    local_bs = cfg.batch_size // info.world_size
    if cfg.batch_size % info.world_size:
        raise UserError(
            f"expected --batch-size (the global batch) divisible by the {info.world_size} processes, got "
            f"{cfg.batch_size}; use a multiple of {info.world_size}"
        )
    steps = steps_per_epoch(len(index.ids), info.world_size, local_bs, cfg.max_train_batches)
    log(
        f"data: {len(index.ids)} images from {len(cfg.data or [])} folder(s), channels {channels} -> "
        f"{in_channels} channel(s), normalize={cfg.normalize}, at {cfg.img_hw[0]}x{cfg.img_hw[1]}; {steps} "
        f"steps/epoch of global batch {cfg.batch_size}"
    )

    # ---- model (seeded again: identical initial weights whatever the data code consumed)
    seed_everything(cfg.seed)
    model = build_model(cfg, _model_data(cfg, in_channels), ckpt, info)  # type: ignore[arg-type]
    mim = MaskedImageModel(model.encoder, in_channels, cfg.mask_patch)
    n_enc = sum(p.numel() for p in model.pretrained_target().parameters())
    grid = (cfg.img_hw[0] // cfg.mask_patch, cfg.img_hw[1] // cfg.mask_patch)
    n_masked = masked_count(grid[0] * grid[1], cfg.mask_ratio)
    log(
        f"model: {model.model_spec['name']} encoder ({n_enc / 1e6:.3f} M parameters saved to encoder.pt), "
        f"pretrained={cfg.pretrained}; masking {n_masked} of {grid[0]}x{grid[1]} patches of {cfg.mask_patch} px "
        f"(ratio {cfg.mask_ratio}), reconstruction from the stride-{model.encoder.strides[-1]} map"
    )
    run = _Optimisation.build(cfg, mim, steps, device, info, log)
    state, images_seen = TrainState(), 0
    if ckpt is not None:
        mim.load_state_dict(ckpt["state_dict"], strict=True)
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            run.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        state = TrainState(
            epoch=int(ckpt["epoch"]), global_step=int(ckpt["global_step"]), history=ckpt["history"]
        )
        images_seen = int(ckpt["images_seen"])
        log(f"resume: continuing after epoch {state.epoch}/{cfg.epochs} (global step {state.global_step})")

    loader, sampler, dataset = _make_loader(cfg, index, info, in_channels, pin_memory=device.type == "cuda")
    files = _RunFiles(run_dir, cfg, model, index, info) if info.is_main else None
    if files is not None:
        files.start(state)

    start_epoch = state.epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            seed_everything(derive_seed(cfg.seed, epoch, info.rank))
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            row = run.train_epoch(epoch, loader, steps, state, files.writer if files else None)
            images_seen += row["images"]
            row.update(epoch_time_s=time.perf_counter() - t0, images_seen=images_seen)
            state.end_epoch({k: row[k] for k in METRIC_COLUMNS}, -row["loss"])
            log(
                f"epoch {row['epoch']}/{cfg.epochs}: loss {row['loss']:.4f}, lr {row['lr']:.3g}, "
                f"{row['epoch_time_s']:.1f} s, {row['img_per_s']:.1f} img/s ({images_seen} images seen)"
            )
            if files is not None:
                files.end_epoch(state, run, mim, images_seen, device)
            barrier(info)
    finally:
        if files is not None:
            files.close()

    if start_epoch >= cfg.epochs:
        log(f"run already finished ({cfg.epochs} epochs); nothing to train")
    result = PretrainResult(
        run_dir=run_dir,
        encoder=run_dir / "encoder.pt",
        last_checkpoint=run_dir / "last.pt",
        preview=run_dir / "preview.png",
        epochs_completed=len(state.history),
        images_seen=images_seen,
        history=state.history,
        config=cfg,
    )
    if info.is_main:
        result.report = _report(run_dir, log)
        log(f"encoder: {result.encoder}; fine-tune with: {finetune_command(cfg, result.encoder)}")
    barrier(info)
    return result


def _read_images_once(cfg: PretrainConfig, index: Any, info: DistInfo) -> dict[int, int]:
    """Rank 0 decodes every image once (errors name the files); one broadcast hands the channel counts (or the
    error) to the other processes, which would otherwise wait for rank 0 forever."""
    result: dict[str, Any] | None = None
    if info.is_main:
        try:
            result = {"channels": read_all_images(index, progress=cfg.progress).channels}
        except Exception as e:
            if info.enabled:
                broadcast_object(
                    {"error": f"{type(e).__name__}: {e}", "user": isinstance(e, UserError)}, info
                )
            raise
    result = broadcast_object(result, info)
    if "error" in result:
        raise (UserError if result["user"] else RuntimeError)(
            f"rank 0 could not read the images: {result['error']}"
        )
    return result["channels"]


def _load_state(path: Path, index: Any) -> dict[str, Any]:
    """last.pt of a pretrain run, checked to be one and to list the same images as the folders now hold."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # RNG states need full unpickling
    except Exception as e:  # noqa: BLE001 - report any unpickling failure uniformly
        raise UserError(f"expected a readable pretrain state at {path}, got an error: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != STATE_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(
            f"expected a `medurwkv pretrain` run (last.pt of format {STATE_FORMAT!r}), got {found!r} in {path}; "
            "a `medurwkv train` run is resumed with `medurwkv train --resume`"
        )
    if ckpt["images"] != list(index.ids):
        now, then = set(index.ids), set(ckpt["images"])
        raise UserError(
            f"expected the same {len(then)} images the run was started with, got {len(now)} "
            f"(missing now: {sorted(then - now)[:5]}, new: {sorted(now - then)[:5]}); resume with the same "
            "--data folders (moved folders are fine when they hold the same files)"
        )
    return ckpt


def _make_loader(
    cfg: PretrainConfig, index: Any, info: DistInfo, in_channels: int, *, pin_memory: bool
) -> tuple[Any, Any, MaskedImageDataset]:
    from torch.utils.data import DataLoader, DistributedSampler

    dataset = _dataset(cfg, index, index.ids, in_channels, train=True)
    # the same sampler with one process keeps the data order identical to a DDP run with the same global batch
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed, drop_last=False
    )
    kw: dict[str, Any] = dict(num_workers=cfg.num_workers, pin_memory=pin_memory)
    if cfg.num_workers > 0:
        kw["persistent_workers"] = True
    loader = DataLoader(dataset, batch_size=cfg.batch_size // info.world_size, sampler=sampler, **kw)
    return loader, sampler, dataset


def _dataset(
    cfg: PretrainConfig, index: Any, ids: list[str], in_channels: int, *, train: bool
) -> MaskedImageDataset:
    return MaskedImageDataset(
        index,
        ids,
        train=train,
        img_size=cfg.img_hw,
        in_channels=in_channels,
        normalize=str(cfg.normalize),
        augment=cfg.augment,
        mask_patch=cfg.mask_patch,
        mask_ratio=cfg.mask_ratio,
        seed=cfg.seed,
    )


@dataclass
class _Optimisation:
    """One process's optimisation of the masked image model: AdamW, warm-up + cosine, AMP, DDP wrapper."""

    cfg: PretrainConfig
    mim: MaskedImageModel
    module: nn.Module  # mim or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    device: torch.device
    info: DistInfo
    use_amp: bool

    @classmethod
    def build(
        cls,
        cfg: PretrainConfig,
        mim: MaskedImageModel,
        steps: int,
        device: torch.device,
        info: DistInfo,
        log: Any,
    ) -> _Optimisation:
        from ..models.modules import split_decay_params

        groups = split_decay_params(mim.named_parameters(), cfg.lr, cfg.weight_decay)
        if info.enabled and device.type == "cuda":
            mim = nn.SyncBatchNorm.convert_sync_batchnorm(mim)  # keeps the parameter objects of the groups
            log("ddp: BatchNorm layers converted to SyncBatchNorm")
        mim.to(device)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total, warmup = steps * cfg.epochs, round(cfg.warmup_epochs * steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, CosineWarmup(total, warmup))
        use_amp = bool(cfg.amp if cfg.amp is not None else device.type == "cuda")
        scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
        if use_amp:
            log("mixed precision: autocast float16 + GradScaler (WKV runs in fp32)")
        module: nn.Module = mim
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            # the encoder's shallower outputs (the adapter's stride-4/8/16 norms and up-conv, the pure pyramid's
            # resampling) do not reach the loss: their parameters get no gradient
            module = DDP(
                mim, device_ids=ids, output_device=ids[0] if ids else None, find_unused_parameters=True
            )
        return cls(cfg, mim, module, optimizer, scheduler, scaler, device, info, use_amp)

    def train_epoch(
        self, epoch: int, loader: Any, steps: int, state: TrainState, writer: Any
    ) -> dict[str, Any]:
        """One pass over this process's share; the epoch's row (loss is the mean over all processes' images)."""
        cfg = self.cfg
        self.mim.train()
        t0 = time.perf_counter()
        bar = progress_bar(
            total=steps,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            progress=cfg.progress and self.info.is_main,
            leave=False,
            dynamic_ncols=True,
        )
        loss_sum, n_seen, lr_used = 0.0, 0, 0.0
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            where = f"epoch {epoch + 1}/{cfg.epochs}, step {step + 1} (global step {state.global_step + 1})"
            batch_sum, batch_n, lr_used = self._step(batch, where, epoch)
            state.global_step += 1
            loss_sum, n_seen = loss_sum + batch_sum, n_seen + batch_n
            if writer is not None:
                writer.add_scalar("train/loss", batch_sum / batch_n, state.global_step)
                writer.add_scalar("train/lr", lr_used, state.global_step)
            bar.set_postfix(
                loss=f"{loss_sum / n_seen:.4f}", img_s=f"{n_seen / max(time.perf_counter() - t0, 1e-9):.1f}"
            )
            bar.update(1)
        bar.close()
        return {
            "epoch": epoch + 1,
            "global_step": state.global_step,
            "loss": loss_sum / max(n_seen, 1),
            "lr": lr_used,
            "img_per_s": n_seen / max(time.perf_counter() - t0, 1e-9),
            "images": n_seen,
        }

    def _step(self, batch: dict[str, Any], where: str, epoch: int) -> tuple[float, int, float]:
        """One optimizer step; returns (sum of the batch losses, images, lr) over all processes."""
        cfg, info, device = self.cfg, self.info, self.device
        x = batch["image"].to(device, non_blocking=True)  # (B, C, H, W) normalised
        mask = batch["mask"].to(device, non_blocking=True)  # (B, H/p, W/p) bool
        with torch.autocast(device.type, dtype=torch.float16) if self.use_amp else nullcontext():
            rec, pm, _ = self.module(x, mask)  # (B, C, H, W), (B, 1, H, W)
        loss = masked_l1(x, rec.float(), pm.float())
        stats = reduce_loss_stats(loss, x.shape[0], device, info)
        if stats[2].item() > 0:
            ids = ", ".join(i for part in all_gather_objects(list(batch["id"]), info) for i in part)
            raise TrainingDiverged(
                f"reconstruction loss became {loss.item()} at {where}, on the batch with images [{ids}]. Nothing "
                f"was saved for this epoch; last.pt holds epoch {epoch}. Check those images, lower --lr (now "
                f"{cfg.lr}) or keep --grad-clip"
            )
        lr_used = optimizer_step(
            loss,
            self.optimizer,
            self.scaler,
            self.scheduler,
            cfg.grad_clip,
            lambda gnorm: TrainingDiverged(
                f"gradient norm became {gnorm} at {where}, images [{', '.join(batch['id'])}]; lower --lr "
                f"(now {cfg.lr}), keep --grad-clip or check those images"
            ),
        )
        return stats[0].item(), int(stats[1].item()), lr_used


# ---------------------------------------------------------------------------------------- run folder


class _RunFiles:
    """Rank 0's files: config.yaml, metrics.csv, TensorBoard, and after each epoch preview.png, encoder.pt and
    last.pt (last: after a kill it never claims an epoch whose other files are missing)."""

    def __init__(
        self, run_dir: Path, cfg: PretrainConfig, model: nn.Module, index: Any, info: DistInfo
    ) -> None:
        self.run_dir, self.cfg, self.model, self.info = run_dir, cfg, model, info
        self.images = list(index.ids)
        self.preview = _dataset(
            cfg, index, self.images[:PREVIEW_IMAGES], int(cfg.in_channels or 1), train=False
        )
        self.writer: Any = None

    def start(self, state: TrainState) -> None:
        self.cfg.save_yaml(self.run_dir / "config.yaml")
        write_metrics_csv(self.run_dir / "metrics.csv", state.history, METRIC_COLUMNS)
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed run logged after its last checkpoint
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=state.global_step)

    def end_epoch(
        self,
        state: TrainState,
        run: _Optimisation,
        mim: MaskedImageModel,
        images_seen: int,
        device: torch.device,
    ) -> None:
        write_metrics_csv(self.run_dir / "metrics.csv", state.history, METRIC_COLUMNS)
        save_preview(
            self.run_dir / "preview.png", mim, [self.preview[i] for i in range(len(self.preview))], device
        )
        save_encoder(
            self.run_dir / "encoder.pt", self.model, self.cfg, images_seen=images_seen, epochs=state.epoch
        )
        atomic_torch_save(
            {
                "format": STATE_FORMAT,
                "version": __version__,
                "model": dict(self.model.model_spec),
                "config": self.cfg.to_dict(),
                "state_dict": mim.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
                "rng": rng_state(),
                "epoch": state.epoch,
                "global_step": state.global_step,
                "history": state.history,
                "images": self.images,
                "images_seen": images_seen,
                "world_size": self.info.world_size,
            },
            self.run_dir / "last.pt",
        )
        if self.writer is not None:
            row = state.history[-1]
            for k in ("loss", "lr", "img_per_s", "epoch_time_s"):
                self.writer.add_scalar(f"epoch/{k}", row[k], state.global_step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def save_encoder(path: Path, model: nn.Module, cfg: PretrainConfig, *, images_seen: int, epochs: int) -> Path:
    """Write ``encoder.pt`` (format ``medurwkv-encoder-v1``) atomically: the state dict of
    ``model.pretrained_target()`` with what it was pretrained for, which ``load_pretrained`` checks."""
    target = model.pretrained_target()
    return atomic_torch_save(
        {
            "format": ENCODER_FORMAT,
            "model": {"name": model.model_spec["name"], "kwargs": dict(model.model_spec["kwargs"])},
            "in_channels": int(model.in_channels),
            "config": cfg.to_dict(),
            "images_seen": int(images_seen),
            "epochs": int(epochs),
            "medurwkv_version": __version__,
            "state_dict": {k: v.detach().cpu() for k, v in target.state_dict().items()},
        },
        path,
    )


@torch.no_grad()
def save_preview(
    path: Path, mim: MaskedImageModel, samples: list[dict[str, Any]], device: torch.device
) -> Path:
    """``preview.png``: one column per sample, rows masked input (what the encoder sees) / reconstruction
    (predicted masked patches, visible pixels kept) / original; the three of a column share one intensity
    scale (the original's 0.5-99.5 percentiles), so they can be compared."""
    from .visualize import save_png

    x = torch.stack([s["image"] for s in samples]).to(device)  # (N, C, H, W)
    mask = torch.stack([s["mask"] for s in samples]).to(device)  # (N, gh, gw)
    was_training = mim.training
    mim.eval()
    rec, pm, xm = mim(x, mask)
    mim.train(was_training)
    pasted = x * (1 - pm) + rec * pm  # (N, C, H, W)
    cols = []
    for i in range(x.shape[0]):
        lo, hi = np.percentile(x[i].float().cpu().numpy(), [0.5, 99.5])
        cols.append([_display(t[i], float(lo), float(hi)) for t in (xm, pasted, x)])
    h, w = cols[0][0].shape[:2]
    scale = max(1, math.ceil(128 / max(h, w)))  # small images enlarged by an integer factor: crisp pixels
    gap = 2
    grid = np.full((3 * (h * scale + gap) - gap, len(cols) * (w * scale + gap) - gap, 3), 255, np.uint8)
    for c, col in enumerate(cols):
        for r, tile in enumerate(col):
            big = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
            y0, x0 = r * (h * scale + gap), c * (w * scale + gap)
            grid[y0 : y0 + h * scale, x0 : x0 + w * scale] = big
    return save_png(path, grid)


def _display(t: Tensor, lo: float, hi: float) -> np.ndarray:
    """(C, H, W) normalised image -> (H, W, 3) uint8 on the scale [lo, hi] (gray for C != 3: channel 0)."""
    a = t.float().cpu().numpy()
    a = a if a.shape[0] == 3 else np.repeat(a[:1], 3, axis=0)
    a = (np.clip(a, lo, hi) - lo) / max(hi - lo, 1e-6) * 255.0
    return np.ascontiguousarray(np.round(a).astype(np.uint8).transpose(1, 2, 0))


def _report(run_dir: Path, log: Any) -> Path | None:
    from .report import build_report

    try:
        path = build_report(run_dir)
        log(f"report: {path}")
        return path
    except Exception as e:  # noqa: BLE001 - the report is a convenience
        log(f"report skipped: {type(e).__name__}: {e}")
        return None
