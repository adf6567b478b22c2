"""``medurwkv data check|split|prepare|fetch``: thin handlers over :mod:`medurwkv.data` (see docs/data.md).

A dataset with errors is a user error: ``check`` (and ``prepare``'s check) print the full report on stdout,
then raise :class:`~medurwkv.errors.UserError` with a one-line summary, so the process exits with 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["register"]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def register(subparsers: Any) -> None:
    """Add ``data`` with the sub-commands ``check``, ``split``, ``prepare`` and ``fetch``."""
    p = subparsers.add_parser(
        "data",
        help="check, split and prepare segmentation datasets",
        description="Dataset tools: validate a dataset folder, make a frozen split file, convert official "
        "archives into the images/ + masks/ layout. See docs/data.md.",
    )
    # `medurwkv data` alone: this parser's help, exit code 2 (a sub-command's set_defaults overrides it)
    p.set_defaults(func=lambda args: _help(p), prog="medurwkv data")
    sub = p.add_subparsers(metavar="{check,split,prepare,fetch}")

    c = sub.add_parser(
        "check",
        help="validate a dataset folder",
        description="Check pairing, sizes, readability, label values and duplicates; print a summary. "
        "A folder of 3D volumes (nnU-Net raw or MSD NIfTI, TransUNet's Synapse npz/h5) gets the volume checks: "
        "geometry of image vs label and across channels, label values, orientation, empty labels, unreadable "
        "files, each naming the case. Exit code 2 when there are errors.",
    )
    c.add_argument(
        "root",
        type=Path,
        metavar="DIR",
        help="dataset folder (images/ + masks/, nnU-Net raw 2D or 3D, MSD, Synapse)",
    )
    c.add_argument(
        "--num-classes", type=int, default=None, help="expected number of classes incl. background"
    )
    c.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    c.add_argument("--strict", action="store_true", help="treat warnings as errors (exit code 2)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=run_check, prog="medurwkv data check")

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
    s.set_defaults(func=run_split, prog="medurwkv data split")

    r = sub.add_parser(
        "prepare",
        help="convert an official dataset archive into our layout (2D images/ + masks/, or nnU-Net v2 volumes)",
        description="2D recipes (write images/ + masks/ + dataset.json): hc18, isic2017, isic2018, busi, "
        "kvasir-seg, glas. Volume recipes (write the nnU-Net v2 raw layout imagesTr/ + labelsTr/ [+ imagesTs/] "
        "+ dataset.json): msd, acdc, synapse. SRC may be folders and/or .zip, .tar, .tar.gz or .tgz archives "
        "(archives inside a folder are extracted too). See docs/data.md.",
    )
    r.add_argument("name", help="recipe name")
    r.add_argument("src", type=Path, nargs="+", metavar="SRC", help="source folder(s) or archive(s)")
    r.add_argument("dst", type=Path, metavar="DST", help="output dataset folder (new or empty)")
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what the recipe writes in DST (images/, masks/ or imagesTr/, labelsTr/, imagesTs/; "
        "and dataset.json)",
    )
    r.add_argument("--no-check", action="store_true", help="skip the dataset check after preparing")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=run_prepare, prog="medurwkv data prepare")

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
    f.set_defaults(func=run_fetch, prog="medurwkv data fetch")


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _report_errors(report: Any) -> None:
    """Raise the one-line summary of a failed check (the report itself is already on stdout)."""
    if report.ok:
        return
    if len(report.errors) == 1:
        raise UserError(report.errors[0])
    raise UserError(
        f"dataset {report.root} has {len(report.errors)} errors, listed in the report above; fix them (each "
        f"says how) and run `medurwkv data check {report.root}` again"
    )


def run_check(args: argparse.Namespace) -> int:
    from ..data import check_dataset
    from ..utils import atomic_write_json

    report = check_dataset(args.root, num_classes=args.num_classes, progress=not args.no_progress)
    print(report.format())
    if args.json is not None:
        atomic_write_json(args.json, report.to_dict(), indent=1)
    _report_errors(report)
    if args.strict and report.warnings:
        raise UserError(
            f"--strict: {len(report.warnings)} warning(s), listed above, count as errors; fix them or "
            "drop --strict"
        )
    return 0


def run_split(args: argparse.Namespace) -> int:
    from ..data import discover_dataset, ensure_split, load_split
    from ..data.split import DEFAULT_FILENAME

    # option combinations are checked before anything is written
    if args.fold is not None and args.folds is None:
        raise UserError(f"--fold {args.fold} needs --folds K (a k-fold split)")
    if args.fold is not None and not 0 <= args.fold < args.folds:
        raise UserError(
            f"--fold {args.fold} out of range: expected 0..{args.folds - 1} for --folds {args.folds}"
        )
    index = discover_dataset(args.root)  # images, or the cases of a volume dataset
    out = args.out if args.out is not None else args.root / DEFAULT_FILENAME
    if out.exists() and not args.force:
        raise UserError(
            f"split file {out} already exists (splits are frozen); pass --force to replace it or "
            "--out FILE to write another one"
        )
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
        overwrite=args.force,
        verbose=False,
    )
    print(f"wrote {path}: {split.describe()}")
    for i in range(len(split.folds or ())):
        fs = load_split(path, index, fold=i)
        marker = "  <-- --fold" if args.fold == i else ""
        print(f"  fold {i}: train {len(fs.train)} / val {len(fs.val)}{marker}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from ..data import check_dataset, prepare

    result = prepare(args.name, args.src, args.dst, overwrite=args.overwrite, progress=not args.no_progress)
    print(result.format())
    if not args.no_check:
        report = check_dataset(args.dst, progress=not args.no_progress)
        print(report.format())
        _report_errors(report)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from ..data.prepare import HC18_CSV_URL, HC18_URL, fetch_hc18

    csv_url = HC18_CSV_URL if args.csv_url is None else (None if args.csv_url == "none" else args.csv_url)
    dst = fetch_hc18(
        args.dst,
        url=args.url or HC18_URL,
        sha256=args.sha256,
        csv_url=csv_url,
        download_dir=args.download_dir,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"HC18 prepared in {dst}")
    return 0
