"""``icl-lens tasks``: the built-in tasks, their templates and label words."""

from __future__ import annotations

import argparse

from icl_lens.cli.common import Parents


def add_parser(subparsers, parents: Parents) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tasks",
        parents=[parents.global_flags],
        help="list the built-in tasks",
        description="List the built-in tasks with their "
        "prompt template, label words and evaluation split. 'run --task' also takes a task file.",
    )
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from icl_lens.tasks import BUILTIN_TASK_NAMES, builtin_tasks

    tasks = builtin_tasks()
    for name in BUILTIN_TASK_NAMES:
        t = tasks[name]
        print(f"{name:8s} {t.description}")
        print(f"{'':8s}   template: {t.template!r}")
        print(f"{'':8s}   labels:   {', '.join(t.label_words)}   (eval split: {t.eval_split})")
    return 0
