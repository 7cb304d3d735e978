"""``icl-lens report``: a self-contained HTML page per cell of a results folder and an index page."""

from __future__ import annotations

import argparse
from pathlib import Path

from icl_lens.cell.results import RESULTS_FILE
from icl_lens.cli.common import Parents, comma_list
from icl_lens.errors import ConfigError, ResultsError
from icl_lens.reporting.report import DEFAULT_MAX_MB, INDEX_FILE, KINDS, build_report


def add_parser(subparsers, parents: Parents) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        parents=[parents.global_flags],
        help="write a self-contained report.html per cell (metrics, figures, attention) and index.html",
        description="Write report.html in every finished cell folder (metric tables with intervals, nulls, "
        "paired tests, figures and an interactive attention view) and index.html, a dashboard of all cells, "
        "in RESULTS_DIR. The pages make no network request.",
    )
    parser.add_argument(
        "results_dir", metavar="RESULTS_DIR", help="results folder (one sub-folder per cell), as written by 'run'"
    )
    parser.add_argument(
        "--max-examples",
        type=int,
        default=None,
        metavar="N",
        help="embed at most this many attention examples per page (default: all saved)",
    )
    parser.add_argument(
        "--max-mb",
        type=float,
        default=DEFAULT_MAX_MB,
        metavar="MB",
        help=f"budget in MB for the attention maps embedded per page, whole examples only, at least "
        f"one (default: {DEFAULT_MAX_MB:g}; 0: no limit)",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        metavar="KINDS",
        help="attention map kinds to embed, comma-separated: pattern, scores or both (default: pattern,scores)",
    )
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """Build the reports; an empty results folder is a ResultsError."""
    kinds = tuple(comma_list(args.kinds) or ())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(f"--kinds must list pattern and/or scores, got {unknown or 'nothing'}")
    paths = build_report(args.results_dir, max_examples=args.max_examples, kinds=kinds, max_mb=args.max_mb or None)
    if not paths:
        raise ResultsError(f"no finished cell (verified {RESULTS_FILE}) under {args.results_dir}")
    print(f"{len(paths)} reports; open {Path(args.results_dir) / INDEX_FILE}")
    return 0
