"""``medurwkv report RUN_DIR``: one self-contained HTML page summarising a training / evaluation run.

Reads what exists of the run directory (every part is optional, so partial runs work)::

    RUN_DIR/config.yaml                    training configuration (shown verbatim)
    RUN_DIR/metrics.csv                    one row per epoch: epoch, train_loss, val_loss, val_dice, lr,
                                           epoch_time_s
    RUN_DIR/eval/<split>/summary.json      MetricAccumulator.summary() (engine/metrics.py), or for volumes
                                           VolumeMetrics.summary() (engine/metrics3d.py, format
                                           "medurwkv-volume-metrics-v1")
    RUN_DIR/eval/<split>/summary.md        its Markdown rendering (shown when summary.json is missing)
    RUN_DIR/eval/<split>/per_image.csv     per-image rows (histogram of per-image Dice, column dice_mean)
    RUN_DIR/eval/<split>/per_case.csv      volumes: per-case, per-class rows (histogram of the per-case Dice)
    RUN_DIR/eval/<split>/cases/{best,median,worst}_<id>.png   overlays (engine/visualize.save_case_thumbnails;
                                           for volumes the busiest slice, save_volume_thumbnails)
    RUN_DIR/preview.png                    `medurwkv pretrain` runs (config.yaml with mask_ratio): the
                                           reconstruction preview, shown with the loss of metrics.csv
    RUN_DIR/slices/index.json              volumes: the resolved slicing / intensity spec ("spec", the same
                                           dict as the checkpoint's preprocess["volume"])

and writes ``RUN_DIR/report.html`` with every figure embedded as a base64 PNG (no external CSS, JS or images).
The command line (``medurwkv/cli/report.py``) first checks with :func:`require_run_dir` that the folder is a run.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UserError
from ..utils import atomic_write_text

__all__ = [
    "RUN_MARKERS",
    "build_report",
    "find_splits",
    "headline_dice",
    "read_training_log",
    "require_run_dir",
]

# Files that `medurwkv train` writes into a run folder first; a folder with one of them (or eval/) is a run.
RUN_MARKERS: tuple[str, ...] = ("config.yaml", "metrics.csv")
SPLIT_ORDER: tuple[str, ...] = ("test", "val", "valid", "validation", "train")
CASE_KINDS: tuple[str, ...] = ("best", "median", "worst")  # same as visualize.CASE_KINDS (kept import-free)
OVERLAP = ("dice", "iou", "precision", "recall")
DISTANCE = ("hd95", "assd")
# summary.json of engine/metrics3d.VolumeMetrics, slices/index.json spec of data/volume_slices.VolumeSpec (kept
# import-free: the report must not need torch / scipy to read a run)
VOLUME_METRICS_FORMAT = "medurwkv-volume-metrics-v1"
VOLUME_SLICES_FORMAT = "medurwkv-volume-slices-v1"
VOLUME_METRICS = ("dice", "iou", "hd95", "assd")

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;
color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:20px 28px 40px}
h1{font-size:26px;margin:6px 0 2px} h2{font-size:20px;border-bottom:2px solid #d8dce3;padding-bottom:4px;
margin:30px 0 12px} h3{font-size:16px;margin:18px 0 8px}
.sub{color:#5b6475;font-size:13px}
.headline{display:flex;flex-wrap:wrap;gap:16px;margin:16px 0 4px}
.card{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:12px 18px;min-width:180px}
.card .v{font-size:40px;font-weight:700;color:#0b6e4f;line-height:1.1}
.card.main .v{font-size:52px}
.card .l{font-size:13px;color:#5b6475}
.missing{background:#fff8e1;border:1px solid #f0d68a;border-radius:6px;padding:10px 14px;color:#6b5300}
pre{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:10px 12px;font-size:12px;
max-height:420px;overflow:auto;white-space:pre-wrap;word-break:break-word}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0 10px}
th,td{border:1px solid #d8dce3;padding:4px 10px;text-align:right} th{background:#eceff4}
td.l,th.l{text-align:left}
img.fig{max-width:100%;height:auto;background:#fff;border:1px solid #d8dce3;border-radius:6px}
.cases{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:14px}
.cases figure{margin:0;background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:8px}
.cases img{width:100%;height:auto;image-rendering:auto;display:block}
figcaption{font-size:13px;margin-top:6px;color:#333;word-break:break-all}
.legend span{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px 0 12px;
vertical-align:middle} .legend span:first-child{margin-left:0}
.legend div{margin:2px 0}
tr.mean td{font-weight:600;background:#f7f8fa}
.split{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:6px 18px 14px;margin:14px 0}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _esc(v)
    return "n/a" if not math.isfinite(f) else f"{f:.{digits}f}"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "fig") -> str:
    return f'<img class="{cls}" alt="{_esc(alt)}" src="{_data_uri(png)}">'


def _missing(text: str) -> str:
    return f'<p class="missing">{_esc(text)}</p>'


def _figure_png(fig: Any) -> bytes:
    # Figure + Agg canvas directly: no pyplot global state, safe outside the main thread
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ---------------------------------------------------------------- inputs


def read_training_log(path: Path) -> dict[str, list[float]]:
    """``metrics.csv`` -> ``{column: values}``: numeric columns, empty cells NaN."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        cols: dict[str, list[float]] = {k: [] for k in fields}
        text = set()  # columns with a non-empty, non-numeric cell (e.g. a note): not plottable
        for row in reader:
            for k in fields:
                v = (row.get(k) or "").strip()
                try:
                    cols[k].append(float(v))
                except ValueError:
                    cols[k].append(math.nan)
                    if v:
                        text.add(k)
    return {k: v for k, v in cols.items() if k not in text}


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def find_splits(run_dir: str | Path) -> list[Path]:
    """Evaluated splits: ``RUN_DIR/eval/<split>`` folders with a summary or per-image CSV, test/val first."""
    ev = Path(run_dir) / "eval"
    if not ev.is_dir():
        return []
    found = [
        d
        for d in ev.iterdir()
        if d.is_dir()
        and any((d / n).is_file() for n in ("summary.json", "summary.md", "per_image.csv", "per_case.csv"))
    ]

    def order(d: Path) -> tuple[int, str]:
        return (SPLIT_ORDER.index(d.name) if d.name in SPLIT_ORDER else len(SPLIT_ORDER), d.name)

    return sorted(found, key=order)


