"""The Shen et al. 2023 analyses on real models: order sensitivity, output agreement, weight
sparsity, the demonstration-count sweep and the weight-space view.

Each subcommand writes checksummed JSON (per task / per cell, so a rerun skips finished work) and
a PNG figure under --out (default results/shen):

    order/<task>__<model>__k<k>__P<P>.json   order_sensitivity.png   ICL vs SGD vs Adam × batch size
    agreement/<cell>.json                    output_agreement.png    top-10 overlap, overlap cosine
    sparsity.json                            sparsity.png            W_Q/W_K/W_V vs threshold, 75 % line
    sweep/<cell>/results.json, demo_sweep.json   demo_sweep.png      ICL–GD gap and SimAOU vs k
    weights/<task>__<model>__k<k>.json       weight_space.png        ‖ΔW_FT‖, dual-form cosine per layer

Examples (small settings):

    python experiments/shen_analyses.py order --tasks sst2 --k 4 --permutations 3 --limit 20
    python experiments/shen_analyses.py agreement --tasks sst2 --k 4 --limit 20
    python experiments/shen_analyses.py sparsity
    python experiments/shen_analyses.py sweep --tasks sst2 --ks 1,2,4 --seeds 0 --limit 20 --models smollm2-135m
    python experiments/shen_analyses.py weights --tasks sst2 --k 4 --queries 4
    python experiments/shen_analyses.py all --tasks sst2 --k 4 --limit 20
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable

from icl_lens.analyses.demo_sweep import CELLS_DIR as SWEEP_CELLS_DIR
from icl_lens.analyses import (
    DemoSweepConfig,
    OrderSensitivityConfig,
    SparsityConfig,
    WeightSpaceConfig,
    output_agreement,
    run_demo_sweep,
    run_order_sensitivity,
    run_weight_space,
    sparsity_all_models,
)
from icl_lens.reporting.figures import (
    plot_demo_sweep,
    plot_order_sensitivity,
    plot_output_agreement,
    plot_sparsity,
    plot_weight_space,
)
from icl_lens.cell.experiment import ExperimentConfig, run_experiment
from icl_lens.training.finetune import FinetuneConfig
from icl_lens.cell.results import is_complete, read_results, write_results
from icl_lens.cell.store import RuntimeOptions
from icl_lens.tasks import get_task

logger = logging.getLogger("shen_analyses")
COMMANDS = ("order", "agreement", "sparsity", "sweep", "weights")


def _csv(value: str, kind=str) -> list:
    return [kind(v) for v in value.split(",") if v.strip()]


class _LazyModel:
    """Loads the model on first use only, so a fully finished rerun loads nothing."""

    def __init__(self, name: str, device: str):
        self.name, self.device, self._model = name, device, None

    def get(self):
        if self._model is None:
            from icl_lens.models import load_model

            self._model = load_model(self.name, device=self.device)
        return self._model


def _resumable(path: Path, request: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Read ``path`` if it holds finished results of the same request; else compute and write them."""
    request = json.loads(json.dumps(request))
    if is_complete(path):
        done = read_results(path)
        if done.get("request") == request:
            logger.info("%s already finished; skipping", path)
            return done
        logger.warning("%s was made with another request; recomputing", path)
    payload = dict(compute())
    payload["request"] = request
    write_results(path, payload)
    return read_results(path)


def cmd_order(args, out: Path, model: _LazyModel) -> None:
    cfg = OrderSensitivityConfig(
        k=args.k,
        n_permutations=args.permutations,
        seed=args.seed,
        limit=args.limit,
        lr=args.lr,
        adam_lr=args.adam_lr,
        batch_sizes=tuple(_csv(args.batch_sizes, int)),
        eval_batch_size=args.batch_size,
    )
    results = []
    for task in args.tasks:
        path = out / "order" / f"{task}__{model.name}__k{args.k}__P{args.permutations}.json"
        request = {"task": task, "model": model.name, "config": cfg.to_dict()}

        def compute(task=task):
            return run_order_sensitivity(model.get(), task, cfg).to_dict()

        results.append(_resumable(path, request, compute))
    plot_order_sensitivity(results, out / "order_sensitivity.png")


def _experiment_config(args, task: str, model: str) -> ExperimentConfig:
    return ExperimentConfig(
        task=task, model=model, k=args.k, limit=args.limit, seed=args.seed, lr=args.lr, batch_size=args.batch_size
    )


