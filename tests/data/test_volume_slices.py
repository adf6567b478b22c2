"""The volume slice layer (medurwkv.data.volume_slices): slicing axis, intensity rules, 2.5D slices, the cached
slice index and foreground oversampling, on tiny synthetic NIfTI datasets written into tmp_path.

Expectations are computed here by hand (numpy on the arrays the test wrote), never by the code under test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medurwkv.data.volume_slices import (
    VOLUME_PREPROCESS_FORMAT,
    SliceIndex,
    VolumeSliceDataset,
    VolumeSpec,
    build_slice_index,
    fit_intensity,
    intensity_schemes,
    label_slice,
    normalize_volume,
    resolve_axis,
    slice_image,
)
from medurwkv.data.volumes import discover_volumes
from medurwkv.errors import UserError

CLASSES = ["background", "a", "b"]


def nifti(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.0, 1.0])), str(path))
    return path


def nnunet3d(root: Path, cases: dict[str, tuple[list[np.ndarray], np.ndarray]], channels: list[str]) -> Path:
    """nnU-Net v2 raw: imagesTr/<case>_<c:04d>.nii.gz (one (X, Y, Z) float32 file per channel), labelsTr/."""
    for case, (images, label) in cases.items():
        for c, image in enumerate(images):
            nifti(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", image.astype(np.float32))
        nifti(root / "labelsTr" / f"{case}.nii.gz", label.astype(np.uint8))
    meta = {
        "channel_names": {str(i): n for i, n in enumerate(channels)},
        "labels": {n: i for i, n in enumerate(CLASSES)},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def zscore(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.mean()) / x.std()


# ---------------------------------------------------------------------------------------------- axis, schemes


@pytest.mark.parametrize(
    ("spacings", "expected"),
    [
        ([(1.0, 1.0, 3.0)], 2),
        ([(3.0, 1.0, 1.0)], 0),
        ([(0.7, 4.0, 0.7)], 1),
        ([(1.0, 1.0, 1.0), (1.0, 1.0, 1.0)], 2),  # isotropic: Z
        ([(3.0, 3.0, 1.0)], 1),  # a tie: the last of the largest
        ([], 2),  # no spacing known: Z
        # the median, not the mean: median (1, 1, 2.5) -> Z, where the mean (3.67, 1, 2) would give X
        ([(1.0, 1.0, 2.5), (1.0, 1.0, 2.5), (9.0, 1.0, 1.0)], 2),
    ],
)
def test_resolve_axis_auto_takes_the_largest_median_spacing(spacings, expected):
    assert resolve_axis("auto", spacings) == expected


@pytest.mark.parametrize(("axis", "expected"), [("0", 0), ("2", 2), (1, 1), (0, 0), (np.int64(2), 2)])
def test_resolve_axis_keeps_an_explicit_axis(axis, expected):
    got = resolve_axis(axis, [(1.0, 1.0, 5.0)])  # an explicit axis wins over the spacing
    assert got == expected and type(got) is int


@pytest.mark.parametrize("axis", ["3", "x", "", " 1", "-1", 3, -1, 1.0, None, True])
def test_resolve_axis_refuses_bad_values(axis):
    with pytest.raises(UserError, match=r"expected slice axis"):
        resolve_axis(axis, [(1.0, 1.0, 3.0)])


def test_intensity_schemes_from_channel_names_and_override():
    assert intensity_schemes(["CT", "ct ", "MRI", "T2", "Ct"]) == ["ct", "ct", "zscore", "zscore", "ct"]
    assert intensity_schemes(["CT", "MRI"], "zscore") == ["zscore", "zscore"]
    assert intensity_schemes(["MRI", "T2"], "ct") == ["ct", "ct"]
    assert intensity_schemes([]) == []
    with pytest.raises(UserError, match=r"expected intensity one of .*got 'CT'"):
        intensity_schemes(["CT"], "CT")


def test_volume_spec_round_trip_and_bad_dicts():
    spec = VolumeSpec(axis=0, context=2, channel_names=["CT", "PET"], intensity=[{"scheme": "zscore"}] * 2)
    assert spec.num_channels == 2 and spec.in_channels == 10  # 2 channels x (2 * 2 + 1) slices
    d = json.loads(json.dumps(spec.to_dict()))  # as stored in a checkpoint / ONNX metadata
    assert d["format"] == VOLUME_PREPROCESS_FORMAT
    assert VolumeSpec.from_dict({**d, "from_a_newer_version": 1}) == spec  # unknown keys are ignored
    with pytest.raises(UserError, match=r"best.pt: expected volume preprocessing of format .*got 'v0'"):
        VolumeSpec.from_dict({**d, "format": "v0"}, "best.pt")
    with pytest.raises(UserError, match=r"expected volume preprocessing of format .*got 'list'"):
        VolumeSpec.from_dict([], "best.pt")  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"none for \['axis', 'intensity'\]"):
        VolumeSpec.from_dict({k: v for k, v in d.items() if k not in ("axis", "intensity")}, "m.onnx")


# ---------------------------------------------------------------------------------------------- intensity

SHAPE = (8, 7, 6)  # (X, Y, Z)


def ct_case(
    rng: np.random.Generator, fg_mean: float, outliers: bool = False
) -> tuple[list[np.ndarray], np.ndarray]:
    """Air (-1000 HU) around a 4x4x4 block of labelled tissue (64 voxels, so all are sampled)."""
    image = np.full(SHAPE, -1000.0, np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 2:6, 1:5] = 1
    label[2:6, 2:6, 4] = 2
    tissue = rng.normal(fg_mean, 30.0, size=64).astype(np.float32)
    if outliers:  # metal and an air pocket: the 0.5 / 99.5 percentiles of the 128 training voxels clip them
        tissue[:2] = [3000.0, -900.0]
    image[label > 0] = tissue
    return [image], label


@pytest.fixture
def ct_dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    cases = {
        "ct_a": ct_case(rng, 40.0, outliers=True),
        "ct_b": ct_case(rng, 60.0),
        "ct_val": ct_case(rng, 500.0),
    }
    return nnunet3d(tmp_path / "Dataset001_CT", cases, ["CT"])


def test_fit_intensity_ct_uses_training_foreground_percentiles_and_normalize_applies_them(ct_dataset):
    index = discover_volumes(ct_dataset)
    assert index.channel_names == ["CT"]
    rules = fit_intensity(index, ["ct_a", "ct_b"], intensity_schemes(index.channel_names), progress=False)
    # by hand: every foreground voxel of the two training cases (not ct_val, whose tissue is at 500)
    fg = []
    for case in ("ct_a", "ct_b"):
        img = nib.load(str(ct_dataset / "imagesTr" / f"{case}_0000.nii.gz")).get_fdata(dtype=np.float32)
        lab = np.asanyarray(nib.load(str(ct_dataset / "labelsTr" / f"{case}.nii.gz")).dataobj)
        fg.append(img[lab > 0].astype(np.float64))
    v = np.concatenate(fg)
    assert v.size == 128
    lo, hi = np.percentile(v, 0.5), np.percentile(v, 99.5)
    clipped = np.clip(v, lo, hi)
    assert -900.0 < lo < 0.0 and 100.0 < hi < 3000.0  # the outliers are clipped, the tissue kept
    (rule,) = rules
    assert rule["scheme"] == "ct"
    assert rule["lower"] == pytest.approx(lo, rel=1e-12) and rule["upper"] == pytest.approx(hi, rel=1e-12)
    assert rule["mean"] == pytest.approx(clipped.mean(), rel=1e-9)
    assert rule["std"] == pytest.approx(clipped.std(), rel=1e-9)  # population std (ddof 0), as nnU-Net

    # normalize_volume: (clip(x) - mean) / std with the fitted numbers, on any volume (here the val case)
    x = nib.load(str(ct_dataset / "imagesTr" / "ct_val_0000.nii.gz")).get_fdata(dtype=np.float32)
    out = normalize_volume(x[None], rules)
    assert out.shape == (1, *SHAPE) and out.dtype == np.float32
    expected = (np.clip(x.astype(np.float64), lo, hi) - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)
    assert out.min() == pytest.approx((lo - clipped.mean()) / clipped.std(), rel=1e-5)  # air is clipped to lo


def test_zscore_channels_are_normalised_per_volume_without_reading_cases():
    # no CT channel: nothing to fit, so no case is read (these case names do not exist)
    assert fit_intensity(None, ["no-such-case"], ["zscore", "zscore"], progress=False) == [  # type: ignore[arg-type]
        {"scheme": "zscore"},
        {"scheme": "zscore"},
    ]
    rng = np.random.default_rng(3)
    image = np.stack([100.0 + 20.0 * rng.normal(size=SHAPE), 5.0 * rng.normal(size=SHAPE) - 3.0]).astype(
        np.float32
    )
    out = normalize_volume(image, [{"scheme": "zscore"}, {"scheme": "zscore"}])
    for c in range(2):
        assert abs(float(out[c].mean(dtype=np.float64))) < 1e-5
        assert float(out[c].std(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(out[c], zscore(image[c]), atol=1e-5)
    # a constant channel becomes 0, not NaN
    flat = normalize_volume(np.full((1, *SHAPE), 7.0, np.float32), [{"scheme": "zscore"}])
    assert np.all(flat == 0.0)


def test_wrong_channel_count_and_unknown_scheme_are_user_errors(ct_dataset):
    with pytest.raises(UserError, match=r"C = 1 channel\(s\).*got shape \(2, 8, 7, 6\)"):
        normalize_volume(np.zeros((2, *SHAPE), np.float32), [{"scheme": "zscore"}])
    with pytest.raises(UserError, match=r"expected a volume \(C, X, Y, Z\)"):
        normalize_volume(np.zeros(SHAPE, np.float32), [{"scheme": "zscore"}])
    with pytest.raises(UserError, match=r"unknown intensity scheme 'minmax'"):
        normalize_volume(np.zeros((1, *SHAPE), np.float32), [{"scheme": "minmax"}])
    index = discover_volumes(ct_dataset)  # one CT channel on disk, two schemes asked for
    with pytest.raises(UserError, match=r"expected 2 channel\(s\).*got an image of 1"):
        fit_intensity(index, ["ct_a"], ["ct", "ct"], progress=False)


def test_ct_without_training_foreground_is_a_user_error(tmp_path):
    empty = np.zeros(SHAPE, np.uint8)
    root = nnunet3d(
        tmp_path / "Dataset002_Empty",
        {"e1": ([np.full(SHAPE, 10.0)], empty), "e2": ([np.full(SHAPE, 20.0)], empty)},
        ["CT"],
    )
    index = discover_volumes(root)
    with pytest.raises(UserError, match=r"channel 'CT' is CT.*none of the 2 training cases has any"):
        fit_intensity(index, ["e1", "e2"], ["ct"], progress=False)


# ---------------------------------------------------------------------------------------------- slicing


def test_slice_image_axes_context_and_edges():
    vol = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (C=2, X=3, Y=4, Z=5)
    for k in range(5):  # axis 2: (X, Y) planes
        img = slice_image(vol, 2, k)
        assert img.shape == (3, 4, 2) and img.dtype == np.float32
        for c in range(2):
            np.testing.assert_array_equal(img[..., c], vol[c, :, :, k])
    img = slice_image(vol, 0, 1)  # axis 0: (Y, Z) planes
    assert img.shape == (4, 5, 2)
    np.testing.assert_array_equal(img[..., 1], vol[1, 1, :, :])
    img = slice_image(vol, 1, 3)  # axis 1: (X, Z) planes
    assert img.shape == (3, 5, 2)
    np.testing.assert_array_equal(img[..., 0], vol[0, :, 3, :])

    # 2.5D, context 1: channel-major [c0 k-1, c0 k, c0 k+1, c1 k-1, c1 k, c1 k+1]
    img = slice_image(vol, 2, 2, context=1)
    assert img.shape == (3, 4, 6)
    order = [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    for j, (c, k) in enumerate(order):
        np.testing.assert_array_equal(img[..., j], vol[c, :, :, k])
    # at the edges the edge slice repeats: k=0 -> [0, 0, 1], k=4 -> [3, 4, 4]
    for k, ks in ((0, (0, 0, 1)), (4, (3, 4, 4))):
        img = slice_image(vol, 2, k, context=1)
        for j, (c, kk) in enumerate((c, kk) for c in range(2) for kk in ks):
            np.testing.assert_array_equal(img[..., j], vol[c, :, :, kk])
    img = slice_image(vol, 0, 0, context=2)  # axis 0 with context 2: X slices [0, 0, 0, 1, 2]
    assert img.shape == (4, 5, 10)
    for j, x in enumerate((0, 0, 0, 1, 2)):
        np.testing.assert_array_equal(img[..., j], vol[0, x])
        np.testing.assert_array_equal(img[..., 5 + j], vol[1, x])


def test_label_slice_matches_the_image_grid():
    labels = np.arange(3 * 4 * 5).reshape(3, 4, 5).astype(np.uint8)  # (X, Y, Z)
    lab = label_slice(labels, 2, 3)
    assert lab.dtype == np.int64 and lab.shape == (3, 4)
    np.testing.assert_array_equal(lab, labels[:, :, 3])
    np.testing.assert_array_equal(label_slice(labels, 0, 2), labels[2, :, :])
    np.testing.assert_array_equal(label_slice(labels, 1, 0), labels[:, 0, :])
    vol = labels[None].astype(np.float32)
    for axis, k in ((0, 1), (1, 2), (2, 4)):
        assert slice_image(vol, axis, k).shape[:2] == label_slice(labels, axis, k).shape


# ---------------------------------------------------------------------------------------------- slice index

MRI_SHAPE = (5, 4, 7)  # (X, Y, Z)


def mri_cases(seed: int = 0) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """a: class 1 in z 2..3 (x 1..2), class 2 at (4, 3, 6); b: one voxel at the origin; c: no label."""
    rng = np.random.default_rng(seed)
    la = np.zeros(MRI_SHAPE, np.uint8)
    la[1:3, 1:3, 2:4] = 1
    la[4, 3, 6] = 2
    lb = np.zeros(MRI_SHAPE, np.uint8)
    lb[0, 0, 0] = 1
    lc = np.zeros(MRI_SHAPE, np.uint8)
    return {
        c: ([200.0 + 50.0 * rng.normal(size=MRI_SHAPE)], lab) for c, lab in (("a", la), ("b", lb), ("c", lc))
    }


def zscore_spec(axis: int = 2, context: int = 0) -> VolumeSpec:
    return VolumeSpec(axis=axis, context=context, channel_names=["T2"], intensity=[{"scheme": "zscore"}])


def npy_mtimes(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(cache.glob("*.npy"))}


def test_build_slice_index_writes_caches_and_reuses_them(tmp_path):
    cases = mri_cases()
    root = nnunet3d(tmp_path / "Dataset003_MR", cases, ["T2"])
    index = discover_volumes(root)
    cache = tmp_path / "run" / "slices"
    logs: list[str] = []
    si = build_slice_index(
        index, ["a", "b", "c"], zscore_spec(), cache, CLASSES, progress=False, log=logs.append
    )

    names = {f"{c}_{kind}.npy" for c in "abc" for kind in ("image", "label")}
    assert {p.name for p in cache.iterdir()} == names | {"index.json"}
    assert si.ids == [f"{c}#{k:04d}" for c in "abc" for k in range(7)] and si.ids[:2] == ["a#0000", "a#0001"]
    assert si.num_slices_of == {"a": 7, "b": 7, "c": 7}
    assert si.foreground_of == {"a": [2, 3, 6], "b": [0], "c": []}
    assert si.foreground_ids(["a", "b"]) == ["a#0002", "a#0003", "a#0006", "b#0000"]
    assert si.num_classes == 3 and len(si) == 21
    assert logs == [f"slices: 3 case(s) normalised and cached in {cache}, 0 reused"]
    for case, (images, label) in cases.items():
        cached = np.load(cache / f"{case}_image.npy")
        assert cached.shape == (1, *MRI_SHAPE) and cached.dtype == np.float32
        np.testing.assert_allclose(cached[0], zscore(images[0].astype(np.float32)), atol=1e-5)
        cached_label = np.load(cache / f"{case}_label.npy")
        assert cached_label.dtype == np.uint8
        np.testing.assert_array_equal(cached_label, label)
    # the training loop's view: (H, W, C) slices and (H, W) masks of the cached volumes
    np.testing.assert_allclose(
        si.load_image("a#0003")[..., 0], zscore(cases["a"][0][0].astype(np.float32))[:, :, 3], atol=1e-5
    )
    np.testing.assert_array_equal(si.load_mask("a#0006"), cases["a"][1][:, :, 6])
    assert si.load_mask("a#0006")[4, 3] == 2

    # a second build finds everything valid: nothing is rewritten
    before = npy_mtimes(cache)
    si2 = build_slice_index(
        index, ["a", "b", "c"], zscore_spec(), cache, CLASSES, progress=False, log=logs.append
    )
    assert logs[-1] == f"slices: 0 case(s) normalised and cached in {cache}, 3 reused"
    assert npy_mtimes(cache) == before
    assert si2.ids == si.ids and si2.foreground_of == si.foreground_of

    # touching one source file rebuilds that case only (the cached files get an old stamp to tell them apart)
    old = 1_000_000_000_000_000_000
    for p in cache.glob("*.npy"):
        os.utime(p, ns=(old, old))
    label_b = root / "labelsTr" / "b.nii.gz"
    st = label_b.stat()
    os.utime(label_b, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    build_slice_index(index, ["a", "b", "c"], zscore_spec(), cache, CLASSES, progress=False, log=logs.append)
    assert logs[-1] == f"slices: 1 case(s) normalised and cached in {cache}, 2 reused"
    stamps = npy_mtimes(cache)
    assert [n for n, t in stamps.items() if t != old] == ["b_image.npy", "b_label.npy"]

    # new content in one image file: that case's cache holds the new numbers
    for p in cache.glob("*.npy"):
        os.utime(p, ns=(old, old))
    new_c = np.linspace(-5.0, 9.0, np.prod(MRI_SHAPE)).reshape(MRI_SHAPE).astype(np.float32)
    nifti(root / "imagesTr" / "c_0000.nii.gz", new_c)
    build_slice_index(index, ["a", "b", "c"], zscore_spec(), cache, CLASSES, progress=False, log=logs.append)
    assert logs[-1] == f"slices: 1 case(s) normalised and cached in {cache}, 2 reused"
    assert [n for n, t in npy_mtimes(cache).items() if t != old] == ["c_image.npy", "c_label.npy"]
    np.testing.assert_allclose(np.load(cache / "c_image.npy")[0], zscore(new_c), atol=1e-5)

    # another spec (slicing axis) invalidates every case; foreground is then per X slice
    si_x = build_slice_index(
        index, ["a", "b", "c"], zscore_spec(axis=0), cache, CLASSES, progress=False, log=logs.append
    )
    assert logs[-1] == f"slices: 3 case(s) normalised and cached in {cache}, 0 reused"
    assert si_x.num_slices_of == {"a": 5, "b": 5, "c": 5}
    assert si_x.foreground_of == {"a": [1, 2, 4], "b": [0], "c": []}

    # what other DDP ranks read back
    opened = SliceIndex.open(cache, root, CLASSES)
    assert opened.cases == ["a", "b", "c"] and opened.ids == si_x.ids
    assert opened.num_slices_of == si_x.num_slices_of and opened.foreground_of == si_x.foreground_of
    assert opened.spec == si_x.spec and opened.spec.format == VOLUME_PREPROCESS_FORMAT
    np.testing.assert_array_equal(opened.load_image("a#0004"), si_x.load_image("a#0004"))
    np.testing.assert_array_equal(opened.load_mask("a#0004"), cases["a"][1][4])


def test_build_slice_index_refuses_a_case_without_label(tmp_path):
    root = nnunet3d(tmp_path / "Dataset004_MR", mri_cases(), ["T2"])
    index = discover_volumes(root)
    index.label_paths["b"] = None  # as for an unlabelled case
    with pytest.raises(UserError, match=r"case 'b' .* has no label"):
        build_slice_index(index, ["a", "b"], zscore_spec(), tmp_path / "slices", CLASSES, progress=False)


# ---------------------------------------------------------------------------------------------- sampling

FG_Z = (0, 10, 20, 30, 40)  # 5 of 50 slices per case hold foreground: 10 %


@pytest.fixture(scope="module")
def sparse_index(tmp_path_factory: pytest.TempPathFactory) -> SliceIndex:
    """Two cases of 50 Z slices, each with foreground on the slices FG_Z only (10 of 100 slices)."""
    tmp = tmp_path_factory.mktemp("sparse")
    shape = (3, 3, 50)
    rng = np.random.default_rng(1)
    cases = {}
    for case in ("p", "q"):
        label = np.zeros(shape, np.uint8)
        label[1, 1, list(FG_Z)] = 1
        cases[case] = ([rng.normal(size=shape)], label)
    root = nnunet3d(tmp / "Dataset005_Sparse", cases, ["T2"])
    return build_slice_index(
        discover_volumes(root), ["p", "q"], zscore_spec(), tmp / "slices", CLASSES, progress=False
    )


def dataset(index: SliceIndex, ratio: float, *, train: bool = True, seed: int = 0) -> VolumeSliceDataset:
    return VolumeSliceDataset(
        index,
        index.ids,
        foreground_ratio=ratio,
        train=train,
        img_size=None,
        in_channels=1,
        normalize="none",
        augment=False,
        seed=seed,
    )


def sample_ids(ds: VolumeSliceDataset, positions=None) -> list[str]:
    return [ds[i]["id"] for i in (range(len(ds)) if positions is None else positions)]


def test_foreground_ratio_extremes(sparse_index):
    fg = {f"{c}#{k:04d}" for c in "pq" for k in FG_Z}
    assert set(sparse_index.foreground_ids(["p", "q"])) == fg
    ds = dataset(sparse_index, 1.0)
    drawn = sample_ids(ds)
    assert len(drawn) == 100 and set(drawn) <= fg
    assert len(set(drawn)) >= 5  # drawn at random among the foreground slices, not one repeated
    s = ds[0]
    assert s["image"].shape == (1, 3, 3) and int(s["mask"][1, 1]) == 1  # the sample is that slice's data
    assert sample_ids(dataset(sparse_index, 0.0)) == sparse_index.ids  # uniform: each position its own slice


def test_foreground_ratio_half_gives_about_55_percent(sparse_index):
    ds = dataset(sparse_index, 0.5)
    fg = set(sparse_index.foreground_ids(["p", "q"]))
    hits = n = 0
    for epoch in range(10):  # 1000 draws: P(fg) = 0.5 + 0.5 * 0.1 = 0.55, std 0.016
        ds.set_epoch(epoch)
        ids = sample_ids(ds)
        hits += sum(i in fg for i in ids)
        n += len(ids)
    assert 0.49 < hits / n < 0.61


def test_sampling_depends_on_seed_epoch_and_position_only(sparse_index):
    ds = dataset(sparse_index, 0.5, seed=3)
    ds.set_epoch(2)
    forward = sample_ids(ds)
    backward = sample_ids(ds, reversed(range(len(ds))))[::-1]
    assert forward == backward
    other = dataset(sparse_index, 0.5, seed=3)  # a fresh dataset (another worker) sees the same stream
    other.set_epoch(2)
    assert sample_ids(other, [57, 3, 99, 0]) == [forward[57], forward[3], forward[99], forward[0]]
    assert forward != sparse_index.ids  # some positions were replaced
    ds.set_epoch(3)
    assert sample_ids(ds) != forward  # another epoch, another draw
    assert sample_ids(dataset(sparse_index, 0.5, seed=4)) != sample_ids(dataset(sparse_index, 0.5, seed=3))


def test_validation_never_oversamples_and_ratio_is_checked(sparse_index):
    val = dataset(sparse_index, 1.0, train=False)
    assert val.foreground_ratio == 0.0 and sample_ids(val) == sparse_index.ids
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match=r"foreground oversampling ratio in \[0, 1\]"):
            dataset(sparse_index, bad)


def test_oversampling_stays_inside_the_dataset_ids(sparse_index):
    # a dataset of part of case p's slices draws foreground from those slices only
    ids = [f"p#{k:04d}" for k in range(25)]
    ds = VolumeSliceDataset(
        sparse_index,
        ids,
        foreground_ratio=1.0,
        train=True,
        img_size=None,
        in_channels=1,
        normalize="none",
        augment=False,
    )
    assert set(sample_ids(ds)) == {"p#0000", "p#0010", "p#0020"}


def test_inplane_resampling_keeps_the_slice_axis_and_maps_scale():
    from medurwkv.data.volume_slices import inplane_zoom, require_spacing, resample
    from medurwkv.data.volumes import Volume

    # spacing (0.5, 2.0, 4.0) mm sliced along Z, to 1 mm: X is halved (factor 0.5), Y doubled (2), Z untouched
    assert inplane_zoom((0.5, 2.0, 4.0), 2, 1.0) == (0.5, 2.0, 1.0)
    assert inplane_zoom((0.5, 2.0, 4.0), 0, 1.0) == (1.0, 2.0, 4.0)
    c, x, y, z = np.meshgrid(np.arange(2), np.arange(8), np.arange(4), np.arange(3), indexing="ij")
    vol = (100.0 * c + 12.0 * x + 3.0 * y + z).astype(np.float32)  # (C, X, Y, Z), linear in the indices
    out = resample(vol, (0.5, 2.0, 1.0), order=1)
    assert out.shape == (2, 4, 8, 3)
    # pixel-edge-aligned grids: new pixel i sits at old coordinate (i + 0.5) / zoom - 0.5, where a linear volume
    # interpolates exactly (X: 0.5, 2.5, 4.5, 6.5; Y: j / 2 - 0.25, inside [0, 3] for j = 1..6)
    i, j, k = np.meshgrid(np.arange(4), np.arange(1, 7), np.arange(3), indexing="ij")
    for ch in range(2):
        want = 100.0 * ch + 12.0 * (2 * i + 0.5) + 3.0 * (j / 2 - 0.25) + k
        assert np.allclose(out[ch][:, 1:7, :], want, atol=1e-4)
    labels = np.zeros((8, 4, 3), np.int64)
    labels[4:, :, 1] = 2
    lab = resample(labels, (0.5, 2.0, 1.0), order=0)
    assert lab.shape == (4, 8, 3) and set(np.unique(lab).tolist()) == {0, 2}
    assert (lab[2:, :, 1] == 2).all() and (lab[:2] == 0).all() and (lab[:, :, [0, 2]] == 0).all()
    assert resample(vol, (1.0, 1.0, 1.0), order=1) is vol  # nothing to do
    ref = Volume(path=Path("x.npz"), array=None, affine=np.eye(4), spacing=(1.0, 1.0, 1.0), orientation="RAS",
                 shape=(8, 4, 3), dtype="float32", spacing_known=False)  # fmt: skip
    with pytest.raises(UserError, match="case 'c7' has no voxel spacing"):
        require_spacing(ref, "c7")