def _load_summary(split_dir: Path) -> dict[str, Any] | None:
    p = split_dir / "summary.json"
    if not p.is_file():
        return None
    try:
        s = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return s if isinstance(s, dict) else None


def _dice_column(fieldnames: Sequence[str]) -> str | None:
    if "dice_mean" in fieldnames:
        return "dice_mean"
    if "dice" in fieldnames:
        return "dice"
    return next((f for f in fieldnames if f.startswith("dice_")), None)


def _dice_rows(split_dir: Path) -> tuple[str, list[dict[str, str]]] | None:
    """The Dice column name and the rows of ``split_dir/per_image.csv`` (None without file or column)."""
    p = split_dir / "per_image.csv"
    if not p.is_file():
        return None
    rows = _read_rows(p)
    col = _dice_column(list(rows[0].keys())) if rows else None
    return None if col is None else (col, rows)


def _per_image_dice(split_dir: Path) -> tuple[str, list[float]] | None:
    found = _dice_rows(split_dir)
    if found is None:
        return None
    col, rows = found
    vals = []
    for r in rows:
        try:
            v = float(r[col])
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            vals.append(v)
    return col, vals


def _is_volume(s: dict[str, Any] | None) -> bool:
    return isinstance(s, dict) and s.get("format") == VOLUME_METRICS_FORMAT


def _per_case_dice(split_dir: Path) -> dict[str, dict[str, float]]:
    """Volumes: ``per_case.csv`` -> ``{case_id: {class_name: dice}}`` (file order; unreadable cells dropped)."""
    p = split_dir / "per_case.csv"
    if not p.is_file():
        return {}
    out: dict[str, dict[str, float]] = {}
    for r in _read_rows(p):
        try:
            v = float(r.get("dice", ""))
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.setdefault(str(r.get("case_id", "")), {})[str(r.get("class_name", ""))] = v
    return out


def _case_means(per_case: dict[str, dict[str, float]]) -> dict[str, float]:
    # the ranking of save_volume_thumbnails: a case's Dice averaged over its evaluated classes
    return {c: sum(v.values()) / len(v) for c, v in per_case.items() if v}


def _split_dice(split_dir: Path) -> tuple[float, int | None, bool] | None:
    """``(headline Dice, number of images / volumes, is_volume)`` of a split, or None."""
    s = _load_summary(split_dir)
    if s is not None and _is_volume(s):
        v = (s.get("headline") or {}).get("value")
        if v is None:
            v = ((s.get("mean") or {}).get("mean_over_cases") or {}).get("dice")
        return (float(v), s.get("n_cases"), True) if v is not None else None
    if s is not None:
        v = (s.get("headline") or {}).get("value")
        if v is None:
            v = ((s.get("mean") or {}).get("per_image_mean") or {}).get("dice")
        if v is not None:
            return float(v), s.get("n_images"), False
    d = _per_image_dice(split_dir)
    if d and d[1]:
        return sum(d[1]) / len(d[1]), len(d[1]), False
    means = _case_means(_per_case_dice(split_dir))
    if means:  # a volume split without summary.json: the per-case means (no class mean is possible here)
        return sum(means.values()) / len(means), len(means), True
    return None


def _statistic(is_volume: bool, n: int | None) -> str:
    """How the headline Dice was averaged, for labels: ``per-image mean over 9 images``."""
    if is_volume:
        over = f" over {n} volumes" if n is not None else ""
        return f"mean over classes of the per-class mean{over}"
    return f"per-image mean over {n} images" if n is not None else "per-image mean"


