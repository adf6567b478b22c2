"""Load the official OpenGVLab Vision-RWKV weights, or your own, into our models (``docs/pretrained.md``).

The official releases (:mod:`.releases`) are mmcls / mmseg / mmdet checkpoints whose backbone keys are
``backbone.<our module path>``; their layout (prefix, task heads, RGB stem keys) drives the loading into
``model.pretrained_target()``: the prefix is stripped, the heads are skipped, the listed stem filters are adapted
to the model's ``in_channels`` and a stored position grid is resized. Any other checkpoint is the user's own
weights and loads exactly (strictly, no conversions) into the whole model or into its pretrained target, by a
rule on the key prefix (:func:`load_pretrained`). An ``encoder.pt`` written by ``medurwkv pretrain`` (format
:data:`ENCODER_FORMAT`) names the model it was pretrained for and loads strictly into the pretrained target; a
model it does not fit gets an error naming both. Every key's fate is reported in a :class:`LoadReport`. Files
are fetched only when asked, into a local cache; nothing is downloaded at import.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import types
import urllib.parse
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..utils import default_cache_dir, download, sha256_file
from .base import SegmentationModel
from .layers import resize_pos_embed
from .registry import get_model_entry
from .releases import LAYOUTS, CheckpointLayout, PretrainedCfg, detect_layout, find_release
from .vrwkv import VRWKVTrunk

__all__ = [
    "ENCODER_FORMAT",
    "CheckpointNotFoundError",
    "LoadReport",
    "default_normalization",
    "fetch_weights",
    "is_url",
    "load_pretrained",
    "read_encoder_file",
    "weights_cache_path",
]

# Checkpoint sub-dicts that hold the weights, tried in this order (mmcv/mmseg/mmdet and our training
# checkpoints: "state_dict"; the internimage / DeiT-style trainers: "model"; some DDP savers: "module").
_CONTAINER_KEYS = ("state_dict", "model", "module")
_DDP_PREFIX = "module."
# RUN_DIR/encoder.pt of `medurwkv pretrain` (engine/pretrain.py): {"format", "model": {"name", "kwargs"},
# "in_channels", "config", "images_seen", "epochs", "medurwkv_version", "state_dict" of pretrained_target()}
ENCODER_FORMAT = "medurwkv-encoder-v1"


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """A checkpoint path that does not exist (a user error, and a FileNotFoundError for ``except`` clauses)."""


_INDEX = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")


def _fine_groups(keys: list[str]) -> list[str]:
    groups: dict[str, list[int]] = {}
    for k in keys:
        m = _INDEX.search(k)  # group on the first numeric path component (the block / stage index)
        pattern, idx = (k, -1) if m is None else (k[: m.start(1)] + "{}" + k[m.end(1) :], int(m.group(1)))
        groups.setdefault(pattern, []).append(idx)
    out = []
    for p, idx in groups.items():
        uniq = sorted(set(idx))
        if uniq == [-1]:
            out.append(p)
        elif len(uniq) == 1:
            out.append(p.replace("{}", str(uniq[0])))
        else:
            out.append(p.replace("{}", "{" + _ranges(uniq) + "}"))
    return out


def _group_keys(keys: list[str], limit: int = 12) -> list[str]:
    """Compress key lists for humans: ``layers.0.x, layers.1.x`` -> ``layers.{0-1}.x``.

    When more than ``limit`` groups remain, a module with more than 3 keys is shown as ``name.*``
    (``layers.2.*``, ``spm.*``, ``interactions.{0-3}.*``), e.g. for an adapter loaded from ImageNet weights.
    """
    fine = _fine_groups(keys)
    if len(fine) <= limit:
        return fine

    def module_of(k: str) -> str:
        parts = k.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]

    sizes: dict[str, int] = {}
    for k in keys:
        sizes[module_of(k)] = sizes.get(module_of(k), 0) + 1
    coarse = list(dict.fromkeys(module_of(k) + ".*" if sizes[module_of(k)] > 3 else k for k in keys))
    return _fine_groups(coarse)


def _ranges(nums: list[int]) -> str:
    parts, start, prev = [], nums[0], nums[0]
    for n in nums[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(parts)


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did with every key (names are model-side, after prefix stripping).

    - ``loaded``: copied unchanged (includes BatchNorm buffers);
    - ``resized``: position grids interpolated bicubically to the model's grid;
    - ``adapted``: RGB stem filters converted to the model's ``in_channels``;
    - ``missing``: model keys the checkpoint does not provide (they keep their initial values);
    - ``unexpected``: checkpoint keys the model does not have (ignored);
    - ``skipped``: task-head keys (classifier / decode / detection heads) deliberately dropped;
    - ``source``: the path, URL or ``"<dict>"`` that was loaded;
    - ``target``: the module that received the weights.
    """

    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    source: str = ""
    target: str = ""

    @property
    def ok(self) -> bool:
        """True when no model key is missing and every checkpoint key was used or deliberately skipped."""
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        counts = ", ".join(
            f"{len(getattr(self, n))} {n}"
            for n in ("loaded", "resized", "adapted", "missing", "unexpected", "skipped")
        )
        where = f" into {self.target}" if self.target else ""
        lines = [f"Pretrained weights from {self.source}{where}: {counts}"]
        for n in ("resized", "adapted", "missing", "unexpected", "skipped"):
            keys = getattr(self, n)
            if keys:
                lines.append(f"  {n}: " + ", ".join(_group_keys(keys)))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Finding and reading the file
