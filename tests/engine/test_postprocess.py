"""Post-processing (engine/postprocess.py): largest component and hole filling on 2D and 3D label maps, the
choice on validation cases, its JSON form, and its use by evaluate, predict, ONNX export and fit."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from engine_testing import make_disks
from PIL import Image
from torch import nn

from medurwkv import create_model
from medurwkv.cli import main as cli
from medurwkv.data.volume_slices import VolumeSpec
from medurwkv.engine.checkpoint import load_checkpoint, save_checkpoint, store_postprocess
from medurwkv.engine.evaluation import evaluate
from medurwkv.engine.metrics import MetricAccumulator, image_metrics
from medurwkv.engine.postprocess import (
    POSTPROCESS_FORMAT,
    ClassSteps,
    PostprocessDecision,
    apply_postprocess,
    case_dice,
    choose_postprocess,
    keep_largest_component,
)
from medurwkv.engine.predict import Segmenter, predict_paths
from medurwkv.engine.volume_inference import segment_volume
from medurwkv.errors import UserError
from medurwkv.models import QUICK_OVERRIDES

LC = {"format": POSTPROCESS_FORMAT, "per_class": {"1": {"largest_component": True, "fill_holes": False}}}


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# ---------------------------------------------------------------------------------------------- the operation


def test_largest_component_removes_fragments_and_keeps_diagonal_neighbours():
    m = np.zeros((20, 20), np.int64)
    m[2:10, 2:10] = 1  # the main component (64 px)
    m[10, 10] = 1  # touches its corner diagonally only: part of it with 8-connectivity
    m[15:17, 15:17] = 1  # a fragment (4 px)
    m[0, 18] = 1  # a one-pixel fragment
    m[12:14, 2:6] = 2  # another class, two components, untouched
    m[17, 2] = 2
    before = m.copy()
    out = keep_largest_component(m, 1)
    np.testing.assert_array_equal(m, before)  # the input is not modified
    assert out.dtype == m.dtype and out.shape == m.shape
    expected = before.copy()
    expected[15:17, 15:17] = 0
    expected[0, 18] = 0
    np.testing.assert_array_equal(out, expected)
    assert out[10, 10] == 1
    # a class that is absent, or a single component: nothing changes
    np.testing.assert_array_equal(keep_largest_component(m, 3), m)
    np.testing.assert_array_equal(keep_largest_component(out, 1), out)


def test_fill_holes_fills_only_enclosed_background():
    m = np.zeros((12, 14), np.int64)
    m[1:8, 1:8] = 1
    m[3:6, 3:6] = 0  # a 3x3 hole ...
    m[4, 4] = 2  # ... holding a pixel of another class
    m[1, 1] = 0  # the ring's corner removed: the hole now touches the outside only diagonally
    m[2:6, 10] = 1  # a fragment
    m[2:6, 11] = 0
    out = keep_largest_component(m, 1, fill_holes=True)
    hole = np.zeros_like(m, dtype=bool)
    hole[3:6, 3:6] = True
    assert (out[hole & (m == 0)] == 1).all()  # background of the hole filled (4-connected background)
    assert out[4, 4] == 2  # another class inside the hole keeps its label
    assert out[1, 1] == 0  # outside background stays
    assert (out[2:6, 10] == 0).all()  # the fragment is removed
    without = keep_largest_component(m, 1)
    assert (without[hole & (m == 0)] == 0).all()
    # an opening through a face lets the background out: no hole, nothing filled
    u = np.zeros((9, 9), np.int64)
    u[1:8, 1:8] = 1
    u[3:6, 3:6] = 0
    u[4, 6:8] = 0  # a channel from the hole to the outside
    np.testing.assert_array_equal(keep_largest_component(u, 1, fill_holes=True), u)


def test_largest_component_in_3d_uses_26_neighbours_across_slices():
    v = np.zeros((10, 10, 8), np.int64)
    v[1:5, 1:5, 0:4] = 1  # main blob (64 voxels) in slices 0..3
    v[5, 5, 4] = 1  # corner-to-corner with the blob, in the next slice: connected in 3D (26-neighbourhood)
    v[8:10, 8:10, 6] = 1  # alone in slice 6: the largest of its slice, but a fragment of the volume
    out = keep_largest_component(v, 1)
    assert out[5, 5, 4] == 1 and (out[1:5, 1:5, 0:4] == 1).all()
    assert (out[8:10, 8:10, 6] == 0).all()
    assert int((out == 1).sum()) == 65
    # per-slice 2D processing would have kept the slice-6 fragment: the volume must be processed as a whole
    assert (keep_largest_component(v[:, :, 6], 1) == v[:, :, 6]).all()
    # holes in 3D: an enclosed cavity is filled
    c = np.zeros((7, 7, 7), np.uint8)
    c[1:6, 1:6, 1:6] = 1
    c[2:5, 2:5, 2:5] = 0
    filled = keep_largest_component(c, 1, fill_holes=True)
    assert (filled[1:6, 1:6, 1:6] == 1).all() and filled.dtype == np.uint8


def test_bad_inputs_raise_user_errors():
    with pytest.raises(UserError, match=r"\(H, W\) or \(X, Y, Z\)"):
        keep_largest_component(np.zeros(5, np.int64), 1)
    with pytest.raises(UserError, match="integer labels"):
        keep_largest_component(np.zeros((4, 4)), 1)
    with pytest.raises(UserError, match="foreground class >= 1"):
        keep_largest_component(np.zeros((4, 4), np.int64), 0)
    with pytest.raises(UserError, match="same shape"):
        choose_postprocess([np.zeros((4, 4), np.int64)], [np.zeros((4, 5), np.int64)], 2)
    with pytest.raises(UserError, match="at least one validation case"):
        choose_postprocess([], [], 2)


# ---------------------------------------------------------------------------------------------- the choice


def test_case_dice_follows_the_metrics_module():
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, g = rng.integers(0, 3, (9, 11)), rng.integers(0, 3, (9, 11))
        m = image_metrics(p, g, 3)
        for c in (1, 2):
            assert case_dice(p, g, c) == pytest.approx(m[c]["dice"], abs=1e-12)
    empty = np.zeros((4, 4), np.int64)
    assert case_dice(empty, empty, 1) == 1.0 == image_metrics(empty, empty, 2)[1]["dice"]


def _cases() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Three validation cases, 4 classes, each class with a known best choice:

    class 1: the prediction has a hole and a false fragment (reference: the full disk) -> largest + fill;
    class 2: the reference itself has two components, predicted exactly -> off (the step would hurt);
    class 3: one component predicted exactly -> off (no gain: equal is not better).
    """
    preds, gts = [], []
    for k in range(3):
        g = np.zeros((48, 48), np.int64)
        g[disk(48, 48, 14 + k, 14, 9)] = 1
        g[40:44, 4:8] = 2
        g[40:44, 20:24] = 2
        g[30:36, 36:44] = 3
        p = g.copy()
        p[disk(48, 48, 14 + k, 14, 2)] = 0  # a hole in class 1
        p[4:7, 38:41] = 1  # a false fragment of class 1
        preds.append(p)
        gts.append(g)
    return preds, gts