def headline_dice(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's headline Dice: per-image mean Dice of the first evaluated split (test, val, ... order); for a
    volume evaluation the mean over classes of the per-class mean Dice over cases (TransUNet / Synapse).

    Falls back to the best ``val_dice`` of ``metrics.csv`` when nothing was evaluated. Returns ``{"value",
    "source", "split", "n_images", "epoch", "n_cases", "statistic"}`` or ``None``; ``n_images`` is ``None``
    for volumes (``n_cases`` holds their count), ``statistic`` says how the value was averaged.
    """
    run = Path(run_dir)
    for d in find_splits(run):
        sd = _split_dice(d)
        if sd is not None:
            value, n, vol = sd
            return {
                "value": value,
                "source": "eval",
                "split": d.name,
                "n_images": None if vol else n,
                "epoch": None,
                "n_cases": n if vol else None,
                "statistic": _statistic(vol, n),
            }
    log = run / "metrics.csv"
    if log.is_file():
        cols = read_training_log(log)
        vd = cols.get("val_dice") or []
        finite = [(v, i) for i, v in enumerate(vd) if math.isfinite(v)]
        if finite:
            v, i = max(finite)
            ep = cols.get("epoch", [])
            epoch = int(ep[i]) if i < len(ep) and math.isfinite(ep[i]) else i
            return {
                "value": v,
                "source": "training",
                "split": "val",
                "n_images": None,
                "epoch": epoch,
                "n_cases": None,
                "statistic": "best val_dice during training",
            }
    return None


# ---------------------------------------------------------------- figures


def plot_learning_curves(cols: dict[str, list[float]]) -> bytes:
    """Loss (train / val), validation Dice and learning rate per epoch, as one PNG."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n = max((len(v) for v in cols.values()), default=0)
    x = cols.get("epoch") or list(range(n))
    has_lr = any(math.isfinite(v) and v > 0 for v in cols.get("lr", []))
    panels = 3 if has_lr else 2
    fig = Figure(figsize=(4.0 * panels, 3.3), layout="constrained")
    axes = fig.subplots(1, panels)
    ax = axes[0]
    for k, style in (("train_loss", "-o"), ("val_loss", "-s")):
        if k in cols:
            ax.plot(x, cols[k], style, ms=3, label=k)
    for a in axes:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="loss", xlabel="epoch")
    if ax.lines:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    dice_cols = [k for k in cols if k.startswith("val_dice")] or [k for k in cols if "dice" in k]
    for k in dice_cols:
        finite = [(v, xi) for v, xi in zip(cols[k], x) if math.isfinite(v)]
        label = k
        if finite:
            best, bx = max(finite)
            label = f"{k} (best {best:.4f} @ {bx:g})"
        (line,) = ax.plot(x, cols[k], "-o", ms=3, label=label)
        if finite:
            # star on the best epoch; the value sits in the legend so no text leaves the axes
            ax.plot([bx], [best], "*", ms=12, color=line.get_color(), markeredgecolor="black")
    ax.set(title="validation Dice", xlabel="epoch")
    if ax.lines:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if has_lr:
        ax = axes[2]
        lr = [v if math.isfinite(v) and v > 0 else math.nan for v in cols["lr"]]
        ax.plot(x, lr, "-", color="tab:purple")
        ax.set(title="learning rate", xlabel="epoch", yscale="log")
        ax.grid(alpha=0.3)
    return _figure_png(fig)


def plot_dice_histogram(
    values: Sequence[float], title: str, *, xlabel: str = "per-image Dice", ylabel: str = "images"
) -> bytes:
    """Histogram of per-image (or per-case) Dice in [0, 1] with the mean and median marked."""
    import numpy as np
    from matplotlib.figure import Figure

    v = np.asarray(values, dtype=float)
    fig = Figure(figsize=(6.0, 3.0), layout="constrained")
    ax = fig.subplots()
    lo = min(0.0, float(v.min())) if v.size else 0.0
    ax.hist(v, bins=np.linspace(lo, 1.0, 26), color="#3b7dd8", edgecolor="white")
    if v.size:
        ax.axvline(v.mean(), color="#0b6e4f", lw=2, label=f"mean {v.mean():.4f}")
        ax.axvline(float(np.median(v)), color="#d8613b", lw=2, ls="--", label=f"median {np.median(v):.4f}")
        ax.legend(fontsize=8, loc="upper left")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return _figure_png(fig)


# ---------------------------------------------------------------- sections


def _section_config(run: Path) -> str:
    p = run / "config.yaml"
    out = ["<h2 id='config'>Configuration</h2>"]
    if not p.is_file():
        return out[0] + _missing("no config.yaml in the run directory")
    text = p.read_text(errors="replace")
    facts = []
    try:
        import yaml

        cfg = yaml.safe_load(text)
    except Exception:  # a broken config must not break the report; show it verbatim
        cfg = None
    if isinstance(cfg, dict):
        for key in (
            "model",
            "pretrained",
            "data",
            "dataset",
            "img_size",
            "epochs",
            "batch_size",
            "lr",
            "loss",
            "seed",
        ):
            v = cfg.get(key)
            short_list = (
                isinstance(v, list) and len(v) <= 4 and all(not isinstance(e, (dict, list)) for e in v)
            )
            if (key in cfg and not isinstance(v, (dict, list))) or short_list:
                facts.append((key, v))
            elif key in cfg and isinstance(cfg[key], dict) and "name" in cfg[key]:
                facts.append((f"{key}.name", cfg[key]["name"]))
    if facts:
        out.append("<table><tr>" + "".join(f"<th class='l'>{_esc(k)}</th>" for k, _ in facts) + "</tr><tr>")
        out.append("".join(f"<td class='l'>{_esc(v)}</td>" for _, v in facts) + "</tr></table>")
    out.append(_volume_preprocessing(run, cfg if isinstance(cfg, dict) else {}))
    out.append(f"<pre>{_esc(text)}</pre>")
    return "".join(out)


