"""``icl-lens control train|run|report``: the controls with known answers, models in which in-context
learning provably is (or is not) gradient descent (von Oswald et al. 2023)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from icl_lens.cli.common import Parents, comma_list
from icl_lens.errors import ConfigError


def add_parser(subparsers, parents: Parents) -> argparse.ArgumentParser:
    from icl_lens.controls.suite import ROWS
    from icl_lens.controls.train import CONTROLS

    control = subparsers.add_parser(
        "control",
        parents=[parents.global_flags],
        help="controls with known answers: models where ICL provably is (or is not) GD (von Oswald et al. 2023)",
        description="Controls with known answers (von Oswald et al. 2023): linear-regression transformers whose "
        "in-context learning is gradient descent, by construction or by training, and models where it is not. "
        "Train them, run the GD and FT comparators on each, and print the table that says which comparator "
        "tells them apart.",
    )
    sub = control.add_subparsers(dest="control_command", required=True, metavar="COMMAND", title="commands")
    train = sub.add_parser(
        "train",
        parents=[parents.progress, parents.global_flags],
        help="train a control on fresh regression tasks and cache it (checksummed)",
        description="Train one control on fresh regression tasks and cache its weights with a checksum; a "
        "cached control with the same configuration is loaded instead.",
    )
    train.add_argument(
        "--control", default="lsa-1", choices=sorted(CONTROLS), help="which control to train (default: lsa-1)"
    )
    _training_flags(train)
    train.add_argument("--retrain", action="store_true", help="train again even if the cache holds it")
    train.set_defaults(control_main=_train)

    run = sub.add_parser(
        "run",
        parents=[parents.progress, parents.global_flags],
        help="train or load every control, run the GD and FT comparators, print the table",
        description="Train (or load from the cache) every control, run the GD comparator of von Oswald et al. "
        "2023 and the FT comparator of Dai et al. 2023 on each, write controls.json and the table under --out "
        "and print the table.",
    )
    run.add_argument(
        "--out",
        default="results/controls",
        metavar="DIR",
        help="where controls.json and the table go (default: results/controls)",
    )
    run.add_argument(
        "--rows", default=",".join(ROWS), metavar="ROWS", help=f"comma-separated controls (default: {','.join(ROWS)})"
    )
    _training_flags(run)
    run.add_argument(
        "--n-eval", type=int, default=10_000, metavar="N", help="evaluation tasks of the GD comparator (default: 10000)"
    )
    run.add_argument(
        "--n-dev",
        type=int,
        default=10_000,
        metavar="N",
        help="dev tasks that choose η and the FT rate (default: 10000)",
    )
    run.add_argument(
        "--n-ft-tasks", type=int, default=2000, metavar="N", help="tasks of the FT comparator (default: 2000)"
    )
    run.add_argument(
        "--ft-steps", type=int, default=1, metavar="N", help="GD steps of the FT comparator per task (default: 1)"
    )
    run.add_argument(
        "--resamples", type=int, default=1000, metavar="N", help="bootstrap resamples per interval (default: 1000)"
    )
    run.set_defaults(control_main=_run)

    dherin = sub.add_parser(
        "dherin",
        parents=[parents.global_flags],
        help="Dherin et al. 2025: the context as a rank-1 MLP patch on a real model, against FT's update",
        description="Write the context of a prompt into one MLP block as a rank-1 weight patch (Dherin et al. "
        "2025), check that the patched model without the context reproduces the block's output with it, and "
        "compare the patch with finetuning's update of the same weight.",
    )
    dherin.add_argument(
        "--model", default="gemma3-270m", metavar="MODEL", help="model name or path (default: gemma3-270m)"
    )
    dherin.add_argument("--task", default="sst2", metavar="TASK", help="task (default: sst2)")
    dherin.add_argument("--k", type=int, default=8, metavar="K", help="demonstrations in the context (default: 8)")
    dherin.add_argument("--queries", type=int, default=16, metavar="N", help="queries (default: 16)")
    dherin.add_argument(
        "--layers", default=None, metavar="LAYERS", help="comma-separated layers to patch (default: the middle one)"
    )
    dherin.add_argument(
        "--out",
        default="results/controls",
        metavar="DIR",
        help="folder of dherin_MODEL.json (default: results/controls)",
    )
    dherin.set_defaults(control_main=_dherin)

    report = sub.add_parser(
        "report",
        parents=[parents.global_flags],
        help="write and print the control table of a 'control run' folder",
        description="Write the control table of an 'icl-lens control run' folder again and print it.",
    )
    report.add_argument("results_dir", metavar="DIR", help="the --out folder of 'icl-lens control run'")
    report.set_defaults(control_main=_report)
    control.set_defaults(func=main)
    return control


def _training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps", type=int, default=5000, metavar="N", help="Adam steps (default: 5000, the reference's)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=2048,
        metavar="N",
        help="fresh tasks per step (default: 2048, the reference's)",
    )
    parser.add_argument(
        "--lr", type=float, default=1e-3, metavar="LR", help="Adam learning rate (default: 0.001, the reference's)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="SEED",
        help="training seed: initial weights and task stream (default: 0)",
    )


def _say(text: str) -> None:
    sys.stdout.write(text.rstrip("\n") + "\n")


def _train(args: argparse.Namespace) -> int:
    from icl_lens.controls.train import TrainConfig, cache_dir_for, load_or_train

    cfg = TrainConfig(args.control, args.steps, args.batch_size, args.lr, seed=args.seed)
    trained = load_or_train(cfg, progress=not args.no_progress, retrain=args.retrain)
    source = "cache" if trained.from_cache else f"trained in {trained.seconds:.1f} s"
    _say(f"{cfg.name} (config {cfg.digest}): {source}, final training loss {trained.final_loss:.4f}")
    _say(f"weights: {cache_dir_for(cfg)} (sha256 {trained.weights_sha256})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from icl_lens.controls.comparators import ComparatorConfig
    from icl_lens.controls.report import write_report
    from icl_lens.controls.suite import SuiteConfig, run_controls

    rows = tuple(comma_list(args.rows) or ())
    comparator = ComparatorConfig(
        n_eval=args.n_eval,
        n_dev=args.n_dev,
        n_ft_tasks=args.n_ft_tasks,
        ft_steps=args.ft_steps,
        n_resamples=args.resamples,
    )
    suite = SuiteConfig(rows, args.steps, args.batch_size, args.lr, args.seed, comparator)
    run_controls(suite, args.out, progress=not args.no_progress)
    markdown, _ = write_report(args.out)
    _say(markdown.read_text(encoding="utf-8"))
    _say(f"results: {args.out}")
    return 0


def _dherin(args: argparse.Namespace) -> int:
    from icl_lens.cell.results import atomic_write_text
    from icl_lens.controls.dherin import dherin_study
    from icl_lens.controls.report import dherin_table
    from icl_lens.models import load_model

    try:
        layers = tuple(int(v) for v in args.layers.split(",")) if args.layers else None
    except ValueError:
        raise ConfigError(f"--layers must be comma-separated integers, got {args.layers!r}") from None
    study = dherin_study(load_model(args.model), args.task, layers, k=args.k, n_queries=args.queries)
    study["model"] = Path(args.model).name if Path(args.model).exists() else args.model
    path = Path(args.out) / f"dherin_{study['model']}.json"
    atomic_write_text(path, json.dumps(study, indent=1) + "\n")
    _say(dherin_table([study]))
    _say(f"results: {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from icl_lens.controls.report import control_table, write_report
    from icl_lens.controls.suite import read_controls

    markdown, _ = write_report(args.results_dir)
    _say(control_table(read_controls(args.results_dir)))
    _say(f"table: {markdown}")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the ``control`` subcommand ``args.control_command``."""
    handler = getattr(args, "control_main", None)
    if handler is None:
        raise ConfigError(f"unknown control command {args.control_command!r}")
    return handler(args)
