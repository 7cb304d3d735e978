"""The ``icl-lens`` command line.

Subcommands: ``run`` (one or more cells: ZSL, ICL, FT, LCGD and every metric), ``report``
(self-contained HTML pages of a results folder), ``findings`` (a verdict per claim of the papers),
``status`` (which cells of a results folder are done, running, queued, failed or not started), ``bench``
(naive vs optimized evaluation), ``tasks``, ``models``. The ``run`` flags are generated from
:class:`~icl_lens.experiment.ExperimentConfig`
and its nested configs, so the CLI and the Python API cannot drift apart. Every
:class:`~icl_lens.errors.IclLensError` ends the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from icl_lens.errors import ConfigError, IclLensError
from icl_lens.evaluation import RecordSpec
from icl_lens.experiment import ExperimentConfig
from icl_lens.models.cpu_matmul import CPU_MATMUL_KERNELS, requested_kernel
from icl_lens.models.cpu_matmul import ENV_VAR as CPU_MATMUL_ENV
from icl_lens.prompts import PromptFormat
from icl_lens.reporting.findings import add_findings_command, cmd_findings
from icl_lens.reporting.report import add_report_command, cmd_report
from icl_lens.training.finetune import FinetuneConfig

logger = logging.getLogger("icl_lens")

# Nested config -> flag prefix ("" = flags named after the field itself).
NESTED = {"prompt": (PromptFormat, ""), "record": (RecordSpec, "record-"), "finetune": (FinetuneConfig, "ft-")}
SWEEPABLE = ("task", "model", "k", "seed")  # may take comma-separated lists: one cell per combination


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _parser_for(tp: Any):
    """A string -> value converter for a field type (handles Optional, Literal, tuples)."""
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    base: Callable[[str], Any]
    if origin is typing.Literal:
        base = lambda s: s
    elif origin is tuple:
        item = typing.get_args(tp)[0]
        base = lambda s: tuple(item(x.strip()) for x in s.split(",") if x.strip())
    elif tp in (int, float, str):
        base = tp
    else:
        base = str

    def convert(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None

    return convert


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, prefix: str, dest_prefix: str, skip=()) -> None:
    hints = typing.get_type_hints(cls)
    doc = cls.__doc__ or ""
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name in NESTED:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        help_text = _field_help(doc, f.name)
        dest = dest_prefix + f.name
        if tp is bool:
            parser.add_argument(
                flag,
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: {default})",
            )
            continue
        choices = None
        inner, _ = _unwrap_optional(tp)
        if typing.get_origin(inner) is typing.Literal:
            choices = list(typing.get_args(inner))
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            flag,
            dest=dest,
            type=_parser_for(tp),
            default=None,
            choices=choices,
            metavar=None if choices else _metavar(f.name, tp),
            help=f"{help_text} (default: {shown})",
        )


def _field_help(doc: str, name: str) -> str:
    """The field's line from the dataclass's ``Args:`` docstring section."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(f"{name}:") or stripped.startswith(f"{name} /"):
            text = stripped.split(":", 1)[1].strip()
            for nxt in lines[i + 1 :]:
                if not nxt.startswith(" " * 12):
                    break
                text += " " + nxt.strip()
            return _plain(text)
    return ""


