"""``icl-lens findings``: a verdict per claim of the papers, per task and pooled."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from icl_lens.cli.common import Parents
from icl_lens.errors import ConfigError
from icl_lens.reporting.aggregate import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES
from icl_lens.reporting.findings import (
    FINDINGS_JSON,
    findings_markdown,
    readme_table,
    update_readme_table,
    write_findings,
)

logger = logging.getLogger(__name__)


def add_parser(subparsers, parents: Parents) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "findings",
        parents=[parents.global_flags],
        help="a verdict (holds / fails / inconclusive) per claim of Dai et al. 2023, Deutch et al. "
        "2024 and Shen et al. 2023, per task and pooled; writes findings.json and findings.md",
        description="Test each claim of Dai et al. 2023, Deutch et al. 2024 and Shen et al. 2023 on every cell "
        "and every Shen et al. analysis output (order sensitivity, sparsity, the demonstration-count sweep) "
        "under RESULTS_DIR: one row per task and two pooled rows, each with its effect, interval and verdict "
        "(holds, fails, inconclusive). Writes findings.json and findings.md in RESULTS_DIR and prints the table.",
    )
    parser.add_argument(
        "results_dir",
        metavar="RESULTS_DIR",
        nargs="?",
        help="results folder; every results.json under it is a cell (a sweep's through its demo_sweep.json)",
    )
    parser.add_argument(
        "--n-resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        metavar="N",
        help=f"bootstrap resamples of the queries within a seed (default: {DEFAULT_RESAMPLES})",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=DEFAULT_CONFIDENCE,
        metavar="X",
        help=f"interval coverage; α = 1 − X is the family-wise error rate (default: {DEFAULT_CONFIDENCE})",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="SEED", help="bootstrap seed (default: 0)")
    parser.add_argument(
        "--readme-table",
        action="store_true",
        help="print the claim × task table for the README (from RESULTS_DIR/findings.json, computed again if absent "
        "or older than a results file)",
    )
    parser.add_argument(
        "--compact",
        action="store_true",
        help="with --readme-table: only the pooled columns, and per task how many verdicts of each kind",
    )
    parser.add_argument(
        "--study",
        default=None,
        metavar="LABEL",
        help="with --readme-table: the study to show, e.g. 'gemma3-270m · k=16' (default: the one with most verdicts)",
    )
    parser.add_argument(
        "--update-page",
        action="append",
        default=None,
        metavar="PAGE",
        help="rewrite the findings table of a markdown page (between its findings-table markers, in the form "
        "its start marker names) from RESULTS_DIR/findings.json, computed again if absent or older than a "
        "results file; repeatable",
    )
    parser.add_argument(
        "--calibration",
        action="store_true",
        help="print the simulated coverage and false-'holds' rate of the verdict rule (no RESULTS_DIR needed)",
    )
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """Write the files and print the markdown table (or the calibration table, or the README table)."""
    if args.calibration:
        from icl_lens.reporting.calibration import calibration_markdown

        print(calibration_markdown(), end="")
        return 0
    if args.results_dir is None:
        raise ConfigError("RESULTS_DIR is required (except with --calibration)")
    if args.readme_table or args.update_page:
        findings = _current_findings(args)
        for page in args.update_page or []:
            changed = update_readme_table(page, findings, args.study)
            print(f"{page}: {'updated' if changed else 'already up to date'}")
        if args.readme_table:
            print(readme_table(findings, args.study, compact=args.compact), end="")
        return 0
    findings = write_findings(args.results_dir, args.n_resamples, args.confidence, args.seed)
    print(findings_markdown(findings), end="")
    return 0


def _current_findings(args: argparse.Namespace) -> dict:
    """RESULTS_DIR/findings.json when it is newer than every other JSON file under RESULTS_DIR (the
    cells' results and the analyses it reads); else computed again, so that a table is never
    rendered from findings that miss a cell finished after them."""
    results_dir = Path(args.results_dir)
    path = results_dir / FINDINGS_JSON
    if path.exists():
        written = path.stat().st_mtime
        inputs = (p for p in results_dir.rglob("*.json") if p.name != FINDINGS_JSON)
        if all(p.stat().st_mtime <= written for p in inputs):
            return json.loads(path.read_text(encoding="utf-8"))
        logger.info("%s is older than a results file under %s: computing the findings again", path, results_dir)
    return write_findings(results_dir, args.n_resamples, args.confidence, args.seed)