def _volume_spec(run: Path) -> dict[str, Any] | None:
    """The resolved volume preprocessing of a run trained on volumes: ``slices/index.json``'s ``"spec"``
    (VolumeSpec.to_dict(), the dict the checkpoint stores as ``preprocess["volume"]``), or None.

    Read there and not from best.pt: a checkpoint can be hundreds of MB and needs torch to open.
    """
    p = run / "slices" / "index.json"
    if not p.is_file():
        return None
    try:
        spec = json.loads(p.read_text()).get("spec")
    except (OSError, ValueError, AttributeError):
        return None
    return spec if isinstance(spec, dict) and spec.get("format") == VOLUME_SLICES_FORMAT else None


def _intensity_text(i: Any) -> str:
    if not isinstance(i, dict):
        return _esc(i)
    scheme = i.get("scheme")
    if scheme == "ct" and all(isinstance(i.get(k), (int, float)) for k in ("lower", "upper", "mean", "std")):
        return (
            f"ct: clip to [{i['lower']:.4g}, {i['upper']:.4g}] (training-foreground 0.5 / 99.5 percentiles), "
            f"then (x − {i['mean']:.4g}) / {i['std']:.4g}"
        )
    if scheme == "zscore":
        return "zscore: (x − mean) / std per volume"
    return _esc(json.dumps(i, sort_keys=True))


def _volume_preprocessing(run: Path, cfg: dict[str, Any]) -> str:
    """How a run trained on volumes cut them into 2D / 2.5D slices; "" for a run on 2D images."""
    spec = _volume_spec(run)
    keys = ("slice_axis", "context_slices", "intensity")
    if spec is None:
        # no slice cache (deleted, or an evaluation-only folder): the configured values, if this is a volume run
        if not any(_is_volume(_load_summary(d)) for d in find_splits(run)) or not any(k in cfg for k in keys):
            return ""
        cells = "".join(f"<td class='l'>{_esc(cfg.get(k))}</td>" for k in keys)
        return (
            "<h3 id='volume-preprocessing'>Volume preprocessing</h3><table><tr>"
            + "".join(f"<th class='l'>{k}</th>" for k in keys)
            + f"</tr><tr>{cells}</tr></table><p class='sub'>as configured (config.yaml); the resolved values are "
            'in the checkpoint\'s preprocess["volume"] (slices/index.json, which repeats them, is missing)</p>'
        )
    axis, ctx = spec.get("axis"), spec.get("context")
    names = spec.get("channel_names") or []
    intensity = spec.get("intensity") or []
    k = ctx if isinstance(ctx, int) else 0
    facts = [
        ("slice axis", f"{_esc(axis)} (array axis; configured: {_esc(cfg.get('slice_axis', 'n/a'))})"),
        (
            "context",
            f"{_esc(ctx)} neighbour slice(s) each side ({2 * k + 1} slice(s) per channel"
            + (", 2.5D)" if k else ", plain 2D)"),
        ),
        (
            "model input channels",
            f"{len(names) * (2 * k + 1)} = {len(names)} channel(s) × {2 * k + 1} slice(s)",
        ),
    ]
    sp = spec.get("median_spacing")
    if isinstance(sp, list) and sp and all(isinstance(v, (int, float)) for v in sp):
        facts.append(("median spacing", " × ".join(f"{v:.4g}" for v in sp) + " mm"))
    rows = "".join(f"<tr><th class='l'>{a}</th><td class='l'>{b}</td></tr>" for a, b in facts)
    rows += "".join(
        f"<tr><th class='l'>intensity · {_esc(n)}</th><td class='l'>{_intensity_text(i)}</td></tr>"
        for n, i in zip(names, intensity)
    )
    return (
        f"<h3 id='volume-preprocessing'>Volume preprocessing</h3><table>{rows}</table>"
        "<p class='sub'>volumes are cut into slices along the slice axis and trained as 2D images; "
        'from slices/index.json (the checkpoint\'s preprocess["volume"])</p>'
    )


def _section_training(run: Path) -> str:
    out = ["<h2 id='training'>Learning curves</h2>"]
    p = run / "metrics.csv"
    if not p.is_file():
        return out[0] + _missing("no metrics.csv yet: training has not logged an epoch")
    cols = read_training_log(p)
    n = max((len(v) for v in cols.values()), default=0)
    if n == 0:
        return out[0] + _missing("metrics.csv has no epochs yet")
    ep = cols.get("epoch", [float(i) for i in range(n)])
    facts = [("epochs logged", str(n)), ("last epoch", _fmt(ep[-1], 0))]
    vd = cols.get("val_dice", [])
    finite = [(v, i) for i, v in enumerate(vd) if math.isfinite(v)]
    if finite:
        best, i = max(finite)
        facts.append(("best val_dice", f"{best:.4f} (epoch {_fmt(ep[i], 0)})"))
    for k in ("train_loss", "val_loss"):
        if cols.get(k):
            facts.append((f"last {k}", _fmt(cols[k][-1])))
    t = [v for v in cols.get("epoch_time_s", []) if math.isfinite(v)]
    if t:
        facts.append(("training time", f"{sum(t) / 60:.1f} min ({sum(t) / len(t):.1f} s/epoch)"))
    out.append("<table><tr>" + "".join(f"<th>{_esc(k)}</th>" for k, _ in facts) + "</tr><tr>")
    out.append("".join(f"<td>{_esc(v)}</td>" for _, v in facts) + "</tr></table>")
    out.append(_img(plot_learning_curves(cols), "learning curves"))
    return "".join(out)


