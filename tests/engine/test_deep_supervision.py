"""Training with deep supervision: the trainer scores the auxiliary heads of a model that has them."""

from __future__ import annotations

from pathlib import Path

import torch
from engine_testing import make_disks

from medurwkv.engine.checkpoint import load_model
from medurwkv.engine.train import fit
from medurwkv.models import QUICK_OVERRIDES, create_model


def test_auxiliary_heads_train_and_are_saved(tmp_path: Path):
    kw = {
        **QUICK_OVERRIDES["med_urwkv_t"],
        "decoder_width_mults": [0.25, 0.5, 1, 2],
        "deep_supervision": True,
    }
    net = create_model("med_urwkv_t", in_channels=1, num_classes=2, **kw)
    before = {k: v.clone() for k, v in net.aux_heads.state_dict().items()}
    calls = []
    net.aux_heads[0].register_forward_hook(lambda *a: calls.append(1))
    r = fit(
        data=make_disks(tmp_path / "disks"),
        out=tmp_path / "run",
        net=net,
        pretrained=False,
        img_size=32,
        batch_size=4,
        epochs=1,
        max_train_batches=2,
        num_workers=0,
        progress=False,
        eval_test=False,
        tensorboard=False,
    )
    assert len(calls) == 2  # one per training step; validation uses the main head only
    after = load_model(r.last_checkpoint)[0].aux_heads.state_dict()
    assert set(after) == set(before)
    assert all(not torch.equal(before[k], after[k]) for k in before), "an auxiliary head did not train"
