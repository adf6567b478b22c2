"""Masked-image pretraining (engine/pretrain.py, engine/pretrain_data.py) on real shared images, tiny models, CPU.

One 10-epoch run of a tiny Med-URWKV-T on 8 HC18 images (module fixture) is shared by the tests of the run folder,
encoder.pt, the preview, the report and fine-tuning; the resume test kills a run with SIGKILL after its first epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from engine_testing import read_metrics
from PIL import Image

from medurwkv.engine.checkpoint import load_checkpoint
from medurwkv.engine.pretrain import (
    ENCODER_FORMAT,
    METRIC_COLUMNS,
    CosineWarmup,
    MaskedImageModel,
    PretrainConfig,
    check_masking,
    masked_l1,
    pretrain,
    pretrain_options_markdown,
)
from medurwkv.engine.pretrain_data import MaskedImageDataset, collect_images, masked_count, patch_mask
from medurwkv.engine.train import fit
from medurwkv.errors import UserError
from medurwkv.models import QUICK_OVERRIDES, create_model, list_models
from medurwkv.models.pretrained import default_normalization

REPO = Path(__file__).resolve().parents[2]
TINY = QUICK_OVERRIDES["med_urwkv_t"]
# fast, deterministic and quiet settings shared by the runs: 8 images at 64 px, 4x4 mask patches of 16 px
FAST = dict(
    model="med_urwkv_t",
    model_kwargs=TINY,
    img_size=64,
    mask_patch=16,
    batch_size=4,
    num_workers=0,
    progress=False,
    tensorboard=False,
    deterministic=True,
)


def copy_images(src: Path, dst: Path, n: int = 8) -> Path:
    """The first ``n`` images of a shared dataset folder as a writable flat folder."""
    dst.mkdir(parents=True)
    for p in sorted(src.iterdir())[:n]:
        shutil.copyfile(p, dst / p.name)
    return dst


@pytest.fixture(scope="module")
def hc18_flat(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_images(shared_data_dir / "hc18" / "images", tmp_path_factory.mktemp("hc18") / "flat")


@pytest.fixture(scope="module")
def run10(hc18_flat: Path, tmp_path_factory: pytest.TempPathFactory):
    """10 epochs without augmentation (the masks still change every epoch), TensorBoard on."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    return pretrain(
        data=[str(hc18_flat)], out=str(out), epochs=10, lr=5e-3, warmup_epochs=0, augment=0.0,
        **{**FAST, "tensorboard": True},
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- the masking


def test_patch_mask_masks_exactly_round_ratio_of_the_patches():
    rng = np.random.default_rng(0)
    for grid, ratio in (((4, 4), 0.6), ((7, 7), 0.6), ((2, 3), 0.5), ((8, 4), 0.25), ((1, 3), 0.5)):
        n = grid[0] * grid[1]
        masks = [patch_mask(grid, ratio, rng) for _ in range(20)]
        assert all(m.shape == grid and m.dtype == bool for m in masks)
        assert {int(m.sum()) for m in masks} == {masked_count(n, ratio)} == {round(ratio * n)}
        assert len({m.tobytes() for m in masks}) > 1  # random positions, not one fixed pattern
    assert masked_count(49, 0.6) == 29 and masked_count(16, 0.6) == 10


def test_dataset_masks_are_seeded_per_epoch_and_sample(hc18_flat: Path):
    index = collect_images([hc18_flat])
    kw = dict(img_size=(64, 64), in_channels=1, normalize="per_image", augment=0.5, mask_patch=16, seed=3)
    ds = MaskedImageDataset(index, index.ids, train=True, mask_ratio=0.6, **kw)
    a = ds[2]
    assert a["image"].shape == (1, 64, 64) and a["mask"].shape == (4, 4) and int(a["mask"].sum()) == 10
    assert abs(float(a["image"].mean())) < 1e-4  # per_image normalisation
    again = MaskedImageDataset(index, index.ids, train=True, mask_ratio=0.6, **kw)[2]
    assert torch.equal(a["mask"], again["mask"]) and torch.equal(a["image"], again["image"])
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["mask"], a["mask"])  # a new mask (and crop) every epoch


def test_loss_counts_only_masked_pixels():
    torch.manual_seed(0)
    x, rec = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    mask = torch.stack(
        [torch.from_numpy(patch_mask((4, 4), 0.5, np.random.default_rng(i))) for i in range(2)]
    )
    pm = mask.float().repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1)  # (2, 1, 32, 32)
    loss = masked_l1(x, rec, pm)
    assert loss == pytest.approx(((rec - x).abs() * pm).sum() / (pm.sum() * 3))
    # unmasked pixels of the reconstruction (even non-finite ones) do not change the loss
    other = torch.where(pm.bool(), rec, torch.full_like(rec, float("inf")))
    assert torch.equal(masked_l1(x, other, pm), loss)
    assert torch.equal(masked_l1(torch.where(pm.bool(), x, -x), rec, pm), loss)
    # a masked pixel does
    changed = rec.clone()
    changed[pm.expand_as(rec).bool()] += 1.0
    assert masked_l1(x, changed, pm) != loss