# ----------------------------------------------------------------------------------------------------


def is_url(text: str) -> bool:
    """Whether ``text`` is a URL the loader downloads (``http``, ``https``, ``file``) rather than a path."""
    return urllib.parse.urlparse(text).scheme in ("http", "https", "file")


def weights_cache_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`fetch_weights` keeps ``url``: the cache folder (``cache_dir``, else ``$MEDURWKV_CACHE``, else
    ``~/.cache/medurwkv``) / the URL's base name, e.g. ``~/.cache/medurwkv/vrwkv_t_in1k_224.pth``; a file
    copied there by hand is used offline."""
    name = urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
    if not name:
        raise UserError(f"expected a URL that ends in a file name, got {url!r}")
    return (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / name


def fetch_weights(
    url: str, *, sha256: str | None = None, cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """Download ``url`` once into ``cache_dir`` (default ``$MEDURWKV_CACHE`` or ``~/.cache/medurwkv``).

    The file keeps the URL's base name (:func:`weights_cache_path`); a file already there (copied by hand for
    offline use) is reused without network access. Raises :class:`~medurwkv.errors.DownloadError` with what
    to do offline.
    """
    dest = weights_cache_path(url, cache_dir)
    hint = (
        "without network access, download the file elsewhere and pass pretrained=PATH "
        f"(CLI: --pretrained PATH), or copy it to {dest}"
    )
    return download(url, dest, sha256=sha256, progress=progress, hint=hint)


class _Opaque(dict):
    """Stand-in for classes of packages we do not have (e.g. a trainer's config object in the checkpoint).

    A dict subclass, so that both ``copyreg._reconstructor(cls, dict, ...)`` (dict-based configs) and the
    protocol-2 ``cls.__new__`` + ``__dict__`` update (plain objects) reconstruct without running foreign code.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Opaque,), {"__module__": f"<missing {module}>"})


# torch.load(pickle_module=...) needs a module-like object with Unpickler and load.
_tolerant_pickle = types.ModuleType("_medurwkv_tolerant_pickle")
_tolerant_pickle.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
_tolerant_pickle.Unpickler = _TolerantUnpickler  # type: ignore[attr-defined]
_tolerant_pickle.load = lambda f, **kw: _TolerantUnpickler(f, **kw).load()  # type: ignore[attr-defined]


def _unreadable(path: Path, e: BaseException) -> UserError:
    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    return UserError(
        f"expected a PyTorch checkpoint file, got {path} which torch.load cannot read ({type(e).__name__}: "
        f"{first}); check that the file is complete (re-download or re-copy it)"
    )


def _torch_load(path: Path, *, trusted: bool) -> Any:
    mmap = zipfile.is_zipfile(path)  # zip checkpoints can be memory-mapped: big files need no second copy
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise _unreadable(path, e) from e
        if not trusted:
            raise UserError(
                f"expected a checkpoint of tensors and plain containers, got {path} which also holds Python "
                f"objects ({str(e).splitlines()[0][:200]}); if you trust the file, pass trust_pickle=True "
                "(full unpickling can run code)"
            ) from e
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on a file that is not a checkpoint
        raise _unreadable(path, e) from e
    warnings.warn(
        f"{path.name} holds non-tensor Python objects; unpickling it fully because it is trusted",
        stacklevel=3,
    )
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_tolerant_pickle
        )
    except Exception as e:  # noqa: BLE001 - as above
        raise _unreadable(path, e) from e