def _summary_table(s: dict[str, Any]) -> str:
    unit = s.get("distance_unit", "px")
    groups: list[tuple[str, dict[str, Any]]] = []
    classes = s.get("classes") or {}
    if isinstance(s.get("mean"), dict) and len(classes) != 1:
        groups.append(("mean", s["mean"]))
    groups += [(k, v) for k, v in classes.items() if isinstance(v, dict)]
    head = (
        "<tr><th class='l'>class</th><th class='l'>metric</th><th>per-image mean ± std</th>"
        "<th>per-image median</th><th>pooled</th><th class='l'>unit</th><th>undefined</th></tr>"
    )
    rows = []
    for name, g in groups:
        mean, std = g.get("per_image_mean") or {}, g.get("per_image_std") or {}
        med, pooled, undef = (
            g.get("per_image_median") or {},
            g.get("pooled") or {},
            g.get("n_undefined") or {},
        )
        for m in OVERLAP + DISTANCE:
            if m not in mean:
                continue
            rows.append(
                f"<tr><td class='l'>{_esc(name)}</td><td class='l'>{m}</td>"
                f"<td>{_fmt(mean.get(m))} ± {_fmt(std.get(m))}</td><td>{_fmt(med.get(m))}</td>"
                f"<td>{_fmt(pooled.get(m)) if m in OVERLAP else '—'}</td>"
                f"<td class='l'>{_esc(unit) if m in DISTANCE else '—'}</td>"
                f"<td>{_esc(undef.get(m, 0)) if m in DISTANCE else '—'}</td></tr>"
            )
    note = (
        "<p class='sub'>per-image: metric per image, then mean ± std (ddof=0) over images; pooled: TP/FP/FN "
        "summed over all pixels of the split first (row <i>mean</i>: average of the per-class pooled values)."
        " "
        "Undefined distances (exactly one of prediction / ground truth empty) are left out and counted.</p>"
    )
    return f"<table>{head}{''.join(rows)}</table>{note}"


def _volume_cell(g: dict[str, Any], m: str) -> str:
    mean, std = (g.get("mean_over_cases") or {}).get(m), (g.get("std_over_cases") or {}).get(m)
    if mean is None or "std_over_cases" not in g:  # undefined in every case, or the class-mean row
        return _fmt(mean)
    return f"{_fmt(mean)} ± {_fmt(std)}"


def _volume_table(s: dict[str, Any]) -> str:
    """VolumeMetrics.summary() as one row per evaluated class plus the class mean (volume_summary_markdown's
    table, with the case counts)."""
    unit = _esc(s.get("distance_unit", "voxel"))
    head = (
        "<tr><th class='l'>class</th><th>Dice mean ± std</th><th>IoU mean ± std</th>"
        f"<th>HD95 ({unit}) mean ± std</th><th>ASSD ({unit}) mean ± std</th><th>pooled Dice</th>"
        "<th>pooled IoU</th><th>cases</th><th>undefined HD95 / ASSD</th>"
        "<th>empty: both / reference / prediction</th></tr>"
    )
    rows = []
    classes = {k: v for k, v in (s.get("classes") or {}).items() if isinstance(v, dict)}
    for name, g in classes.items():
        pooled, undef = g.get("pooled") or {}, g.get("n_undefined") or {}
        empty = " / ".join(_esc(g.get(k, "n/a")) for k in ("n_both_empty", "n_gt_empty", "n_pred_empty"))
        rows.append(
            f"<tr><td class='l'>{_esc(name)}</td>"
            + "".join(f"<td>{_volume_cell(g, m)}</td>" for m in VOLUME_METRICS)
            + f"<td>{_fmt(pooled.get('dice'))}</td><td>{_fmt(pooled.get('iou'))}</td>"
            f"<td>{_esc(g.get('n_cases', 'n/a'))}</td>"
            f"<td>{_esc(undef.get('hd95', 'n/a'))} / {_esc(undef.get('assd', 'n/a'))}</td><td>{empty}</td></tr>"
        )
    g = s.get("mean")
    if isinstance(g, dict) and len(classes) > 1:
        pooled, undef = g.get("pooled") or {}, g.get("n_classes_undefined") or {}
        rows.append(
            "<tr class='mean'><td class='l'>mean</td>"
            + "".join(f"<td>{_volume_cell(g, m)}</td>" for m in VOLUME_METRICS)
            + f"<td>{_fmt(pooled.get('dice'))}</td><td>{_fmt(pooled.get('iou'))}</td>"
            f"<td>{_esc(s.get('n_cases', 'n/a'))}</td>"
            f"<td>{_esc(undef.get('hd95', 'n/a'))} / {_esc(undef.get('assd', 'n/a'))} classes left out</td><td>—</td></tr>"
        )
    note = (
        "<p class='sub'>mean ± std over cases: the metric of each volume and class, then mean ± std (ddof=0) "
        "over the cases where it is defined; row <i>mean</i>: the mean over classes of the per-class means "
        "(TransUNet / Synapse protocol; classes whose mean is undefined are left out and counted). pooled: "
        "TP/FP/FN summed over every voxel of every case, then one ratio (row <i>mean</i>: average over "
        f"classes). HD95 / ASSD in {unit} on 3D surfaces (6-neighbourhood), HD95 = max of the two directed "
        "95th percentiles (as MONAI). Both masks empty: Dice = IoU = 1; one empty: Dice = IoU = 0; in both "
        "cases the distances are undefined (n/a), left out of the means and counted.</p>"
    )
    return f"<table class='volume-metrics'>{head}{''.join(rows)}</table>{note}"