def cmd_agreement(args, out: Path, model: _LazyModel) -> None:
    results = []
    for task in args.tasks:
        cfg = _experiment_config(args, task, model.name)

        def compute(cfg=cfg):
            output = run_experiment(model.get(), get_task(cfg.task), cfg)
            agreement = output_agreement(output).to_dict()
            agreement["accuracy"] = output.results["accuracy"]
            agreement["lr"] = output.results["lr"]
            return agreement

        results.append(_resumable(out / "agreement" / f"{cfg.cell_name()}.json", {"config": cfg.to_dict()}, compute))
    plot_output_agreement(results, out / "output_agreement.png")


def cmd_sparsity(args, out: Path, model: _LazyModel) -> None:
    cfg = SparsityConfig(scale=args.sparsity_scale)
    models = args.models  # None: every named model
    report = sparsity_all_models(cfg, models=models).to_dict()
    report["request"] = {"config": cfg.to_dict(), "models": models}
    write_results(out / "sparsity.json", report)
    plot_sparsity(report, out / "sparsity.png")


def cmd_sweep(args, out: Path, model: _LazyModel) -> None:
    base = ExperimentConfig(
        settings=("zsl", "icl", "ft"), limit=args.limit, lr=args.lr, batch_size=args.batch_size, nulls=()
    )  # the sweep reports the gap and SimAOU; the costly nulls belong to reproduce_tables.py
    cfg = DemoSweepConfig(
        tasks=tuple(args.tasks),
        models=None if args.models is None else tuple(args.models),
        ks=tuple(_csv(args.ks, int)),
        seeds=tuple(_csv(args.seeds, int)),
        base=base,
        max_context=args.max_context,
    )
    result = run_demo_sweep(cfg, out / SWEEP_CELLS_DIR, RuntimeOptions(device=args.device)).to_dict()
    write_results(out / "demo_sweep.json", result)
    plot_demo_sweep(result, out / "demo_sweep.png")


def cmd_weights(args, out: Path, model: _LazyModel) -> None:
    cfg = WeightSpaceConfig(k=args.k, seed=args.seed, n_queries=args.queries, finetune=FinetuneConfig(lr=args.lr))
    results = []
    for task in args.tasks:
        path = out / "weights" / f"{task}__{model.name}__k{args.k}.json"
        request = {"task": task, "model": model.name, "config": cfg.to_dict()}
        results.append(_resumable(path, request, lambda task=task: run_weight_space(model.get(), task, cfg).to_dict()))
    plot_weight_space(results, out / "weight_space.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=(*COMMANDS, "all"))
    parser.add_argument("--model", default="gemma3-270m", help="model of order/agreement/weights")
    parser.add_argument("--models", default=None, help="comma-separated models of sparsity/sweep (default: all named)")
    parser.add_argument("--tasks", default="sst2")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--limit", type=int, default=50, help="queries per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3, help="GD learning rate (SGD; recorded)")
    parser.add_argument("--adam-lr", type=float, default=None, help="Adam learning rate (default: --lr)")
    parser.add_argument("--permutations", type=int, default=10, help="order: P")
    parser.add_argument("--batch-sizes", default="1,2,4", help="order: GD batch sizes")
    parser.add_argument("--ks", default="1,2,4,8,16,32", help="sweep: numbers of demonstrations")
    parser.add_argument("--seeds", default="0,1,2,3,4",
                        help="sweep: demonstration seeds (default 0-4: the gap's slope gets a t interval over seeds)")
    parser.add_argument("--max-context", type=int, default=None, help="sweep: context limit for choosing k")
    parser.add_argument("--queries", type=int, default=8, help="weights: queries the dual cosine averages over")
    parser.add_argument("--sparsity-scale", choices=("absolute", "rms"), default="absolute")
    parser.add_argument("--batch-size", type=int, default=16, help="queries per forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="results/shen")
    args = parser.parse_args(argv)
    args.tasks = _csv(args.tasks)
    args.models = None if args.models is None else _csv(args.models)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    model = _LazyModel(args.model, args.device)
    commands = {
        "order": cmd_order,
        "agreement": cmd_agreement,
        "sparsity": cmd_sparsity,
        "sweep": cmd_sweep,
        "weights": cmd_weights,
    }
    for name in COMMANDS if args.command == "all" else (args.command,):
        logger.info("running %s", name)
        commands[name](args, out, model)


if __name__ == "__main__":
    main()