def _extract_state_dict(obj: Any) -> dict[str, Tensor]:
    """Unwrap ``{'state_dict'|'model'|'module': sd}`` (tried in that order) or take the raw dict."""
    if not isinstance(obj, Mapping):
        raise UserError(f"expected a checkpoint dict, got {type(obj).__name__}")
    for key in _CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
            obj = inner
            break
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not sd:
        raise UserError(
            "expected a state dict of tensors (directly or under 'state_dict', 'model' or 'module'), got a "
            f"dict with keys {sorted(map(str, obj))[:10]}"
        )
    return sd


def _resolve_source(
    source: str | Path | Mapping[str, Any] | PretrainedCfg,
    *,
    sha256: str | None,
    cache_dir: str | Path | None,
    progress: bool,
    trust_pickle: bool,
) -> tuple[Any, str, PretrainedCfg | None]:
    """(the loaded checkpoint object, its label for the report, the official release it is, if any)."""
    if isinstance(source, Mapping):
        if sha256 is not None:
            raise UserError(
                "expected sha256=None for an in-memory checkpoint dict; a checksum needs a file or URL"
            )
        return source, "<dict>", None
    text = source.url if isinstance(source, PretrainedCfg) else str(source)
    release = find_release(source)
    if is_url(text):
        path = fetch_weights(text, sha256=sha256, cache_dir=cache_dir, progress=progress)
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise CheckpointNotFoundError(
                f"expected a checkpoint file or an http(s)/file URL, got {text!r} which does not exist; "
                "check the path"
            )
        if sha256 is not None and (got := sha256_file(path)) != sha256.lower():
            raise UserError(f"sha256 mismatch for {path}: expected {sha256.lower()}, got {got}")
    return _torch_load(path, trusted=trust_pickle or release is not None), text, release


# ----------------------------------------------------------------------------------------------------
# Architecture description for error messages
# ----------------------------------------------------------------------------------------------------

_KNOWN = {(192, 12): "VRWKV-T", (384, 12): "VRWKV-S", (768, 12): "VRWKV-B", (1024, 24): "VRWKV-L"}


def _arch_of(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    embed = None
    if "patch_embed.projection.weight" in sd:
        embed = int(sd["patch_embed.projection.weight"].shape[0])
    elif "pos_embed" in sd:
        embed = int(sd["pos_embed"].shape[-1])
    layer_ids = [int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))]
    depth = max(layer_ids) + 1 if layer_ids else None
    adapter = any(k.startswith(("spm.", "interactions.")) for k in sd)
    return {"embed_dims": embed, "depth": depth, "adapter": adapter}


def _describe(arch: dict[str, Any]) -> str:
    if arch["embed_dims"] is None and arch["depth"] is None:
        return "no VRWKV backbone keys"
    text = f"embed_dims={arch['embed_dims']}, depth={arch['depth']}"
    if arch["adapter"]:
        text += ", with adapter (spm/interactions)"
    return text


def _guess(arch: dict[str, Any]) -> str:
    name = _KNOWN.get((arch["embed_dims"], arch["depth"]))
    if name is None:
        return "a custom VRWKV" if arch["embed_dims"] is not None else "not a VRWKV backbone"
    return name + (" adapter" if arch["adapter"] else "")


def _arch_message(ckpt_sd: Mapping[str, Tensor], model_sd: Mapping[str, Tensor], model: nn.Module) -> str:
    ca, ma = _arch_of(ckpt_sd), _arch_of(model_sd)
    spec = vars(model).get("model_spec")  # set by create_model; a module built by hand has none
    model_name = spec.get("name") if isinstance(spec, Mapping) else None
    return (
        f"checkpoint has {_describe(ca)} (looks like {_guess(ca)}) but the model has {_describe(ma)} "
        f"({model_name or 'looks like ' + _guess(ma)})"
    )


def _fmt_keys(keys: list[str], limit: int = 25) -> str:
    grouped = _group_keys(keys)
    more = f", ... ({len(grouped) - limit} more groups)" if len(grouped) > limit else ""
    return ", ".join(grouped[:limit]) + more


# ----------------------------------------------------------------------------------------------------
# Tensor conversions (official layouts only)
# ----------------------------------------------------------------------------------------------------


