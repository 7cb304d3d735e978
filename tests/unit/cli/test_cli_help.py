"""CLI help is written for users: every flag has help, metavars are readable, text is plain and cites
papers, never internal documents; every ``--help`` (nested subcommands included) exits 0."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from icl_lens.cli import main, make_parser
from icl_lens.cli.run import CONFIG_HELP, NESTED, config_flags
from icl_lens.evaluation import RecordSpec
from icl_lens.cell.experiment import ExperimentConfig
from icl_lens.prompts import PromptFormat
from icl_lens.training.finetune import FinetuneConfig

MARKUP = ("SPEC", "``", ":class:", ":func:", ":mod:", ":meth:", ":data:", "README's", "CFG__")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(argv prefix, parser) of every subcommand, nested ones (control train|run|report) included."""
    for name, sub in _subparsers(parser).items():
        yield (*prefix, name), sub
        yield from _all_commands(sub, (*prefix, name))


PARSER = make_parser()
COMMANDS = _subparsers(PARSER)
ALL_COMMANDS = dict(_all_commands(PARSER))


def _help_problems(parser: argparse.ArgumentParser, check_metavars: bool) -> list[str]:
    problems = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        text = (action.help or "").strip()
        if not text and not isinstance(action, argparse._SubParsersAction):
            problems.append(f"{name}: empty help")
        for bad in MARKUP:
            if bad in text:
                problems.append(f"{name}: help contains {bad!r}: {text}")
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        if "__" in metavar or metavar.startswith("CFG"):
            problems.append(f"{name}: internal metavar {metavar}")
        if check_metavars and action.option_strings and action.nargs != 0 and action.choices is None:
            if action.metavar is None:
                problems.append(f"{name}: no metavar (argparse would show {action.dest.upper()})")
    return problems


def test_the_nested_commands_are_found():
    assert {("control", name) for name in ("train", "run", "dherin", "report")} <= set(ALL_COMMANDS)
    assert {(name,) for name in ("run", "bench", "report", "findings", "status", "tasks", "models")} <= set(
        ALL_COMMANDS
    )


@pytest.mark.parametrize("command", sorted(" ".join(c) for c in ALL_COMMANDS))
def test_every_flag_has_readable_help(command):
    problems = _help_problems(ALL_COMMANDS[tuple(command.split())], check_metavars=True)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command", sorted(" ".join(c) for c in ALL_COMMANDS))
def test_every_help_exits_0_and_reads_plainly(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: icl-lens {command}")
    for bad in MARKUP:
        assert bad not in text, (command, bad)


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert f"    {name} " in text
    assert "--log-level" in text and "--cpu-matmul" in text and "COMMAND --help" in text
    assert not _help_problems(PARSER, check_metavars=True)


def test_help_renders_without_internal_names():
    for command, sub in COMMANDS.items():
        text = sub.format_help()
        assert "CFG__" not in text, command
        assert "SPEC" not in text, command


def test_every_config_field_has_a_written_help_line():
    """A field added to a config gets a flag by itself; without a line in CONFIG_HELP this fails."""
    flags = {key for _, _, key in config_flags()}
    expected = {f.name for f in dataclasses.fields(ExperimentConfig) if f.name not in NESTED and f.name != "model"}
    for cls, prefix in ((PromptFormat, ""), (RecordSpec, "record-"), (FinetuneConfig, "ft-")):
        expected |= {prefix + f.name.replace("_", "-") for f in dataclasses.fields(cls)}
    assert flags == expected
    assert set(CONFIG_HELP) == flags, f"missing: {flags - set(CONFIG_HELP)}; stale: {set(CONFIG_HELP) - flags}"
    for key, text in CONFIG_HELP.items():
        assert text.strip() and "\n" not in text, key


def test_every_config_field_is_a_run_flag_with_its_written_help():
    run = COMMANDS["run"]
    by_flag = {flag: action for action in run._actions for flag in action.option_strings}
    for _, _, key in config_flags():
        action = by_flag["--" + key.replace("_", "-")]
        assert action.help.replace("%%", "%").startswith(CONFIG_HELP[key]), key
    assert "--model" in by_flag and by_flag["--model"].help


def test_defaults_in_help_are_the_dataclass_defaults():
    """The default shown is the field's own (and the reference preset's where it differs)."""
    by_flag = {flag: action.help for action in COMMANDS["run"]._actions for flag in action.option_strings}
    assert by_flag["--k"].endswith("(default: 16; with --preset reference: 32)")
    assert by_flag["--separator"].endswith("(default: '\\n'; with --preset reference: <eos>)")
    assert by_flag["--ft-optimizer"].endswith("(default: sgd)")
    assert by_flag["--ft-clip-norm"].endswith("(default: off)")
