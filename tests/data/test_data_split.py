from __future__ import annotations

import json
import re
import stat

import pytest
from data_synth import make_dataset, tiny_dataset

from medurwkv.data import auto_group, discover, ensure_split, load_split, make_split, save_split
from medurwkv.data.split import HC18_GROUP, split_checksum


def hc18_like_ids(n_exams: int = 60) -> list[str]:
    ids = []
    for e in range(n_exams):
        ids += [f"{e:03d}_HC"] + [f"{e:03d}_{k}HC" for k in range(2, 2 + e % 3)]  # 1..3 frames per exam
    return ids


def group_of(i: str) -> str:
    return re.search(HC18_GROUP, i).group(1)


def test_grouped_split_partitions_and_keeps_groups_together():
    ids = hc18_like_ids()
    split = make_split(ids, val=0.1, test=0.2, group=HC18_GROUP, seed=3)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)
    groups = [{group_of(i) for i in p} for p in parts]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    n = len(ids)
    assert abs(len(split.test) - 0.2 * n) <= 3 and abs(len(split.val) - 0.1 * n) <= 3
    assert split.checksum == split_checksum(split.train, split.val, split.test)


def test_split_is_deterministic_given_seed():
    ids = hc18_like_ids()
    a = make_split(ids, group=HC18_GROUP, seed=1)
    b = make_split(list(reversed(ids)), group=HC18_GROUP, seed=1)  # input order does not matter
    c = make_split(ids, group=HC18_GROUP, seed=2)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    assert a.test != c.test


def test_small_dataset_gets_non_empty_splits_and_bad_regex():
    split = make_split(["a", "b", "c", "d"], val=0.1, test=0.1, seed=0)
    assert split.val and split.test and split.train
    with pytest.raises(ValueError, match="exactly one capture group"):
        make_split(["a"], group=r"^\d+_")
    with pytest.raises(ValueError, match="do not match the group regex"):
        make_split(["000_HC", "abc"], group=HC18_GROUP)
    with pytest.raises(ValueError, match="nothing to train"):
        make_split(["a", "b"], val=0.5, test=0.5)


def test_auto_group():
    assert auto_group(["010_HC", "010_2HC"]) == HC18_GROUP
    assert auto_group(["010_HC", "image_1"]) is None


def test_kfold_rotates_val_over_the_rest():
    ids = hc18_like_ids(40)
    split = make_split(ids, test=0.2, group=HC18_GROUP, seed=0, folds=4)
    assert len(split.folds) == 4
    pool = set(ids) - set(split.test)
    seen = []
    for f in split.folds:
        assert set(f["train"]) | set(f["val"]) == pool and not set(f["train"]) & set(f["val"])
        assert not {group_of(i) for i in f["train"]} & {group_of(i) for i in f["val"]}
        seen += f["val"]
    assert sorted(seen) == sorted(pool)  # every non-test id validates exactly once
    sizes = [len(f["val"]) for f in split.folds]
    assert max(sizes) - min(sizes) <= 3


def test_save_load_checksum_and_tampering(tmp_path):
    root = tiny_dataset(tmp_path)
    index = discover(root)
    split = make_split(index.ids, group=HC18_GROUP, seed=0, folds=2, test=0.25)
    path = save_split(split, tmp_path / "s.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "medurwkv-split-v1" and doc["group"] == HC18_GROUP and doc["seed"] == 0
    assert set(doc) >= {"train", "val", "test", "fractions", "checksum", "created", "folds"}
    loaded = load_split(path, index)
    assert (loaded.train, loaded.val, loaded.test) == (split.train, split.val, split.test)
    f1 = load_split(path, index, fold=1)
    assert f1.fold == 1 and f1.val == sorted(split.folds[1]["val"])
    with pytest.raises(ValueError, match="out of range"):
        load_split(path, index, fold=2)
    with pytest.raises(FileExistsError, match="frozen"):
        save_split(split, path)

    doc["test"] = doc["test"][:-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="checksum"):
        load_split(path, index)


def test_load_detects_changed_dataset(tmp_path):
    root = tiny_dataset(tmp_path)
    index = discover(root)
    path = save_split(make_split(index.ids, group=HC18_GROUP), tmp_path / "s.json")
    (root / "images" / "003_HC.png").unlink()
    with pytest.raises(ValueError, match=r"003_HC.*dataset changed"):
        load_split(path, discover(root))
    make_dataset(root, ["003_HC", "009_HC"], seed=5)  # restore 003_HC, add a pair the split does not know
    with pytest.warns(UserWarning, match="009_HC"):
        load_split(path, discover(root))


def test_ensure_split_creates_then_loads(tmp_path, capsys):
    root = tiny_dataset(tmp_path)
    split, path, created = ensure_split(root)
    assert created and path == root / "splits.json" and split.group == HC18_GROUP  # auto-detected
    assert "created split" in capsys.readouterr().out
    again, path2, created2 = ensure_split(root)
    assert not created2 and path2 == path and again.checksum == split.checksum
    with pytest.raises(ValueError, match="seed: asked 5"):
        ensure_split(root, seed=5)
    other, out, created3 = ensure_split(root, seed=5, out=tmp_path / "elsewhere" / "s.json", group="none")
    assert created3 and other.group is None and out.is_file()


def test_ensure_split_group_from_dataset_json_and_test_subsets(tmp_path):
    root = make_dataset(tmp_path / "d", [f"p{p}_s{s}" for p in range(6) for s in range(2)])
    meta = {
        "labels": {"background": 0, "fg": 1},
        "split_group": r"^(p\d+)_",
        "subsets": {"official_test": ["p0_s0", "p0_s1", "p5_s0", "p5_s1"]},
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    split, _, _ = ensure_split(root, test_subsets=["official_test"], val=0.2, verbose=False)
    assert split.group == r"^(p\d+)_"
    assert split.test == ["p0_s0", "p0_s1", "p5_s0", "p5_s1"] and split.test_subsets == ["official_test"]
    assert len({i.split("_")[0] for i in split.val}) == len(split.val) // 2


def test_read_only_dataset_folder_suggests_out(tmp_path):
    root = tiny_dataset(tmp_path)
    mode = root.stat().st_mode
    root.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        with pytest.raises(PermissionError, match="--out"):
            ensure_split(root, verbose=False)
        assert not (root / "splits.json").exists()
    finally:
        root.chmod(mode)
