"""``ctiir check-data``: the command line over ``run_check``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from ctiir.checkdata.core import CHECKS, UsageError, run_check, write_filtered
from ctiir.checkdata.report import print_report
from ctiir.cliargs import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, add_progress_bar, command_parser, run_command
from ctiir.datamodules.errors import DataError
from ctiir.io import write_atomic

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace


def build_parser() -> ArgumentParser:
    """``ctiir check-data``'s options (the convention of every ctiir command: ``ctiir.cliargs``)."""
    parser = command_parser(
        "check-data", "Check a dataset's annotations and images; exit 1 if anything is wrong, 0 if clean."
    )
    parser.add_argument("--dataset", required=True, choices=CHECKS.names())
    parser.add_argument("--root", type=str, required=True, help="the dataset folder (images and, by default, the annotations)")
    parser.add_argument("--annotations_root", type=str | None, default=None, help="read the annotation files from here instead")
    parser.add_argument("--image_root", type=str | None, default=None, help="CIRR: what the split files' image paths start from")
    parser.add_argument(
        "--categories", type=list[str] | None, default=None, help="FashionIQ categories, e.g. --categories=[dress,shirt] (default: all)"
    )
    parser.add_argument("--splits", type=list[str] | None, default=None, help="e.g. --splits=[train,val] (default: every split)")
    parser.add_argument(
        "--write_filtered", type=str | None, default=None, metavar="OUT", help="write annotations without the bad entries"
    )
    parser.add_argument(
        "--json", type=str | None, default=None, metavar="REPORT", help="also write the full report as JSON (a new file)"
    )
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image-decoding threads")
    parser.add_argument("--max_rows", type=int, default=50, help="problems shown in the table (all go to --json)")
    add_progress_bar(parser, "a progress bar while images are decoded")
    return parser


def check_data_main(argv: list[str] | None = None) -> int:
    """``ctiir check-data``: 0 when clean, 1 when problems were found, 2 on a usage error."""
    return run_command(build_parser(), argv, check_data)


def check_data(args: Namespace) -> int:
    console, errors = Console(), Console(stderr=True)
    try:
        if args.json is not None and Path(args.json).exists():
            raise UsageError(f"--json {args.json} already exists; refusing to overwrite it, choose another path")
        report, checker, bad = run_check(
            args.dataset,
            args.root,
            args.annotations_root,
            args.splits,
            args.categories,
            args.workers,
            args.progress_bar,
            image_root=args.image_root,
        )
        if args.write_filtered is not None:
            files, not_written = checker.filtered_files(bad)
            written = write_filtered(args.write_filtered, files, [Path(args.root), checker.annotations_root])
            report.filtered = {"written": [str(p) for p in written], "not_written": not_written}
    except (DataError, UsageError) as err:
        errors.print(f"[red]ctiir check-data:[/red] {err}", highlight=False)
        return EXIT_USAGE
    print_report(report, console, args.max_rows)
    if report.filtered:
        console.print(f"filtered copy: {len(report.filtered['written'])} files written under {args.write_filtered}")
        for line in report.filtered["not_written"]:
            console.print(f"  not written: {line}")
        console.print(f"use it with: {checker.usage_hint(Path(args.write_filtered))}")
    if args.json is not None:
        try:
            write_atomic(Path(args.json), json.dumps(report.to_dict(), indent=2) + "\n", overwrite=False)
        except FileExistsError as err:  # created while the check ran
            errors.print(f"[red]ctiir check-data:[/red] --json: {err}", highlight=False)
            return EXIT_USAGE
    return EXIT_OK if report.ok else EXIT_PROBLEMS
