"""The optimisation side of :func:`medurwkv.engine.train.fit`: the model, AdamW and its schedule, one epoch.

Recipe (docs/training.md, "Recipe and defaults"): AdamW, poly learning-rate schedule with linear warm-up (per
optimizer step), MONAI ``DiceCELoss`` (softmax, one-hot targets), a *pretrained* encoder frozen for the first
``freeze_encoder_epochs`` epochs, gradient clipping, mixed precision on CUDA. The model is used through the
segmentation-model contract of ``medurwkv.models.base`` (docs/architecture.md): ``param_groups``,
``freeze_encoder``, ``encoder_frozen`` and ``pretrained_target`` (None: nothing pretrained to freeze).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .checkpoint import TrainState
from .config import TrainConfig, effective_pretrained
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier
from .metrics import dice_per_image_torch
from .train_data import Loaders, PreparedData

__all__ = [
    "TrainingDiverged",
    "PolyWarmup",
    "Trainer",
    "build_model",
    "build_trainer",
    "freeze_epochs",
    "seed_everything",
    "derive_seed",
    "reduce_loss_stats",
    "optimizer_step",
]


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss (or gradient norm) became NaN/inf; the message names the epoch, the step and the
    batch ids, and what to try (check those images, lower --lr, keep --grad-clip)."""


class PolyWarmup:
    """LR factor at optimizer step ``s``: linear warm-up over ``warmup`` steps, times ``(1 - s/total)**power``.

    A callable object (not a lambda) so that ``LambdaLR.state_dict()`` stores it.
    """

    def __init__(self, total_steps: int, warmup_steps: int, power: float) -> None:
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.power = float(power)

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        poly = max(0.0, 1.0 - min(step, self.total_steps) / self.total_steps) ** self.power
        return warm * poly


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers, e.g. ``(seed, epoch, rank)``."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- the model


def build_model(
    cfg: TrainConfig, data: PreparedData, resume: Mapping[str, Any] | None, info: DistInfo
) -> nn.Module:
    """``cfg.model`` with ``in_channels`` / ``num_classes`` from the data and pretrained weights; when resuming
    from the checkpoint ``resume``, the architecture saved in it instead (its ``model`` spec: a run begun
    before a registry default changed continues with the model it started with) and no pretrained weights
    (the checkpoint has them). Under DDP rank 0 loads first, so that it alone downloads into the cache."""
    from ..models import create_model
    from ..models.builder import model_from_spec

    kw = dict(cfg.model_kwargs)
    for key, value in (("in_channels", data.in_channels), ("num_classes", data.num_classes)):
        if key in kw and kw[key] != value:
            hint = " or change --in-channels" if key == "in_channels" else ""
            raise UserError(
                f"model_kwargs sets {key}={kw[key]} but the data gives {key}={value}; drop it from "
                f"--model-kwargs (it is set from the data){hint}"
            )
        kw[key] = value
    if resume is not None and "model" in resume:
        return model_from_spec(resume["model"])
    # fit resolved "auto" already (config.resolve_pretrained); direct callers get the same meaning
    pretrained = False if resume is not None else effective_pretrained(cfg.model, cfg.pretrained)
    if pretrained is not False and info.enabled and not info.is_main:
        barrier(info)
    model = create_model(cfg.model, pretrained=pretrained, **kw)
    if pretrained is not False and info.enabled and info.is_main:
        barrier(info)
    return model


def freeze_epochs(cfg: TrainConfig, model: nn.Module, log: Any) -> int:
    """How many first epochs keep the encoder frozen: ``freeze_encoder_epochs`` for a pretrained encoder, else
    0 (a frozen random encoder would learn nothing). Logs the policy."""
    pretrained = effective_pretrained(cfg.model, cfg.pretrained)
    if pretrained is False:
        log(
            "encoder: trained from scratch (no pretrained weights: --pretrained false), so nothing is frozen "
            f"(freeze_encoder_epochs={cfg.freeze_encoder_epochs} applies only to a pretrained encoder)"
        )
        return 0
    source = pretrained
    if pretrained is True:
        from ..models import get_model_entry

        release = get_model_entry(cfg.model).pretrained
        source = f"official release {release.file}" if release is not None else "pretrained=True"
    if model.pretrained_target() is None:
        log(f"encoder: weights from {source}; the model has no pretrained encoder part, nothing is frozen")
        return 0
    if cfg.freeze_encoder_epochs == 0:
        log(f"encoder: pretrained ({source}); not frozen (freeze_encoder_epochs=0)")
        return 0
    log(
        f"encoder: pretrained ({source}); frozen for epochs 1-{cfg.freeze_encoder_epochs}, then trained "
        f"with lr x {cfg.encoder_lr_scale}"
    )
    return cfg.freeze_encoder_epochs


def _wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None)


# ---------------------------------------------------------------------------------------- optimisation


