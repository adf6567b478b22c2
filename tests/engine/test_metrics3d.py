"""Tests of engine/metrics3d.py: hand-computed 3D cases, empty structures, multi-class summaries, anisotropic
spacing, input validation, outputs, speed, and agreement with MONAI on real MSD Hippocampus label volumes."""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from medurwkv.engine.metrics3d import (
    VolumeMetrics,
    check_spacing_3d,
    surface_distances_3d,
    surface_voxels,
    volume_metrics,
    volume_summary_markdown,
)
from medurwkv.errors import UserError

HIPPO_CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007")


def _cube(shape, lo, size, value=1) -> np.ndarray:
    v = np.zeros(shape, dtype=np.int64)  # (X, Y, Z)
    v[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = value
    return v


def _blobs3d(rng: np.random.Generator, shape, k: int, sigma: float = 2.5) -> np.ndarray:
    """Smooth random (X, Y, Z) label volume with k classes; its regions touch the volume border."""
    x = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return np.digitize(x, np.quantile(x, np.linspace(0, 1, k + 1)[1:-1])).astype(np.int64)


def _onehot(labels: np.ndarray, k: int) -> torch.Tensor:
    # (X, Y, Z) -> (1, K, X, Y, Z) float, MONAI's input form
    return torch.from_numpy(np.eye(k, dtype=np.float32)[labels].transpose(3, 0, 1, 2)[None].copy())


# ------------------------------------------------------------------ hand-computed cases


def test_cube_vs_shifted_cube():
    # gt: 4x4x4 cube (56 surface voxels: 64 minus the 2x2x2 core); pred: the same cube shifted +1 along x.
    # TP = 3*16 = 48, FP = FN = 16. Surface distances pred -> gt: 36 voxels shared with the gt surface (0),
    # the 16 voxels of the new x face and the 4 core-facing voxels of the old one at 1 voxel; same reversed.
    gt = _cube((12, 12, 12), (2, 2, 2), 4)
    pred = _cube((12, 12, 12), (3, 2, 2), 4)
    m = volume_metrics(pred, gt, 2)[1]
    assert (m["tp"], m["fp"], m["fn"], m["status"]) == (48, 16, 16, "both_present")
    assert m["dice"] == pytest.approx(96 / 128)
    assert m["iou"] == pytest.approx(48 / 80)
    assert m["hd95"] == pytest.approx(1.0)  # P95 of 36 zeros and 20 ones (position 52.25 of 0..55)
    assert m["assd"] == pytest.approx(40 / 112)
    d_pg, d_gp = surface_distances_3d(pred == 1, gt == 1)
    assert sorted(d_pg) == sorted(d_gp) == [0.0] * 36 + [1.0] * 20
    # with 2 mm along x: the shifted face is 2 mm away, the 4 core voxels 1 mm (to the y or z face)
    m = volume_metrics(pred, gt, 2, spacing=(2.0, 1.0, 1.0))[1]
    assert m["hd95"] == pytest.approx(2.0)
    assert m["assd"] == pytest.approx(2 * (4 * 1.0 + 16 * 2.0) / 112)


def test_surface_is_the_6_neighbourhood_shell():
    cube = _cube((7, 7, 7), (1, 1, 1), 5).astype(bool)
    s = surface_voxels(cube)
    assert s.sum() == 5**3 - 3**3  # a 6-neighbourhood erosion removes one layer; 26 would give the same here
    # a 5x5x5 cube with the column x, y in {0, 1} cut away: voxel (2, 2, 2) has all 6 face neighbours in the
    # mask (so it is not surface) but its edge neighbour (1, 1, 2) is outside (a 26-neighbourhood would say
    # surface)
    notched = np.ones((5, 5, 5), dtype=bool)
    notched[:2, :2, :] = False
    padded = np.pad(notched, 1)
    assert not surface_voxels(padded)[3, 3, 3]
    assert (padded & ~ndimage.binary_erosion(padded, structure=np.ones((3, 3, 3))))[3, 3, 3]
    # a full volume: the outside counts as background, so its surface is the outer shell
    full = np.ones((4, 5, 6), dtype=bool)
    assert surface_voxels(full).sum() == 4 * 5 * 6 - 2 * 3 * 4


def test_single_voxels_and_anisotropic_spacing():
    pred = np.zeros((8, 8, 16), dtype=np.uint8)
    gt = np.zeros((8, 8, 16), dtype=np.uint8)
    pred[0, 0, 0] = 1
    gt[3, 4, 12] = 1
    m = volume_metrics(pred, gt, 2)[1]
    assert m["hd95"] == pytest.approx(13.0) and m["assd"] == pytest.approx(13.0)
    m = volume_metrics(pred, gt, 2, spacing=(1.0, 1.0, 0.5))[1]
    assert m["hd95"] == pytest.approx(math.sqrt(9 + 16 + 36)) and m["assd"] == pytest.approx(math.sqrt(61))
    m = volume_metrics(pred, gt, 2, spacing=2.0)[1]
    assert m["hd95"] == pytest.approx(26.0)


def test_axis_permutation_with_spacing_gives_the_same_numbers():
    rng = np.random.default_rng(0)
    gt, pred = _blobs3d(rng, (14, 18, 10), 3), _blobs3d(rng, (14, 18, 10), 3)
    sp = (0.7, 1.3, 2.5)
    a = volume_metrics(pred, gt, 3, sp)
    perm = (2, 0, 1)
    b = volume_metrics(pred.transpose(perm), gt.transpose(perm), 3, tuple(sp[i] for i in perm))
    for c in (1, 2):
        for k in ("dice", "iou", "hd95", "assd"):
            assert a[c][k] == pytest.approx(b[c][k], rel=1e-12)
    # and the spacing matters: swapping it without the axes changes the distances
    c = volume_metrics(pred, gt, 3, (2.5, 1.3, 0.7))
    assert c[1]["assd"] != pytest.approx(a[1]["assd"])


# ------------------------------------------------------------------ empty structures


def test_empty_structure_policy():
    z = np.zeros((6, 6, 6), dtype=np.int64)
    cube = _cube((6, 6, 6), (1, 1, 1), 3)
    both = volume_metrics(z, z, 2)[1]
    assert (both["dice"], both["iou"], both["status"]) == (1.0, 1.0, "both_empty")
    assert math.isnan(both["hd95"]) and math.isnan(both["assd"])
    fp_only = volume_metrics(cube, z, 2)[1]
    assert (fp_only["dice"], fp_only["iou"], fp_only["status"], fp_only["fp"]) == (0.0, 0.0, "gt_empty", 27)
    assert math.isnan(fp_only["hd95"]) and math.isnan(fp_only["assd"])
    missed = volume_metrics(z, cube, 2)[1]
    assert (missed["dice"], missed["status"], missed["fn"]) == (0.0, "pred_empty", 27)
    assert math.isnan(missed["hd95"]) and math.isnan(missed["assd"])
    with pytest.raises(UserError, match="non-empty"):
        surface_distances_3d(z.astype(bool), cube.astype(bool))


def test_summary_counts_and_skips_undefined_values():
    acc = VolumeMetrics(2)
    cube = _cube((8, 8, 8), (2, 2, 2), 3)
    shifted = _cube((8, 8, 8), (3, 2, 2), 3)
    z = np.zeros_like(cube)
    acc.add("ok", shifted, cube, (1, 1, 1))
    acc.add("both_empty", z, z, (1, 1, 1))
    acc.add("missed", z, cube, (1, 1, 1))
    acc.add("false_positive", cube, z, (1, 1, 1))
    s = acc.summary()
    fg = s["classes"]["foreground"]
    ok = volume_metrics(shifted, cube, 2, 1.0)[1]
    assert fg["mean_over_cases"]["dice"] == pytest.approx((ok["dice"] + 1 + 0 + 0) / 4)
    assert fg["mean_over_cases"]["hd95"] == pytest.approx(ok["hd95"])  # the only defined value
    assert fg["n_undefined"] == {"dice": 0, "iou": 0, "hd95": 3, "assd": 3}
    assert (fg["n_both_empty"], fg["n_gt_empty"], fg["n_pred_empty"]) == (1, 1, 1)
    assert fg["std_over_cases"]["hd95"] == 0.0
    # pooled: TP/FP/FN summed over all voxels of all cases
    tp, fp, fn = ok["tp"], ok["fp"] + 27, ok["fn"] + 27
    assert (fg["tp"], fg["fp"], fg["fn"]) == (tp, fp, fn)
    assert fg["pooled"]["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    rows = acc.per_case_rows()
    assert [r["status"] for r in rows] == ["both_present", "both_empty", "pred_empty", "gt_empty"]
    assert math.isnan(rows[1]["hd95"])


def test_class_whose_distances_are_never_defined():
    acc = VolumeMetrics(3, ["background", "a", "b"])
    a = _cube((8, 8, 8), (1, 1, 1), 3)
    acc.add("c1", a, a, None)
    acc.add("c2", a, a, None)  # class b absent everywhere: Dice 1, distances undefined in every case
    s = acc.summary()
    assert s["classes"]["b"]["mean_over_cases"]["hd95"] is None  # NaN -> null in JSON
    assert s["classes"]["b"]["mean_over_cases"]["dice"] == 1.0
    assert s["mean"]["mean_over_cases"]["hd95"] == 0.0  # from class a only
    assert s["mean"]["n_classes_undefined"] == {"dice": 0, "iou": 0, "hd95": 1, "assd": 1}
    assert s["distance_unit"] == "voxel"


# ------------------------------------------------------------------ multi-class summaries


def test_multiclass_summary_follows_the_synapse_protocol():
    rng = np.random.default_rng(5)
    k = 4
    names = ["background", "liver", "spleen", "left kidney"]
    acc = VolumeMetrics(k, names)
    per_case = []
    for i in range(3):
        gt = _blobs3d(rng, (16, 20, 12), k)
        pred = _blobs3d(rng, (16, 20, 12), k)
        if i == 2:
            pred[pred == 3] = 0  # a missed structure: Dice 0, distances undefined
        sp = (0.8, 0.8, 2.0 + i)
        out = acc.add(f"case{i}", pred, gt, sp)
        assert list(out) == names[1:]
        per_case.append(volume_metrics(pred, gt, k, sp))
    s = acc.summary()
    assert s["n_cases"] == 3 and s["evaluated_classes"] == names[1:] and s["distance_unit"] == "mm"
    assert len(acc.per_case_rows()) == 3 * 3
    class_means = {}
    for c in (1, 2, 3):
        for m in ("dice", "iou", "hd95", "assd"):
            vals = [pc[c][m] for pc in per_case if math.isfinite(pc[c][m])]
            assert s["classes"][names[c]]["mean_over_cases"][m] == pytest.approx(np.mean(vals))
            assert s["classes"][names[c]]["std_over_cases"][m] == pytest.approx(np.std(vals))
            class_means[(c, m)] = np.mean(vals)
        tp, fp, fn = (sum(pc[c][x] for pc in per_case) for x in ("tp", "fp", "fn"))
        assert s["classes"][names[c]]["pooled"]["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert s["classes"]["left kidney"]["n_pred_empty"] == 1
    for m in ("dice", "hd95"):
        # the class mean is the mean of the per-class means over cases (TransUNet / Synapse), ...
        assert s["mean"]["mean_over_cases"][m] == pytest.approx(
            np.mean([class_means[(c, m)] for c in (1, 2, 3)])
        )
    assert s["headline"]["value"] == s["mean"]["mean_over_cases"]["dice"]
    # ... which differs from averaging each case over classes first when a value is undefined
    case_first = np.mean([np.nanmean([pc[c]["hd95"] for c in (1, 2, 3)]) for pc in per_case])
    assert s["mean"]["mean_over_cases"]["hd95"] != pytest.approx(case_first)
    pooled = [s["classes"][names[c]]["pooled"]["dice"] for c in (1, 2, 3)]
    assert s["mean"]["pooled"]["dice"] == pytest.approx(np.mean(pooled))


def test_include_background():
    acc = VolumeMetrics(2, ["background", "tumour"], include_background=True)
    assert acc.classes == [0, 1]
    cube = _cube((6, 6, 6), (1, 1, 1), 3)
    shifted = _cube((6, 6, 6), (2, 1, 1), 3)
    out = acc.add("x", shifted, cube, 1.0)
    assert set(out) == {"background", "tumour"}
    # background: 216 - 27 voxels each, 18 in common with neither cube -> TP = 216 - 36 = 180, FP = FN = 9
    assert (out["background"]["tp"], out["background"]["fp"], out["background"]["fn"]) == (180, 9, 9)
    assert out["background"]["dice"] == pytest.approx(360 / 378)
    assert out["background"]["hd95"] == pytest.approx(1.0)
    assert len(acc.per_case_rows()) == 2


# ------------------------------------------------------------------ validation


def test_input_validation_names_the_case():
    a = np.zeros((6, 6, 6), dtype=np.int64)
    acc = VolumeMetrics(3)
    with pytest.raises(UserError, match=r"case 'p07'.*same shape.*\(6, 6, 6\) and \(6, 6, 7\)"):
        acc.add("p07", a, np.zeros((6, 6, 7), int), 1.0)
    with pytest.raises(UserError, match=r"case 'p08'.*pred has labels in \[0, 3\] but num_classes=3"):
        acc.add("p08", a + 3 * (np.arange(6)[:, None, None] == 0), a, 1.0)
    with pytest.raises(UserError, match=r"case 'p09'.*gt has labels in \[-1, -1\]"):
        acc.add("p09", a, a - 1, 1.0)
    with pytest.raises(UserError, match=r"case 'p10'.*non-integer"):
        acc.add("p10", a + 0.5, a, 1.0)
    with pytest.raises(UserError, match=r"case 'p11'.*\(X, Y, Z\).*shape \(6, 6\)"):
        acc.add("p11", a[0], a[0], 1.0)
    for bad, what in [
        ((1.0, 1.0), "three values"),
        ((1, 1, 1, 1), "get_zooms"),
        (-1.0, "positive"),
        ((1.0, 0.0, 1.0), "positive"),
        ((1.0, float("nan"), 1.0), "positive"),
        ("abc", "spacing"),
    ]:
        with pytest.raises(UserError) as e:
            acc.add("p12", a, a, bad)
        assert "p12" in str(e.value) and what in str(e.value)
    assert len(acc) == 0  # nothing half-added
    acc.add("ok", a, a, (1.0, 1.0, 2.5))
    with pytest.raises(UserError, match="added twice"):
        acc.add("ok", a, a, (1.0, 1.0, 2.5))
    with pytest.raises(UserError, match="case 'nosp' has no spacing but case 'ok' has one"):
        acc.add("nosp", a, a, None)
    with pytest.raises(UserError, match="num_classes >= 2"):
        VolumeMetrics(1)
    with pytest.raises(UserError, match="expected 3 class names"):
        VolumeMetrics(3, ["background", "a"])
    with pytest.raises(UserError, match="distinct"):
        VolumeMetrics(3, ["background", "a", "a"])
    with pytest.raises(UserError, match="call add"):
        VolumeMetrics(2).summary()
    assert check_spacing_3d(np.float32(0.5)) == (0.5, 0.5, 0.5)
    assert check_spacing_3d(None) is None


def test_accepted_label_dtypes():
    cube = _cube((6, 6, 6), (1, 1, 1), 3)
    ref = volume_metrics(cube, cube, 2)[1]
    for v in (cube.astype(bool), cube.astype(np.uint8), cube.astype(np.float32), cube[None]):
        assert volume_metrics(v, cube, 2)[1] == ref


# ------------------------------------------------------------------ outputs


def test_write_outputs(tmp_path: Path):
    rng = np.random.default_rng(2)
    acc = VolumeMetrics(3, ["background", "anterior", "posterior"])
    for i in range(3):
        acc.add(f"hippo/{i}", _blobs3d(rng, (10, 12, 8), 3), _blobs3d(rng, (10, 12, 8), 3), (1.0, 1.0, 2.5))
    acc.add("missed", np.zeros((10, 12, 8), int), _blobs3d(rng, (10, 12, 8), 3), (1.0, 1.0, 2.5))
    out = tmp_path / "eval" / "test"
    paths = acc.write_outputs(out, prefix="vol_")
    assert {p.name for p in paths.values()} == {"vol_per_case.csv", "vol_summary.json", "vol_summary.md"}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())  # no temp files
    s = json.loads(paths["summary_json"].read_text())
    assert s == acc.summary() and s["format"] == "medurwkv-volume-metrics-v1"
    assert (
        s["surface_connectivity"] == 6
        and "hd95" in s["definitions"]
        and "one_empty" in s["empty_structure_policy"]
    )
    with paths["per_case"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    orig = acc.per_case_rows()
    assert len(rows) == 4 * 2
    assert list(rows[0]) == list(orig[0])
    for r, o in zip(rows, orig):
        assert r["case_id"] == o["case_id"] and r["class_name"] == o["class_name"]
        assert float(r["dice"]) == pytest.approx(o["dice"])
        assert (r["hd95"] == "" and math.isnan(o["hd95"])) or float(r["hd95"]) == pytest.approx(o["hd95"])
    assert rows[-1]["status"] == "pred_empty" and rows[-1]["spacing_z"] == "2.5"
    md = paths["summary_md"].read_text()
    assert f"{s['headline']['value']:.4f}" in md and "| anterior |" in md and "| mean |" in md
    anterior = next(line for line in md.splitlines() if line.startswith("| anterior |"))
    assert "HD95 (mm)" in md and "n/a" not in anterior and anterior.endswith("| 1 (0 / 0 / 1) |")
    assert volume_summary_markdown(s, title="T").startswith("# T")


# ------------------------------------------------------------------ real volumes: MONAI and speed


def _load_label(root: Path, case: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    import nibabel as nib

    img = nib.load(root / "msd-hippocampus" / "labelsTr" / f"{case}.nii.gz")
    return np.asarray(img.dataobj).astype(np.int64), tuple(float(z) for z in img.header.get_zooms()[:3])


def _shift(a: np.ndarray, offset: tuple[int, int, int]) -> np.ndarray:
    # translate a (X, Y, Z) label map by whole voxels, filling with background
    out = np.zeros_like(a)
    src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, a.shape))
    dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, a.shape))
    out[dst] = a[src]
    return out


