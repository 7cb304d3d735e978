"""``icl-lens control train|run|report``: the controls with known answers (von Oswald et al. 2023)."""

from __future__ import annotations

import argparse

from icl_lens.cli.common import Parents


def add_parser(subparsers, parents: Parents) -> argparse.ArgumentParser:
    from icl_lens.controls import cli as control_cli

    parser = control_cli.add_parser(subparsers)
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from icl_lens.controls import cli as control_cli

    return control_cli.main(args)
