"""Training engine (engine/train.py, engine/config.py) on tiny synthetic data and tiny models (CPU, 1 thread).

The resume test kills a training subprocess with SIGKILL in the middle of epoch 2 and checks that resuming gives
bit-identical weights, optimizer state and metrics to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_testing import make_disks, read_metrics
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook

from medurwkv.cli.train import register
from medurwkv.engine.checkpoint import load_checkpoint, load_model
from medurwkv.engine.config import TrainConfig, load_yaml_config, resolve_config
from medurwkv.engine.train import METRIC_COLUMNS, PolyWarmup, TrainingDiverged, fit
from medurwkv.models import QUICK_OVERRIDES

TINY_UNET = {"base_channels": 4, "depth": 3}
TINY_URWKV = QUICK_OVERRIDES["med_urwkv_t"]  # the tiny Med-URWKV-T shared by tests and --quick
# Fast, deterministic, quiet settings shared by the tests (tiny images, no workers, no final evaluation).
FAST = dict(
    model="unet",
    model_kwargs=TINY_UNET,
    img_size=32,
    batch_size=4,
    num_workers=0,
    progress=False,
    eval_test=False,
    tensorboard=False,
    deterministic=True,
)


@pytest.fixture
def disks(tmp_path: Path) -> Path:
    return make_disks(tmp_path / "disks")


# ------------------------------------------------------------------------------------------- schedule & config


def test_poly_warmup_schedule():
    f = PolyWarmup(total_steps=100, warmup_steps=10, power=0.9)
    # linear warm-up: step s uses (s + 1) / 10 of the poly value
    for s in range(10):
        assert f(s) == pytest.approx((s + 1) / 10 * (1 - s / 100) ** 0.9)
    vals = [f(s) for s in range(10, 100)]
    assert all(a > b for a, b in zip(vals, vals[1:]))  # strictly decreasing after warm-up
    assert f(99) == pytest.approx(0.01**0.9) and f(99) > 0  # the last step still learns
    assert PolyWarmup(50, 0, 0.9)(0) == 1.0


def test_config_yaml_and_cli_precedence(tmp_path: Path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 7\nlr: 0.01\nimg_size: [64, 96]\nmodel_kwargs: {depth: 2}\ngrad_clip: null\n")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["train", "--config", str(y), "--lr", "0.02", "--no-eval-test", "--pretrained", "True", "--data", "d"]
    )
    given = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    # flags not given on the command line must not mask YAML values
    assert set(given) == {"lr", "eval_test", "pretrained", "data"}
    cfg = resolve_config(args.config, **given)
    assert (cfg.epochs, cfg.lr, cfg.img_hw, cfg.grad_clip) == (7, 0.02, (64, 96), None)
    assert cfg.model_kwargs == {"depth": 2} and cfg.eval_test is False and cfg.pretrained is True
    assert cfg.batch_size == 8 and cfg.weight_decay == 1e-4 and cfg.freeze_encoder_epochs == 5  # defaults
    a2 = parser.parse_args(
        ["train", "--img-size", "48,64", "--grad-clip", "none", "--model-kwargs", '{"a": 1}']
    )
    c2 = resolve_config(None, **{k: v for k, v in vars(a2).items() if k in TrainConfig.__dataclass_fields__})
    assert c2.img_size == [48, 64] and c2.grad_clip is None and c2.model_kwargs == {"a": 1}

    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        load_yaml_config(bad)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_example_configs_are_valid():
    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert configs, "expected example configs in configs/"
    for p in configs:
        cfg = resolve_config(p)
        assert isinstance(cfg, TrainConfig)


# ------------------------------------------------------------------------------------------- a full small run


def test_fit_writes_run_folder(disks: Path, tmp_path: Path):
    out = tmp_path / "run"
    r = fit(
        data=disks,
        out=out,
        epochs=2,
        tensorboard=True,
        **{k: v for k, v in FAST.items() if k != "tensorboard"},
    )
    for name in ("config.yaml", "best.pt", "last.pt", "metrics.csv", "train.log"):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir()), "expected TensorBoard event files"
    rows = read_metrics(out / "metrics.csv")
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("train_loss", "val_loss", "val_dice", "lr"))

    ck = load_checkpoint(out / "last.pt")
    assert ck["model"] == {"name": "unet", "kwargs": {"in_channels": 1, "num_classes": 2, **TINY_UNET}}
    assert ck["preprocess"] == {
        "in_channels": 1,
        "img_size": [32, 32],
        "normalize": "per_image",
        "num_classes": 2,
        "class_names": ["background", "foreground"],
    }
    assert ck["epoch"] == 2 and ck["global_step"] == 2 * math.ceil(len(ck["split"]["train"]) / 4)
    for key in (
        "optimizer",
        "scheduler",
        "rng",
        "train_config",
        "metrics",
        "best_metric",
        "version",
        "history",
    ):
        assert key in ck, key
    assert set(ck["rng"]) >= {"python", "numpy", "torch"}
    assert ck["train_config"]["epochs"] == 2 and ck["train_config"]["data"] == str(disks.resolve())
    # best.pt is the epoch with the highest val Dice in metrics.csv
    best = load_checkpoint(out / "best.pt")
    dices = [float(r["val_dice"]) for r in rows]
    assert best["epoch"] == 1 + int(np.argmax(dices)) and best["best_metric"] == pytest.approx(max(dices))
    assert r.best_epoch == best["epoch"] and r.epochs_completed == 2
    # the checkpoint rebuilds the model on its own
    model, _ = load_model(out / "best.pt")
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    # the split was created in the (writable) dataset folder and the saved config round-trips
    assert (disks / "splits.json").is_file() and "created and saved" in (out / "train.log").read_text()
    assert resolve_config(out / "config.yaml").in_channels == 1
    # a second run into the same folder is refused (it would overwrite the run)
    with pytest.raises(FileExistsError, match="--resume"):
        fit(data=disks, out=out, epochs=2, **FAST)


def test_val_dice_matches_metrics_module(disks: Path, tmp_path: Path):
    """The per-image foreground Dice logged for validation agrees with engine/metrics.py at the training size."""
    from medurwkv.data.dataset import SegmentationDataset
    from medurwkv.data.index import discover
    from medurwkv.engine.metrics import MetricAccumulator

    out = tmp_path / "run"
    fit(data=disks, out=out, epochs=1, val_fraction=0.25, **FAST)
    ck = load_checkpoint(out / "last.pt")
    model, _ = load_model(out / "last.pt")
    ds = SegmentationDataset(
        discover(disks), ck["split"]["val"], train=False, img_size=32, in_channels=1, normalize="per_image"
    )
    acc = MetricAccumulator(2)
    with torch.no_grad():
        for item in ds:
            pred = model(item["image"][None]).argmax(1)[0].numpy()
            acc.add(item["id"], pred, item["mask"].numpy())
    expected = acc.summary()["headline"]["value"]
    assert ck["metrics"]["val_dice"] == pytest.approx(expected, abs=1e-12)
    assert float(read_metrics(out / "metrics.csv")[0]["val_dice"]) == pytest.approx(expected, abs=1e-7)


def test_data_check_errors_refuse_training(disks: Path, tmp_path: Path):
    from medurwkv.data.check import DatasetCheckError

    Image.fromarray(np.zeros((10, 12), np.uint8)).save(disks / "masks" / "case003.png")  # wrong size
    with pytest.raises(DatasetCheckError, match="case003"):
        fit(data=disks, out=tmp_path / "run", epochs=1, **FAST)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_read_only_dataset_split_goes_to_run_dir(disks: Path, tmp_path: Path):
    out = tmp_path / "run"
    os.chmod(disks, 0o555)
    try:
        fit(data=disks, out=out, epochs=1, max_train_batches=1, **FAST)
    finally:
        os.chmod(disks, 0o755)
    assert not (disks / "splits.json").exists()
    assert (out / "splits.json").is_file()
    log = (out / "train.log").read_text()
    assert "read-only" in log and str(out / "splits.json") in log
    assert load_checkpoint(out / "last.pt")["split"]["path"] == str(out / "splits.json")


def test_nan_loss_stops_with_epoch_and_batch_ids(disks: Path, tmp_path: Path):
    from medurwkv import create_model

    model = create_model("unet", in_channels=1, num_classes=2, **TINY_UNET)
    calls = {"n": 0}

    def poison(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == 2:  # second training batch of epoch 1
                return output * float("nan")
        return output

    model.register_forward_hook(poison)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as ei:
        fit(data=disks, out=out, epochs=2, net=model, **{k: v for k, v in FAST.items() if k != "model"})
    msg = str(ei.value)
    assert "epoch 1/2" in msg and "step 2 " in msg
    ids = msg.split("image ids [")[1].split("]")[0].split(", ")
    train_ids = json.loads((disks / "splits.json").read_text())["train"]
    assert len(ids) == 4 and len(set(ids)) == 4 and set(ids) <= set(train_ids)
    assert not (out / "last.pt").exists()  # nothing of the diverged epoch was saved


# ------------------------------------------------------------------------------------------- freezing policy


def _fake_pretrained(path: Path) -> Path:
    """An official-layout checkpoint (``state_dict`` with ``backbone.*`` keys) for the tiny Med-URWKV encoder."""
    from medurwkv import create_model

    torch.manual_seed(123)
    donor = create_model("med_urwkv_t", in_channels=1, num_classes=2, **TINY_URWKV)
    sd = {f"backbone.{k}": v.clone() for k, v in donor.pretrained_target().state_dict().items()}
    torch.save({"state_dict": sd, "meta": {}}, path)
    return path


def _record_steps():
    """Global optimizer post-step hook: per step, a copy of the encoder/decoder groups' params and lrs."""
    steps: list[dict] = []

    def hook(opt, args, kwargs):
        rec = {}
        for g in opt.param_groups:
            part = "encoder" if g.get("name", "").startswith("encoder") else "decoder"
            rec.setdefault(part, []).extend(p.detach().clone() for p in g["params"])
            rec[f"{part}_lr"] = g["lr"]
        steps.append(rec)

    handle = register_optimizer_step_post_hook(hook)
    return steps, handle