@dataclass
class Trainer:
    """One process's optimisation: the model (and its DDP wrapper), AdamW, the schedule, AMP and the loss."""

    cfg: TrainConfig
    model: nn.Module  # the segmentation model itself (checkpoints save it, not the DDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    device: torch.device
    info: DistInfo
    use_amp: bool
    amp_dtype: torch.dtype
    train_module: nn.Module | None = None  # model or its DDP wrapper (rebuilt when the frozen set changes)
    frozen: bool | None = None

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.use_amp else nullcontext()

    def set_frozen(self, frozen: bool, epoch: int, log: Any) -> None:
        """Train mode, encoder (un)frozen for this epoch; DDP registers its gradient hooks for the parameters
        that require grad when it is built, so the wrapper is rebuilt when that set changes."""
        self.model.train()
        self.model.freeze_encoder(frozen)
        if frozen != self.frozen:
            if self.frozen is not None:
                log(f"encoder: {'frozen' if frozen else 'unfrozen'} from epoch {epoch + 1}")
            self.train_module = _wrap_ddp(self.model, self.info, self.device)
            self.frozen = frozen

    def train_epoch(self, epoch: int, loaders: Loaders, state: TrainState, writer: Any) -> dict[str, Any]:
        """One pass over this process's share of the training data; the epoch's row (validation still NaN)."""
        cfg, info = self.cfg, self.info
        t0 = time.perf_counter()
        seed_everything(derive_seed(cfg.seed, epoch, info.rank))
        loaders.sampler.set_epoch(epoch)
        loaders.train_ds.set_epoch(epoch)
        bar = _progress_bar(cfg, info, epoch, loaders.steps_per_epoch)
        loss_sum, n_seen, lr_used = 0.0, 0, 0.0
        for step, batch in enumerate(loaders.train):
            if step >= loaders.steps_per_epoch:
                break
            where = f"epoch {epoch + 1}/{cfg.epochs}, step {step + 1} (global step {state.global_step + 1})"
            batch_sum, batch_n, lr_used = self._step(batch, where, epoch)
            state.global_step += 1
            loss_sum += batch_sum
            n_seen += batch_n
            if writer is not None:
                writer.add_scalar("train/loss", batch_sum / batch_n, state.global_step)
                writer.add_scalar("train/lr", lr_used, state.global_step)
            if bar is not None:
                dt = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}", img_s=f"{n_seen / max(dt, 1e-9):.1f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        return {
            "epoch": epoch + 1,
            "global_step": state.global_step,
            "train_loss": loss_sum / max(n_seen, 1),
            "val_loss": math.nan,
            "val_dice": math.nan,
            "lr": lr_used,
            "epoch_time_s": math.nan,
            "train_img_per_s": n_seen / max(time.perf_counter() - t0, 1e-9),
            "encoder_frozen": bool(self.model.encoder_frozen),
        }

    def _step(self, batch: dict[str, Any], where: str, epoch: int) -> tuple[float, int, float]:
        """One optimizer step; returns (sum of the batch losses, images, lr) over all processes."""
        cfg, info, device = self.cfg, self.info, self.device
        x = batch["image"].to(device, non_blocking=True)  # (B, C, H, W)
        y = batch["mask"].to(device, non_blocking=True)  # (B, H, W) int64
        with self.autocast():
            if self.model.aux_strides:  # deep supervision: (B, K, H, W) and the auxiliary heads, same size
                logits, aux = self.train_module(x, aux=True)
            else:
                logits, aux = self.train_module(x), []  # (B, K, H, W)
        loss = self.loss_fn(logits.float(), y.unsqueeze(1))
        if aux:
            # weights 1 (main head), 1/2, 1/4 in aux_strides order (16, then 8), normalised to sum 1. nnU-Net
            # also halves per level but gives the finer level the larger weight; this order is what was measured
            w = [0.5 ** (i + 1) for i in range(len(aux))]
            aux_loss = sum(wi * self.loss_fn(a.float(), y.unsqueeze(1)) for wi, a in zip(w, aux))
            loss = (loss + aux_loss) / (1 + sum(w))
        stats = reduce_loss_stats(loss, x.shape[0], device, info)
        if stats[2].item() > 0:
            ids_txt = ", ".join(i for ids in all_gather_objects(list(batch["id"]), info) for i in ids)
            raise TrainingDiverged(
                f"training loss became {loss.item()} at {where}, on the batch with image ids [{ids_txt}]. "
                f"Nothing was saved for this epoch; last.pt holds epoch {epoch}. Check those images and masks, "
                f"lower --lr (now {cfg.lr}) or keep --grad-clip."
            )
        # gradients are already averaged over processes, so every rank raises on a non-finite norm
        lr_used = optimizer_step(
            loss,
            self.optimizer,
            self.scaler,
            self.scheduler,
            cfg.grad_clip,
            lambda gnorm: TrainingDiverged(
                f"gradient norm became {gnorm} at {where}, batch ids [{', '.join(batch['id'])}] (rank "
                f"{info.rank}); lower --lr (now {cfg.lr}), keep --grad-clip or check those images"
            ),
        )
        return stats[0].item(), int(stats[1].item()), lr_used

    @torch.no_grad()
    def validate(self, loader: Any, *, pooled: bool = False) -> tuple[float, float]:
        """Mean validation loss and Dice over all processes' shares.

        Dice is the per-image mean over foreground classes, or with ``pooled`` (volume slices) each foreground
        class's Dice from TP / FP / FN summed over every validation pixel, averaged over the classes. Slices
        of a volume are mostly empty, and a per-slice Dice scores each empty slice predicted empty as 1, so it
        would favour a model that predicts background only.
        """
        was_training = self.model.training
        self.model.eval()
        k = int(self.model.num_classes)
        # loss * n, dice sum, n, then TP, FP, FN of classes 1..K-1
        sums = torch.zeros(3 + 3 * (k - 1), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(loader if loader is not None else []):
            if self.cfg.max_val_batches is not None and i >= self.cfg.max_val_batches:
                break
            x = batch["image"].to(self.device)  # (B, C, H, W)
            y = batch["mask"].to(self.device)  # (B, H, W)
            with self.autocast():
                logits = self.model(x)
            logits = logits.float()  # (B, K, H, W)
            sums[0] += self.loss_fn(logits, y.unsqueeze(1)).double() * x.shape[0]
            pred = logits.argmax(1)  # (B, H, W)
            sums[1] += dice_per_image_torch(pred, y, logits.shape[1]).sum()
            sums[2] += x.shape[0]
            for c in range(1, k):
                p, g = pred == c, y == c
                sums[3 * c : 3 * c + 3] += torch.stack(
                    [(p & g).sum(), (p & ~g).sum(), (~p & g).sum()]
                ).double()
        all_reduce_sum(sums, self.info)
        self.model.train(was_training)
        n = sums[2].item()
        if n == 0:
            return math.nan, math.nan
        if not pooled:
            return sums[0].item() / n, sums[1].item() / n
        tp, fp, fn = sums[3:].view(-1, 3).unbind(1)  # (K-1,) each
        denom = 2 * tp + fp + fn
        # a class absent from every validation pixel and never predicted: nothing to find, nothing found
        dice = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(tp))
        return sums[0].item() / n, dice.mean().item()


def reduce_loss_stats(loss: torch.Tensor, n: int, device: torch.device, info: DistInfo) -> torch.Tensor:
    """``[loss * n, n, 1 if the loss is not finite]`` (float64) summed over all processes: the sum of the batch
    losses, the images and the non-finite flag of one step, in one small all-reduce."""
    stats = torch.stack(
        [
            loss.detach() * n,
            torch.tensor(float(n), device=device),
            (~torch.isfinite(loss.detach())).float(),
        ]
    ).double()
    all_reduce_sum(stats, info)
    return stats


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float | None,
    diverged: Callable[[float], Exception],
) -> float:
    """One optimizer step on ``loss``: backward (scaled), unscale, clip the gradient norm to ``grad_clip``
    (None: no clipping), raise ``diverged(norm)`` on a non-finite norm (without a GradScaler, which skips such
    steps itself), step, scheduler step. Returns the learning rate the step used (the largest of the groups)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)
    if not scaler.is_enabled() and not torch.isfinite(gnorm):
        raise diverged(gnorm.item())
    lr_used = max(g["lr"] for g in optimizer.param_groups)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return lr_used


def build_trainer(
    cfg: TrainConfig, model: nn.Module, steps_per_epoch: int, device: torch.device, info: DistInfo, log: Any
) -> Trainer:
    """AdamW over the model's parameter groups, the poly/warm-up schedule, AMP, the loss; the model on ``device``."""
    from monai.losses import DiceCELoss

    model.freeze_encoder(False)  # every parameter must be in the optimizer, frozen or not
    groups = model.param_groups(cfg.lr, encoder_lr_scale=cfg.encoder_lr_scale, weight_decay=cfg.weight_decay)
    if info.enabled and device.type == "cuda" and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        log("ddp: BatchNorm layers converted to SyncBatchNorm")
    elif info.enabled and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        log(
            "ddp: SyncBatchNorm needs CUDA (NCCL); on CPU/gloo each process keeps its own BatchNorm statistics "
            f"over its {cfg.batch_size // info.world_size} images per step"
        )
    model.to(device)
    # The optimizer holds the parameter objects; .to() and the SyncBN conversion keep them (BN weights reused).
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps, warmup_steps = steps_per_epoch * cfg.epochs, round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, PolyWarmup(total_steps, warmup_steps, cfg.poly_power)
    )
    use_amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    amp_dtype = torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=bool(use_amp and amp_dtype == torch.float16))
    if use_amp:
        scaled = " + GradScaler" if scaler.is_enabled() else ""
        log(f"mixed precision: autocast {cfg.amp_dtype}{scaled} (WKV runs in fp32)")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.dice_weight, lambda_ce=cfg.ce_weight)
    return Trainer(cfg, model, optimizer, scheduler, scaler, loss_fn, device, info, bool(use_amp), amp_dtype)


def _progress_bar(cfg: TrainConfig, info: DistInfo, epoch: int, steps: int) -> Any:
    if not (cfg.progress and info.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True, file=sys.stderr
    )
