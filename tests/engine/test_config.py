"""The one option table: TrainConfig's field metadata drives the CLI parser and the table in docs/training.md."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from medurwkv.cli.train import register
from medurwkv.engine.config import (
    RESUME_OVERRIDABLE,
    TrainConfig,
    options_markdown,
    resolve_config,
    train_options,
)
from medurwkv.errors import UserError

DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"
BEGIN, END = "<!-- options table: generated", "<!-- end of options table -->"


def test_docs_options_table_is_the_generated_one():
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"expected the generated options table between markers in {DOC}"
    block = text.split(BEGIN, 1)[1].split("\n", 1)[1].split(END, 1)[0]
    assert block == options_markdown(), (
        "docs/training.md's options table differs from TrainConfig; regenerate it: replace the lines between "
        f"'{BEGIN} ...' and '{END}' with the output of\n"
        "  python -c \"from medurwkv.engine.config import options_markdown; print(options_markdown(), end='')\""
    )


def test_every_option_is_described_once():
    specs = train_options()
    assert [o.name for o in specs] == [f.name for f in fields(TrainConfig)]
    assert all(o.help and o.flag == "--" + o.name.replace("_", "-") for o in specs)
    assert {"device", "num_workers", "progress", "eval_test", "tensorboard", "data"} == RESUME_OVERRIDABLE


def test_parser_is_derived_from_the_config():
    parser = argparse.ArgumentParser()
    train = register(parser.add_subparsers())
    flags = {a.dest: a for a in train._actions if a.dest not in ("help",)}
    assert set(flags) == {f.name for f in fields(TrainConfig)} | {"config", "resume"}
    assert flags["normalize"].choices == ("imagenet", "per_image")
    assert isinstance(flags["augment"], argparse.BooleanOptionalAction)
    assert flags["epochs"].type is int and flags["lr"].type is float
    args = parser.parse_args(["train", "--epochs", "3", "--no-augment", "--grad-clip", "none"])
    given = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    assert given == {"epochs": 3, "augment": False, "grad_clip": "none"}  # nothing else: YAML values survive
    cfg = resolve_config(None, **given)
    assert (cfg.epochs, cfg.augment, cfg.grad_clip) == (3, False, None)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"epochs": "many"}, "epochs"),
        ({"normalize": "zscore"}, "normalize"),
        ({"batch_size": 0}, "batch_size"),
        ({"epoch": 3}, "did you mean 'epochs'"),
    ],
)
def test_bad_values_are_user_errors(options, match):
    with pytest.raises(UserError, match=match):
        resolve_config(options)