def test_pretrained_encoder_frozen_then_unfrozen(disks: Path, tmp_path: Path):
    from medurwkv import create_model

    src = _fake_pretrained(tmp_path / "fake_official.pth")
    # the same model loaded outside fit gives the expected encoder parameters, in param-group order
    ref = create_model("med_urwkv_t", pretrained=str(src), in_channels=1, num_classes=2, **TINY_URWKV)
    groups = ref.param_groups(3e-4, encoder_lr_scale=0.1, weight_decay=1e-4)
    pretrained_params = [p.detach() for g in groups if g["name"].startswith("encoder") for p in g["params"]]
    steps, handle = _record_steps()
    try:
        fit(
            data=disks,
            out=tmp_path / "run",
            epochs=2,
            pretrained=str(src),
            freeze_encoder_epochs=1,
            encoder_lr_scale=0.1,
            max_train_batches=1,
            max_val_batches=1,
            **{**FAST, "model": "med_urwkv_t", "model_kwargs": TINY_URWKV},
        )
    finally:
        handle.remove()
    assert len(steps) == 2 and len(steps[0]["encoder"]) == len(pretrained_params)
    # epoch 1 (frozen): every encoder parameter still equals the pretrained file; the decoder moved
    assert all(torch.equal(a, b) for a, b in zip(steps[0]["encoder"], pretrained_params))
    assert not all(torch.equal(a, b) for a, b in zip(steps[1]["decoder"], steps[0]["decoder"]))
    # epoch 2 (unfrozen): the encoder trains, at lr * encoder_lr_scale
    assert not all(torch.equal(a, b) for a, b in zip(steps[1]["encoder"], steps[0]["encoder"]))
    assert steps[1]["encoder_lr"] == pytest.approx(0.1 * steps[1]["decoder_lr"])
    run = tmp_path / "run"
    assert [r["encoder_frozen"] for r in read_metrics(run / "metrics.csv")] == ["1", "0"]
    log = (run / "train.log").read_text()
    assert "frozen for epochs 1-1" in log and "unfrozen from epoch 2" in log
    ck = load_checkpoint(run / "last.pt")
    assert ck["preprocess"]["normalize"] == "imagenet"  # default for a pretrained encoder