def test_mask_fill_is_learned_and_the_encoder_never_sees_masked_pixels():
    torch.manual_seed(0)
    model = create_model("med_urwkv_t", in_channels=2, **TINY)
    mim = MaskedImageModel(model.encoder, 2, mask_patch=16)
    with torch.no_grad():
        mim.mask_fill.copy_(torch.tensor([0.5, -1.0]))  # as if learned (it starts at 0, the image mean)
    x = torch.randn(2, 2, 64, 64)
    mask = torch.from_numpy(np.stack([patch_mask((4, 4), 0.6, np.random.default_rng(i)) for i in range(2)]))
    torch.manual_seed(1)  # the same stochastic-depth draws in both calls
    rec, pm, xm = mim(x, mask)
    assert rec.shape == x.shape and pm.shape == (2, 1, 64, 64)
    # masked pixels take the fill value, the others stay the image
    assert torch.equal(xm * (1 - pm), x * (1 - pm))
    for c, fill in enumerate((0.5, -1.0)):
        assert xm[:, c][pm[:, 0].bool()].unique().tolist() == [fill]
    # the reconstruction does not depend on what the masked pixels held (conv stem and patch embedding included)
    noisy = x + 10.0 * torch.randn_like(x) * pm
    torch.manual_seed(1)
    rec2, _, _ = mim(noisy, mask)
    assert torch.equal(rec, rec2)
    # the fill is a parameter that gets gradients from the loss (and an optimizer would see it)
    masked_l1(x, rec, pm).backward()
    assert isinstance(mim.mask_fill, torch.nn.Parameter) and mim.mask_fill.grad is not None
    assert mim.mask_fill.grad.abs().sum() > 0
    assert any(p is mim.mask_fill for p in mim.parameters())


def test_every_med_urwkv_model_fits_and_the_unet_is_refused():
    cfg = PretrainConfig(img_size=64, mask_patch=16)
    for name in list_models("med_urwkv*"):
        model = create_model(name, in_channels=1, **QUICK_OVERRIDES[name])
        assert check_masking(cfg, model) == 16, name
        mim = MaskedImageModel(model.encoder, 1, 16)
        rec, pm, _ = mim(torch.randn(1, 1, 64, 64), torch.ones(1, 4, 4, dtype=torch.bool))
        masked_l1(torch.zeros(1, 1, 64, 64), rec, pm).backward()
        assert mim.head[0].weight.grad is not None, name
    with pytest.raises(UserError, match="expected a model with a VRWKV encoder, got 'unet'"):
        check_masking(
            cfg.replace(model="unet"), create_model("unet", in_channels=1, **QUICK_OVERRIDES["unet"])
        )


def test_cosine_warmup_schedule():
    f = CosineWarmup(total_steps=100, warmup_steps=10)
    for s in range(10):  # linear warm-up: step s uses (s + 1) / 10 of the cosine value
        assert f(s) == pytest.approx((s + 1) / 10 * 0.5 * (1 + np.cos(np.pi * s / 100)))
    vals = [f(s) for s in range(10, 100)]
    assert all(a > b for a, b in zip(vals, vals[1:])) and f(100) == pytest.approx(0.0, abs=1e-12)
    assert CosineWarmup(50, 0)(0) == 1.0 and CosineWarmup(50, 0)(25) == pytest.approx(0.5)


def test_collect_reads_dataset_layouts_and_ignores_masks(shared_data_dir: Path, tmp_path: Path):
    seg = tmp_path / "seg"
    copy_images(shared_data_dir / "hc18" / "images", seg / "images", n=3)
    copy_images(shared_data_dir / "hc18" / "masks", seg / "masks", n=2)  # one image without a mask counts
    nn = tmp_path / "nnunet" / "imagesTr"
    src = sorted((shared_data_dir / "hc18" / "images").iterdir())[:2]
    nn.mkdir(parents=True)
    for ch, p in enumerate(src):  # one case with two channel files
        shutil.copyfile(p, nn / f"case1_{ch:04d}.png")
    index = collect_images([seg, tmp_path / "nnunet"])
    assert index.ids == ["seg/000_HC", "seg/001_HC", "seg/002_HC", "nnunet/case1"]
    assert index.load_image("nnunet/case1").shape == (540, 800, 2)  # channels stacked as in train
    assert len(collect_images([seg], limit=2).ids) == 2