def _perturbations(gt: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    eroded = gt.copy()
    eroded[(gt == 1) & ~ndimage.binary_erosion(gt == 1)] = 0  # anterior loses its surface layer
    dilated = gt.copy()
    dilated[ndimage.binary_dilation(gt == 2) & (gt == 0)] = 2  # posterior grows into the background
    ragged = gt.copy()
    for c in (1, 2):
        edge = np.argwhere(surface_voxels(gt == c))  # (N, 3)
        ragged[tuple(edge[rng.random(len(edge)) < 0.1].T)] = 0  # 10 % of the surface voxels removed
    return {
        "shift_x": _shift(gt, (1, 0, 0)),
        "shift_xyz": _shift(gt, (1, -1, 2)),
        "eroded": eroded,
        "dilated": dilated,
        "ragged": ragged,
    }


def test_from_dataset_json_on_the_shared_hippocampus(shared_data_dir: Path, tmp_path: Path):
    """MSD's value -> name labels of the real dataset.json give the classes; path, folder and dict agree."""
    root = shared_data_dir / "msd-hippocampus"
    acc = VolumeMetrics.from_dataset_json(root / "dataset.json")
    assert acc.num_classes == 3 and acc.class_names == ["background", "Anterior", "Posterior"]
    assert acc.classes == [1, 2]
    meta = json.loads((root / "dataset.json").read_text())
    with_bg = VolumeMetrics.from_dataset_json(meta, include_background=True)
    assert with_bg.class_names == acc.class_names and with_bg.classes == [0, 1, 2]
    assert VolumeMetrics.from_dataset_json(root).class_names == acc.class_names  # the dataset folder
    gt, spacing = _load_label(shared_data_dir, "hippocampus_001")
    assert acc.add("hippocampus_001", gt, gt, spacing)["Posterior"]["dice"] == 1.0
    nnunet = {"labels": {"background": 0, "Anterior": 1, "Posterior": 2}}  # the same classes, nnU-Net form
    assert VolumeMetrics.from_dataset_json(nnunet).class_names == acc.class_names
    with pytest.raises(UserError, match=r"declares no classes"):
        VolumeMetrics.from_dataset_json({"name": "x"})
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "a", "3": "b"}}))
    with pytest.raises(UserError, match=r"dataset\.json: label values must be exactly 0\.\.2"):
        VolumeMetrics.from_dataset_json(tmp_path)


