"""``icl-lens control train|run|report``: the controls with known answers from the command line."""

from __future__ import annotations

import argparse
import logging
import sys

from icl_lens.errors import ConfigError

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``control`` and its three subcommands on the ``icl-lens`` parser."""
    from icl_lens.controls.suite import ROWS
    from icl_lens.controls.train import CONTROLS

    control = subparsers.add_parser(
        "control",
        help="controls with known answers: models where ICL provably is (or is not) GD (von Oswald et al. 2023)",
    )
    sub = control.add_subparsers(dest="control_command", required=True)
    train = sub.add_parser("train", help="train a control on fresh regression tasks and cache it (checksummed)")
    train.add_argument("--control", default="lsa-1", choices=sorted(CONTROLS), help="which control (default: lsa-1)")
    _training_flags(train)
    train.add_argument("--retrain", action="store_true", help="train again even if the cache holds it")

    run = sub.add_parser("run", help="train/load every control, run the GD and FT comparators, print the table")
    run.add_argument("--out", default="results/controls", metavar="DIR", help="where controls.json and the table go")
    run.add_argument(
        "--rows", default=",".join(ROWS), metavar="ROWS", help=f"comma-separated controls (default: {','.join(ROWS)})"
    )
    _training_flags(run)
    run.add_argument("--n-eval", type=int, default=10_000, help="evaluation tasks of the GD comparator (10000)")
    run.add_argument("--n-dev", type=int, default=10_000, help="dev tasks for η and the FT rate (10000)")
    run.add_argument("--n-ft-tasks", type=int, default=2000, help="tasks of the FT comparator (2000)")
    run.add_argument("--ft-steps", type=int, default=1, help="GD steps of the FT comparator per task (1)")
    run.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per interval (1000)")

    dherin = sub.add_parser(
        "dherin", help="Dherin et al. 2025: the context as a rank-1 MLP patch on a real model, against FT's update"
    )
    dherin.add_argument("--model", default="gemma3-270m", help="model name or path (default: gemma3-270m)")
    dherin.add_argument("--task", default="sst2", help="task (default: sst2)")
    dherin.add_argument("--k", type=int, default=8, help="demonstrations (default: 8)")
    dherin.add_argument("--queries", type=int, default=16, help="queries (default: 16)")
    dherin.add_argument("--layers", default=None, help="comma-separated layers (default: the middle one)")
    dherin.add_argument("--out", default="results/controls", metavar="DIR", help="writes dherin_<model>.json here")

    report = sub.add_parser("report", help="write and print the control table of a `control run` folder")
    report.add_argument("results_dir", metavar="DIR", help="the --out folder of `icl-lens control run`")
    return control


def _training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=5000, help="Adam steps (the reference: 5000)")
    parser.add_argument("--batch-size", type=int, default=2048, help="fresh tasks per step (the reference: 2048)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the reference: 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (initial weights, task stream)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _say(text: str) -> None:
    """The command's output (the library logs; the command line writes to stdout)."""
    sys.stdout.write(text.rstrip("\n") + "\n")


def main(args: argparse.Namespace) -> int:
    """Run the ``control`` subcommand ``args.control_command``."""
    from icl_lens.controls.comparators import ComparatorConfig
    from icl_lens.controls.report import control_table, write_report
    from icl_lens.controls.suite import SuiteConfig, read_controls, run_controls
    from icl_lens.controls.train import TrainConfig, cache_dir_for, load_or_train

    if args.control_command == "train":
        cfg = TrainConfig(args.control, args.steps, args.batch_size, args.lr, seed=args.seed)
        trained = load_or_train(cfg, progress=not args.no_progress, retrain=args.retrain)
        source = "cache" if trained.from_cache else f"trained in {trained.seconds:.1f} s"
        _say(f"{cfg.name} (config {cfg.digest}): {source}, final training loss {trained.final_loss:.4f}")
        _say(f"weights: {cache_dir_for(cfg)} (sha256 {trained.weights_sha256})")
        return 0
    if args.control_command == "run":
        rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
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
    if args.control_command == "dherin":
        import json
        from pathlib import Path

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
    if args.control_command == "report":
        markdown, _ = write_report(args.results_dir)
        _say(control_table(read_controls(args.results_dir)))
        _say(f"table: {markdown}")
        return 0
    raise ConfigError(f"unknown control command {args.control_command!r}")
