"""Training configuration: one flat dataclass, the one table of the options of ``medurwkv train``.

Every option is a field of :class:`TrainConfig` with the same name (dashes become underscores: ``--batch-size``
is ``batch_size``). Its metadata (help text, command-line type, choices, metavar, whether it may change on
resume) is the only place an option is described: the command-line parser (``medurwkv/cli/train.py``), the
demo's training flags and the options table of ``docs/training.md`` (:func:`options_markdown`) are derived
from it. Precedence, lowest first: dataclass defaults < YAML file (``--config``) < explicit command-line flags /
keyword overrides. The resolved configuration is written to ``RUN_DIR/config.yaml`` and is what ``--resume``
reads back. Help texts mark a default ``[paper]`` (stated by Med-URWKV) or ``[ours]`` (docs/training.md).

The machinery is generic: :class:`OptionTable` (the base of TrainConfig and of ``engine/pretrain.py``'s
PretrainConfig) gives a dataclass of ``_opt`` fields its dict / YAML conversions, key checks with 'did you mean'
hints, the derived :class:`OptionSpec` list and the markdown table, and small validation helpers.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from ..errors import DownloadError, UserError
from ..utils import atomic_write_text

__all__ = [
    "TrainConfig",
    "OptionTable",
    "OptionSpec",
    "CLI_ONLY_OPTIONS",
    "RESUME_OVERRIDABLE",
    "train_options",
    "options_markdown",
    "as_options",
    "resolve_config",
    "resume_changes",
    "load_yaml_config",
    "save_yaml_config",
    "parse_pretrained",
    "PRETRAINED_AUTO",
    "effective_pretrained",
    "resolve_pretrained",
]

# The default of ``pretrained``: the model's official release when it has one (Med-URWKV, VRWKV), else none
PRETRAINED_AUTO = "auto"


# ---------------------------------------------------------------------------------------- command-line types


def parse_img_size(s: str) -> int | list[int]:
    """``--img-size`` value: ``256`` or ``H,W`` (also ``HxW``)."""
    try:
        parts = [int(p) for p in s.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts
    raise argparse.ArgumentTypeError(f"expected SIZE or H,W (e.g. 256 or 256,320), got {s!r}")


def parse_optional_float(s: str) -> float | str:
    """A number, or ``none`` (kept as the string: ``None`` would mean 'flag not given' and keep the YAML)."""
    if s.strip().lower() in ("none", "null", "off"):
        return "none"
    try:
        return float(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {s!r}") from e


def _opt(
    default: Any = None,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    shown: str | None = None,
    resume: bool = False,
) -> Any:
    """A TrainConfig field with its description. ``parse``: the command-line type (default: from the
    annotation); ``shown``: the default as the docs table shows it; ``resume``: may change on --resume."""
    meta = dict(help=help, parse=parse, choices=choices, metavar=metavar, shown=shown, resume=resume)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionSpec:
    """One training option as the command line and the docs show it. ``parse`` is None for a boolean flag
    (``--x`` / ``--no-x``)."""

    name: str
    flag: str
    default: Any
    help: str
    parse: Callable[[str], Any] | None
    choices: tuple[str, ...] | None
    metavar: str | None
    shown: str


_T = TypeVar("_T", bound="OptionTable")


class OptionTable:
    """Base of an option dataclass whose fields are made with :func:`_opt` (TrainConfig, PretrainConfig).

    A subclass sets ``_kind`` (the word of its error messages: 'unknown training option(s)') and ``_command``
    (the ``medurwkv`` command that resumes from its YAML), and may override :meth:`coerce` (the conversion of a
    YAML / command-line value to a field's type) and :meth:`validate`. ``__post_init__`` validates.
    """

    _kind = "training"
    _command = "train"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserError` naming the option and how to fix it."""

    @classmethod
    def option_fields(cls) -> dict[str, dataclasses.Field]:
        """``{name: field}`` in declaration order."""
        return {f.name: f for f in fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def coerce(cls, name: str, v: Any, source: str) -> Any:
        """``v`` (from YAML or the command line) converted to the type of option ``name``."""
        return v

    @classmethod
    def check_keys(cls, d: Mapping[str, Any], source: str) -> None:
        """Raise on keys of ``d`` that are no option, with a 'did you mean' hint."""
        names = cls.option_fields()
        unknown = [k for k in d if k not in names]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), list(names), n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise UserError(
                f"unknown {cls._kind} option(s) in {source}: {', '.join(hints)}; valid options: {', '.join(names)}"
            )

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-ready)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_T], d: Mapping[str, Any], *, source: str = "config") -> _T:
        """Build from a mapping; unknown keys raise with a 'did you mean' hint."""
        cls.check_keys(d, source)
        return cls(**{k: cls.coerce(k, v, source) for k, v in d.items()})

    def replace(self: _T, **overrides: Any) -> _T:
        """A copy with ``overrides`` applied (validated)."""
        self.check_keys(overrides, "overrides")
        return dataclasses.replace(  # type: ignore[type-var]
            self, **{k: self.coerce(k, v, "overrides") for k, v in overrides.items()}
        )

    @property
    def img_hw(self) -> tuple[int, int]:
        """``img_size`` as ``(H, W)``."""
        s = self.img_size  # type: ignore[attr-defined]
        return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @classmethod
    def load_yaml(cls, path: str | Path) -> dict[str, Any]:
        """Read a YAML file of options into a dict (validated keys, not yet merged)."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"expected a {cls._kind} config YAML file, got {p} which does not exist")
        try:
            d = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise UserError(f"{p} is not valid YAML: {e}") from e
        if d is None:
            return {}
        if not isinstance(d, dict):
            raise UserError(f"expected {p} to hold a mapping of options (key: value), got {type(d).__name__}")
        cls.check_keys(d, str(p))
        return d

    def save_yaml(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the resolved config as YAML (atomically); ``extra`` goes into a trailing comment block."""
        import yaml

        text = (
            f"# medurwkv {self._kind} configuration (resolved; `medurwkv {self._command} --resume RUN_DIR` reads "
            "it back)\n"
        )
        text += yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if extra:
            text += "".join(f"# {k}: {v}\n" for k, v in extra.items())
        return atomic_write_text(path, text)

    @classmethod
    def as_options(cls, config: OptionTable | Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
        """The options a ``config`` argument holds: an instance, a dict, a YAML path, or None (no options)."""
        if config is None:
            return {}
        if isinstance(config, cls):
            return config.to_dict()
        if isinstance(config, (str, Path)):
            return cls.load_yaml(config)
        if isinstance(config, Mapping):
            return dict(config)
        raise UserError(
            f"expected a {cls.__name__}, dict or YAML path as config, got {type(config).__name__}"
        )

    # ------------------------------------------------------------------ the derived tables
    @classmethod
    def options(cls) -> list[OptionSpec]:
        """Every field as an :class:`OptionSpec`, in declaration order."""
        defaults = cls()
        out = []
        for f in fields(cls):  # type: ignore[arg-type]
            default = getattr(defaults, f.name)
            m = f.metadata
            out.append(
                OptionSpec(
                    name=f.name,
                    flag="--" + _flag(f.name),
                    default=default,
                    help=m["help"],
                    parse=_cli_type(f),
                    choices=m["choices"],
                    metavar=m["metavar"],
                    shown=m["shown"] or _yaml_value(default),
                )
            )
        return out

    @classmethod
    def options_markdown(cls, cli_only: tuple[tuple[str, str, str], ...] = ()) -> str:
        """The options table of the docs (``flag | default | meaning``): ``cli_only`` (name, metavar, help)
        first, then :meth:`options`."""

        def cell(s: str) -> str:
            return s.replace("|", "\\|")

        lines = ["| flag | default | meaning |", "|---|---|---|"]
        lines += [f"| `--{name}` | – | {cell(help)} |" for name, _, help in cli_only]
        for o in cls.options():
            default = o.shown if o.shown == "required" else f"`{o.shown}`"
            lines.append(f"| `{o.flag}` | {cell(default)} | {cell(o.help)} |")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ validation helpers
    def _bad(self, name: str, expected: str) -> UserError:
        return UserError(f"expected {name} {expected}, got {getattr(self, name)!r}; fix --{_flag(name)}")

    def _check_img_size(self) -> None:
        """``img_size``: a positive int or ``[H, W]`` of positive ints (a tuple becomes a list)."""
        s = self.img_size  # type: ignore[attr-defined]
        if isinstance(s, (list, tuple)):
            if len(s) != 2 or not all(isinstance(v, int) and v > 0 for v in s):
                raise self._bad("img_size", "to be a positive int or [H, W]")
            self.img_size = [int(v) for v in s]
        elif not (isinstance(s, int) and s > 0):
            raise self._bad("img_size", "to be a positive int or [H, W]")

    def _check_ints(self, names: tuple[str, ...], minimum: int, *, nullable: bool = False) -> None:
        """Each of ``names`` an integer >= ``minimum`` (or None with ``nullable``)."""
        for name in names:
            v = getattr(self, name)
            if nullable and v is None:
                continue
            if not (isinstance(v, int) and v >= minimum):
                raise self._bad(name, f"to be an integer >= {minimum}" + (" or null" if nullable else ""))

    def _check_choices(self) -> None:
        """Every field with ``choices`` holds one of them (or None where its type allows it)."""
        for f in fields(self):  # type: ignore[arg-type]
            choices, v = f.metadata["choices"], getattr(self, f.name)
            if choices and v is not None and v not in choices:
                allowed = ", ".join(repr(c) for c in choices) + (" or null" if "None" in str(f.type) else "")
                raise self._bad(f.name, f"to be one of {allowed}")

    def _check_model(self) -> None:
        """``model_kwargs`` a mapping, ``model`` a non-empty name."""
        if not isinstance(self.model_kwargs, dict):  # type: ignore[attr-defined]
            raise self._bad("model_kwargs", "to be a mapping (YAML dict or JSON object)")
        if not isinstance(self.model, str) or not self.model:  # type: ignore[attr-defined]
            raise self._bad("model", "to be a registered model name (see `medurwkv models`)")


@dataclass
class TrainConfig(OptionTable):
    """All options of a training run (docs/training.md lists them with their defaults)."""

    # --- data
    data: str | None = _opt(
        None,
        "dataset folder (images/ + masks/, nnU-Net imagesTr/ + labelsTr/ with 2D images, or a volume "
        "dataset: NIfTI nnU-Net v2 / MSD, Synapse npz/h5, trained as 2D slices)",
        metavar="DIR",
        shown="required",
        resume=True,
    )
    out: str | None = _opt(
        None,
        "run folder (checkpoints, metrics.csv, tb/, config.yaml, eval/, report.html); refused if it already "
        "holds a run (use --resume)",
        metavar="RUN_DIR",
        shown="required",
    )
    split_file: str | None = _opt(
        None,
        "split JSON to use (default DATA/splits.json, created if missing; RUN_DIR/splits.json if DATA is "
        "read-only)",
        metavar="FILE",
        shown="DATA/splits.json",
    )
    fold: int | None = _opt(None, "cross-validation fold of the split file (null: the train/val/test split)")
    folds: int | None = _opt(
        None, "number of cross-validation folds when a split is created (null: no folds)"
    )
    val_fraction: float | None = _opt(
        None, "share of groups for validation when a split is created [ours]", shown="null (0.1)"
    )
    test_fraction: float | None = _opt(
        None, "share of groups for test when a split is created [ours]", shown="null (0.2)"
    )
    group_by: str | None = _opt(
        "auto",
        "grouping regex when a split is created: 'auto' (dataset.json split_group, else the HC18-style exam "
        "prefix if every id has one), 'none', or a regex with one capture group",
    )
    img_size: int | list[int] = _opt(
        256,
        "training size: 256 or H,W (YAML: 256 or [H, W]) [ours]",
        parse=parse_img_size,
        metavar="SIZE|H,W",
    )
    in_channels: int | None = _opt(
        None,
        "image channels fed to the model (null: from the data, 1 for grayscale, 3 if any image is colour)",
    )
    normalize: str | None = _opt(
        None,
        "'imagenet' or 'per_image' (null: imagenet for a pretrained encoder, else per_image; volumes: "
        "see --intensity)",
        choices=("imagenet", "per_image"),
    )
    augment: bool = _opt(
        True, "flips / affine / crop / mild intensity augmentation of the training split [ours]"
    )
    augment_strength: float = _opt(
        1.0,
        "strength s > 0 of that augmentation: rotation, shift and brightness / contrast ranges x s, zoom and "
        "crop-area ranges to the power s, affine / crop / jitter probabilities x s (at most 1); flips stay "
        "at p 0.5. 1.0 is the default augmentation; --no-augment turns it off [ours]",
        metavar="S",
    )
    limit: int | None = _opt(
        None, "use only the first N images (cases, for volumes) of each split (smoke runs)"
    )
    # --- volumes (3D datasets, trained as 2D slices; docs/data.md "Training on volumes")
    slice_axis: str = _opt(
        "auto",
        "volumes: array axis to slice along, 0, 1 or 2 of (X, Y, Z), or 'auto' (largest median spacing, "
        "Z for isotropic volumes) [ours]",
        choices=("auto", "0", "1", "2"),
    )
    context_slices: int = _opt(
        0, "volumes: 2.5D, k neighbouring slices on each side as extra input channels (0: plain 2D) [ours]"
    )
    foreground_oversample: float = _opt(
        0.33,
        "volumes: probability that a training sample is drawn from the slices holding foreground "
        "(nnU-Net's 0.33)",
    )
    target_spacing: float | None = _opt(
        None,
        "volumes: resample slices in-plane to this voxel size (mm) and pad / crop them to --img-size instead "
        "of resizing, so every slice keeps one physical scale; predictions are resampled back (null: resize "
        "each slice to --img-size) [ours]",
        metavar="MM",
    )
    intensity: str = _opt(
        "auto",
        "volumes: intensity normalisation per channel: 'auto' (CT channels: clip to the training foreground's "
        "0.5-99.5 percentiles + z-score; others: z-score per volume, as nnU-Net), 'ct' or 'zscore'",
        choices=("auto", "ct", "zscore"),
    )
    # --- model
    model: str = _opt("med_urwkv_t", "registered model name (`medurwkv models` lists them)")
    pretrained: bool | str = _opt(
        PRETRAINED_AUTO,
        "auto (true when the model has an official release, else false) [paper], true (the model's official "
        "release, downloaded once into the cache), false (random init, from scratch), a local path / URL of "
        "weights, or an encoder.pt of `medurwkv pretrain`; config.yaml records the value used",
        parse=str,
        metavar="auto|true|false|PATH|URL",
        shown="auto (true for models with an official release)",
    )
    model_kwargs: dict[str, Any] = _opt(
        factory=dict,
        help="JSON object of model config overrides, e.g. '{\"decoder_dim\": 32}' (tiny configs for tests)",
        parse=str,
        metavar="JSON",
    )
    # --- optimisation
    epochs: int = _opt(100, "number of epochs [ours]")
    batch_size: int = _opt(
        8, "GLOBAL batch size; under torchrun each of N processes gets batch_size / N [ours]"
    )
    lr: float = _opt(3e-4, "AdamW learning rate (the optimiser AdamW is [paper], the value [ours])")
    weight_decay: float = _opt(
        1e-4, "AdamW weight decay, not on norms, biases, RWKV decay/mix vectors, embeddings [ours]"
    )
    encoder_lr_scale: float = _opt(1.0, "encoder lr = lr * this (0.1 for a gentler fine-tune) [ours]")
    warmup_epochs: float = _opt(1.0, "linear warm-up length in epochs (fractions allowed; 0 disables) [ours]")
    poly_power: float = _opt(0.9, "poly schedule power (the poly schedule is [paper], the power [ours])")
    freeze_encoder_epochs: int = _opt(
        5, "freeze a PRETRAINED encoder for the first N epochs; from scratch nothing is frozen [paper]"
    )
    grad_clip: float | None = _opt(
        1.0, "max gradient norm; none / null disables clipping [ours]", parse=parse_optional_float
    )
    loss: str = _opt(
        "dice_ce",
        "'dice_ce': MONAI DiceCELoss, softmax, one-hot targets (CE + Dice is [paper])",
        choices=("dice_ce",),
    )
    dice_weight: float = _opt(
        2.0, "weight of the Dice term (2 Dice + 1 CE: chosen by docs/results_recipe.md) [ours]"
    )
    ce_weight: float = _opt(1.0, "weight of the cross-entropy term [ours]")
    amp: bool | None = _opt(None, "mixed precision (null: on for CUDA, off on CPU); WKV always runs in fp32")
    amp_dtype: str = _opt(
        "float16", "autocast dtype: float16 (with GradScaler) or bfloat16", choices=("float16", "bfloat16")
    )
    # --- runtime
    device: str = _opt(
        "auto",
        "'auto', 'cpu', 'cuda', 'cuda:1' (under torchrun each process uses cuda:LOCAL_RANK)",
        resume=True,
    )
    num_workers: int = _opt(2, "DataLoader worker processes (persistent across epochs)", resume=True)
    seed: int = _opt(0, "seed of the model initialisation, data order, augmentation and all RNGs")
    deterministic: bool = _opt(
        False, "torch.use_deterministic_algorithms(True) and no cuDNN autotuning (slower on GPU)"
    )
    val_every: int = _opt(1, "validate every N epochs (and always after the last)")
    max_train_batches: int | None = _opt(
        None, "stop each training epoch after N batches (smoke runs; the schedule follows)"
    )
    max_val_batches: int | None = _opt(None, "validate on at most N batches (smoke runs)")
    sync_bn: bool = _opt(
        True, "convert BatchNorm to SyncBatchNorm under multi-GPU DDP (CUDA only: CPU/gloo lacks it)"
    )
    eval_test: bool = _opt(
        True, "after training, evaluate best.pt on val (and test) and build report.html", resume=True
    )
    progress: bool = _opt(True, "show a tqdm progress bar per epoch (running loss, img/s)", resume=True)
    tensorboard: bool = _opt(True, "write TensorBoard logs to RUN_DIR/tb/", resume=True)

    @classmethod
    def coerce(cls, name: str, v: Any, source: str) -> Any:
        return _coerce(name, v, source)

    def validate(self) -> None:
        """Raise :class:`UserError` naming the option and how to fix it."""

        bad = self._bad
        self._check_img_size()
        self._check_ints(("epochs", "batch_size", "val_every"), 1)
        self._check_ints(("num_workers", "freeze_encoder_epochs", "seed", "context_slices"), 0)
        self._check_ints(("max_train_batches", "max_val_batches", "limit", "in_channels"), 1, nullable=True)
        if self.fold is not None and not (isinstance(self.fold, int) and self.fold >= 0):
            raise bad("fold", "to be an integer >= 0 or null")
        if not self.lr > 0:
            raise bad("lr", "> 0")
        for name in ("weight_decay", "warmup_epochs", "dice_weight", "ce_weight"):
            if not getattr(self, name) >= 0:
                raise bad(name, ">= 0")
        if not self.encoder_lr_scale > 0:
            raise bad("encoder_lr_scale", "> 0 (1.0 = same lr as the decoder)")
        strength = self.augment_strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength > 0:
            raise bad(
                "augment_strength",
                "to be a number > 0 (1.0: the default augmentation; --no-augment turns augmentation off)",
            )
        if not math.isfinite(strength):
            raise bad("augment_strength", "to be a finite number > 0 (1.0: the default augmentation)")
        if not (isinstance(self.pretrained, bool) or (isinstance(self.pretrained, str) and self.pretrained)):
            raise bad("pretrained", "to be auto, true, false or a path / URL of weights")
        if self.target_spacing is not None and not self.target_spacing > 0:
            raise bad("target_spacing", "> 0 (mm) or null")
        if not 0 <= self.foreground_oversample <= 1:
            raise bad("foreground_oversample", "in [0, 1]")
        if not self.poly_power >= 0:
            raise bad("poly_power", ">= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", "> 0 or null (no clipping)")
        if self.dice_weight == 0 and self.ce_weight == 0:
            raise UserError("expected dice_weight or ce_weight > 0, got both 0; the loss would be zero")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < 1:
                raise bad(name, "in [0, 1) or null (the split's default)")
        if self.folds is not None and not (isinstance(self.folds, int) and self.folds >= 2):
            raise bad("folds", "to be an integer >= 2 or null")
        self._check_choices()
        self._check_model()


_FIELDS = {f.name: f for f in fields(TrainConfig)}

# Options that may differ when resuming (they do not change the numbers a run produces).
RESUME_OVERRIDABLE = frozenset(name for name, f in _FIELDS.items() if f.metadata["resume"])

# `medurwkv train` options that are not training options: where the options come from. (name, metavar, help)
CLI_ONLY_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("config", "CONFIG", "YAML file of options (examples in configs/)"),
    ("resume", "RUN_DIR", "continue RUN_DIR from last.pt with its saved config.yaml"),
)


