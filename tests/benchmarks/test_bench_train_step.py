"""``benchmarks/bench_train_step.py``: the quick mode end to end (one subprocess per model), and its parsing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import BENCHMARKS, load_benchmark

from medurwkv.utils.malloc import is_glibc

SCRIPT = BENCHMARKS / "bench_train_step.py"


def _table_rows(stdout: str) -> dict[str, list[str]]:
    """The Markdown table's data rows, by their first cell."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.mark.slow
def test_quick_mode_measures_each_model_against_the_baseline(tmp_path: Path) -> None:
    out_json = tmp_path / "rows.json"
    # a variant of the baseline with a keyword override: its kwargs must reach the worker
    variant = json.dumps({"model": "unet", "kwargs": {"base_channels": 4}})
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--models",
        "unet",
        "med_urwkv_t",
        "--baseline",
        "unet",
        "--config",
        f"thin={variant}",
        "--threads",
        "1",
        "--json",
        str(out_json),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "load average (1/5/15 min) at start" in proc.stdout
    assert "load average (1/5/15 min) at end" in proc.stdout

    rows = _table_rows(proc.stdout)
    assert set(rows) == {"unet", "med_urwkv_t", "thin"}
    numeric = [
        "params (M)",
        "step s (median)",
        "step s (min)",
        "step x unet",
        "img/s",
        "peak RSS (GB)",
        "RSS x unet",
        "latency 64² (ms)",
        "latency 128² (ms)",
        "growth 128/64",
    ]
    for label, row in rows.items():
        for col in numeric:
            v = float(row[col])
            assert math.isfinite(v) and v > 0, (label, col, row[col])
        assert row["targets"].startswith(("PASS", "FAIL")), row
    assert rows["unet"]["step x unet"] == "1.00"
    assert rows["unet"]["RSS x unet"] == "1.00"

    data = json.loads(out_json.read_text())
    by_label = {r["label"]: r for r in data["rows"]}
    assert data["meta"]["quick"] and data["meta"]["baseline"] == "unet"
    assert data["meta"]["malloc"] == "tuned"  # the default: as the medurwkv command runs
    assert by_label["thin"]["kwargs"]["base_channels"] == 4
    assert by_label["thin"]["params"] < by_label["unet"]["params"]
    for r in data["rows"]:
        assert r["threads"] == 1
        # applied wherever the C library is glibc (utils/malloc.py); CI and this machine are glibc Linux
        assert r["malloc_tuned"] is is_glibc()
        assert len(r["step_times_s"]) == 1  # quick: one timed step
        assert r["peak_rss_gb"] >= r["import_rss_gb"] > 0


def test_parse_config_and_its_mistakes() -> None:
    mod = load_benchmark("bench_train_step")
    name, model, kwargs = mod.parse_config(
        'halve={"model": "med_urwkv_t", "kwargs": {"decoder_dims": [48, 96]}}'
    )
    assert (name, model, kwargs) == ("halve", "med_urwkv_t", {"decoder_dims": [48, 96]})
    assert mod.parse_config('plain={"model": "unet"}') == ("plain", "unet", {})
    for bad in ('{"model": "unet"}', "x=not json", 'x={"kwargs": {}}', 'x={"model": "unet", "extra": 1}'):
        with pytest.raises(ValueError, match="expected"):
            mod.parse_config(bad)


def test_ratios_and_verdicts() -> None:
    mod = load_benchmark("bench_train_step")

    def row(label: str, step: float, rss: float, growth: float) -> dict:
        return {"label": label, "step_median_s": step, "peak_rss_gb": rss, "latency_growth": growth}

    rows = [row("base", 2.0, 1.0, 4.0), row("ok", 6.0, 2.0, 4.1), row("slow", 10.0, 3.0, 5.0)]
    rows.append({"label": "broken", "model": "unet", "error": "boom"})
    mod.add_ratios(rows, "base", dict(mod.DEFAULT_TARGETS))
    assert (rows[0]["step_ratio"], rows[0]["rss_ratio"], rows[0]["verdict"]) == (1.0, 1.0, "PASS")
    assert rows[1]["step_ratio"] == 3.0 and rows[1]["verdict"] == "PASS"
    assert rows[2]["verdict"] == "FAIL (step 5.00 > 4; RSS 3.00 > 2.5; growth 5.00 > 4.2)"
    assert rows[3]["verdict"] == "ERROR"
    # a disabled target (None) is not checked
    mod.add_ratios(rows, "base", {"max_step_ratio": None, "max_rss_ratio": None, "max_latency_growth": None})
    assert rows[2]["verdict"] == "PASS"
