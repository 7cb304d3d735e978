"""``icl-lens bench``: the naive per-query loop against the optimized evaluation, and with ``--phases``
each phase of one cell against the FLOPs it must do."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from icl_lens.cell.experiment import DEFAULT_MODEL
from icl_lens.cli.common import Parents, comma_list
from icl_lens.errors import ConfigError


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_parser(subparsers, parents: Parents) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        parents=[parents.model, parents.global_flags],
        help="time the naive per-query loop against the optimized evaluation (with --phases, also each phase "
        "of one cell against the FLOPs it must do)",
        description="Time the naive loop (one forward pass per query and label) against the optimized "
        "evaluation (shared demonstration prefix, batched queries) on the same prompts, and check that both "
        "give the same scores. With several models, each is timed in turn.",
    )
    parser.add_argument("--task", default="sst2", metavar="TASK", help="task whose prompts are timed (default: sst2)")
    parser.add_argument("--k", type=int, default=16, metavar="K", help="demonstrations in the prompt (default: 16)")
    parser.add_argument(
        "--n-naive", type=int, default=8, metavar="N", help="queries for the (slow) naive loop (default: 8)"
    )
    parser.add_argument(
        "--n-fast", type=int, default=64, metavar="N", help="queries for the optimized path (default: 64)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, metavar="N", help="queries per forward pass (default: 16)"
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also run the phases of one cell on the same prompts (ZSL/ICL evaluation of the --n-fast queries, "
        "lr sweep, FT and LCGD training and evaluation) and report each one's wall time, the FLOPs it must do, "
        "its FLOP/s and its fraction of the matmul peak",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        metavar="LR",
        help="with --phases: FT's and LCGD's learning rate (default: the sweep's choice)",
    )
    parser.add_argument(
        "--lr-grid",
        type=_float_list,
        default=None,
        metavar="LR,LR,...",
        help="with --phases: the rates the lr sweep trains (default: the experiment's grid; one rate keeps the "
        "sweep short)",
    )
    parser.add_argument(
        "--lr-dev-size",
        type=int,
        default=64,
        metavar="N",
        help="with --phases: train rows the lr sweep scores each rate on (default: 64)",
    )
    parser.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        help="also write the numbers to this JSON file (a list of them, one per model, with several models)",
    )
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    models = comma_list(args.model) or [DEFAULT_MODEL]
    numbers = []
    for name in models:
        if len(models) > 1:
            print(f"== {name}")
        numbers.append(_bench_one(args, name))
    if args.json:
        Path(args.json).write_text(json.dumps(numbers[0] if len(numbers) == 1 else numbers, indent=1))
    return 0


def _bench_one(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    """Time one model; print its report and return its numbers."""
    from icl_lens.bench import run_benchmark
    from icl_lens.models import load_model
    from icl_lens.prompts import PromptFormat, encode_prompts
    from icl_lens.tasks import get_task, sample_demonstrations, sample_queries

    model = load_model(model_name, device=args.device, dtype=args.dtype, backend=args.backend)
    task = get_task(args.task)
    queries = sample_queries(task, max(args.n_naive, args.n_fast))
    demos = sample_demonstrations(task, args.k, 0)
    prompts = encode_prompts(model.tokenizer, task, demos, queries, PromptFormat(), model.cfg.n_ctx)
    phases = _phase_inputs(args, model, task, demos, queries) if args.phases else None
    result = run_benchmark(model, prompts, args.n_naive, args.n_fast, args.batch_size, phases=phases)
    print(result.report())
    return result.to_dict()


def _phase_inputs(args: argparse.Namespace, model, task, demos, queries):
    """The lr sweep's dev slice (train rows disjoint from the demonstrations and queries, as the
    experiment draws it), the content-free query and the rates for ``bench --phases``."""
    from icl_lens.bench import PhaseInputs
    from icl_lens.calibration import content_free_row
    from icl_lens.prompts import PromptFormat, encode_prompts, encode_text
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
