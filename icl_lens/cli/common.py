"""What the ``icl-lens`` subcommands share: the parser class whose errors are one line, and the flags
that several subcommands take, each defined once here as a parent parser so that it means the same
wherever it appears."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, NoReturn

from icl_lens.errors import ConfigError
from icl_lens.models.cpu_matmul import CPU_MATMUL_KERNELS
from icl_lens.models.cpu_matmul import ENV_VAR as CPU_MATMUL_ENV

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_LOG_LEVEL = "WARNING"
DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = ("hooked", "bridge")


class UsageError(ConfigError):
    """A flag argparse refused (unknown flag, bad choice, value of the wrong type)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one ``icl-lens: error:`` line (exit 2), like every other
    bad input, instead of argparse's usage block. Subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def add_global_flags(parser: argparse.ArgumentParser, *, in_subcommand: bool) -> None:
    """``--log-level`` and ``--cpu-matmul``. On the top-level parser they carry the defaults and the full
    help; a subcommand takes them too (shown briefly), and there they are only set when given (argparse
    would otherwise let the subcommand's default overwrite a value given before the subcommand's name)."""
    if in_subcommand:
        group = parser.add_argument_group("global options", "also accepted before the command's name")
        group.add_argument(
            "--log-level",
            default=argparse.SUPPRESS,
            type=str.upper,
            choices=LOG_LEVELS,
            metavar="LEVEL",
            help=f"{', '.join(LOG_LEVELS)} (default: {DEFAULT_LOG_LEVEL})",
        )
        group.add_argument(
            "--cpu-matmul",
            default=argparse.SUPPRESS,
            choices=CPU_MATMUL_KERNELS,
            metavar="KERNEL",
            help=f"{', '.join(CPU_MATMUL_KERNELS)}: see 'icl-lens --help' (default: auto)",
        )
        return
    parser.add_argument(
        "--log-level",
        default=DEFAULT_LOG_LEVEL,
        type=str.upper,
        choices=LOG_LEVELS,
        help=f"how much the library logs to stderr (default: {DEFAULT_LOG_LEVEL})",
    )
    parser.add_argument(
        "--cpu-matmul",
        default=None,
        choices=CPU_MATMUL_KERNELS,
        help="kernel of the float32 matrix products on a CPU: auto (oneDNN on a non-Intel x86-64 CPU, where "
        "PyTorch's MKL takes a slow generic path), onednn, or blas (PyTorch's own choice, e.g. to reproduce "
        f"earlier results bit for bit); sets {CPU_MATMUL_ENV}, which worker processes inherit (default: auto)",
    )


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The model and how it is loaded: ``--model``, ``--device``, ``--dtype``, ``--backend``."""
    parser.add_argument(
        "--model",
        default=None,
        metavar="MODELS",
        help="model name (see 'icl-lens models'), local Hugging Face folder, .gguf file or TransformerLens "
        "hub name; comma-separated for several (default: gemma3-270m)",
    )
    parser.add_argument(
        "--device", default="cpu", metavar="DEVICE", help="torch device: cpu, cuda, cuda:1, ... (default: cpu)"
    )
    parser.add_argument(
        "--dtype", default="float32", choices=DTYPES, help="dtype of the weights and activations (default: float32)"
    )
    parser.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="TransformerLens model class: hooked (HookedTransformer) or bridge (TransformerBridge, "
        "TransformerLens 3.x and 4.x) (default: hooked on TransformerLens < 4, else bridge)",
    )


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def add_executor_flags(parser: argparse.ArgumentParser) -> None:
    """Where the cells run: ``--executor inline|local|slurm``, ``--workers`` and the ``--slurm-*`` flags
    (read back by :func:`executor_options`)."""
    group = parser.add_argument_group(
        "executors", "where the cells run: in this process, in local worker processes, or as a SLURM job array"
    )
    group.add_argument(
        "--executor",
        default="inline",
        choices=["inline", "local", "slurm"],
        help="inline: one cell after another in this process; local: worker processes on this machine; "
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
        "--slurm-time", type=int, default=60, metavar="MINUTES", help="slurm: time limit per job (default: 60)"
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
    """ExecutorOptions from the ``--executor``/``--workers``/``--slurm-*`` flags."""
    from icl_lens.runs.executors import ExecutorOptions, SlurmOptions

    extra: list[tuple[str, Any]] = []
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


def _parent(add_flags) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    add_flags(parent)
    return parent


@dataclasses.dataclass(frozen=True)
class Parents:
    """The parent parsers a subcommand lists in ``parents=`` to take the shared flags."""

    global_flags: argparse.ArgumentParser
    model: argparse.ArgumentParser
    progress: argparse.ArgumentParser
    executors: argparse.ArgumentParser


def make_parents() -> Parents:
    return Parents(
        global_flags=_parent(lambda p: add_global_flags(p, in_subcommand=True)),
        model=_parent(add_model_flags),
        progress=_parent(add_progress_flag),
        executors=_parent(add_executor_flags),
    )


def comma_list(text: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; None stays None."""
    return None if text is None else [t.strip() for t in str(text).split(",") if t.strip()]