# ---------------------------------------------------------------------------------------- the derived tables


def _cli_type(f: dataclasses.Field) -> Callable[[str], Any] | None:
    if f.metadata["parse"] is not None:
        return f.metadata["parse"]
    ftype = str(f.type)
    for prefix, parse in (("bool", None), ("int", int), ("float", float), ("str", str)):
        if ftype.startswith(prefix):
            return parse
    raise TypeError(f"expected a parse= for option {f.name} of type {ftype}")  # a new field without one


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def train_options() -> list[OptionSpec]:
    """Every :class:`TrainConfig` field as an :class:`OptionSpec`, in declaration order."""
    return TrainConfig.options()


def options_markdown() -> str:
    """The options table of docs/training.md (``flag | default | meaning``), generated from TrainConfig."""
    return TrainConfig.options_markdown(CLI_ONLY_OPTIONS)


# ---------------------------------------------------------------------------------------- reading values


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _check_keys(d: Mapping[str, Any], source: str) -> None:
    TrainConfig.check_keys(d, source)


def parse_pretrained(v: Any) -> bool | str:
    """``True``/``False``/``"auto"``/path/URL from a YAML value or a CLI string ('true', 'false', 'none',
    'auto', a path; a file named ``auto`` is ``./auto``)."""
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
    if s.lower() == PRETRAINED_AUTO:
        return PRETRAINED_AUTO
    return s