def _adapt_stem(w: Tensor, n: int) -> Tensor:
    """(O, 3, kh, kw) RGB filters -> (O, n, kh, kw).

    n == 1: sum of the RGB filters, so a gray image gives the response the RGB model gives to that gray image
    replicated on R, G and B. n == 2 or n > 3: the RGB filters repeated cyclically, scaled by 3/n so that the
    response to a constant image keeps its magnitude.
    """
    wf = w.to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    if n == 1:
        out = wf.sum(dim=1, keepdim=True)
    else:
        out = wf[:, [i % 3 for i in range(n)]] * (3.0 / n)
    return out.to(w.dtype)


def _square_side(n: int) -> int | None:
    s = math.isqrt(n)
    return s if s * s == n else None


def _resize_grid(src: Tensor, dst_shape: torch.Size) -> Tensor | None:
    """Bicubically resize a square (1, h*h, C) position grid to the model's square (1, H*H, C), else None.

    Checkpoints store no grid shape; official grids (and ours: ``img_size`` is one int) are square.
    """
    if src.ndim != 3 or len(dst_shape) != 3 or src.shape[0] != dst_shape[0] or src.shape[2] != dst_shape[2]:
        return None
    side, dst = _square_side(src.shape[1]), _square_side(dst_shape[1])
    if side is None or dst is None:
        return None
    x = src.to(torch.float64 if src.dtype == torch.float64 else torch.float32)
    return resize_pos_embed(x, (side, side), (dst, dst), mode="bicubic").to(src.dtype)


# ----------------------------------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    target: nn.Module
    label: str
    layout: CheckpointLayout | None  # None: the user's own weights, loaded exactly as saved


def _strip_ddp(key: str) -> str:
    while key.startswith(_DDP_PREFIX):
        key = key[len(_DDP_PREFIX) :]
    return key


def _label(model: nn.Module, target: nn.Module) -> str:
    return type(model).__name__ if target is model else f"{type(target).__name__} (model.pretrained_target())"


def _model_name(model: nn.Module) -> str:
    spec = vars(model).get("model_spec")
    return repr(spec["name"]) if spec else type(model).__name__


def _plan(model: nn.Module, sd: Mapping[str, Tensor], release: PretrainedCfg | None) -> _Plan:
    """Which module receives the weights, and whether the official layout's rules apply.

    - An official release (by name) or a checkpoint with ``backbone.`` keys is in an official layout: it goes
      into ``model.pretrained_target()`` (a :class:`SegmentationModel`) or into the model itself (a bare
      backbone/encoder such as ``VRWKV`` or ``VRWKVAdapter``).
    - Anything else is the user's own weights. For a segmentation model whose pretrained target is a
      submodule at path ``P`` (``encoder`` for Med-URWKV, ``encoder.backbone`` for the pure variant): keys
      starting with ``P.`` mean a checkpoint of the whole model; otherwise it holds the target's own keys
      (e.g. a VRWKV backbone you trained). Without a pretrained target it is the whole model's.
    """
    target = model.pretrained_target() if isinstance(model, SegmentationModel) else model
    layout_name = release.layout if release is not None else detect_layout(sd)
    if layout_name is not None:
        if target is None:
            raise UserError(
                f"expected weights of {_model_name(model)} itself, got an official Vision-RWKV checkpoint "
                f"({layout_name} layout, backbone.* keys), but {_model_name(model)} has no pretrained encoder; "
                "pass a checkpoint saved from this model, or use a Med-URWKV model for the official weights"
            )
        return _Plan(target, _label(model, target), LAYOUTS[layout_name])
    if target is None or target is model:
        return _Plan(model, _label(model, model), None)
    path = next(name for name, m in model.named_modules() if m is target)
    whole = any(k.startswith(path + ".") for k in sd)
    chosen = model if whole else target
    return _Plan(chosen, _label(model, chosen), None)


def read_encoder_file(source: str | Path) -> dict[str, Any] | None:
    """The contents of an ``encoder.pt`` of ``medurwkv pretrain`` (memory-mapped: its tensors are not read),
    or None when ``source`` is not one (a URL, a missing file, an official checkpoint, any other format)."""
    path = Path(str(source)).expanduser()
    if is_url(str(source)) or not path.is_file() or not zipfile.is_zipfile(path):
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not ours (official files may hold Python objects): load_pretrained decides
        return None
    return obj if isinstance(obj, dict) and obj.get("format") == ENCODER_FORMAT else None