def test_choose_keeps_a_step_only_when_it_helps_on_validation():
    preds, gts = _cases()
    d = choose_postprocess(preds, gts, 4)
    assert d.per_class == {
        1: ClassSteps(largest_component=True, fill_holes=True),
        2: ClassSteps(),
        3: ClassSteps(),
    }
    assert d.n_cases == 3 and d.active
    v = d.val_dice
    assert v[1]["before"] < v[1]["largest_component"] < v[1]["largest_component_fill_holes"] == 1.0
    assert v[1]["after"] == pytest.approx(1.0)
    assert v[2]["largest_component"] < v[2]["before"] == v[2]["after"] == 1.0
    assert v[3]["largest_component"] == v[3]["before"] == 1.0
    # "before" is the per-image mean Dice engine/metrics.py reports; "after" is what scoring the result gives
    acc_before, acc_after = MetricAccumulator(4), MetricAccumulator(4)
    for i, (p, g) in enumerate(zip(preds, gts)):
        acc_before.add(str(i), p, g)
        acc_after.add(str(i), apply_postprocess(p, d), g)
    for c, name in ((1, "class_1"), (2, "class_2")):
        assert v[c]["before"] == pytest.approx(
            acc_before.summary()["classes"][name]["per_image_mean"]["dice"]
        )
        assert v[c]["after"] == pytest.approx(acc_after.summary()["classes"][name]["per_image_mean"]["dice"])
    # the hole alone, without a fragment: largest component changes nothing, so only "+ fill holes" can win
    no_frag = [np.where((p == 1) & (np.arange(48)[None, :] > 30), 0, p) for p in preds]
    assert choose_postprocess(no_frag, gts, 4).per_class[1] == ClassSteps(True, True)
    # a fragment but no hole: largest component alone
    no_hole = [np.where(disk(48, 48, 14 + k, 14, 2), 1, p) for k, p in enumerate(preds)]
    assert choose_postprocess(no_hole, gts, 4).per_class[1] == ClassSteps(True, False)