# ------------------------------------------------------------------------------------------- a run


def test_pretrain_lowers_the_loss_and_writes_the_run_folder(run10, hc18_flat: Path):
    rows = read_metrics(run10.run_dir / "metrics.csv")
    assert list(rows[0]) == list(METRIC_COLUMNS) and [r["epoch"] for r in rows] == [
        str(e) for e in range(1, 11)
    ]
    loss = [float(r["loss"]) for r in rows]
    # 20 steps of lr 5e-3: ~0.9 (the fill and a random head) down to ~0.7; a margin for numerical drift
    assert np.mean(loss[-3:]) < 0.9 * np.mean(loss[:3]) and loss[-1] < loss[0], loss
    assert int(rows[-1]["images_seen"]) == run10.images_seen == 80 and rows[-1]["global_step"] == "20"
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])  # cosine decay
    assert next((run10.run_dir / "tb").glob("events.out.tfevents.*")).stat().st_size > 0
    log = (run10.run_dir / "train.log").read_text()
    assert "masking 10 of 4x4 patches of 16 px" in log and "fine-tune with: medurwkv train" in log
    cfg = PretrainConfig.from_dict(yaml.safe_load((run10.run_dir / "config.yaml").read_text()))
    assert cfg.in_channels == 1 and cfg.normalize == "per_image" and cfg.data == [str(hc18_flat.resolve())]


def test_encoder_file_describes_itself_and_holds_the_trained_encoder(run10):
    enc = torch.load(run10.encoder, weights_only=True)  # plain tensors and containers only
    assert enc["format"] == ENCODER_FORMAT == "medurwkv-encoder-v1"
    assert (
        enc["model"]["name"] == "med_urwkv_t"
        and enc["model"]["kwargs"]["encoder_overrides"] == TINY["encoder_overrides"]
    )
    assert enc["in_channels"] == 1 and enc["epochs"] == 10 and enc["images_seen"] == 80
    assert enc["config"]["mask_ratio"] == 0.6 and enc["config"]["epochs"] == 10 and enc["medurwkv_version"]
    last = torch.load(run10.last_checkpoint, weights_only=False)
    trained = {
        k.removeprefix("encoder."): v for k, v in last["state_dict"].items() if k.startswith("encoder.")
    }
    ref = create_model("med_urwkv_t", in_channels=1, **TINY).pretrained_target().state_dict()
    assert set(enc["state_dict"]) == set(ref)
    assert all(torch.equal(v, trained[k]) for k, v in enc["state_dict"].items())
    assert not torch.equal(
        enc["state_dict"]["patch_embed.projection.weight"], ref["patch_embed.projection.weight"]
    )


def test_preview_and_report(run10):
    img = np.asarray(Image.open(run10.preview))
    # 3 rows (masked / reconstruction / original) x 4 images of 64 px shown at 128 px, 2 px gaps
    assert img.shape == (3 * 130 - 2, 4 * 130 - 2, 3)
    masked, original = img[:128, :128], img[260:, :128]
    assert not np.array_equal(masked, original)
    html = (run10.run_dir / "report.html").read_text()
    assert "Masked image pretraining" in html and 'alt="reconstruction preview"' in html
    assert "Evaluation" not in html  # no segmentation sections for a pretrain run


