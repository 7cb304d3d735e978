"""``icl-lens run``: one or more comparison cells (ZSL, ICL, FT, LCGD and every metric).

The configuration flags are generated from the fields of ExperimentConfig and its nested configs, so the
command line cannot drift from the Python API; their help lines are written by hand in
:data:`CONFIG_HELP`, one per field (a test fails when a field has none).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import types
import typing
from collections.abc import Callable
from typing import Any

from icl_lens.cell.experiment import ExperimentConfig
from icl_lens.cli.common import Parents, comma_list, executor_options
from icl_lens.errors import ConfigError
from icl_lens.evaluation import RecordSpec
from icl_lens.prompts import PromptFormat
from icl_lens.training.finetune import FinetuneConfig

NESTED = {"prompt": (PromptFormat, ""), "record": (RecordSpec, "record-"), "finetune": (FinetuneConfig, "ft-")}
"""Nested config field -> (its class, the prefix of its flags)."""

SWEEPABLE = ("task", "model", "k", "seed")
"""Fields that take comma-separated lists: one cell per combination."""

LISTED_FLAGS = ("task", "k", "seed")
"""Sweepable fields whose flags ``run`` defines itself (``--model`` is the flag ``bench`` shares)."""

CONFIG_HELP: dict[str, str] = {
    # ExperimentConfig
    "task": "built-in task (see 'icl-lens tasks') or task file; comma-separated for several",
    "k": "demonstrations in the prompt (the number that fits the context is recorded); comma-separated for several",
    "seed": "seed of the demonstration sample; comma-separated for several",
    "limit": "at most this many evaluation queries (the papers: 2000)",
    "demo_sampling": "balanced: a seeded shuffle taken round-robin over the labels; random: the first k of the "
    "shuffle, as in the reference code of Dai et al. 2023",
    "eval_seed": "seed of the shuffle that picks the evaluation queries (the reference code: 1)",
    "settings": "which of zsl, icl, ft and lcgd to run, comma-separated (zsl and icl also run when a "
    "comparison needs them)",
    "lr": "learning rate of FT and LCGD (default: chosen as --lr-mode says)",
    "lr_mode": "how the learning rate is chosen when --lr is not given: sweep (per task and model, on a dev slice "
    "of the train split), reference (the per-task rates of Dai et al. 2023 and Deutch et al. 2024) or fixed "
    "(--ft-lr)",
    "lr_grid": "the learning rates the sweep tries, comma-separated",
    "lr_dev_size": "train rows the sweep scores each rate on, disjoint from the demonstrations and the "
    "evaluation queries",
    "lr_criterion": "what the sweep maximises: dev (FT accuracy on the dev rows) or demos (FT accuracy on the "
    "demonstrations)",
    "lcgd_lr": "learning rate of LCGD (default: FT's)",
    "lcgd_lr_sweep": "choose LCGD's own learning rate by the same sweep as FT's (one LCGD training per rate)",
    "lcgd_schedule": "how layer-causal GD (LCGD, Deutch et al. 2024) steps the layers: simultaneous (all at once "
    "per demonstration, the reference) or sequential (one layer after another)",
    "attention_map": "the attention map SimAM compares (Dai et al. 2023): scores (before the softmax, the "
    "reference) or pattern (after it)",
    "alpha_include_sink": "count the first token (the attention sink) as a demonstration token in α, the "
    "attention mass on the demonstrations",
    "random_seed": "base seed of the nulls (random baseline, shuffled pairs, wrong labels, random directions); "
    "each demonstration seed derives its own from it",
    "batch_size": "queries per forward pass",
    "reuse_prefix": "encode the demonstrations once and reuse their key/value cache for every query "
    "(--no-reuse-prefix encodes the whole prompt per query)",
    "calibration": "content_free: contextual calibration of every setting's class scores against an 'N/A' query "
    "(Zhao et al. 2021); none: raw scores, as in the reference code",
    "untrained": "run on an untrained copy of the model: attention and MLP weights drawn afresh; embeddings, "
    "norms and unembedding kept (the untrained baseline of Deutch et al. 2024)",
    "untrained_seed": "seed of the untrained copy's weights",
    "untrained_init": "how the untrained weights are drawn: reference (each layer's framework default, as the "
    "reference code of Dai et al. 2023 leaves them) or normal (N(0, initializer_range), zero biases)",
    "template": "prompt template of one input, e.g. 'Review: {text} Sentiment:' (default: the task's)",
    "label_words": "label words, one per class in label order, comma-separated (default: the task's)",
    "nulls": "null models run for FT, comma-separated (an empty value runs none): shuffled_pair, wrong_label, "
    "wrong_label_answer_loss, random_direction, gradient_span; LCGD gets shuffled_pair and random_direction",
    "bootstrap_resamples": "resamples of the bootstrap over queries behind every interval and paired test",
    "bootstrap_seed": "seed of the bootstrap resamples",
    "confidence": "level of every interval",
    "preset": "a whole setting in one name: reference (the reference code of Dai et al. 2023 and Deutch et al. "
    "2024: EOS after every demonstration, random demonstrations, no calibration, k = 32, the papers' per-task "
    "learning rates) or default (the defaults shown here); flags given as well win (default: no preset)",
    # PromptFormat
    "separator": "text between demonstrations and before the query; <eos> is the tokenizer's EOS token",
    "answer-prefix": "text between an input and its label word",
    "start": "token opening every sequence: bos, eos, none or a literal token; a fixed start token keeps the "
    "attention sink out of the query's part, so the settings' attention maps line up",
    # RecordSpec
    "record-position": "where activations and attention are recorded: answer (the last token of the prompt plus "
    "the first class's answer, the reference) or prompt_end (the prompt's last token)",
    "record-top-k": "most likely next tokens kept per query, for the output-distribution metrics",
    # FinetuneConfig
    "ft-params": "parameters FT trains: kv (keys and values, as in Dai et al. 2023), q, o, mlp or all (every "
    "block parameter); join several with +, e.g. kv+o",
    "ft-optimizer": "FT's optimizer",
    "ft-lr": "FT's learning rate under --lr-mode fixed",
    "ft-momentum": "SGD momentum",
    "ft-weight-decay": "weight decay, for either optimizer",
    "ft-epochs": "passes over the demonstrations",
    "ft-batch-size": "demonstrations per step (1: one step per demonstration)",
    "ft-loss-on": "tokens of each demonstration the loss covers: all (input and answer) or answer",
    "ft-clip-value": "clip each value of each layer's gradient to [-X, X] (default: off)",
    "ft-clip-norm": "clip each layer's gradient to ℓ2 norm X (default: off)",
    "ft-clip-global-norm": "clip the gradient of all trained parameters together to ℓ2 norm X, after the "
    "per-layer clips, as the reference trainer of Deutch et al. 2024 does (default: off)",
}
"""Help line per configuration flag, keyed by the flag without its dashes (ExperimentConfig's own fields by
field name). Each states what the value does and, where it helps, what the papers used."""


def config_flags() -> list[tuple[type, str, str]]:
    """(config class, field name, help key) of every generated flag, in the order they are added."""
    found: list[tuple[type, str, str]] = [
        (ExperimentConfig, f.name, f.name) for f in dataclasses.fields(ExperimentConfig) if f.name not in NESTED
    ]
    for cls, prefix in NESTED.values():
        found += [(cls, f.name, prefix + f.name.replace("_", "-")) for f in dataclasses.fields(cls)]
    return [entry for entry in found if entry[1] != "model"]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def _converter(tp: Any) -> Callable[[str], Any]:
    """A string -> value converter for a field type (Optional, Literal, tuples of int/float/str)."""
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    base: Callable[[str], Any]
    if origin is tuple:
        item = typing.get_args(tp)[0]
        base = lambda s: tuple(item(x.strip()) for x in s.split(",") if x.strip())
    elif tp in (int, float):
        base = tp
    else:
        base = str

    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null", ""):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None

    return convert


_METAVAR_BY_NAME = {
    "label_words": "WORDS",
    "lr_grid": "RATES",
    "settings": "SETTINGS",
    "nulls": "NULLS",
    "template": "TEMPLATE",
    "params": "GROUPS",
    "separator": "TEXT",
    "answer_prefix": "TEXT",
    "start": "TOKEN",
}


def _metavar(name: str, tp: Any) -> str:
    """A readable placeholder for a flag's value: N, X, LR, SEED, WORDS, ..."""
    if name in _METAVAR_BY_NAME:
        return _METAVAR_BY_NAME[name]
    if name == "lr" or name.endswith("_lr"):
        return "LR"
    if name.endswith("seed"):
        return "SEED"
    inner, _ = _unwrap_optional(tp)
    return {int: "N", float: "X"}.get(inner, "TEXT")


