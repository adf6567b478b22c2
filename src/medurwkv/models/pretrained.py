"""Load the official OpenGVLab Vision-RWKV weights (or any compatible state dict) into our models.

The official releases (``spec/vrwkv.md`` §4) are mmcls / mmseg / mmdet checkpoints whose backbone keys are
``backbone.<our module path>``. :func:`load_pretrained` unwraps the checkpoint dict, strips the prefixes,
drops the task heads, adapts the RGB stem to the model's ``in_channels``, resizes a stored position grid, and
reports exactly what happened in a :class:`LoadReport`. Files are fetched only when asked, into a local cache
(``cache_dir`` argument, else ``$MEDURWKV_CACHE``, else ``~/.cache/medurwkv``); nothing is downloaded at
import.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import tempfile
import types
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .registry import PretrainedCfg
from .vrwkv import resize_pos_embed

__all__ = [
    "LoadReport",
    "load_pretrained",
    "download",
    "official_releases",
    "find_release",
    "default_cache_dir",
    "CACHE_ENV",
]

CACHE_ENV = "MEDURWKV_CACHE"

# Checkpoint sub-dicts that hold the weights, tried in this order (mmcv/mmseg/mmdet: "state_dict"; the
# internimage / DeiT-style trainers: "model"; some DDP savers: "module").
_CONTAINER_KEYS = ("state_dict", "model", "module")
_STRIP_PREFIXES = ("module.", "backbone.")
# Task heads of the official classifiers / segmentors / detectors: not part of any backbone.
_HEAD_PREFIXES = ("head.", "decode_head.", "auxiliary_head.", "neck.", "rpn_head.", "roi_head.")


# ----------------------------------------------------------------------------------------------------
# Official release table (spec/vrwkv.md §3.5 and §4)
# ----------------------------------------------------------------------------------------------------

_SIZES = {"tiny": "T", "small": "S", "base": "B", "large": "L"}


def official_releases() -> list[PretrainedCfg]:
    """Every official Vision-RWKV (v1) weight release with its layout and Bi-WKV kernel constants.

    The kernel constants are those of the CUDA kernel that trained each file (``spec/vrwkv.md`` §3.5):
    ImageNet T/S/B 32 chunks / EPS 1e-6, VRWKV-L 16 / 1e-6, ADE20K UperNet 16 / 0, COCO Mask R-CNN 32 / 0.
    URLs point to ``https://huggingface.co/OpenGVLab/Vision-RWKV/resolve/main/<file>``.
    """
    rel: list[PretrainedCfg] = []
    for s in "tsb":
        rel.append(
            PretrainedCfg.official(
                f"vrwkv_{s}_in1k_224.pth",
                layout="mmcls",
                wkv_token_split=32,
                wkv_eps=1e-6,
                description=f"VRWKV-{s.upper()} ImageNet-1k classifier, 224 px (model vrwkv_{s})",
            )
        )
    rel.append(
        PretrainedCfg.official(
            "vrwkv_l_in22k_192.pth",
            layout="mmcls",
            wkv_token_split=16,
            wkv_eps=1e-6,
            description="VRWKV-L ImageNet-22k pre-training, 192 px, 12x12 pos grid (model vrwkv_l)",
        )
    )
    rel.append(
        PretrainedCfg.official(
            "vrwkv_l_22kto1k_384.pth",
            layout="mmcls",
            wkv_token_split=16,
            wkv_eps=1e-6,
            description="VRWKV-L ImageNet-22k -> 1k fine-tune, 384 px (model vrwkv_l; MLP head skipped)",
        )
    )
    for size, letter in _SIZES.items():
        rel.append(
            PretrainedCfg.official(
                f"upernet_vrwkv_adapter_{size}_512_160k_ade20k.pth",
                layout="mmseg",
                wkv_token_split=16,
                wkv_eps=0.0,
                description=f"VRWKV-{letter} adapter + UperNet, ADE20K 512 px (VRWKV_Adapter encoder; "
                "the tiny one is Med-URWKV's encoder source)",
            )
        )
    for size, letter in _SIZES.items():
        rel.append(
            PretrainedCfg.official(
                f"mask_rcnn_vrwkv_adapter_{size}_fpn_1x_coco.pth",
                layout="mmdet",
                wkv_token_split=32,
                wkv_eps=0.0,
                description=f"VRWKV-{letter} adapter + Mask R-CNN FPN 1x, COCO (VRWKV_Adapter encoder)",
            )
        )
    return rel


def find_release(source: str | Path | None) -> PretrainedCfg | None:
    """The official release whose file name equals the base name of ``source`` (a path or URL), else None."""
    if source is None or isinstance(source, Mapping):
        return None
    text = str(source)
    name = Path(urllib.parse.urlparse(text).path).name if _is_url(text) else Path(text).name
    name = urllib.parse.unquote(name)
    for cfg in official_releases():
        if cfg.file == name:
            return cfg
    return None


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------


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
# Download cache
# ----------------------------------------------------------------------------------------------------


def _is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in ("http", "https", "file")


def default_cache_dir() -> Path:
    """``$MEDURWKV_CACHE`` if set, else ``~/.cache/medurwkv``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medurwkv"


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(
    url: str,
    *,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Fetch ``url`` (http, https or file) into the cache once and return the local path.

    A file already in the cache (same base name) is reused without any network access, which also makes
    offline use possible: copy the official file into the cache folder by hand. The download goes to a
    temporary file in the cache folder that is renamed into place only when complete (and, if ``sha256`` is
    given, verified), so an interrupted or corrupt download never leaves a file that a later call would trust.
    """
    from tqdm.auto import tqdm

    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "file"):
        raise ValueError(f"expected an http(s):// or file:// URL, got {url!r}")
    name = urllib.parse.unquote(Path(parsed.path).name)
    if not name:
        raise ValueError(f"expected a URL that ends in a file name, got {url!r}")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    want = sha256.lower() if sha256 else None

    if dest.is_file():
        if want is None:
            return dest
        got = _sha256_file(dest)
        if got == want:
            return dest
        # A cached file that fails its checksum is stale or corrupt: fetch it again (verified below).
        warnings.warn(
            f"cached file {dest} has sha256 {got}, expected {want}; downloading it again", stacklevel=2
        )
        dest.unlink()

    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "medurwkv"})
        try:
            resp = urllib.request.urlopen(req, timeout=60)
        except (urllib.error.URLError, OSError) as e:
            raise OSError(
                f"could not download {url}: {e}; without network access, download the file elsewhere and "
                f"pass pretrained=PATH (CLI: --pretrained PATH), or copy it to {dest}"
            ) from e
        h = hashlib.sha256()
        with resp, os.fdopen(fd, "wb") as f:
            total = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
            with tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name,
                disable=not progress,
            ) as bar:
                while block := resp.read(1 << 20):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
        got = h.hexdigest()
        if want is not None and got != want:
            raise ValueError(
                f"sha256 mismatch for {url}: expected {want}, got {got}; the download was deleted. "
                "The file may be corrupt or changed upstream; retry, or pass the right sha256"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


# ----------------------------------------------------------------------------------------------------
# Reading checkpoint files
# ----------------------------------------------------------------------------------------------------


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


def _torch_load(path: Path, *, trusted: bool) -> Any:
    mmap = zipfile.is_zipfile(path)  # zip checkpoints can be memory-mapped: big files need no second copy
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if not trusted:
            raise ValueError(
                f"expected a checkpoint of tensors and plain containers, got {path} which also holds Python "
                f"objects ({str(e).splitlines()[0][:200]}); if you trust the file, pass trust_pickle=True "
                "(full unpickling can run code)"
            ) from e
    warnings.warn(
        f"{path.name} holds non-tensor Python objects; unpickling it fully because it is trusted",
        stacklevel=3,
    )
    return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_tolerant_pickle)


def _extract_state_dict(obj: Any) -> dict[str, Tensor]:
    """Unwrap ``{'state_dict'|'model'|'module': sd}`` (tried in that order) or take the raw dict."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a checkpoint dict, got {type(obj).__name__}")
    for key in _CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
            obj = inner
            break
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not sd:
        raise ValueError(
            "expected a state dict of tensors (directly or under 'state_dict', 'model' or 'module'), got a "
            f"dict with keys {sorted(map(str, obj))[:10]}"
        )
    return sd


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


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
    spec = getattr(model, "model_spec", None)
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
# Tensor conversions
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