def test_from_scratch_freezes_nothing(disks: Path, tmp_path: Path):
    steps, handle = _record_steps()
    try:
        fit(
            data=disks,
            out=tmp_path / "run",
            epochs=1,
            pretrained=False,
            freeze_encoder_epochs=5,
            max_train_batches=2,
            max_val_batches=1,
            **{**FAST, "model": "med_urwkv_t", "model_kwargs": TINY_URWKV},
        )
    finally:
        handle.remove()
    assert not all(torch.equal(a, b) for a, b in zip(steps[1]["encoder"], steps[0]["encoder"]))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "from scratch" in log and "nothing is frozen" in log
    assert read_metrics(tmp_path / "run" / "metrics.csv")[0]["encoder_frozen"] == "0"


def test_pretrained_path_for_a_model_without_pretrained_encoder(disks: Path, tmp_path: Path):
    """--pretrained PATH on the U-Net (no official release, pretrained_target() is None): its own weights load,
    nothing is frozen, and the log says why."""
    from medurwkv import create_model

    torch.manual_seed(5)
    own = create_model("unet", in_channels=1, num_classes=2, **TINY_UNET).state_dict()
    src = tmp_path / "unet_own.pt"
    torch.save({"state_dict": own}, src)
    # lr 1e-12: AdamW moves each weight by ~1e-12, so the trained convolutions still equal the file
    fit(
        data=disks, out=tmp_path / "run", epochs=1, pretrained=str(src), lr=1e-12, max_train_batches=1, **FAST
    )
    run = tmp_path / "run"
    log = (run / "train.log").read_text()
    assert "no pretrained encoder part, nothing is frozen" in log
    assert read_metrics(run / "metrics.csv")[0]["encoder_frozen"] == "0"
    trained = load_checkpoint(run / "last.pt")["state_dict"]
    convs = [k for k, v in own.items() if v.ndim == 4]
    assert convs and all(torch.allclose(trained[k], own[k], atol=1e-9) for k in convs)