def test_train_with_the_pretrained_encoder_loads_it_strictly(
    run10, shared_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    data = tmp_path / "seg"
    copy_images(shared_data_dir / "hc18" / "images", data / "images")
    copy_images(shared_data_dir / "hc18" / "masks", data / "masks")
    res = fit(
        data=data, out=tmp_path / "ft", pretrained=str(run10.encoder), normalize="per_image", epochs=1,
        freeze_encoder_epochs=1, max_train_batches=1, max_val_batches=1, eval_test=False,
        **{k: v for k, v in FAST.items() if k != "mask_patch"},
    )  # fmt: skip
    report = capsys.readouterr().out  # the LoadReport that load_pretrained prints
    assert f"Pretrained weights from {run10.encoder} into VRWKVAdapter" in report
    assert "0 missing, 0 unexpected, 0 skipped" in report
    log = (tmp_path / "ft" / "train.log").read_text()
    assert "frozen for epochs 1-1" in log  # an encoder.pt counts as pretrained: train's freezing applies
    sd = load_checkpoint(res.last_checkpoint)["state_dict"]
    enc = torch.load(run10.encoder, weights_only=True)["state_dict"]
    assert all(torch.equal(sd[f"encoder.{k}"], v) for k, v in enc.items())  # frozen: still the file's


def test_encoder_for_another_model_or_channels_is_refused_naming_both(run10):
    with pytest.raises(UserError) as e:
        create_model(
            "med_urwkv_t_pure", in_channels=1, pretrained=run10.encoder, **QUICK_OVERRIDES["med_urwkv_t_pure"]
        )
    msg = str(e.value)
    assert msg.startswith("encoder.pt was pretrained for med_urwkv_t (encoder='vrwkv_adapter_t'")
    assert "got med_urwkv_t_pure (encoder='vrwkv_t'" in msg and "--model med_urwkv_t --model-kwargs" in msg
    with pytest.raises(
        UserError, match=r"pretrained for med_urwkv_t \(in_channels=1\), got med_urwkv_t \(in_ch"
    ):
        create_model("med_urwkv_t", in_channels=3, pretrained=run10.encoder, **TINY)
    with pytest.raises(UserError, match="got 'unet' which has none"):
        create_model("unet", in_channels=1, pretrained=run10.encoder)


def test_continued_pretraining_from_an_encoder_keeps_its_normalisation(
    run10, hc18_flat: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    res = pretrain(
        data=[str(hc18_flat)], out=str(tmp_path / "more"), pretrained=str(run10.encoder), epochs=1,
        max_train_batches=1, **FAST,
    )  # fmt: skip
    assert f"Pretrained weights from {run10.encoder}" in capsys.readouterr().out
    assert res.config.normalize == "per_image"  # the encoder.pt's own, not imagenet as for official weights
    official = tmp_path / "official.pth"
    torch.save({"state_dict": {"backbone.pos_embed": torch.zeros(1, 4, 8)}}, official)
    assert default_normalization(str(official)) == "imagenet" and default_normalization(True) == "imagenet"
    assert default_normalization(False) == "per_image" and default_normalization(run10.encoder) == "per_image"


# ------------------------------------------------------------------------------------------- kill and resume

KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    torch.set_num_threads(1)
    from medurwkv.engine.pretrain import pretrain

    cfg, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])
    n = {"steps": 0}

    def hook(opt, args, kwargs):
        n["steps"] += 1
        if n["steps"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: like a crash or an OOM kill

    register_optimizer_step_post_hook(hook)
    pretrain(cfg)
    """
)


def test_sigkill_then_resume_matches_the_uninterrupted_run(hc18_flat: Path, tmp_path: Path):
    # 8 images, batch 4 -> 2 steps per epoch; augmentation on (seeded per sample), warm-up + cosine
    common = {**FAST, "data": [str(hc18_flat)], "epochs": 2, "lr": 2e-3, "warmup_epochs": 0.5}
    ref = pretrain({**common, "out": str(tmp_path / "ref")})
    run = tmp_path / "killed"
    script = tmp_path / "kill_run.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps({**common, "out": str(run)}), "3"],  # 1st step of epoch 2
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed = torch.load(run / "last.pt", weights_only=False)
    assert killed["epoch"] == 1 and killed["global_step"] == 2 and len(read_metrics(run / "metrics.csv")) == 1

    res = pretrain(resume=run, progress=False)
    assert res.epochs_completed == 2 and res.images_seen == ref.images_seen == 16
    a, b = (
        torch.load(ref.last_checkpoint, weights_only=False),
        torch.load(run / "last.pt", weights_only=False),
    )
    assert a["global_step"] == b["global_step"] == 4
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k  # bit-identical encoder, head and fill
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), (pid, k)
    ea, eb = torch.load(ref.encoder, weights_only=True), torch.load(res.encoder, weights_only=True)
    assert all(torch.equal(v, eb["state_dict"][k]) for k, v in ea["state_dict"].items())
    ra, rb = read_metrics(ref.run_dir / "metrics.csv"), read_metrics(run / "metrics.csv")
    assert [(r["epoch"], r["loss"], r["lr"], r["images_seen"]) for r in ra] == [
        (r["epoch"], r["loss"], r["lr"], r["images_seen"]) for r in rb
    ]
    assert "resume: continuing after epoch 1/2" in (run / "train.log").read_text()
    # a finished run trains nothing; an option that changes the numbers is refused, with the way forward
    assert pretrain(resume=run, progress=False).epochs_completed == 2
    with pytest.raises(UserError, match=r"epochs: asked 4, run has 2.*--pretrained .*encoder.pt"):
        pretrain(resume=run, epochs=4)


def test_docs_table_is_the_option_table():
    doc = (REPO / "docs" / "pretrain.md").read_text()
    assert pretrain_options_markdown() in doc, "regenerate the table: pretrain_options_markdown()"
