"""``icl-lens status``: which cells of a results folder are done, running, queued, failed or not started."""

from __future__ import annotations

import argparse

from icl_lens.cli.common import Parents

ORDER = ("done", "running", "queued", "failed", "not started")


def add_parser(subparsers, parents: Parents) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "status",
        parents=[parents.global_flags],
        help="list a results folder's cells: done, running, queued, failed, not started",
        description="List the cells of a sweep, done first, and count them by state (a SLURM sweep's queued "
        "and running jobs included).",
    )
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="the --out folder of 'icl-lens run'")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from icl_lens.runs.executors import sweep_status

    rows = sweep_status(args.results_dir)
    for name, status, detail in sorted(rows, key=lambda r: (ORDER.index(r[1]), r[0])):
        print(f"{status:12s} {name}" + (f"  {detail}" if detail else ""))
    counts = {s: sum(1 for r in rows if r[1] == s) for s in ORDER}
    print(", ".join(f"{counts[s]} {s}" for s in ORDER))
    return 0