def _parse_bool(name: str, v: Any, source: str) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "yes", "1", "on"):
        return True
    if s in ("false", "no", "0", "off"):
        return False
    raise UserError(f"expected {name} to be true/false in {source}, got {v!r}")


def _is_null(v: Any) -> bool:
    return isinstance(v, str) and v.strip().lower() in ("none", "null")


def _coerce(name: str, v: Any, source: str) -> Any:
    """Convert YAML / CLI values to the field's type (strings from the command line, ints for floats...)."""
    if name == "pretrained":
        return parse_pretrained(v)
    if name == "model_kwargs":
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else {}
            except json.JSONDecodeError as e:
                raise UserError(
                    f"expected --model-kwargs to be a JSON object like '{{\"depth\": 2}}', got {v!r} ({e})"
                ) from e
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise UserError(f"expected model_kwargs to be a mapping in {source}, got {v!r}")
        return dict(v)
    ftype = str(_FIELDS[name].type)
    try:
        if name == "img_size":
            if isinstance(v, str):
                v = [int(p) for p in v.replace("x", ",").replace(" ", ",").split(",") if p]
            if isinstance(v, (list, tuple)):
                v = [int(p) for p in v]
                return v[0] if len(v) == 1 else v
            return int(v)
        if v is None:
            return None
        if ftype.startswith("bool"):
            return _parse_bool(name, v, source)
        if ftype.startswith("int"):
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            return None if _is_null(v) else int(v)
        if ftype.startswith("float"):
            return None if _is_null(v) else float(v)
        if ftype.startswith("str"):
            return None if _is_null(v) and "None" in ftype else str(v)
    except (TypeError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"expected {name} of type {ftype} in {source}, got {v!r}; fix it or remove it") from e
    return v


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a training YAML file into a dict of options (validated keys, not yet merged)."""
    return TrainConfig.load_yaml(path)


def save_yaml_config(cfg: TrainConfig, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the resolved config as YAML (atomically); ``extra`` goes into a trailing comment block."""
    return cfg.save_yaml(path, extra)