def test_a_gain_below_min_improvement_is_not_kept():
    g = np.zeros((120, 120), np.int64)
    g[10:110, 10:110] = 1  # 10 000 px
    p = g.copy()
    p[0, 0] = 1  # one false pixel: Dice 20000 / 20001, a gain of 5e-5 when removed
    gain = 1.0 - case_dice(p, g, 1)
    assert 1e-5 < gain < 1e-4
    assert choose_postprocess([p], [g], 2).per_class[1] == ClassSteps()
    assert choose_postprocess([p], [g], 2, min_improvement=1e-5).per_class[1] == ClassSteps(True)


def test_decision_json_round_trip_and_refusals():
    preds, gts = _cases()
    d = choose_postprocess(preds, gts, 4)
    text = json.dumps(d.to_dict())
    back = PostprocessDecision.from_dict(json.loads(text))
    assert back == d and back.to_dict() == d.to_dict()
    assert json.loads(text)["per_class"]["1"] == {"largest_component": True, "fill_holes": True}
    np.testing.assert_array_equal(
        apply_postprocess(preds[0], json.loads(text)), apply_postprocess(preds[0], d)
    )
    np.testing.assert_array_equal(apply_postprocess(preds[0], None), preds[0])
    lines = d.log_lines(["background", "head", "b", "c"])
    assert lines[0].startswith("postprocess: class 1 (head): largest component + fill holes on, val Dice ")
    assert lines[1].startswith("postprocess: class 2 (b): off (largest component ")
    for bad, says in (
        ({**LC, "format": "other"}, "format 'other'"),
        ({**LC, "per_class": {"1": {"fill_holes": True}}}, "only together with largest_component"),
        ({**LC, "per_class": {"0": {"largest_component": True}}}, "class 0"),
        ({**LC, "per_class": {"1": {"largest_component": "yes"}}}, "non-boolean"),
        ({**LC, "per_class": {"1": {"biggest": True}}}, "steps"),
    ):
        with pytest.raises(UserError, match=says):
            PostprocessDecision.from_dict(bad)
    with pytest.raises(UserError, match="classes 1..1 of a 2-class model"):
        PostprocessDecision.from_dict(
            {**LC, "per_class": {"2": {"largest_component": True, "fill_holes": False}}}
        ).check_classes(2)


# ---------------------------------------------------------------------------------------------- through the API


def threshold_unet() -> nn.Module:
    """The tiny U-Net of QUICK_OVERRIDES with weights set so that class 1 wins exactly where the per-image
    normalised pixel is above 0.1: one channel carried through the top skip (3x3 convs with only the centre
    tap), every other path zero. A real checkpoint with a known prediction, so fragments can be placed."""
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=2, **QUICK_OVERRIDES["unet"])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        for block in (
            getattr(model.down, "0"),
            model.up_conv[-1],
        ):  # the top level: encoder and last decoder block
            block[0].weight[0, 0, 1, 1] = 1.0  # channel 0 (the skip, first in the concat) passes through
            block[3].weight[0, 0, 1, 1] = 1.0
        model.head.weight[1, 0, 0, 0] = 10.0
        model.head.bias[0] = 1.0  # class 1 where 10 * relu(x) > 1
    return model.eval()


