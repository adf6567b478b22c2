"""``benchmarks/bench_recipe.py``: each recipe is a valid training configuration that changes one thing of the
base, and the step-cost keys separate exactly what changes the cost of a step."""

from __future__ import annotations

from bench_scripts import load_benchmark

from medurwkv.engine.config import TrainConfig


def test_every_recipe_is_a_valid_config_changing_one_option_of_the_base() -> None:
    bench = load_benchmark("bench_recipe")
    assert bench.recipe("base") == bench.BASE
    for name in bench.RECIPES:
        r = bench.recipe(name)
        TrainConfig(**r)  # a misspelt or invalid option raises here
        changed = [k for k in r if r[k] != bench.BASE[k]]
        assert len(changed) == (0 if name == "base" else 1), (name, changed)


def test_cost_keys_follow_size_batch_deep_supervision_and_dataset_only() -> None:
    bench = load_benchmark("bench_recipe")
    key = {name: bench.cost_key(bench.recipe(name), "hc18") for name in bench.RECIPES}
    # recipes that only change the optimisation, the loss or the augmentation share the base's step cost
    for name in ("lr1e-3", "warmup30", "dice2", "aug0.5"):
        assert key[name] == key["base"]
    assert len({key["base"], key["batch16"], key["size192"], key["ds"]}) == 4
    assert bench.cost_key(bench.recipe("base"), "kvasir-seg") != key["base"]  # 3 channels, not 1