def _shown(value: Any) -> str:
    """A default as the user would type it: tuples comma-separated, text with whitespace quoted."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "''"
    if isinstance(value, str) and (not value.strip() or value != value.strip() or "\n" in value):
        return repr(value)
    return str(value)


def _help_line(key: str, default: Any, preset_value: Any) -> str:
    """The written line, with the default (and the reference preset's value, where it differs) appended."""
    text = CONFIG_HELP[key]
    if "(default:" not in text:
        text += f" (default: {_shown(default)}"
        if preset_value is not dataclasses.MISSING and preset_value != default:
            text += f"; with --preset reference: {_shown(preset_value)}"
        text += ")"
    return text.replace("%", "%%")


def _reference_preset_value(cls: type, name: str) -> Any:
    from icl_lens.cell.presets import preset_values

    values = preset_values("reference")
    for nested, (nested_cls, _) in NESTED.items():
        if nested_cls is cls:
            return values.get(nested, {}).get(name, dataclasses.MISSING)
    return values.get(name, dataclasses.MISSING)


def _dest(cls: type, name: str) -> str:
    nested = next((n for n, (c, _) in NESTED.items() if c is cls), None)
    return f"cfg__{name}" if nested is None else f"cfg__{nested}__{name}"


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (the listed ones, ``--task``, ``--k``, ``--seed``, take comma lists)."""
    for name in LISTED_FLAGS:
        parser.add_argument(
            f"--{name}", metavar={"task": "TASKS", "k": "K", "seed": "SEEDS"}[name], help=_flag_help(name)
        )
    groups = {
        ExperimentConfig: parser.add_argument_group("experiment"),
        PromptFormat: parser.add_argument_group("prompt format"),
        RecordSpec: parser.add_argument_group("what is recorded"),
        FinetuneConfig: parser.add_argument_group("finetuning (FT and LCGD)"),
    }
    for cls, name, key in config_flags():
        if name in LISTED_FLAGS and cls is ExperimentConfig:
            continue
        _add_field_flag(groups[cls], cls, name, key)


def _flag_help(name: str) -> str:
    field = ExperimentConfig.__dataclass_fields__[name]
    return _help_line(name, field.default, _reference_preset_value(ExperimentConfig, name))


def _add_field_flag(group, cls: type, name: str, key: str) -> None:
    field = cls.__dataclass_fields__[name]  # type: ignore[attr-defined]
    tp = typing.get_type_hints(cls)[name]
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    help_text = _help_line(key, default, _reference_preset_value(cls, name))
    flag, dest = "--" + key.replace("_", "-"), _dest(cls, name)
    if tp is bool:
        group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        return
    inner, _ = _unwrap_optional(tp)
    choices = list(typing.get_args(inner)) if typing.get_origin(inner) is typing.Literal else None
    group.add_argument(
        flag,
        dest=dest,
        type=_converter(tp),
        default=None,
        choices=choices,
        metavar=None if choices else _metavar(name, tp),
        help=help_text,
    )


def build_config(args: argparse.Namespace, overrides: dict[str, Any]) -> ExperimentConfig:
    """ExperimentConfig from parsed flags (only the flags given; the rest keep their defaults)."""
    values: dict[str, Any] = {}
    nested_values: dict[str, dict[str, Any]] = {name: {} for name in NESTED}
    for key, value in vars(args).items():
        if value is None or not key.startswith("cfg__"):
            continue
        parts = key.split("__")
        if len(parts) == 3:
            nested_values[parts[1]][parts[2]] = value
        else:
            values[parts[1]] = value
    values.update(overrides)
    if values.get("preset") is not None:  # the preset's values, then every flag given on top
        from icl_lens.cell.presets import preset_config

        return preset_config(values.pop("preset"), **values, **nested_values)
    for name, (cls, _) in NESTED.items():
        values[name] = cls(**nested_values[name])
    return ExperimentConfig(**values)


def expand_cells(args: argparse.Namespace) -> list[ExperimentConfig]:
    """One config per combination of the comma-separated task/model/k/seed values."""
    lists: dict[str, list[str]] = {}
    for name in SWEEPABLE:
        given = comma_list(getattr(args, name))
        if given is not None:
            lists[name] = given
    combos: list[dict[str, Any]] = [dict(zip(lists, values)) for values in itertools.product(*lists.values())] or [{}]
    cells = []
    for combo in combos:
        for int_field in ("k", "seed"):
            if int_field in combo:
                try:
                    combo[int_field] = int(combo[int_field])
                except ValueError:
                    raise ConfigError(
                        f"--{int_field} must be an integer or a comma-separated list of integers"
                    ) from None
        cells.append(build_config(args, combo))
    return cells


def add_parser(subparsers, parents: Parents) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run",
        parents=[parents.model, parents.progress, parents.executors, parents.global_flags],
        help="run ZSL, ICL, FT and LCGD on the same queries and compare them",
        description="Run zero-shot (ZSL), in-context (ICL), finetuned (FT) and layer-causal GD (LCGD) on the "
        "same queries and compare them with the metrics of Dai et al. 2023 and Deutch et al. 2024. Each "
        "combination of the comma-separated --task, --model, --k and --seed values is one cell, saved in its "
        "own folder under --out; a rerun skips the finished cells.",
    )
    add_config_flags(parser)  # --task, --k, --seed here; the rest in groups of their own
    parser.add_argument("--out", default="results", metavar="DIR", help="results folder (default: results)")
    parser.add_argument(
        "--attention-examples",
        type=int,
        default=4,
        metavar="N",
        help="queries whose whole attention maps are saved for 'icl-lens report' (0: none) (default: 4)",
    )
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from icl_lens.cell.store import RuntimeOptions, cell_path
    from icl_lens.reporting.summary import summary
    from icl_lens.runs.sweep import run_cells

    if args.attention_examples < 0:
        raise ConfigError(f"--attention-examples must be >= 0, got {args.attention_examples}")
    cells = expand_cells(args)
    runtime = RuntimeOptions(
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
        attention_examples=args.attention_examples,
        backend=args.backend,
    )
    results = run_cells(cells, args.out, runtime, executor=executor_options(args))
    print(summary(results))
    for cfg in cells:
        print(f"results: {cell_path(args.out, cfg, runtime)}")
    return 0
