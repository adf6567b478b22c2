"""``benchmarks/bench_pretrain.py``: the label subsets (nested, whole exams) and the equal-budget schedule."""

from __future__ import annotations

from bench_scripts import load_benchmark


def test_label_subsets_are_nested_whole_groups_of_at_least_the_share() -> None:
    bench = load_benchmark("bench_pretrain")
    # 40 exams of 1-3 images each, HC18-style ids
    ids = [f"{e:03d}_{k}HC" for e in range(40) for k in range(1 + e % 3)]
    subsets = bench.label_subsets(ids, r"^(\d{3})_", [10, 25, 100], seed=0)
    exam = {i: i[:3] for i in ids}
    for p, sub in subsets.items():
        assert len(sub) >= 0.01 * p * len(ids)
        # a subset holds every image of an exam or none of it
        chosen = {exam[i] for i in sub}
        assert sorted(sub) == sorted(i for i in ids if exam[i] in chosen)
    assert set(subsets[10]) < set(subsets[25]) < set(subsets[100]) == set(ids)
    # whole groups overshoot the share by less than one group (at most 3 images here)
    assert len(subsets[10]) < 0.1 * len(ids) + 3
    # another seed draws other exams; the same seed the same ones
    assert bench.label_subsets(ids, r"^(\d{3})_", [10], seed=1)[10] != subsets[10]
    assert bench.label_subsets(ids, r"^(\d{3})_", [10], seed=0)[10] == subsets[10]


def test_label_subsets_without_group_take_single_images() -> None:
    bench = load_benchmark("bench_pretrain")
    ids = [f"img{i}" for i in range(50)]
    subsets = bench.label_subsets(ids, None, [10, 25], seed=0)
    assert len(subsets[10]) == 5 and len(subsets[25]) == 13
    assert set(subsets[10]) < set(subsets[25])


def test_schedule_gives_every_subset_the_same_number_of_steps() -> None:
    bench = load_benchmark("bench_pretrain")
    plans = {n: bench.schedule(n, steps=120, batch=8) for n in (70, 175, 699)}
    for n, plan in plans.items():
        assert 120 <= plan["steps"] <= 130, (n, plan)
        assert plan["max_train_batches"] <= -(-n // 8)  # never more batches than an epoch holds
        assert plan["epochs"] >= 5
        assert 1 <= plan["freeze_encoder_epochs"] <= 0.3 * plan["epochs"]
    assert plans[70]["epochs"] > plans[175]["epochs"] > plans[699]["epochs"]