def image_with_fragment(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, reference mask, fragment): a bright disk (the object) and a small bright square elsewhere."""
    rng = np.random.default_rng(seed)
    obj = disk(h, w, h * 0.4, w * 0.4, min(h, w) * 0.25)
    frag = np.zeros((h, w), bool)
    frag[h - 6 : h - 3, w - 6 : w - 3] = True
    img = (np.where(obj | frag, 200, 40) + rng.integers(-15, 16, (h, w))).astype(np.uint8)
    return img, obj.astype(np.int64), frag


@pytest.fixture
def run_with_decision(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    cases = {}
    for k in range(3):
        img, gt, frag = image_with_fragment(30 + 3 * k, 34 - k, k)
        Image.fromarray(img).save(data / "images" / f"c{k}.png")
        Image.fromarray((gt * 255).astype(np.uint8)).save(data / "masks" / f"c{k}.png")
        cases[f"c{k}"] = (img, gt, frag)
    pre = {"in_channels": 1, "img_size": None, "normalize": "per_image", "num_classes": 2}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: unet\n")
    old = save_checkpoint(run / "old.pt", threshold_unet(), preprocess=pre, epoch=1)  # no decision
    ckpt = save_checkpoint(run / "best.pt", threshold_unet(), preprocess=pre, epoch=1)
    store_postprocess(ckpt, LC)
    return {"data": data, "cases": cases, "ckpt": ckpt, "old": old, "tmp": tmp_path}


def test_checkpoint_decision_is_applied_by_predict_and_evaluate(run_with_decision: dict):
    r = run_with_decision
    assert load_checkpoint(r["ckpt"])["postprocess"] == LC and "postprocess" not in load_checkpoint(r["old"])
    seg = Segmenter.from_checkpoint(r["ckpt"])
    assert seg.postprocess == PostprocessDecision.from_dict(LC)
    for img, gt, frag in r["cases"].values():
        raw = seg.predict(img, postprocess=False)
        assert (raw[frag] == 1).all()  # the model predicts the fragment ...
        np.testing.assert_array_equal(raw, (gt.astype(bool) | frag).astype(np.int64))
        np.testing.assert_array_equal(seg.predict(img), gt)  # ... and the decision removes it
        labels, probs = seg.predict(img, return_probs=True)
        np.testing.assert_array_equal(probs.argmax(0), raw)  # probabilities stay the model's
        np.testing.assert_array_equal(labels, gt)
    old = Segmenter.from_checkpoint(r["old"])
    assert old.postprocess is None
    img, gt, frag = r["cases"]["c0"]
    assert (old.predict(img)[frag] == 1).all()  # an old checkpoint: no post-processing, no error

    on = evaluate(r["ckpt"], r["data"], split="all", out=r["tmp"] / "ev_on", progress=False, verbose=False)
    off = evaluate(
        r["ckpt"],
        r["data"],
        split="all",
        out=r["tmp"] / "ev_off",
        postprocess=False,
        progress=False,
        verbose=False,
    )
    assert on["headline"]["value"] == pytest.approx(1.0)
    assert off["headline"]["value"] < 0.99
    ev = json.loads((r["tmp"] / "ev_on" / "summary.json").read_text())["evaluation"]
    assert ev["postprocess_applied"] is True and ev["postprocess_decision"]["per_class"] == LC["per_class"]
    assert ev["postprocess"] == "from the checkpoint: class 1 (foreground): largest component"
    assert (
        off["evaluation"]["postprocess_applied"] is False
        and off["evaluation"]["postprocess_decision"] is None
    )
    assert off["evaluation"]["postprocess"].startswith("off")
    old_ev = evaluate(
        r["old"], r["data"], split="all", out=r["tmp"] / "ev_old", progress=False, verbose=False
    )
    assert old_ev["evaluation"]["postprocess"] == "none in the checkpoint"
    assert old_ev["headline"]["value"] == pytest.approx(off["headline"]["value"])
    # choosing on the split finds the same decision and scores with it
    chosen = evaluate(
        r["old"],
        r["data"],
        split="all",
        out=r["tmp"] / "ev_ch",
        choose_postprocess=True,
        progress=False,
        verbose=False,
    )
    assert chosen["evaluation"]["postprocess_decision"]["per_class"] == LC["per_class"]
    assert chosen["headline"]["value"] == pytest.approx(1.0)


def test_cli_flag_no_postprocess(run_with_decision: dict, capsys: pytest.CaptureFixture[str]):
    r = run_with_decision
    folder = r["data"] / "images"
    out_on, out_off = r["tmp"] / "pred_on", r["tmp"] / "pred_off"
    assert (
        cli(["predict", "--ckpt", str(r["ckpt"]), "--input", str(folder), "--out", str(out_on), "--quiet"])
        == 0
    )
    assert "post-processing: class 1 (foreground): largest component" in capsys.readouterr().out
    args = ["predict", "--ckpt", str(r["ckpt"]), "--input", str(folder), "--out", str(out_off), "--quiet"]
    assert cli([*args, "--no-postprocess"]) == 0
    assert "post-processing: off" in capsys.readouterr().out
    for cid, (_, gt, frag) in r["cases"].items():
        on = np.asarray(Image.open(out_on / f"{cid}.png"))
        off = np.asarray(Image.open(out_off / f"{cid}.png"))
        np.testing.assert_array_equal(on, gt)
        assert (off[frag] == 1).all()
        assert (np.asarray(Image.open(out_on / f"{cid}_255.png"))[frag] == 0).all()
    ev = ["evaluate", "--ckpt", str(r["ckpt"]), "--data", str(r["data"]), "--split", "all", "--quiet"]
    assert cli([*ev, "--out", str(r["tmp"] / "e1"), "--no-postprocess", "--no-report"]) == 0
    s = json.loads((r["tmp"] / "e1" / "summary.json").read_text())
    assert s["evaluation"]["postprocess_applied"] is False and s["headline"]["value"] < 0.99
    # the Python API default of predict_paths is on as well
    summary = predict_paths(Segmenter.from_checkpoint(r["ckpt"]), [folder], r["tmp"] / "p3", progress=False)
    assert summary.ok
    np.testing.assert_array_equal(np.asarray(Image.open(r["tmp"] / "p3" / "c1.png")), r["cases"]["c1"][1])


def test_onnx_export_carries_the_decision(run_with_decision: dict):
    pytest.importorskip("onnxruntime")
    from medurwkv.engine.export import export_checkpoint

    r = run_with_decision
    onnx_path = r["tmp"] / "model.onnx"
    export_checkpoint(r["ckpt"], onnx_path, size=(32, 32))
    seg = Segmenter.from_checkpoint(onnx_path)
    assert seg.backend == "onnx" and seg.postprocess == PostprocessDecision.from_dict(LC)
    img, gt, frag = r["cases"]["c2"]
    np.testing.assert_array_equal(seg.predict(img), gt)
    assert (seg.predict(img, postprocess=False)[frag] == 1).all()


class Pointwise(nn.Module):
    """logits = (0, 10 * x): class 1 exactly where the z-scored voxel is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.pad_multiple = 1, 2, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 10.0 * x], dim=1)