def _section_volume_split(split_dir: Path, s: dict[str, Any]) -> str:
    """A split evaluated on volumes (VolumeMetrics summary): headline, per-class table, histogram, cases."""
    name = split_dir.name
    out = [f"<div class='split'><h3 id='split-{_esc(name)}'>Split: {_esc(name)}</h3>"]
    n = s.get("n_cases")
    v = (s.get("headline") or {}).get("value")
    classes = ", ".join(str(c) for c in s.get("evaluated_classes") or [])
    over = f" {_esc(classes)}" if classes else ""
    out.append(
        f"<p><b>Dice (mean over {_esc(n)} volumes per class, then over the classes{over}; TransUNet / Synapse "
        f"protocol): <span class='dice'>{_fmt(v)}</span></b></p>"
    )
    ev = s.get("evaluation") if isinstance(s.get("evaluation"), dict) else {}
    line = f"<b>{_esc(n)} volumes</b>"
    if ev.get("mode_description"):
        line += f" · {_esc(ev['mode_description'])}"
    out.append(f"<p class='sub'>{line}</p>")
    extra = {
        k: v
        for k, v in s.items()
        if not isinstance(v, (dict, list))
        and k not in {"format", "std_ddof", "include_background", "n_cases", "headline"}
    }
    if extra:
        out.append("<p class='sub'>" + " · ".join(f"{_esc(k)}: {_esc(v)}" for k, v in extra.items()) + "</p>")
    items = [
        (k, v)
        for k, v in ev.items()
        if v is not None and not isinstance(v, (dict, list)) and k != "mode_description"
    ]
    if items:
        out.append(
            "<p class='sub'><b>evaluation</b> — "
            + " · ".join(f"{_esc(k)}: {_esc(v)}" for k, v in items)
            + "</p>"
        )
    out.append(_volume_table(s))
    per_case = _per_case_dice(split_dir)
    out.append(_volume_histogram(name, per_case))
    out.append(_section_cases(split_dir, s, per_case))
    out.append("</div>")
    return "".join(out)


def _section_split(split_dir: Path) -> str:
    name = split_dir.name
    s = _load_summary(split_dir)
    if s is not None and _is_volume(s):
        return _section_volume_split(split_dir, s)
    out = [f"<div class='split'><h3 id='split-{_esc(name)}'>Split: {_esc(name)}</h3>"]
    sd = _split_dice(split_dir)
    if sd is not None:
        out.append(f"<p><b>Dice ({_statistic(sd[2], sd[1])}): <span class='dice'>{sd[0]:.4f}</span></b></p>")
    if s is not None:
        extra = {
            k: v
            for k, v in s.items()
            if not isinstance(v, (dict, list))
            and k not in {"format", "hd95_definition", "std_ddof", "include_background"}
        }
        if extra:
            out.append(
                "<p class='sub'>" + " · ".join(f"{_esc(k)}: {_esc(v)}" for k, v in extra.items()) + "</p>"
            )
        ev = s.get("evaluation")
        if isinstance(ev, dict):
            # evaluate's provenance block (checkpoint, data, split, inference mode, ...)
            items = [(k, v) for k, v in ev.items() if v is not None and not isinstance(v, (dict, list))]
            if items:
                out.append(
                    "<p class='sub'><b>evaluation</b> — "
                    + " · ".join(f"{_esc(k)}: {_esc(v)}" for k, v in items)
                    + "</p>"
                )
        out.append(_summary_table(s))
    elif (split_dir / "summary.md").is_file():
        out.append(f"<pre>{_esc((split_dir / 'summary.md').read_text(errors='replace'))}</pre>")
    else:
        out.append(_missing("no summary.json / summary.md for this split"))
    d = _per_image_dice(split_dir)
    per_case = None
    if d and d[1]:
        out.append(
            _img(plot_dice_histogram(d[1], f"{name}: per-image Dice ({d[0]}, n={len(d[1])})"), "histogram")
        )
    elif s is None and (split_dir / "per_case.csv").is_file():
        # a volume split whose summary.json is missing (its summary.md is shown above)
        per_case = _per_case_dice(split_dir)
        out.append(_volume_histogram(name, per_case))
    out.append(_section_cases(split_dir, s, per_case))
    out.append("</div>")
    return "".join(out)


def _volume_histogram(name: str, per_case: dict[str, dict[str, float]]) -> str:
    means = list(_case_means(per_case).values())
    if not means:
        return ""
    title = f"{name}: per-case Dice (mean over classes, n={len(means)})"
    xlabel = "per-case Dice (mean over classes)"
    return _img(plot_dice_histogram(means, title, xlabel=xlabel, ylabel="cases"), "histogram")


