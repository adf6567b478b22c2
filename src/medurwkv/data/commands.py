"""CLI: ``medurwkv data check|split|prepare|fetch`` (registered by ``add_parser``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``data`` with sub-commands ``check``, ``split``, ``prepare`` and ``fetch``."""
    p = subparsers.add_parser(
        "data",
        help="check, split and prepare segmentation datasets",
        description="Dataset tools: validate a dataset folder, make a frozen split file, convert official "
        "archives into the images/ + masks/ layout. See docs/data.md.",
    )
    p.set_defaults(func=run, data_command=None, _data_parser=p)
    sub = p.add_subparsers(dest="data_command", metavar="{check,split,prepare,fetch}")

    c = sub.add_parser(
        "check",
        help="validate a dataset folder",
        description="Check pairing, sizes, readability, label values and duplicates; print a summary. "
        "Exit code 1 when there are errors.",
    )
    c.add_argument("root", type=Path, metavar="DIR", help="dataset folder (images/ + masks/, or nnU-Net raw)")
    c.add_argument(
        "--num-classes", type=int, default=None, help="expected number of classes incl. background"
    )
    c.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    c.add_argument("--strict", action="store_true", help="treat warnings as errors (exit code 1)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser(
        "split",
        help="make a frozen train/val/test split file",
        description="Make a grouped random split and save it as JSON (default DIR/splits.json). "
        "Splits are frozen: an existing file is only replaced with --force.",
    )
    s.add_argument("root", type=Path, metavar="DIR", help="dataset folder")
    s.add_argument("--val", type=_fraction, default=None, help="validation fraction (default 0.1)")
    s.add_argument("--test", type=_fraction, default=None, help="test fraction (default 0.2)")
    s.add_argument(
        "--group",
        default="auto",
        metavar="REGEX",
        help="regex with one capture group = patient/exam id (re.search on the id); 'auto' (default): "
        "dataset.json split_group, else ^(\\d{3})_ if every id matches (HC18), else none; 'none' disables",
    )
    s.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    s.add_argument("--folds", type=int, default=None, metavar="K", help="k-fold: val rotates over K folds")
    s.add_argument("--fold", type=int, default=None, help="print the counts of this fold")
    s.add_argument(
        "--test-subset",
        action="append",
        default=None,
        metavar="NAME",
        help="use the official subset NAME from dataset.json as the test set (repeatable)",
    )
    s.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help="split file (default DIR/splits.json)"
    )
    s.add_argument("--force", action="store_true", help="overwrite an existing split file")

    r = sub.add_parser(
        "prepare",
        help="convert an official dataset archive into images/ + masks/",
        description="Recipes: hc18, isic2017, isic2018, busi, kvasir-seg, glas. SRC may be folders and/or "
        ".zip archives (zips inside a folder are extracted too).",
    )
    r.add_argument("name", help="recipe name")
    r.add_argument("src", type=Path, nargs="+", metavar="SRC", help="source folder(s) or .zip archive(s)")
    r.add_argument("dst", type=Path, metavar="DST", help="output dataset folder (new or empty)")
    r.add_argument("--overwrite", action="store_true", help="replace images/, masks/ and dataset.json in DST")
    r.add_argument("--no-check", action="store_true", help="skip the dataset check after preparing")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    f = sub.add_parser(
        "fetch",
        help="download and prepare a public dataset (hc18)",
        description="Download HC18's training set from Zenodo (record 1327317) and prepare it into DST. "
        "This is the only command that uses the network.",
    )
    f.add_argument("name", choices=["hc18"], help="dataset to download")
    f.add_argument("dst", type=Path, metavar="DST", help="output dataset folder (new or empty)")
    f.add_argument("--url", default=None, help="archive URL (default: Zenodo)")
    f.add_argument("--csv-url", default=None, help="pixel-size CSV URL (default: Zenodo); 'none' to skip")
    f.add_argument("--sha256", default=None, help="expected SHA-256 of the archive (verified when given)")
    f.add_argument("--download-dir", type=Path, default=None, help="keep downloaded files here (reused)")
    f.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset in DST")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 1


def _run_check(args) -> int:
    from .check import check_dataset

    report = check_dataset(args.root, num_classes=args.num_classes, progress=not args.no_progress)
    print(report.format())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    if not report.ok:
        return 1
    if args.strict and report.warnings:
        print(f"--strict: {len(report.warnings)} warning(s) count as errors", file=sys.stderr)
        return 1
    return 0


def _run_split(args) -> int:
    from .index import discover
    from .split import DEFAULT_FILENAME, ensure_split, load_split

    try:
        index = discover(args.root)
        out = args.out if args.out is not None else args.root / DEFAULT_FILENAME
        if out.exists():
            if not args.force:
                return _err(
                    f"split file {out} already exists (splits are frozen); pass --force to replace it or "
                    "--out FILE to write another one"
                )
            out.unlink()
        split, path, _ = ensure_split(
            args.root,
            val=args.val,
            test=args.test,
            group=args.group,
            seed=args.seed,
            folds=args.folds,
            out=out,
            test_subsets=args.test_subset,
            index=index,
            verbose=False,
        )
        print(f"wrote {path}: {split.describe()}")
        if split.folds:
            for i in range(len(split.folds)):
                fs = load_split(path, index, fold=i)
                marker = "  <-- --fold" if args.fold == i else ""
                print(f"  fold {i}: train {len(fs.train)} / val {len(fs.val)}{marker}")
            if args.fold is not None and not 0 <= args.fold < len(split.folds):
                return _err(f"--fold {args.fold} out of range 0..{len(split.folds) - 1}")
        elif args.fold is not None:
            return _err("--fold needs --folds K")
    except (FileNotFoundError, FileExistsError, PermissionError, ValueError) as e:
        return _err(str(e))
    return 0


def _run_prepare(args) -> int:
    from .check import check_dataset
    from .prepare import prepare

    try:
        result = prepare(
            args.name, args.src, args.dst, overwrite=args.overwrite, progress=not args.no_progress
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        return _err(str(e))
    print(result.format())
    if args.no_check:
        return 0
    report = check_dataset(args.dst, progress=not args.no_progress)
    print(report.format())
    return 0 if report.ok else 1


def _run_fetch(args) -> int:
    from .prepare import HC18_CSV_URL, HC18_URL, fetch_hc18

    csv_url = HC18_CSV_URL if args.csv_url is None else (None if args.csv_url == "none" else args.csv_url)
    try:
        dst = fetch_hc18(
            args.dst,
            url=args.url or HC18_URL,
            sha256=args.sha256,
            csv_url=csv_url,
            download_dir=args.download_dir,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (OSError, ValueError) as e:
        return _err(str(e))
    print(f"HC18 prepared in {dst}")
    return 0


def run(args) -> int:
    """Dispatch ``medurwkv data <command>``; returns the process exit code."""
    commands = {"check": _run_check, "split": _run_split, "prepare": _run_prepare, "fetch": _run_fetch}
    cmd = getattr(args, "data_command", None)
    if cmd not in commands:
        parser = getattr(args, "_data_parser", None)
        if parser is not None:
            parser.print_help()
        return 2
    return commands[cmd](args)