def _resize_grid(src: Tensor, dst_shape: torch.Size, target: nn.Module) -> Tensor | None:
    """Bicubically resize a (1, h*w, C) position grid to the model's (1, H*W, C); None if not possible."""
    if src.ndim != 3 or len(dst_shape) != 3 or src.shape[0] != dst_shape[0] or src.shape[2] != dst_shape[2]:
        return None
    side = _square_side(src.shape[1])  # the checkpoint stores no grid shape: official grids are square
    dst_hw = getattr(target, "init_out_size", None)
    if dst_hw is None or dst_hw[0] * dst_hw[1] != dst_shape[1]:
        d = _square_side(dst_shape[1])
        dst_hw = (d, d) if d is not None else None
    if side is None or dst_hw is None:
        return None
    x = src.to(torch.float64 if src.dtype == torch.float64 else torch.float32)
    return resize_pos_embed(x, (side, side), tuple(dst_hw), mode="bicubic").to(src.dtype)


def _wkv_constants(module: nn.Module) -> tuple[int | None, float] | None:
    for m in module.modules():
        if hasattr(m, "wkv_token_split") and hasattr(m, "wkv_eps"):
            return m.wkv_token_split, float(m.wkv_eps)
    return None


# ----------------------------------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------------------------------


def _resolve_source(
    source: str | Path | Mapping[str, Any],
    *,
    sha256: str | None,
    cache_dir: str | Path | None,
    progress: bool,
    trust_pickle: bool,
) -> tuple[Any, str]:
    if isinstance(source, Mapping):
        if sha256 is not None:
            raise ValueError(
                "expected sha256=None for an in-memory checkpoint dict; a checksum needs a file or URL"
            )
        return source, "<dict>"
    text = str(source)
    if _is_url(text):
        path = download(text, sha256=sha256, cache_dir=cache_dir, progress=progress)
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"expected a checkpoint file or an http(s)/file URL, got {text!r} which does not exist"
            )
        if sha256 is not None and (got := _sha256_file(path)) != sha256.lower():
            raise ValueError(f"sha256 mismatch for {path}: expected {sha256.lower()}, got {got}")
    trusted = trust_pickle or find_release(text) is not None
    return _torch_load(path, trusted=trusted), text