def _plain(text: str) -> str:
    """Docstring text as plain help: no reStructuredText markup, ``%`` escaped for argparse."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)  # :class:`~a.B` -> B
    return text.replace("``", "").replace("%", "%%")


_METAVAR_BY_NAME = {
    "label_words": "WORDS",
    "lr_grid": "RATES",
    "settings": "SETTINGS",
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
    if typing.get_origin(inner) is tuple:
        return "A,B,..."
    return {int: "N", float: "X"}.get(inner, "TEXT")


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
        from icl_lens.presets import preset_config

        return preset_config(values.pop("preset"), **values, **nested_values)
    for name, (cls, _) in NESTED.items():
        values[name] = cls(**nested_values[name])
    return ExperimentConfig(**values)


def _split_list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in str(text).split(",") if t.strip()]


def expand_cells(args: argparse.Namespace) -> list[ExperimentConfig]:
    """One config per combination of the comma-separated task/model/k/seed values."""
    import itertools

    lists: dict[str, list[str]] = {}
    for name in SWEEPABLE:
        given = _split_list(getattr(args, name))
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


class _UsageError(ConfigError):
    """A flag argparse refused (unknown flag, bad choice, value of the wrong type)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one ``icl-lens: error:`` line (exit 2) in :func:`main`,
    like every other bad input, instead of argparse's usage block."""

    def error(self, message: str):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_executor_flags(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("executors", "where the cells run (see the README's 'Running on a cluster')")
    group.add_argument(
        "--executor",
        default="inline",
        choices=["inline", "local", "slurm"],
        help="inline: one cell after another in this process; local: worker processes; "
        "slurm: one SLURM job per cell, as a job array (default: inline)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="local: cells at once; each gets one GPU (cuda) or cores/N threads (cpu) (default: 1)",
    )
    group.add_argument(
        "--log-dir", default=None, metavar="DIR", help="submitit's pickles and job logs (default: OUT/.submitit)"
    )
    group.add_argument(
        "--slurm-partition", default=None, metavar="NAME", help="slurm: partition (default: the cluster's)"
    )
    group.add_argument("--slurm-gpus", type=int, default=0, metavar="N", help="slurm: GPUs per job (default: 0)")
    group.add_argument(
        "--slurm-cpus", type=int, default=1, metavar="N", help="slurm: CPUs per job = torch threads (default: 1)"
    )
    group.add_argument(
        "--slurm-mem", default=None, metavar="SIZE", help="slurm: memory per job, e.g. 16G (default: the cluster's)"
    )
    group.add_argument(
        "--slurm-time",
        type=int,
        default=60,
        metavar="MINUTES",
        help="slurm: time limit per job in minutes (default: 60)",
    )
    group.add_argument(
        "--slurm-array-parallelism",
        type=int,
        default=64,
        metavar="N",
        help="slurm: at most this many jobs of the array run at once (default: 64)",
    )
    group.add_argument(
        "--slurm-flag",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="slurm: any further sbatch flag, e.g. --slurm-flag account=abc --slurm-flag exclusive (repeatable)",
    )


def executor_options(args: argparse.Namespace):
    """ExecutorOptions from the --executor/--workers/--slurm-* flags."""
    from icl_lens.runs.executors import ExecutorOptions, SlurmOptions

    extra = []
    for flag in args.slurm_flag:
        name, sep, value = flag.partition("=")
        name = name.strip().lstrip("-")
        if not name:
            raise ConfigError(f"--slurm-flag needs NAME or NAME=VALUE, got {flag!r}")
        extra.append((name, value if sep else True))
    slurm = SlurmOptions(
        partition=args.slurm_partition,
        gpus_per_job=args.slurm_gpus,
        cpus_per_job=args.slurm_cpus,
        mem=args.slurm_mem,
        time_min=args.slurm_time,
        array_parallelism=args.slurm_array_parallelism,
        extra=tuple(extra),
    )
    return ExecutorOptions(kind=args.executor, workers=args.workers, log_dir=args.log_dir, slurm=slurm)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="icl-lens", description="In-context learning vs gradient descent, through TransformerLens.")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL)",
    )
    parser.add_argument(
        "--cpu-matmul",
        choices=CPU_MATMUL_KERNELS,
        default=None,
        help=(
            "kernel of the float32 matrix products on a CPU: auto (default; oneDNN on a non-Intel x86-64 CPU, "
            "where PyTorch's MKL takes a generic path), onednn, or blas (PyTorch's default, e.g. to reproduce "
            f"earlier results bit for bit); sets {CPU_MATMUL_ENV}, which worker processes inherit"
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run ZSL, ICL, FT and LCGD on the same queries and compare them")
    run.add_argument(
        "--task", metavar="TASKS", help="task name or task file; comma-separated for several (default: sst2)"
    )
    run.add_argument(
        "--model", metavar="MODELS", help="model name or path; comma-separated for several (default: gemma3-270m)"
    )
    run.add_argument(
        "--k", metavar="K", help="demonstrations; comma-separated for several (default: 16; --preset reference: 32)"
    )
    run.add_argument("--seed", metavar="SEEDS", help="demonstration seed(s), comma-separated (default: 0)")
    run.add_argument("--out", default="results", metavar="DIR", help="results folder (one sub-folder per cell)")
    run.add_argument("--device", default="cpu", metavar="DEVICE", help="torch device: cpu, cuda, cuda:1 ...")
    run.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the model's weights and activations (default: float32)",
    )
    run.add_argument(
        "--backend",
        default=None,
        choices=["hooked", "bridge"],
        help="TransformerLens model class: hooked (HookedTransformer, TransformerLens < 4) or bridge "
        "(TransformerBridge, TransformerLens 3.x and 4.x) (default: hooked on TransformerLens < 4, else bridge)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument(
        "--attention-examples",
        type=int,
        default=4,
        metavar="N",
        help="queries whose full attention maps (all settings) are saved for the report (0: none)",
    )
    add_executor_flags(run)
    _add_dataclass_flags(run, ExperimentConfig, "", "cfg__", skip=SWEEPABLE)
    for name, (cls, prefix) in NESTED.items():
        _add_dataclass_flags(run, cls, prefix, f"cfg__{name}__")

    bench = sub.add_parser(
        "bench",
        help="time the naive per-query loop against the optimized evaluation (with --phases, also each phase of "
        "one cell against the FLOPs it must do)",
    )
    bench.add_argument(
        "--model", default="gemma3-270m", metavar="MODEL", help="model name or path (default: gemma3-270m)"
    )
    bench.add_argument("--task", default="sst2", metavar="TASK", help="task whose prompts are timed (default: sst2)")
    bench.add_argument("--k", type=int, default=16, metavar="K", help="demonstrations in the prompt (default: 16)")
    bench.add_argument(
        "--n-naive", type=int, default=8, metavar="N", help="queries for the (slow) naive loop (default: 8)"
    )
    bench.add_argument(
        "--n-fast", type=int, default=64, metavar="N", help="queries for the optimized path (default: 64)"
    )
    bench.add_argument("--batch-size", type=int, default=16, metavar="N", help="queries per forward pass (default: 16)")
    bench.add_argument(
        "--device", default="cpu", metavar="DEVICE", help="torch device: cpu, cuda, cuda:1 ... (default: cpu)"
    )
    bench.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the model's weights and activations (default: float32)",
    )
    bench.add_argument(
        "--backend",
        default=None,
        choices=["hooked", "bridge"],
        help="TransformerLens model class: hooked (HookedTransformer, TransformerLens < 4) or bridge "
        "(TransformerBridge, TransformerLens 3.x and 4.x) (default: hooked on TransformerLens < 4, else bridge)",
    )
    bench.add_argument(
        "--phases",
        action="store_true",
        help="also run the phases of one cell on the same prompts (ZSL/ICL evaluation of the --n-fast queries, "
        "lr sweep, FT and LCGD training and evaluation) and report each one's wall time, the FLOPs it must do, "
        "its FLOP/s and its fraction of the matmul peak",
    )
    bench.add_argument(
        "--lr",
        type=float,
        default=None,
        metavar="LR",
        help="with --phases: FT's and LCGD's learning rate (default: the sweep's choice)",
    )
    bench.add_argument(
        "--lr-grid",
        type=_float_list,
        default=None,
        metavar="LR,LR,...",
        help="with --phases: the rates the lr sweep trains (default: the experiment's grid; one rate keeps the "
        "sweep short)",
    )
    bench.add_argument(
        "--lr-dev-size",
        type=int,
        default=64,
        metavar="N",
        help="with --phases: train rows the lr sweep scores each rate on (default: 64)",
    )
    bench.add_argument("--json", default=None, metavar="FILE", help="also write the numbers to this JSON file")

    add_report_command(sub)
    add_findings_command(sub)
    status = sub.add_parser("status", help="list a results folder's cells: done, running, queued, failed, not started")
    status.add_argument("results_dir", metavar="RESULTS_DIR", help="the --out folder of a sweep")
    sub.add_parser("tasks", help="list the built-in tasks")
    sub.add_parser("models", help="list the named offline models")
    from icl_lens.controls import cli as control_cli

    control_cli.add_parser(sub)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from icl_lens.reporting.summary import summary
    from icl_lens.runs.sweep import RuntimeOptions, cell_path, run_cells

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


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from icl_lens.bench import run_benchmark
    from icl_lens.models import load_model
    from icl_lens.prompts import PromptFormat, encode_prompts
    from icl_lens.tasks import get_task, sample_demonstrations, sample_queries

    model = load_model(args.model, device=args.device, dtype=args.dtype, backend=args.backend)
    task = get_task(args.task)
    queries = sample_queries(task, max(args.n_naive, args.n_fast))
    demos = sample_demonstrations(task, args.k, 0)
    prompts = encode_prompts(model.tokenizer, task, demos, queries, PromptFormat(), model.cfg.n_ctx)
    phases = _bench_phase_inputs(args, model, task, demos, queries) if args.phases else None
    result = run_benchmark(model, prompts, args.n_naive, args.n_fast, args.batch_size, phases=phases)
    print(result.report())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
    return 0


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _bench_phase_inputs(args: argparse.Namespace, model, task, demos, queries):
    """The lr sweep's dev slice (train rows disjoint from the demonstrations and queries, as the
    experiment draws it), the content-free query and the rates for ``bench --phases``."""
    from icl_lens.bench import PhaseInputs
    from icl_lens.calibration import content_free_row
    from icl_lens.prompts import encode_prompts, encode_text
    from icl_lens.tasks import load_split
    from icl_lens.training.lr_sweep import DEFAULT_LR_GRID, dev_slice

    if args.lr_dev_size < 1:
        raise ConfigError(f"--lr-dev-size must be >= 1, got {args.lr_dev_size}")
    train = load_split(task, task.train_split)
    rows = dev_slice(
        train,
        args.lr_dev_size,
        0,
        [d["row_index"] for d in demos],
        task=task,
        query_rows=[q["row_index"] for q in queries],
    )
    dev = encode_prompts(model.tokenizer, task, [], rows, PromptFormat(), model.cfg.n_ctx)
    return PhaseInputs(
        dev_queries=dev.queries,
        dev_labels=[r["label"] for r in rows],
        content_free_query=encode_text(model.tokenizer, task.format_input(content_free_row(task.template_fields))),
        lr_grid=DEFAULT_LR_GRID if args.lr_grid is None else args.lr_grid,
        lr=args.lr,
    )


