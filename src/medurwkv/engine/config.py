"""Training configuration: one flat dataclass, read from / written to YAML, overridable from the command line.

Every option of ``medurwkv train`` is a field of :class:`TrainConfig` with the same name (dashes become
underscores: ``--batch-size`` is ``batch_size``). Precedence, lowest first: dataclass defaults < YAML file
(``--config``) < explicit command-line flags / keyword overrides. The resolved configuration is written to
``RUN_DIR/config.yaml`` and is what ``--resume`` reads back.

Which defaults come from the paper and which are ours is documented in ``docs/training.md`` and in
:data:`FIELD_HELP` (``[paper]`` / ``[ours]``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "TrainConfig",
    "FIELD_HELP",
    "RESUME_OVERRIDABLE",
    "load_yaml_config",
    "save_yaml_config",
    "resolve_config",
    "parse_pretrained",
]


@dataclass
class TrainConfig:
    """All options of a training run (see :data:`FIELD_HELP` and docs/training.md)."""

    # --- data
    data: str | None = None
    out: str | None = None
    split_file: str | None = None
    fold: int | None = None
    folds: int | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    group_by: str | None = "auto"
    img_size: int | list[int] = 256
    in_channels: int | None = None
    normalize: str | None = None
    augment: bool = True
    limit: int | None = None
    # --- model
    model: str = "med_urwkv_t"
    pretrained: bool | str = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # --- optimisation
    epochs: int = 100
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    encoder_lr_scale: float = 1.0
    warmup_epochs: float = 1.0
    poly_power: float = 0.9
    freeze_encoder_epochs: int = 5
    grad_clip: float | None = 1.0
    loss: str = "dice_ce"
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    amp: bool | None = None
    amp_dtype: str = "float16"
    # --- runtime
    device: str = "auto"
    num_workers: int = 2
    seed: int = 0
    deterministic: bool = False
    val_every: int = 1
    max_train_batches: int | None = None
    max_val_batches: int | None = None
    sync_bn: bool = True
    eval_test: bool = True
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a mapping; unknown keys raise with a 'did you mean' hint."""
        _check_keys(d, source)
        return cls(**{k: _coerce(k, v, source) for k, v in d.items()})

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with ``overrides`` applied (validated)."""
        _check_keys(overrides, "overrides")
        return dataclasses.replace(self, **{k: _coerce(k, v, "overrides") for k, v in overrides.items()})

    @property
    def img_hw(self) -> tuple[int, int]:
        """``img_size`` as ``(H, W)``."""
        s = self.img_size
        return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option and how to fix it."""

        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"expected {name} {expected}, got {getattr(self, name)!r}; fix --{_flag(name)}")

        if isinstance(self.img_size, (list, tuple)):
            if len(self.img_size) != 2 or not all(isinstance(v, int) and v > 0 for v in self.img_size):
                raise bad("img_size", "to be a positive int or [H, W]")
            self.img_size = [int(v) for v in self.img_size]
        elif not (isinstance(self.img_size, int) and self.img_size > 0):
            raise bad("img_size", "to be a positive int or [H, W]")
        for name in ("epochs", "batch_size", "val_every"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise bad(name, "to be an integer >= 1")
        for name in ("num_workers", "freeze_encoder_epochs", "seed"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise bad(name, "to be an integer >= 0")
        for name in ("max_train_batches", "max_val_batches", "limit", "in_channels"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and v >= 1):
                raise bad(name, "to be an integer >= 1 or null")
        if self.fold is not None and not (isinstance(self.fold, int) and self.fold >= 0):
            raise bad("fold", "to be an integer >= 0 or null")
        if not self.lr > 0:
            raise bad("lr", "> 0")
        for name in ("weight_decay", "warmup_epochs", "dice_weight", "ce_weight"):
            if not getattr(self, name) >= 0:
                raise bad(name, ">= 0")
        if not self.encoder_lr_scale > 0:
            raise bad("encoder_lr_scale", "> 0 (1.0 = same lr as the decoder)")
        if not self.poly_power >= 0:
            raise bad("poly_power", ">= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", "> 0 or null (no clipping)")
        if self.dice_weight == 0 and self.ce_weight == 0:
            raise ValueError("expected dice_weight or ce_weight > 0, got both 0; the loss would be zero")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < 1:
                raise bad(name, "in [0, 1) or null (the split's default)")
        if self.folds is not None and not (isinstance(self.folds, int) and self.folds >= 2):
            raise bad("folds", "to be an integer >= 2 or null")
        if self.loss != "dice_ce":
            raise bad("loss", "'dice_ce' (MONAI DiceCELoss; the only loss implemented)")
        if self.amp_dtype not in ("float16", "bfloat16"):
            raise bad("amp_dtype", "'float16' or 'bfloat16'")
        if self.normalize is not None and self.normalize not in ("imagenet", "per_image"):
            raise bad("normalize", "'imagenet', 'per_image' or null (chosen from the model)")
        if not isinstance(self.model_kwargs, dict):
            raise bad("model_kwargs", "to be a mapping (YAML dict or JSON object)")
        if not isinstance(self.model, str) or not self.model:
            raise bad("model", "to be a registered model name (see `medurwkv models`)")


# Help text for every option (CLI --help and docs); [paper] = stated by Med-URWKV, [ours] = our choice.
FIELD_HELP: dict[str, str] = {
    "data": "dataset folder (images/ + masks/, or nnU-Net imagesTr/ + labelsTr/)",
    "out": "run folder: checkpoints, metrics.csv, tb/, config.yaml, eval/, report.html",
    "split_file": "split JSON to use (default: DATA/splits.json, created if missing; RUN_DIR/splits.json if DATA is "
    "read-only)",
    "fold": "cross-validation fold of the split file (null: the train/val/test split)",
    "folds": "number of cross-validation folds when a split is created (null: no folds)",
    "val_fraction": "[ours] share of groups for validation when a split is created (null: 0.1)",
    "test_fraction": "[ours] share of groups for test when a split is created (null: 0.2)",
    "group_by": "grouping regex when a split is created: 'auto' (dataset.json split_group, else HC18-style "
    "exam prefix if every id matches), 'none', or a regex with one capture group",
    "img_size": "[ours] training size, int or [H, W] (default 256)",
    "in_channels": "image channels fed to the model (null: from the data, 1 for grayscale, 3 for RGB)",
    "normalize": "'imagenet' or 'per_image' (null: imagenet for a pretrained encoder, else per_image)",
    "augment": "[ours] flips / affine / crop / mild intensity augmentation on the training split",
    "limit": "use only the first N images of each split (smoke runs)",
    "model": "registered model name (med_urwkv_t, med_urwkv_s, unet, ...)",
    "pretrained": "false, true (official release) or a local path / URL of official weights",
    "model_kwargs": "JSON/YAML overrides of the model config (e.g. tiny configs for tests)",
    "epochs": "[ours] number of epochs (default 100)",
    "batch_size": "[ours] GLOBAL batch size, split over DDP processes (default 8)",
    "lr": "[ours] AdamW learning rate (default 3e-4; the optimiser AdamW is [paper])",
    "weight_decay": "[ours] AdamW weight decay (default 1e-4; not on norms, biases, RWKV decay vectors)",
    "encoder_lr_scale": "[ours] encoder lr = lr * this (default 1.0; 0.1 is a common choice)",
    "warmup_epochs": "[ours] linear warm-up length in epochs (default 1.0; fractions allowed)",
    "poly_power": "[ours] poly schedule power (default 0.9; the poly schedule is [paper])",
    "freeze_encoder_epochs": "[paper] freeze a PRETRAINED encoder for the first N epochs (default 5); from "
    "scratch nothing is frozen",
    "grad_clip": "[ours] max gradient norm (default 1.0; null disables)",
    "loss": "'dice_ce': MONAI DiceCELoss, softmax, one-hot targets ([paper] CE + Dice)",
    "dice_weight": "[ours] weight of the Dice term (default 1.0)",
    "ce_weight": "[ours] weight of the CE term (default 1.0)",
    "amp": "mixed precision (null: on for CUDA, off on CPU); WKV always runs in fp32",
    "amp_dtype": "autocast dtype: float16 (with GradScaler) or bfloat16",
    "device": "'auto', 'cpu', 'cuda', 'cuda:1' (under torchrun each process uses cuda:LOCAL_RANK)",
    "num_workers": "data loader worker processes (default 2)",
    "seed": "random seed (python, numpy, torch, data order and augmentation)",
    "deterministic": "torch.use_deterministic_algorithms(True) and no cuDNN autotuning (slower on GPU)",
    "val_every": "validate every N epochs (and always after the last)",
    "max_train_batches": "stop each training epoch after N batches (smoke runs)",
    "max_val_batches": "validate on at most N batches (smoke runs)",
    "sync_bn": "convert BatchNorm to SyncBatchNorm under multi-GPU DDP (not on CPU/gloo, which lacks it)",
    "eval_test": "after training, evaluate best.pt on val (and test) and build report.html",
    "progress": "show a tqdm progress bar per epoch",
    "tensorboard": "write TensorBoard logs to RUN_DIR/tb/",
}

# Options that may differ when resuming (they do not change the numbers a run produces).
RESUME_OVERRIDABLE = frozenset({"device", "num_workers", "progress", "eval_test", "tensorboard", "data"})

_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _check_keys(d: Mapping[str, Any], source: str) -> None:
    unknown = [k for k in d if k not in _FIELDS]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), list(_FIELDS), n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"unknown training option(s) in {source}: {', '.join(hints)}; valid options: {', '.join(_FIELDS)}"
        )


