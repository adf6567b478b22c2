"""DistributedDataParallel on CPU: ``torchrun --nproc_per_node 2`` (gloo) vs one process with the same global batch.

BatchNorm makes a DDP run differ from a single process (each process normalises over its own half batch, and
SyncBatchNorm needs CUDA). The test therefore trains the tiny Med-URWKV-T with a *pretrained, frozen* encoder for
the first two epochs: a frozen encoder keeps its BatchNorms in eval mode, and the decoder only has LayerNorms, so
the forward pass does not depend on how the batch is split (stochastic depth, which draws random numbers per
process, is switched off). Those epochs must match the single-process run to
1e-5 relative; the third epoch (encoder unfrozen, per-process BatchNorm statistics) only loosely (5 %).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_testing import make_disks, read_metrics

from medurwkv.engine.checkpoint import load_checkpoint
from medurwkv.engine.train import fit
from medurwkv.models import QUICK_OVERRIDES

_QUICK = QUICK_OVERRIDES["med_urwkv_t"]
TINY_URWKV = {
    **_QUICK,
    # stochastic depth draws from each process's own RNG stream: off, so that both runs drop nothing
    "encoder_overrides": {**_QUICK["encoder_overrides"], "drop_path_rate": 0.0},
}


@pytest.mark.slow
def test_torchrun_two_processes_matches_single_process(tmp_path: Path):
    from medurwkv import create_model

    data = make_disks(tmp_path / "disks")
    torch.manual_seed(7)
    donor = create_model("med_urwkv_t", in_channels=1, num_classes=2, **TINY_URWKV)
    weights = tmp_path / "encoder.pth"
    torch.save(
        {"state_dict": {f"backbone.{k}": v for k, v in donor.pretrained_target().state_dict().items()}},
        weights,
    )
    opts = dict(
        model="med_urwkv_t",
        model_kwargs=TINY_URWKV,
        pretrained=str(weights),
        freeze_encoder_epochs=2,
        epochs=3,
        batch_size=4,  # global: 4 in one process, 2 + 2 under torchrun
        img_size=32,
        limit=8,  # 8 training images: divisible by 2 processes, so DistributedSampler adds no padding
        num_workers=0,
        deterministic=True,
        eval_test=False,
        progress=False,
    )
    single = fit(data=data, out=tmp_path / "single", tensorboard=False, **opts)

    flags = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            flags.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            flags += [flag, json.dumps(v) if isinstance(v, dict) else str(v)]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "medurwkv.cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "ddp"),
        *flags,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run = tmp_path / "ddp"
    log = (run / "train.log").read_text()
    assert "x 2 processes (gloo)" in log and "own BatchNorm statistics" in log
    assert log.count("training run") == 1  # only rank 0 logs
    assert "unfrozen from epoch 3" in log
    assert len(list((run / "tb").glob("events.*"))) == 1  # only rank 0 writes TensorBoard events
    ck = load_checkpoint(run / "last.pt")
    assert ck["world_size"] == 2 and ck["global_step"] == single.history[-1]["global_step"] == 6

    rows_s = read_metrics(tmp_path / "single" / "metrics.csv")
    rows_d = read_metrics(run / "metrics.csv")
    assert len(rows_s) == len(rows_d) == 3
    for rs, rd in zip(rows_s, rows_d):
        assert rs["lr"] == rd["lr"] and rs["global_step"] == rd["global_step"]
    worst = 0.0
    for rs, rd in zip(rows_s[:2], rows_d[:2]):  # frozen encoder: batch-split independent
        for k in ("train_loss", "val_loss", "val_dice"):
            a, b = float(rs[k]), float(rd[k])
            worst = max(worst, abs(a - b) / max(abs(a), 1e-12))
            assert b == pytest.approx(a, rel=1e-5, abs=1e-7), (k, rs, rd)
    unfrozen = {}
    for k in ("train_loss", "val_loss"):  # unfrozen: per-process BatchNorm statistics
        a, b = float(rows_s[2][k]), float(rows_d[2][k])
        unfrozen[k] = abs(a - b) / abs(a)
        assert b == pytest.approx(a, rel=0.05), k
    print(f"relative difference: frozen epochs at most {worst:.2e}; unfrozen epoch {unfrozen}")