def cmd_status(args: argparse.Namespace) -> int:
    from icl_lens.runs.executors import sweep_status

    rows = sweep_status(args.results_dir)
    order = ("done", "running", "queued", "failed", "not started")
    for name, status, detail in sorted(rows, key=lambda r: (order.index(r[1]), r[0])):
        print(f"{status:12s} {name}" + (f"  {detail}" if detail else ""))
    counts = {s: sum(1 for r in rows if r[1] == s) for s in order}
    print(", ".join(f"{counts[s]} {s}" for s in order))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from icl_lens.tasks import BUILTIN_TASK_NAMES, builtin_tasks

    tasks = builtin_tasks()
    for name in BUILTIN_TASK_NAMES:
        t = tasks[name]
        print(f"{name:8s} {t.description}")
        print(f"{'':8s}   template: {t.template!r}")
        print(f"{'':8s}   labels:   {', '.join(t.label_words)}   (eval split: {t.eval_split})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from icl_lens.models import list_models

    for m in list_models():
        print(f"{m.name:14s} {m.description}")
        print(f"{'':14s}   licence: {m.licence}")
    print("Also accepted: a local HF model directory, a .gguf file, or a TransformerLens hub name (online).")
    return 0


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
    parser = make_parser()
    commands = {
        "run": cmd_run,
        "bench": cmd_bench,
        "report": cmd_report,
        "findings": cmd_findings,
        "status": cmd_status,
        "tasks": cmd_tasks,
        "models": cmd_models,
        "control": lambda a: __import__("icl_lens.controls.cli", fromlist=["main"]).main(a),
    }
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
        if args.cpu_matmul is not None:
            os.environ[CPU_MATMUL_ENV] = args.cpu_matmul
        requested_kernel()  # a bad ICL_LENS_CPU_MATMUL is named now, not deep inside the first product
        return commands[args.command](args)
    except IclLensError as exc:
        _close_progress_bars()
        print(_error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("icl-lens: interrupted; finished cells are saved, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