@pytest.mark.parametrize("case", HIPPO_CASES)
def test_agreement_with_monai_on_hippocampus(shared_data_dir: Path, case: str):
    from monai.metrics import DiceMetric, compute_average_surface_distance, compute_hausdorff_distance
    from monai.metrics.utils import get_edge_surface_distance

    gt, header_spacing = _load_label(shared_data_dir, case)
    assert gt.ndim == 3 and set(np.unique(gt)) == {0, 1, 2}
    yt = _onehot(gt, 3)
    for name, pred in _perturbations(gt, int(case[-3:])).items():
        yp = _onehot(pred, 3)
        for spacing in (header_spacing, (1.0, 1.0, 2.5), (0.7, 1.3, 2.5)):
            ours = volume_metrics(pred, gt, 3, spacing, case_id=case)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MONAI's own deprecation notices
                dm = DiceMetric(include_background=False, reduction="none")
                dm(yp, yt)
                dice = dm.aggregate()[0]
                hd = compute_hausdorff_distance(yp, yt, percentile=95, directed=False, spacing=spacing)[0]
                asd = compute_average_surface_distance(yp, yt, symmetric=True, spacing=spacing)[0]
            for c in (1, 2):
                m, where = ours[c], f"{case} {name} spacing={spacing} class {c}"
                assert m["dice"] == pytest.approx(float(dice[c - 1]), abs=1e-6), where
                assert m["assd"] == pytest.approx(float(asd[c - 1]), rel=1e-6, abs=1e-6), where
                # MONAI's directed distance sets (float32) are ours, voxel for voxel ...
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _, dists, _ = get_edge_surface_distance(
                        torch.from_numpy(pred == c),
                        torch.from_numpy(gt == c),
                        spacing=spacing,
                        symmetric=True,
                    )
                d_pg, d_gp = (d.double().numpy() for d in dists)
                mine = surface_distances_3d(pred == c, gt == c, spacing)
                np.testing.assert_allclose(
                    np.sort(mine[0]), np.sort(d_pg), rtol=1e-6, atol=1e-6, err_msg=where
                )
                np.testing.assert_allclose(
                    np.sort(mine[1]), np.sort(d_gp), rtol=1e-6, atol=1e-6, err_msg=where
                )
                # ... so HD95, the larger directed 95th percentile, agrees to 1e-6 when reduced in float64 ...
                ref = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
                assert m["hd95"] == pytest.approx(ref, rel=1e-6, abs=1e-6), where
                # ... and to 1e-5 relative with MONAI's torch.quantile in float32, whose interpolation
                # position q * (n - 1) is rounded to float32 (a few 1e-6 relative on several hundred surface
                # voxels)
                assert m["hd95"] == pytest.approx(float(hd[c - 1]), rel=1e-5), where
                if name.startswith("shift"):
                    # a translation puts the percentile on a run of equal distances: no interpolation at all
                    assert m["hd95"] == pytest.approx(float(hd[c - 1]), rel=1e-6, abs=1e-6), where


