"""``medurwkv.utils.tune_malloc``: when it applies, and that it stops large buffers from being faulted in anew."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medurwkv.errors import UserError
from medurwkv.utils import malloc, tune_malloc

GLIBC = malloc.is_glibc()

# A child process allocates and frees a 64 MiB tensor twelve times and reports the minor page faults of the
# last nine. Untuned, glibc serves each one with a fresh mmap (above its 32 MiB ceiling), so every round faults in
# all 16384 pages of 4 KiB again; tuned, the freed block is reused from the heap and faults almost nothing.
_CHILD = """
import json, resource, sys
import torch
from medurwkv.utils import tune_malloc
applied = tune_malloc() if sys.argv[1] == "tuned" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # 64 MiB of float32; the first rounds may still grow the heap
    x = torch.ones(16 * 2**20)
    del x
before = faults()
for _ in range(9):
    x = torch.ones(16 * 2**20)
    del x
print(json.dumps({"applied": applied, "faults_per_round": (faults() - before) / 9}))
"""


def _faults(mode: str) -> dict:
    # the child must not inherit a setting that would turn the tuning off
    env = {k: v for k, v in os.environ.items() if k not in (*malloc._USER_TUNING, malloc.MALLOC_ENV)}
    cmd = [sys.executable, "-c", _CHILD, mode]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere tune_malloc is a documented no-op")
def test_tuned_malloc_reuses_large_freed_buffers() -> None:
    default, tuned = _faults("default"), _faults("tuned")
    assert default["applied"] is False and tuned["applied"] is True
    pages = 64 * 2**20 / 4096
    assert default["faults_per_round"] > 0.5 * pages, default  # glibc's own: the whole buffer again
    assert tuned["faults_per_round"] < 0.05 * pages, tuned


def test_env_and_user_tuning_turn_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(malloc.MALLOC_ENV, "default")
    assert tune_malloc() is False
    monkeypatch.delenv(malloc.MALLOC_ENV)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's own glibc setting wins
    assert tune_malloc() is False
    monkeypatch.setenv(malloc.MALLOC_ENV, "fast")
    with pytest.raises(UserError, match="expected MEDURWKV_MALLOC=tuned or default, got 'fast'"):
        tune_malloc()


def test_thresholds_must_fit_a_c_int(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in (*malloc._USER_TUNING, malloc.MALLOC_ENV):
        monkeypatch.delenv(k, raising=False)
    if not GLIBC:
        assert tune_malloc() is False
        return
    with pytest.raises(ValueError, match="expected a threshold in 1..2"):
        tune_malloc(mmap_threshold=2**31)
    assert tune_malloc() is True  # and again: idempotent
    assert tune_malloc() is True