def test_volumes_are_post_processed_in_3d(tmp_path: Path):
    spec = VolumeSpec(axis=2, context=0, channel_names=["MRI"], intensity=[{"scheme": "zscore"}])
    pre = {
        "in_channels": 1,
        "normalize": "none",
        "num_classes": 2,
        "img_size": None,
        "volume": spec.to_dict(),
    }
    seg = Segmenter.from_model(Pointwise(), pre, postprocess=LC)
    root = tmp_path / "vol"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "blob": 1}, "numTraining": 2,
            "file_ending": ".nii.gz"}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    for k in range(2):
        gt = np.zeros((12, 12, 8), np.uint8)
        gt[2 : 7 + k, 2:7, 0:4] = 1  # the structure, slices 0..3
        frag = np.zeros_like(gt, dtype=bool)
        frag[9:11, 9:11, 6] = True  # alone in slice 6
        image = np.where(gt.astype(bool) | frag, 10.0, 0.0).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"v{k}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(gt, np.eye(4)), str(root / "labelsTr" / f"v{k}.nii.gz"))
        np.testing.assert_array_equal(segment_volume(seg, image), gt)
        assert (segment_volume(seg, image, postprocess=False)[frag] == 1).all()
    s = evaluate(seg, root, split="all", out=tmp_path / "ev", thumbnails=False, progress=False, verbose=False)
    assert s["headline"]["value"] == pytest.approx(1.0) and s["evaluation"]["postprocess_applied"] is True
    raw = evaluate(
        seg,
        root,
        split="all",
        out=tmp_path / "ev0",
        postprocess=False,
        thumbnails=False,
        progress=False,
        verbose=False,
    )
    assert raw["headline"]["value"] < 0.99
    chosen = evaluate(
        Segmenter.from_model(Pointwise(), pre), root, split="all", out=tmp_path / "ev1", choose_postprocess=True,
        thumbnails=False, progress=False, verbose=False,
    )  # fmt: skip
    assert chosen["evaluation"]["postprocess_decision"]["per_class"] == LC["per_class"]


def test_fit_chooses_stores_and_applies_the_decision(tmp_path: Path):
    from medurwkv.engine.train import fit

    data = make_disks(tmp_path / "disks")
    out = tmp_path / "run"
    result = fit(
        data=data, out=out, epochs=1, model="unet", model_kwargs={"base_channels": 4, "depth": 2}, img_size=32,
        batch_size=4, num_workers=0, progress=False, eval_test=True, tensorboard=False, deterministic=True,
        pretrained=False,
    )  # fmt: skip
    best = load_checkpoint(out / "best.pt")
    decision = best["postprocess"]
    assert decision["format"] == POSTPROCESS_FORMAT and set(decision["per_class"]) == {"1"}
    assert decision["n_cases"] == len(best["split"]["val"])
    log = (out / "train.log").read_text()
    assert "postprocess: class 1 (foreground): " in log and "val Dice " in log
    val = json.loads((out / "eval" / "val" / "summary.json").read_text())["evaluation"]
    test = json.loads((out / "eval" / "test" / "summary.json").read_text())["evaluation"]
    assert val["postprocess_decision"] == decision and val["postprocess"].startswith("chosen on this split")
    assert test["postprocess_decision"] == decision and test["postprocess"].startswith("from the checkpoint")
    assert test["postprocess_applied"] is PostprocessDecision.from_dict(decision).active
    assert result.eval["val"]["headline"]["value"] == pytest.approx(decision["val_dice"]["1"]["after"])