def parse_pretrained(v: Any) -> bool | str:
    """``True``/``False``/path/URL from a YAML value or a CLI string ('true', 'false', 'none', a path)."""
    if isinstance(v, bool):
        return v
    if v is None:
        return False
    if isinstance(v, Path):
        return str(v)
    s = str(v).strip()
    if s.lower() in ("true", "yes", "1", "official"):
        return True
    if s.lower() in ("false", "no", "0", "none", "null", ""):
        return False
    return s


def _parse_bool(name: str, v: Any, source: str) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "yes", "1", "on"):
        return True
    if s in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"expected {name} to be true/false in {source}, got {v!r}")


def _coerce(name: str, v: Any, source: str) -> Any:
    """Convert YAML / CLI values to the field's type (strings from the command line, ints for floats...)."""
    if name == "pretrained":
        return parse_pretrained(v)
    if name == "model_kwargs":
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"expected --model-kwargs to be a JSON object like '{{\"depth\": 2}}', got {v!r} ({e})"
                ) from e
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError(f"expected model_kwargs to be a mapping in {source}, got {v!r}")
        return dict(v)
    if name == "img_size":
        if isinstance(v, str):
            parts = [p for p in v.replace("x", ",").replace(" ", ",").split(",") if p]
            v = [int(p) for p in parts]
        if isinstance(v, (list, tuple)):
            v = [int(p) for p in v]
            return v[0] if len(v) == 1 else v
        return int(v)
    if v is None:
        return None
    ftype = str(_FIELDS[name].type)
    try:
        if ftype.startswith("bool"):
            return _parse_bool(name, v, source)
        if ftype.startswith("int"):
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            if isinstance(v, str) and v.strip().lower() in ("none", "null"):
                return None
            return int(v)
        if ftype.startswith("float"):
            if isinstance(v, str) and v.strip().lower() in ("none", "null"):
                return None
            return float(v)
        if ftype.startswith("str"):
            if isinstance(v, str) and v.strip().lower() in ("none", "null") and "None" in ftype:
                return None
            return str(v)
    except (TypeError, ValueError) as e:
        raise ValueError(f"expected {name} of type {ftype} in {source}, got {v!r}") from e
    return v


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a training YAML file into a dict of options (validated keys, not yet merged)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"expected a training config YAML file, got {p} which does not exist")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{p} is not valid YAML: {e}") from e
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"expected {p} to hold a mapping of options (key: value), got {type(d).__name__}")
    _check_keys(d, str(p))
    return d


def save_yaml_config(cfg: TrainConfig, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the resolved config as YAML (atomically); ``extra`` goes into a trailing comment block."""
    import os
    import tempfile

    import yaml

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = "# medurwkv training configuration (resolved; `medurwkv train --resume RUN_DIR` reads it back)\n"
    text += yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    if extra:
        text += "".join(f"# {k}: {v}\n" for k, v in extra.items())
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, p)
    return p


def resolve_config(
    config: TrainConfig | Mapping[str, Any] | str | Path | None = None, **overrides: Any
) -> TrainConfig:
    """Defaults < ``config`` (a TrainConfig, dict, or YAML path) < ``overrides`` (``None`` values ignored)."""
    if config is None:
        base: dict[str, Any] = {}
    elif isinstance(config, TrainConfig):
        base = config.to_dict()
    elif isinstance(config, (str, Path)):
        base = load_yaml_config(config)
    elif isinstance(config, Mapping):
        base = dict(config)
    else:
        raise ValueError(f"expected a TrainConfig, dict or YAML path, got {type(config).__name__}")
    merged = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict(merged, source="config")