def default_normalization(pretrained: bool | str | Path) -> str:
    """The input normalisation that weights expect: ``"per_image"`` without weights (``False``), an encoder.pt's
    own (what it was pretrained with), ``"imagenet"`` for the official releases and any other file."""
    if pretrained is False or pretrained is None:
        return "per_image"
    encoder = read_encoder_file(pretrained) if pretrained is not True else None
    return str(((encoder or {}).get("config") or {}).get("normalize") or "imagenet")


def _encoder_plan(model: nn.Module, label: str) -> _Plan:
    """An encoder.pt of ``medurwkv pretrain`` holds the pretrained target's own keys: they load into
    ``model.pretrained_target()`` (a bare VRWKV backbone / adapter: the model itself), exactly as saved."""
    target = model.pretrained_target() if isinstance(model, SegmentationModel) else model
    if target is None:
        raise UserError(
            f"expected a model with a VRWKV encoder for {Path(label).name} (a pretrained encoder), got "
            f"{_model_name(model)} which has none; fine-tune a Med-URWKV model with it"
        )
    return _Plan(target, _label(model, target), None)


def _encoder_mismatch(file: Mapping[str, Any], label: str, model: nn.Module, detail: str) -> UserError:
    """The encoder file does not fit the model: name both (the kwargs that differ) and how to fix it."""
    spec_f = file.get("model") or {}
    name_f, kw_f = str(spec_f.get("name")), dict(spec_f.get("kwargs") or {})
    spec_m = vars(model).get("model_spec") or {}
    name_m, kw_m = str(spec_m.get("name", type(model).__name__)), dict(spec_m.get("kwargs") or {})
    keys = sorted(k for k in set(kw_f) | set(kw_m) if k != "num_classes" and kw_f.get(k) != kw_m.get(k))

    def show(kw: dict[str, Any]) -> str:
        return " (" + ", ".join(f"{k}={kw.get(k)!r}" for k in keys) + ")" if keys else ""

    try:  # the --model-kwargs that rebuild the pretrained architecture: the file's kwargs beyond its defaults
        defaults = get_model_entry(name_f).default_kwargs
    except UserError:
        defaults = {}
    extra = {
        k: v for k, v in kw_f.items() if k not in ("in_channels", "num_classes") and defaults.get(k) != v
    }
    fix = f"--model {name_f}" + (f" --model-kwargs '{json.dumps(extra)}'" if extra else "")
    if "in_channels" in kw_f:
        fix += f" (and {kw_f['in_channels']} input channel(s): --in-channels {kw_f['in_channels']})"
    return UserError(
        f"{Path(label).name} was pretrained for {name_f}{show(kw_f)}, got {name_m}{show(kw_m)}: {detail}. "
        f"Fine-tune the model it was pretrained for: {fix}, or pretrain again for {name_m}"
    )


