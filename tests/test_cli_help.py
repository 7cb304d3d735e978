"""CLI help is written for users: every flag has help, metavars are readable, text is plain and cites
papers or the README, never internal documents."""

from __future__ import annotations

import argparse

import pytest

from icl_lens.cli import make_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


PARSER = make_parser()
COMMANDS = _subparsers(PARSER)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_readable_help(command):
    sub = COMMANDS[command]
    problems = []
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        text = (action.help or "").strip()
        if not text:
            problems.append(f"{name}: empty help")
        for bad in ("SPEC", "``", ":class:", ":func:", ":mod:"):
            if bad in text:
                problems.append(f"{name}: help contains {bad!r}: {text}")
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        if "__" in metavar or metavar.startswith("CFG"):
            problems.append(f"{name}: internal metavar {metavar}")
        if action.option_strings and action.nargs != 0 and action.choices is None and action.metavar is None:
            problems.append(f"{name}: no metavar (argparse would show {action.dest.upper()})")
    assert not problems, "\n".join(problems)


def test_help_renders_without_internal_names(capsys):
    for command, sub in COMMANDS.items():
        text = sub.format_help()
        assert "CFG__" not in text, command
        assert "SPEC" not in text, command