# ------------------------------------------------------------------------------------------- kill and resume

KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    torch.set_num_threads(1)
    from medurwkv.engine.train import fit

    cfg, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])
    n = {"steps": 0}

    def hook(opt, args, kwargs):
        n["steps"] += 1
        if n["steps"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: like a crash or an OOM kill

    register_optimizer_step_post_hook(hook)
    fit(cfg)
    """
)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(disks: Path, tmp_path: Path):
    # 11 train images, batch 4 -> 3 steps per epoch; augmentation on (seeded per sample), TensorBoard on
    common = {**FAST, "data": str(disks), "epochs": 3, "tensorboard": True, "augment": True}
    ref = fit({**common, "out": str(tmp_path / "ref")})

    run = tmp_path / "killed"
    script = tmp_path / "kill_run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps({**common, "out": str(run)}), "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed = load_checkpoint(run / "last.pt")
    assert killed["epoch"] == 1 and killed["global_step"] == 3  # killed during epoch 2 (step 5 of 9)
    assert len(read_metrics(run / "metrics.csv")) == 1

    res = fit(resume=run, progress=False)
    assert res.epochs_completed == 3
    a, b = load_checkpoint(ref.last_checkpoint), load_checkpoint(run / "last.pt")
    assert a["global_step"] == b["global_step"] == 9
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k  # bit-identical weights
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), (pid, k)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    ra, rb = read_metrics(tmp_path / "ref" / "metrics.csv"), read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rb] == ["1", "2", "3"]  # continued, no duplicated or missing rows
    for x, y in zip(ra, rb):
        for k in ("epoch", "global_step", "train_loss", "val_loss", "val_dice", "lr", "encoder_frozen"):
            assert x[k] == y[k], (k, x, y)
    assert torch.equal(
        load_checkpoint(ref.best_checkpoint)["state_dict"]["head.weight"],
        load_checkpoint(run / "best.pt")["state_dict"]["head.weight"],
    )
    assert "resume: continuing after epoch 1/3" in (run / "train.log").read_text()
    # resuming a finished run trains nothing; a changed option that alters results is refused
    assert fit(resume=run, progress=False).epochs_completed == 3
    with pytest.raises(ValueError, match="lr"):
        fit(resume=run, lr=1.0)


def test_docs_describe_every_option():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    missing = [f for f in TrainConfig.__dataclass_fields__ if f"`--{f.replace('_', '-')}`" not in doc]
    assert not missing, f"options missing from docs/training.md: {missing}"


def test_pooled_validation_dice_counts_voxels_not_slices():
    """Volume runs pick best.pt by Dice pooled over the validation pixels: a model predicting background
    everywhere scores ~1 per slice on mostly empty slices, but 0 pooled."""
    from medurwkv import create_model
    from medurwkv.engine.distributed import DistInfo
    from medurwkv.engine.train_loop import build_trainer

    cfg = TrainConfig(model="unet", model_kwargs={"base_channels": 4, "depth": 2})
    model = create_model("unet", in_channels=1, num_classes=3, base_channels=4, depth=2)
    trainer = build_trainer(cfg, model, 1, torch.device("cpu"), DistInfo(), lambda _: None)
    # 4 slices of 8x8: three empty, one holding class 1 (4 px) and class 2 (2 px)
    y = torch.zeros(4, 8, 8, dtype=torch.int64)
    y[3, :2, :2] = 1
    y[3, 5, 5:7] = 2
    pred = torch.zeros_like(y)
    pred[3, :2, :1] = 1  # 2 of the 4 class-1 pixels, nothing else
    pred[0, 7, 7] = 2  # one false class-2 pixel on an empty slice

    def predicting(labels: torch.Tensor):
        def forward(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 10.0  # (B, K, H, W)

        return forward

    model.forward = predicting(pred)  # type: ignore[method-assign]
    loader = [{"image": torch.zeros(4, 1, 8, 8), "mask": y}]
    _, per_slice = trainer.validate(loader)
    _, pooled = trainer.validate(loader, pooled=True)
    # pooled: class 1 2*2 / (2*2 + 0 + 2) = 2/3; class 2: tp 0, fp 1, fn 2 -> 0; mean 1/3
    assert pooled == pytest.approx(1 / 3)
    assert per_slice > pooled  # the empty slices predicted empty count as 1 per slice


def test_resume_rebuilds_the_architecture_saved_in_the_checkpoint():
    """A run begun before a registry default changed must continue with the model it started with: when
    resuming, the checkpoint's model spec wins over ``config.yaml``'s name + today's defaults."""
    from types import SimpleNamespace

    from medurwkv.engine.distributed import DistInfo
    from medurwkv.engine.train_loop import build_model
    from medurwkv.models import create_model

    data = SimpleNamespace(in_channels=1, num_classes=2)
    cfg = TrainConfig(model="unet", model_kwargs=TINY_UNET, pretrained=False)
    started = create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)  # "old default"
    ckpt = {"model": started.model_spec, "state_dict": started.state_dict()}
    resumed = build_model(cfg, data, ckpt, DistInfo())
    assert resumed.model_spec == started.model_spec
    resumed.load_state_dict(ckpt["state_dict"], strict=True)  # the saved weights fit the rebuilt model
    fresh = build_model(cfg, data, None, DistInfo())  # a new run follows its config
    assert fresh.model_spec["kwargs"]["depth"] == 3