def _legend(s: dict[str, Any] | None, ranking: str) -> str:
    """One colour chip per foreground class for prediction and ground truth, in the colours the thumbnails
    are drawn with (visualize.PRED_PALETTE / GT_PALETTE, cycled past their ends as overlay() does)."""
    names = (s or {}).get("class_names")
    if not (isinstance(names, list) and len(names) > 1):
        # no summary.json: the class names are unknown, say which colour is which class number
        return (
            "<p class='sub legend'><span style='background:#ff2828'></span>prediction (class 1)"
            "<span style='background:#00e63c'></span>ground truth outline (class 1) &nbsp;·&nbsp; further "
            f"classes: orange / magenta (prediction), cyan / blue (ground truth); {ranking}</p>"
        )
    from medurwkv.engine.visualize import GT_PALETTE, PRED_PALETTE, palette_hex

    def chips(palette: Any, what: str) -> str:
        return "".join(
            f"<span class='chip' style='background:{palette_hex(palette, c)}' "
            f"title='{_esc(what)}: {_esc(n)}'></span>{_esc(n)}"
            for c, n in enumerate(names)
            if c > 0  # background is never drawn
        )

    return (
        "<div class='sub legend'>"
        f"<div><b>prediction</b>{chips(PRED_PALETTE, 'prediction')}</div>"
        f"<div><b>ground truth</b>{chips(GT_PALETTE, 'ground truth')}</div>"
        "<div>outlines; the ground truth is drawn under the prediction, so where both coincide the prediction "
        f"colour shows; {ranking}</div></div>"
    )


def _section_cases(
    split_dir: Path, s: dict[str, Any] | None, per_case: dict[str, dict[str, float]] | None
) -> str:
    """Best / median / worst thumbnails with their legend; ``per_case`` (volumes): per_case.csv's Dice."""
    cases = _find_cases(split_dir / "cases")
    out = ["<h3>Best, median and worst cases</h3>"]
    if not cases:
        out.append(_missing("no overlay thumbnails (cases/best_*.png, median_*.png, worst_*.png)"))
        return "".join(out)
    if per_case is None:
        out.append(_legend(s, "ranked by per-image Dice"))
    else:
        out.append(
            _legend(
                s,
                "ranked by per-case Dice (mean over classes), each case shown at its busiest slice "
                "(the most ground-truth foreground along the slice axis)",
            )
        )
    out.append("<div class='cases'>")
    for kind, cid, png in cases:
        if per_case is None:
            row = _case_row(split_dir, cid)
            score = f" — Dice {_fmt(row)}" if row is not None else ""
            out.append(f"<figure>{_img(png, f'{kind} {cid}', 'case')}<figcaption><b>{kind}</b>: {_esc(cid)}")
            out.append(f"{_esc(score)}</figcaption></figure>")
            continue
        case, dice = _volume_case(per_case, cid)
        score = ""
        if dice:
            per_class = " · ".join(f"{_esc(c)} {_fmt(v)}" for c, v in dice.items())
            score = f" — Dice {_fmt(sum(dice.values()) / len(dice))} ({per_class})"
        out.append(
            f"<figure>{_img(png, f'{kind} case {case}', 'case')}<figcaption><b>{kind}</b>: case {_esc(case)}, "
            f"busiest slice{score}</figcaption></figure>"
        )
    out.append("</div>")
    return "".join(out)


def _volume_case(per_case: dict[str, dict[str, float]], safe_case_id: str) -> tuple[str, dict[str, float]]:
    """The case id and per-class Dice of a thumbnail, matched by its file-name-safe id (visualize.safe_id)."""
    from medurwkv.engine.visualize import safe_id

    for case, dice in per_case.items():
        if case == safe_case_id or safe_id(case) == safe_case_id:
            return case, dice
    return safe_case_id, {}


def _find_cases(cases_dir: Path) -> list[tuple[str, str, bytes]]:
    found = []
    if not cases_dir.is_dir():
        return found
    for kind in CASE_KINDS:
        for p in sorted(cases_dir.glob(f"{kind}_*.png")):
            found.append((kind, p.stem[len(kind) + 1 :], p.read_bytes()))
    return found


def _case_row(split_dir: Path, safe_case_id: str) -> float | None:
    """Dice of a case, matched by the file-name-safe id (visualize.safe_id) in per_image.csv."""
    from medurwkv.engine.visualize import safe_id

    found = _dice_rows(split_dir)
    if found is None:
        return None
    col, rows = found
    for r in rows:
        rid = str(r.get("id", ""))
        if rid == safe_case_id or safe_id(rid) == safe_case_id:
            try:
                return float(r[col])
            except (TypeError, ValueError):
                return None
    return None


