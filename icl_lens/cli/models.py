"""``icl-lens models``: the named models that load offline."""

from __future__ import annotations

import argparse

from icl_lens.cli.common import Parents


def add_parser(subparsers, parents: Parents) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models",
        parents=[parents.global_flags],
        help="list the named offline models",
        description="List the models known by name, with their licences. --model also takes a local Hugging "
        "Face folder, a .gguf file or a TransformerLens hub name (online).",
    )
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from icl_lens.models import list_models

    for m in list_models():
        print(f"{m.name:14s} {m.description}")
        print(f"{'':14s}   licence: {m.licence}")
    print("Also accepted: a local HF model directory, a .gguf file, or a TransformerLens hub name (online).")
    return 0