def _pick_target(model: nn.Module, sd: dict[str, Tensor]) -> tuple[nn.Module, str, dict[str, Tensor]]:
    """Choose the (module, key naming) pair that matches the checkpoint best.

    Official files map onto ``model.pretrained_target()`` (e.g. the encoder of a segmentation model) once
    ``backbone.`` is stripped; a checkpoint of the whole model (e.g. our own training checkpoint) matches the
    model itself. Ties prefer the pretrained target with ``backbone.`` stripped, the official case.
    """
    target = model.pretrained_target() if hasattr(model, "pretrained_target") else model
    stripped = {_strip(k, _STRIP_PREFIXES): v for k, v in sd.items()}
    plain = {_strip(k, ("module.",)): v for k, v in sd.items()}
    candidates = [(target, "pretrained_target", stripped), (target, "pretrained_target", plain)]
    if target is not model:
        candidates += [(model, "model", plain), (model, "model", stripped)]
    best, best_score = candidates[0], -1
    for mod, label, keys in candidates:
        own = mod.state_dict().keys()
        score = sum(k in own for k in keys)
        if score > best_score:
            best, best_score = (mod, label, keys), score
    mod, label, keys = best
    name = type(mod).__name__ if mod is model else f"{type(mod).__name__} (model.pretrained_target())"
    return mod, name, keys


