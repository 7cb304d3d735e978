"""The ``icl-lens`` command line.

One module per subcommand (``run``, ``bench``, ``report``, ``findings``, ``status``, ``tasks``, ``models``,
``control``), each with ``add_parser(subparsers, parents)`` and ``main(args) -> int``; the flags several
subcommands share are defined once in :mod:`icl_lens.cli.common`. Every
:class:`~icl_lens.errors.IclLensError`, a refused flag included, ends the command with one
``icl-lens: error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from icl_lens.cli import bench, common, control, findings, models, report, run, status, tasks
from icl_lens.errors import IclLensError
from icl_lens.models.cpu_matmul import ENV_VAR as CPU_MATMUL_ENV
from icl_lens.models.cpu_matmul import requested_kernel

__all__ = ["main", "make_parser"]

SUBCOMMANDS = (run, bench, report, findings, status, tasks, models, control)
"""The subcommand modules, in the order ``icl-lens --help`` lists them."""

_LAST_GROUPS = ("executors", "global options")
"""Option groups that come from parent parsers but read best at the end of a subcommand's help."""

EPILOG = (
    "Run 'icl-lens COMMAND --help' for a command's options. The papers compared: Dai et al. 2023 (ICL as "
    "implicit finetuning), Deutch et al. 2024 and Shen et al. 2023 (which question it), von Oswald et al. 2023 "
    "(the controls)."
)


def make_parser() -> argparse.ArgumentParser:
    """The ``icl-lens`` parser with every subcommand; ``args.func(args)`` runs the chosen one."""
    parser = common.Parser(
        prog="icl-lens",
        description="Compare in-context learning with gradient descent inside a language model, through "
        "TransformerLens: run the experiments, write their reports and the papers' verdicts.",
        epilog=EPILOG,
    )
    common.add_global_flags(parser, in_subcommand=False)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    parents = common.make_parents()
    for module in SUBCOMMANDS:
        _put_groups_last(module.add_parser(subparsers, parents))
    return parser


def _put_groups_last(parser: argparse.ArgumentParser) -> None:
    """Move the shared executor and global options to the end of the help and the usage line (in nested
    subcommands too)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _put_groups_last(nested)
    rank = {
        group.title: _LAST_GROUPS.index(group.title) + 1
        for group in parser._action_groups
        if group.title in _LAST_GROUPS
    }
    parser._action_groups.sort(key=lambda group: rank.get(group.title or "", 0))
    last = {
        id(action): rank[group.title]
        for group in parser._action_groups
        if group.title in rank
        for action in group._group_actions
    }
    parser._actions.sort(key=lambda action: last.get(id(action), 0))


def _close_progress_bars() -> None:
    """Close every open tqdm bar, so an error line starts on a line of its own."""
    from tqdm import tqdm as std_tqdm
    from tqdm.auto import tqdm as auto_tqdm

    for bar in set(getattr(std_tqdm, "_instances", ())) | set(getattr(auto_tqdm, "_instances", ())):
        bar.close()


def _error_line(exc: BaseException) -> str:
    """The one-line error message: newlines in a message (e.g. a quoted template) are escaped."""
    return "icl-lens: error: " + " ".join(str(exc).splitlines() or [type(exc).__name__])


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run the subcommand; returns the exit code."""
    try:
        args = make_parser().parse_args(argv)
        logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
        if args.cpu_matmul is not None:
            os.environ[CPU_MATMUL_ENV] = args.cpu_matmul
        requested_kernel()  # a bad ICL_LENS_CPU_MATMUL is named now, not deep inside the first product
        return args.func(args)
    except IclLensError as exc:
        _close_progress_bars()
        print(_error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("icl-lens: interrupted; finished cells are saved, rerun to resume", file=sys.stderr)
        return 130