def load_pretrained(
    model: nn.Module,
    source: str | Path | Mapping[str, Any] | PretrainedCfg,
    *,
    sha256: str | None = None,
    strict: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    verbose: bool = True,
    trust_pickle: bool = False,
) -> LoadReport:
    """Load official Vision-RWKV weights, or your own weights of this model, into ``model`` in place.

    Args:
        model: the model; official weights go into ``model.pretrained_target()`` for a segmentation model.
        source: a checkpoint path, an ``http(s)://`` / ``file://`` URL (downloaded once into the cache), an
            already-loaded checkpoint dict, or a :class:`~medurwkv.models.releases.PretrainedCfg` (what
            ``create_model(..., pretrained=True)`` passes). The weights are taken from ``state_dict``, ``model``
            or ``module`` (first present) or the dict itself; DDP ``module.`` prefixes are stripped.
        sha256: expected hex digest of the file (verified after download; checked for local files too).
        strict: raise :class:`~medurwkv.errors.UserError` if a model key is missing or a checkpoint key is
            unexpected.
        cache_dir: download folder (default ``$MEDURWKV_CACHE`` or ``~/.cache/medurwkv``).
        progress: show a progress bar while downloading.
        verbose: print the :class:`LoadReport`.
        trust_pickle: allow full unpickling of files that hold Python objects besides tensors (official
            release files are trusted by name).

    Official layout (a release by name, or ``backbone.*`` keys): its :class:`~.releases.CheckpointLayout`
    says what to strip (``backbone.``), what to skip (task heads) and which RGB stem filters ``(O, 3, kh, kw)``
    to adapt to the model's ``(O, N, kh, kw)`` (sum for N = 1, cyclic repeat scaled by 3/N otherwise); a square
    ``pos_embed`` grid is resized bicubically. Your own weights load exactly as saved; an ``encoder.pt`` of
    ``medurwkv pretrain`` (:data:`ENCODER_FORMAT`) into the pretrained target, and one made for another
    architecture or channel count raises a UserError naming both models. Any other shape
    difference raises a UserError naming both architectures (also with ``strict=False``). The model's Bi-WKV
    kernel constants are never changed; a warning says so when an official release was trained with others.
    """
    raw, label, release = _resolve_source(
        source, sha256=sha256, cache_dir=cache_dir, progress=progress, trust_pickle=trust_pickle
    )
    sd = {_strip_ddp(k): v for k, v in _extract_state_dict(raw).items()}
    encoder_file = raw if isinstance(raw, Mapping) and raw.get("format") == ENCODER_FORMAT else None
    plan = _encoder_plan(model, label) if encoder_file is not None else _plan(model, sd, release)
    layout = plan.layout
    model_sd = plan.target.state_dict()
    report = LoadReport(source=label, target=plan.label)

    to_load: dict[str, Tensor] = {}
    mismatched: list[str] = []
    ckpt_keys: dict[str, Tensor] = {}  # target-side names of the checkpoint's tensors (heads excluded)
    for key, value in sd.items():
        if layout is not None:
            if key.startswith(layout.head_prefixes):
                report.skipped.append(key)  # a task head: no backbone has it
                continue
            key = key.removeprefix(layout.prefix)
        ckpt_keys[key] = value
        mine = model_sd.get(key)
        if mine is None:
            report.unexpected.append(key)
        elif mine.shape == value.shape:
            to_load[key] = value
            report.loaded.append(key)
        elif (
            layout is not None
            and key.rsplit(".", 1)[-1] == "pos_embed"
            and (grid := _resize_grid(value, mine.shape)) is not None
        ):
            to_load[key] = grid
            report.resized.append(key)
        elif (
            layout is not None
            and key in layout.stem_keys
            and value.ndim == 4
            and mine.ndim == 4
            and value.shape[1] == 3
            and (value.shape[0], *value.shape[2:]) == (mine.shape[0], *mine.shape[2:])
        ):
            to_load[key] = _adapt_stem(value, mine.shape[1])
            report.adapted.append(key)
        else:
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(mine.shape)}")
    report.missing = [k for k in model_sd if k not in ckpt_keys]

    if mismatched:
        shown = "; ".join(mismatched[:8]) + (
            f"; ... ({len(mismatched) - 8} more)" if len(mismatched) > 8 else ""
        )
        if encoder_file is not None:
            raise _encoder_mismatch(
                encoder_file, label, model, f"{len(mismatched)} tensor shapes differ ({shown})"
            )
        raise UserError(
            f"{_arch_message(ckpt_keys, model_sd, model)}: {len(mismatched)} tensor shapes differ ({shown}); "
            "create the model with the checkpoint's architecture (e.g. the matching create_model name)"
        )
    if strict and not report.ok:
        parts = []
        if report.missing:
            parts.append(f"missing from the checkpoint ({len(report.missing)}): {_fmt_keys(report.missing)}")
        if report.unexpected:
            parts.append(
                f"unexpected in the checkpoint ({len(report.unexpected)}): {_fmt_keys(report.unexpected)}"
            )
        if encoder_file is not None:
            raise _encoder_mismatch(encoder_file, label, model, "; ".join(parts))
        raise UserError(
            f"expected the checkpoint keys to match the model exactly, got {'; '.join(parts)}. "
            f"{_arch_message(ckpt_keys, model_sd, model)}. Pass strict=False to load the matching keys and keep "
            "the rest at their initial values"
        )

    plan.target.load_state_dict(to_load, strict=False)  # to_load holds only target keys, checked above
    if release is not None and isinstance(plan.target, VRWKVTrunk):
        _warn_kernel_constants(release, plan.target)
    if verbose:
        print(report)
    return report


def _warn_kernel_constants(release: PretrainedCfg, target: VRWKVTrunk) -> None:
    have, want = target.wkv_constants, (release.wkv_token_split, float(release.wkv_eps))
    if have != want:
        warnings.warn(
            f"{release.file} was trained with Bi-WKV token_split={want[0]}, eps={want[1]:g} but the model "
            f"uses token_split={have[0]}, eps={have[1]:g}; outputs will differ slightly from the "
            "official ones. Keep this deliberately, or create the model with "
            f"create_model(..., wkv_token_split={want[0]}, wkv_eps={want[1]:g})",
            UserWarning,
            stacklevel=3,
        )