def load_pretrained(
    model: nn.Module,
    source: str | Path | Mapping[str, Any],
    *,
    sha256: str | None = None,
    strict: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    verbose: bool = True,
    trust_pickle: bool = False,
) -> LoadReport:
    """Load official Vision-RWKV weights (or a compatible state dict) into ``model`` in place.

    Args:
        model: the model; if it has ``pretrained_target()``, the weights go into the module it returns.
        source: a checkpoint path, an ``http(s)://`` / ``file://`` URL (downloaded once into the cache), or
            an already-loaded checkpoint dict. The weights are taken from ``state_dict``, ``model`` or
            ``module`` (first present) or the dict itself; ``module.`` and ``backbone.`` prefixes are stripped
            and task heads (``head.``, ``decode_head.``, ``auxiliary_head.``, ``neck.``, ``rpn_head.``,
            ``roi_head.``) are skipped unless the model has the same key with the same shape.
        sha256: expected hex digest of the file (verified after download; checked for local files too).
        strict: raise ``ValueError`` if any model key is missing or any checkpoint key is unexpected.
        cache_dir: download folder (default ``$MEDURWKV_CACHE`` or ``~/.cache/medurwkv``).
        progress: show a tqdm bar while downloading.
        verbose: print the :class:`LoadReport`.
        trust_pickle: allow full unpickling of files that hold Python objects besides tensors (official
            release files are trusted by name).

    Conversions: RGB stem filters ``(O, 3, kh, kw)`` are adapted to the model's ``(O, N, kh, kw)`` (sum for
    N = 1, cyclic repeat scaled by 3/N otherwise); a square ``pos_embed`` grid is resized bicubically to the
    model's grid. Any other shape difference raises ``ValueError`` naming both architectures (also with
    ``strict=False``). The model's Bi-WKV kernel constants are never changed; a warning says so when an
    official release was trained with other constants.
    """
    raw, label = _resolve_source(
        source, sha256=sha256, cache_dir=cache_dir, progress=progress, trust_pickle=trust_pickle
    )
    sd = _extract_state_dict(raw)
    target, target_name, sd = _pick_target(model, sd)
    model_sd = target.state_dict()
    report = LoadReport(source=label, target=target_name)

    to_load: dict[str, Tensor] = {}
    mismatched: list[str] = []
    for key, value in sd.items():
        mine = model_sd.get(key)
        if key.startswith(_HEAD_PREFIXES) and (mine is None or mine.shape != value.shape):
            report.skipped.append(key)  # a task head the model does not share
            continue
        if mine is None:
            report.unexpected.append(key)
            continue
        if mine.shape == value.shape:
            to_load[key] = value
            report.loaded.append(key)
            continue
        if (
            key.rsplit(".", 1)[-1] == "pos_embed"
            and (grid := _resize_grid(value, mine.shape, target)) is not None
        ):
            to_load[key] = grid
            report.resized.append(key)
            continue
        if (
            value.ndim == 4
            and mine.ndim == 4
            and value.shape[1] == 3
            and value.shape[0] == mine.shape[0]
            and value.shape[2:] == mine.shape[2:]
        ):
            to_load[key] = _adapt_stem(value, mine.shape[1])
            report.adapted.append(key)
            continue
        mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(mine.shape)}")
    report.missing = [k for k in model_sd if k not in sd]

    if mismatched:
        shown = "; ".join(mismatched[:8]) + (
            f"; ... ({len(mismatched) - 8} more)" if len(mismatched) > 8 else ""
        )
        raise ValueError(
            f"{_arch_message(sd, model_sd, model)}: {len(mismatched)} tensor shapes differ ({shown}); "
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
        raise ValueError(
            f"expected the checkpoint keys to match the model exactly, got {'; '.join(parts)}. "
            f"{_arch_message(sd, model_sd, model)}. Pass strict=False to load the matching keys and keep the "
            "rest at their initial values"
        )

    result = target.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:  # cannot happen: to_load only has model keys; guard against silent drift
        raise RuntimeError(f"internal error: unexpected keys {result.unexpected_keys}")

    _warn_kernel_constants(model, target, source)
    if verbose:
        print(report)
    return report


def _warn_kernel_constants(model: nn.Module, target: nn.Module, source: Any) -> None:
    if not (hasattr(model, "set_wkv_constants") or hasattr(target, "set_wkv_constants")):
        return
    release = find_release(source)
    have = _wkv_constants(target)
    if release is None or have is None:
        return
    want = (release.wkv_token_split, float(release.wkv_eps))
    if have != want:
        msg = (
            f"{release.file} was trained with Bi-WKV token_split={want[0]}, eps={want[1]:g} but the model "
            f"uses token_split={have[0]}, eps={have[1]:g}; outputs will differ slightly from the "
            "official ones. Keep this deliberately, or create the model with "
            f"create_model(..., wkv_token_split={want[0]}, wkv_eps={want[1]:g})"
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