def as_options(config: TrainConfig | Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """The options a ``config`` argument holds: a TrainConfig, a dict, a YAML path, or None (no options)."""
    return TrainConfig.as_options(config)


def resolve_config(
    config: TrainConfig | Mapping[str, Any] | str | Path | None = None, **overrides: Any
) -> TrainConfig:
    """Defaults < ``config`` (a TrainConfig, dict, or YAML path) < ``overrides`` (``None`` values ignored)."""
    merged = {**as_options(config), **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict(merged, source="config")


def effective_pretrained(model: str, pretrained: bool | str) -> bool | str:
    """What ``pretrained`` means for ``model``: ``"auto"`` is True when the model's registry entry names an
    official release (the Med-URWKV and VRWKV models) and False otherwise (``unet``, ``monai_unet``, ...);
    any other value is returned as it is. Pure: nothing is read or downloaded."""
    if pretrained != PRETRAINED_AUTO:
        return pretrained
    from ..models import get_model_entry  # the package: importing it registers every model

    return get_model_entry(model).pretrained is not None


def resolve_pretrained(cfg: TrainConfig, *, net_given: bool = False) -> TrainConfig:
    """``cfg`` with ``pretrained`` resolved, once, at the start of a fresh run (``fit``), so that the model
    building, the freezing policy, the default normalisation and ``config.yaml`` all see what is used:

    * ``"auto"`` becomes True or False (:func:`effective_pretrained`); with a model passed to ``fit(net=...)``
      it becomes False: nothing is loaded into that model, and its encoder counts as pretrained (frozen first)
      only when ``pretrained=True`` says so.
    * The weights must be at hand before any work starts: an official release (True) or a URL is fetched into
      the cache now (a file already there is used offline), a local path must exist. Otherwise a
      :class:`UserError` names the URL, the cache path to copy the file to, ``--pretrained PATH`` and
      ``--pretrained false``. Under torchrun only rank 0 fetches; the others load after it (``build_model``).
      A missing data folder is left to the data check, which reports it first.
    """
    asked = cfg.pretrained
    if net_given:
        value: bool | str = False if asked == PRETRAINED_AUTO else asked
    else:
        value = effective_pretrained(cfg.model, asked)
        main_rank = os.environ.get("RANK", "0") == "0"
        if value is not False and main_rank and cfg.data and Path(cfg.data).exists():
            _check_weights(cfg.model, value, auto=asked == PRETRAINED_AUTO, progress=cfg.progress)
    return cfg if value is asked else cfg.replace(pretrained=value)


def _check_weights(model: str, pretrained: bool | str, *, auto: bool, progress: bool) -> None:
    """Fetch the weights ``pretrained`` names (True: ``model``'s release) into the cache, or raise UserError."""
    from ..models import get_model_entry
    from ..models.pretrained import CheckpointNotFoundError, fetch_weights, is_url, weights_cache_path

    sha256 = None
    if pretrained is True:
        release = get_model_entry(model).pretrained
        if release is None:
            raise UserError(
                f"expected a model with an official release for --pretrained true, got {model!r} which has "
                "none; pass --pretrained PATH (your own weights) or --pretrained false to train from scratch"
            )
        url, sha256 = release.url, release.sha256
        flag = "auto (the default)" if auto else "true"
        what = f"--pretrained {flag} loads the official release of {model}, {release.file}"
    elif is_url(str(pretrained)):
        url, what = str(pretrained), f"--pretrained {pretrained} names weights to download"
    else:
        if not Path(str(pretrained)).expanduser().is_file():
            raise CheckpointNotFoundError(
                f"expected --pretrained PATH to be a weights file, got {str(pretrained)!r} which does not "
                "exist; fix the path, or pass --pretrained false to train from scratch"
            )
        return
    dest = weights_cache_path(url)
    try:
        fetch_weights(url, sha256=sha256, progress=progress)
    except DownloadError as e:
        cached = "fails its sha256 check" if dest.is_file() else "does not exist"
        reason = " ".join(str(e.__cause__ or e).split())  # one line, whatever the network error says
        raise UserError(
            f"{what}: expected it in the cache or downloadable, got neither: {dest} {cached} and downloading "
            f"{url} failed ({reason}). Copy the file to {dest}, or pass --pretrained PATH (a local copy of "
            "the weights), or --pretrained false to train from scratch"
        ) from e


def resume_changes(saved: TrainConfig, asked: Mapping[str, Any], run_dir: Path) -> TrainConfig:
    """``saved`` (a run's config) with the ``asked`` options that may change on resume; raise on any other
    option that differs from the saved value (it would change the numbers of the run)."""
    changes: dict[str, Any] = {}
    conflicts = []
    for k, v in asked.items():
        if k == "out":
            if v is not None and Path(v).resolve() != run_dir.resolve():
                conflicts.append(f"out: asked {v!r}, resuming {str(run_dir)!r}")
            continue
        cv = _coerce(k, v, "resume") if k in _FIELDS else v
        if k in RESUME_OVERRIDABLE:
            changes[k] = cv
        elif cv != getattr(saved, k, cv):
            conflicts.append(f"{k}: asked {cv!r}, run has {getattr(saved, k)!r}")
    if conflicts:
        raise UserError(
            f"--resume continues {run_dir} with its saved config; these options differ: {'; '.join(conflicts)}. "
            f"Only {sorted(RESUME_OVERRIDABLE)} may change on resume; start a new run (--out) to change others"
        )
    # a run's config.yaml records the pretrained value used; "auto" only in a hand-written one (nothing is
    # loaded on resume: last.pt has the weights, the value only decides the freezing of the first epochs)
    changes["pretrained"] = effective_pretrained(saved.model, saved.pretrained)
    return saved.replace(**changes, out=str(run_dir))
