"""``medurwkv models`` and ``medurwkv benchmark``: the table, JSON, user errors (exit 2, one line) and a quick run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_testing import one_error_line

from medurwkv.cli import main
from medurwkv.engine.benchmark import BENCH_MODELS, benchmark_models, model_table
from medurwkv.errors import UserError
from medurwkv.models import list_models


def test_models_table_lists_every_matching_model(capsys):
    assert main(["models", "med_urwkv*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["name", "params", "pretrained"]
    names = [line.split()[0] for line in out[1:]]
    assert names == list_models("med_urwkv*") and "med_urwkv_t" in names
    row = next(line for line in out[1:] if line.split()[0] == "med_urwkv_t")
    assert row.split()[1].endswith("M")  # parameter count in millions, counted on the meta device


def test_models_json_matches_model_table(capsys):
    assert main(["models", "unet", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == model_table("unet")
    assert [r["name"] for r in rows] == ["unet"]
    assert set(rows[0]) == {"name", "params", "pretrained", "wkv_constants", "description"}
    assert rows[0]["params"] > 0


def test_models_json_with_no_match_is_an_empty_list(capsys):
    assert main(["models", "nomatch*", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_models_pattern_matching_nothing_is_a_user_error(capsys):
    assert main(["models", "nomatch*"]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    line = one_error_line(cap.err, "models")
    assert "'nomatch*'" in line and "medurwkv models" in line


def test_benchmark_quick_runs_and_writes_json(capsys, tmp_path):
    out_json = tmp_path / "rows.json"
    rc = main(
        [
            "benchmark",
            "--quick",
            "--models",
            "unet",
            "--sizes",
            "32",
            "--repeats",
            "1",
            "--json",
            str(out_json),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "| unet | 32² |" in out and f"wrote {out_json}" in out
    rows = json.loads(out_json.read_text())
    assert [(r["model"], r["size"]) for r in rows] == [("unet", 32)]
    assert rows[0]["params"] > 0 and rows[0]["gflops"] > 0 and rows[0]["latency_s"] > 0


def test_benchmark_unknown_model_is_a_user_error(capsys):
    assert main(["benchmark", "--quick", "--models", "nosuch", "--sizes", "32"]) == 2
    line = one_error_line(capsys.readouterr().err, "benchmark")
    assert "'nosuch'" in line and "medurwkv models" in line


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(sizes=[0]), "sizes in pixels >= 1"),
        (dict(sizes=[32], repeats=0), "repeats >= 1"),
        (dict(sizes=[32], threads=-1), "threads >= 1"),
        (dict(sizes=[32], max_mem_gb=0.0), "memory limit > 0"),
        (dict(sizes=[]), "at least one model and one size"),
    ],
)
def test_benchmark_models_rejects_bad_options_before_running(kwargs, expected):
    with pytest.raises(UserError, match=expected):
        benchmark_models(["unet"], quick=True, log=lambda s: None, **kwargs)


def test_benchmark_failed_measurement_is_a_row_and_exit_code_1(monkeypatch, capsys):
    # a (model, size) that fails is a measurement result, not a user error: its row says why, the exit code is 1
    import medurwkv.engine.benchmark as bench

    def failed(name, size, timeout, **kw):  # what the worker's crash (e.g. an OOM kill) comes back as
        return {"model": name, "size": size, "error": "out of memory"}

    monkeypatch.setattr(bench, "_measure_isolated", failed)
    assert main(["benchmark", "--models", "unet", "--sizes", "32"]) == 1
    cap = capsys.readouterr()
    assert "| unet | 32² | | | out of memory |" in cap.out
    assert "unet 32: ERROR out of memory" in cap.out


def test_bench_models_default_list_is_registered():
    assert set(BENCH_MODELS) <= set(list_models())


def test_models_subprocess_user_error_and_table():
    ok = subprocess.run(
        [sys.executable, "-m", "medurwkv.cli", "models", "unet"], capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1].split()[0] == "unet"
    bad = subprocess.run(
        [sys.executable, "-m", "medurwkv.cli", "models", "nomatch*"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    one_error_line(bad.stderr, "models")


def test_benchmark_worker_entry_point_prints_one_json_row():
    # benchmark_models runs every (model, size) as `python -m medurwkv.engine.benchmark --bench-worker JSON`
    from medurwkv.models import QUICK_OVERRIDES

    job = json.dumps({"name": "unet", "size": 32, "overrides": QUICK_OVERRIDES["unet"], "repeats": 1})
    out = subprocess.run(
        [sys.executable, "-m", "medurwkv.engine.benchmark", "--bench-worker", job],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["model"] == "unet" and row["size"] == 32 and row["peak_rss_gb"] > 0


def test_every_command_tunes_malloc_first_and_a_bad_setting_is_one_line(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("medurwkv.cli.tune_malloc", lambda: calls.append(1))
    assert main(["models", "unet"]) == 0
    assert calls == [1]  # once, before the command runs (utils/malloc.py)
    monkeypatch.undo()
    monkeypatch.setenv("MEDURWKV_MALLOC", "fast")
    assert main(["models", "unet"]) == 2
    line = one_error_line(capsys.readouterr().err, "models")
    assert "expected MEDURWKV_MALLOC=tuned or default, got 'fast'" in line