def _section_pretrain(run: Path) -> str:
    """A ``medurwkv pretrain`` run folder (its config.yaml has ``mask_ratio``): the masked-pixel reconstruction
    loss per epoch (metrics.csv: epoch, loss, lr, images_seen, ...) and preview.png; "" for any other run."""
    try:
        import yaml

        cfg = yaml.safe_load((run / "config.yaml").read_text(errors="replace"))
    except Exception:  # no or broken config.yaml: not recognisably a pretrain run
        return ""
    if not isinstance(cfg, dict) or "mask_ratio" not in cfg:
        return ""
    out = ["<h2 id='pretraining'>Masked image pretraining</h2>"]
    cols = read_training_log(run / "metrics.csv") if (run / "metrics.csv").is_file() else {}
    loss = cols.get("loss", [])
    if not loss:
        out.append(_missing("metrics.csv has no epochs yet"))
    else:
        from matplotlib.figure import Figure

        facts = [
            ("epochs logged", str(len(loss))),
            ("first loss", _fmt(loss[0])),
            ("last loss", _fmt(loss[-1])),
        ]
        if cols.get("images_seen"):
            facts.append(("images seen", _fmt(cols["images_seen"][-1], 0)))
        t = [v for v in cols.get("epoch_time_s", []) if math.isfinite(v)]
        if t:
            facts.append(("pretraining time", f"{sum(t) / 60:.1f} min ({sum(t) / len(t):.1f} s/epoch)"))
        facts.append(("encoder.pt", "written" if (run / "encoder.pt").is_file() else "missing"))
        out.append("<table><tr>" + "".join(f"<th>{_esc(k)}</th>" for k, _ in facts) + "</tr><tr>")
        out.append("".join(f"<td>{_esc(v)}</td>" for _, v in facts) + "</tr></table>")
        x = cols.get("epoch") or list(range(1, len(loss) + 1))
        fig = Figure(figsize=(8.0, 3.0), layout="constrained")
        ax, ax_lr = fig.subplots(1, 2)
        ax.plot(x, loss, "-o", ms=3)
        ax.set(title="L1 loss on the masked pixels", xlabel="epoch")
        ax_lr.plot(x, cols.get("lr", [math.nan] * len(x)), "-", color="tab:purple")
        ax_lr.set(title="learning rate (last step of the epoch)", xlabel="epoch")
        for a in (ax, ax_lr):
            a.grid(alpha=0.3)
        out.append(_img(_figure_png(fig), "pretraining loss"))
    preview = run / "preview.png"
    if preview.is_file():
        out.append(_img(preview.read_bytes(), "reconstruction preview"))
        out.append(
            "<p class='sub'>rows: masked input (what the encoder sees) / reconstruction (masked patches predicted, "
            "visible pixels kept) / original; one column per fixed image, after the last epoch</p>"
        )
    else:
        out.append(_missing("no preview.png yet: written after the first epoch"))
    return "".join(out)


def _section_eval(run: Path) -> str:
    splits = find_splits(run)
    head = "<h2 id='evaluation'>Evaluation</h2>"
    if not splits:
        return head + _missing("not evaluated yet: run `medurwkv evaluate` to fill RUN_DIR/eval/<split>/")
    return head + "".join(_section_split(d) for d in splits)


def _headline_cards(run: Path) -> str:
    cards = []
    for i, d in enumerate(find_splits(run)):
        sd = _split_dice(d)
        if sd is None:
            continue
        if sd[2]:
            n = f", {sd[1]} volumes" if sd[1] is not None else ""
            what = f"mean over classes of the per-class mean{n}"
        else:
            n = f", {sd[1]} images" if sd[1] is not None else ""
            what = f"per-image mean{n}"
        cls = "card main" if i == 0 else "card"
        cards.append(
            f"<div class='{cls}'><div class='l'>Dice · {_esc(d.name)} ({what})</div>"
            f"<div class='v' id='dice-{_esc(d.name)}'>{sd[0]:.4f}</div></div>"
        )
    if not cards:
        h = headline_dice(run)
        if h is not None:
            cards.append(
                "<div class='card'><div class='l'>best validation Dice during training "
                f"(epoch {h['epoch']}); not evaluated yet</div>"
                f"<div class='v' id='dice-training'>{h['value']:.4f}</div></div>"
            )
        else:
            cards.append("<div class='card'><div class='l'>Dice</div><div class='v'>—</div></div>")
    return f"<div class='headline'>{''.join(cards)}</div>"


def _not_a_directory(run: Path) -> UserError:
    return UserError(f"expected a run directory, got {str(run)!r} which is not a directory")


def require_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path if it is a run folder (holds config.yaml, metrics.csv or eval/), else UserError."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise _not_a_directory(run)
    if not any((run / m).is_file() for m in RUN_MARKERS) and not (run / "eval").is_dir():
        raise UserError(
            f"expected a run directory of `medurwkv train` or `medurwkv evaluate` (with {', '.join(RUN_MARKERS)} "
            f"or eval/), got {str(run)!r} which holds none of them; pass the folder given as --out to train"
        )
    return run


def build_report(run_dir: str | Path, out: str | Path | None = None, *, title: str | None = None) -> Path:
    """Write a standalone HTML report of ``run_dir`` (default ``RUN_DIR/report.html``), return its path.

    Every part of the run is optional (a folder with nothing in it gives a page saying what is missing); only
    a ``run_dir`` that is not a directory raises :class:`~medurwkv.errors.UserError`.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise _not_a_directory(run)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = title or run.resolve().name
    # a `medurwkv pretrain` run has no segmentation metrics: its own section instead of those
    pretrain = _section_pretrain(run)
    sections = [pretrain] if pretrain else [_headline_cards(run), _section_eval(run), _section_training(run)]
    body = [
        f"<h1>medurwkv run report: {_esc(name)}</h1>",
        f"<div class='sub'>{_esc(run.resolve())} · generated {now} · medurwkv {_esc(__version__)}</div>",
        *sections,
        _section_config(run),
    ]
    doc = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(name)} — medurwkv report</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
    return atomic_write_text(Path(out) if out is not None else run / "report.html", doc)