@pytest.mark.parametrize(
    ("shape", "k", "spacing", "seed"), [((20, 24, 16), 3, (1.0, 1.0, 2.5), 0), ((18, 14, 22), 4, None, 1)]
)
def test_agreement_with_monai_touching_the_border(shape, k, spacing, seed):
    # random smooth regions that reach the volume faces: MONAI pads (crop with a margin), we treat the
    # outside as background; both make the faces surface
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    gt, pred = _blobs3d(rng, shape, k), _blobs3d(rng, shape, k)
    ours = volume_metrics(pred, gt, k, spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(_onehot(pred, k), _onehot(gt, k), percentile=95, spacing=spacing)[0]
        asd = compute_average_surface_distance(
            _onehot(pred, k), _onehot(gt, k), symmetric=True, spacing=spacing
        )[0]
    for c in range(1, k):
        assert ours[c]["hd95"] == pytest.approx(float(hd[c - 1]), rel=1e-5)
        assert ours[c]["assd"] == pytest.approx(float(asd[c - 1]), rel=1e-6, abs=1e-6)


def test_speed_on_a_hippocampus_volume(shared_data_dir: Path):
    gt, spacing = _load_label(shared_data_dir, HIPPO_CASES[0])
    pred = _perturbations(gt, 0)["ragged"]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        volume_metrics(pred, gt, 3, spacing)
        times.append(time.perf_counter() - t0)
    # a few ms on one free core; the bound leaves room for a loaded shared CPU
    assert float(np.median(times)) < 0.1, times
