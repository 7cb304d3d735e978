"""``icl-lens findings``: a verdict per claim of the papers, per task and pooled."""

from __future__ import annotations

import argparse

from icl_lens.cli.common import Parents, add_global_flags


def add_parser(subparsers, parents: Parents) -> argparse.ArgumentParser:
    from icl_lens.reporting.findings import add_findings_command

    parser = add_findings_command(subparsers)
    add_global_flags(parser, in_subcommand=True)
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from icl_lens.reporting.findings import cmd_findings

    return cmd_findings(args)
