"""Reproduce Tables 1–2 and Figures 2–4 of Dai et al. 2023 / Deutch et al. 2024 on one model.

For every task and seed: ZSL, ICL, GD (FT) and LCGD on the same queries, every metric; optionally
the untrained-model baseline (SPEC §6) too. Writes, under --out:

    <cell>/results.json          one per task × seed (× untrained), resumable
    tables.md                    mean ± std over seeds beside the reference numbers (SPEC §7)
    aggregate.json               the same numbers as JSON
    prediction_changes.png       stacked bars of ICL / FT prediction changes per task
    simaou_per_layer.png         per-layer SimAOU, GD vs LCGD vs random (Fig. 3)
    simam_delta_per_layer.png    per-layer SimAM_Δ, GD vs LCGD (Fig. 3)
    alpha.png                    α per task (Fig. 2)
    grad_norms_<task>.png        layers × demonstration gradient norms, GD vs LCGD (Fig. 4)

    python experiments/reproduce_tables.py --model gemma3-270m --seeds 0,1,2 --k 16 --limit 200 --untrained
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from icl_lens.aggregate import aggregate, markdown_tables
from icl_lens.experiment import ExperimentConfig
from icl_lens.figures import plot_alpha, plot_grad_norms, plot_layer_metric, plot_prediction_changes
from icl_lens.prompts import PromptFormat
from icl_lens.sweep import RuntimeOptions, run_cells
from icl_lens.tasks import BUILTIN_TASK_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--tasks", default=",".join(BUILTIN_TASK_NAMES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--lr", type=float, default=None, help="fixed lr (default: sweep per task)")
    parser.add_argument("--lr-grid", default=None, help="comma-separated sweep grid")
    parser.add_argument("--separator", default=None, help="demonstration separator (default: the package's)")
    parser.add_argument("--untrained", action="store_true", help="also run the untrained-model baseline")
    parser.add_argument("--out", default="results/tables")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    base = ExperimentConfig(model=args.model, k=args.k, limit=args.limit, lr=args.lr)
    if args.lr_grid:
        base = replace(base, lr_grid=tuple(float(x) for x in args.lr_grid.split(",")))
    if args.separator is not None:
        base = replace(base, prompt=PromptFormat(separator=args.separator.encode().decode("unicode_escape")))
    cells = []
    for task in args.tasks.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            cells.append(replace(base, task=task, seed=seed))
            if args.untrained:
                cells.append(replace(base, task=task, seed=seed, untrained=True, untrained_seed=seed))
    out = Path(args.out)
    results = run_cells(cells, out, RuntimeOptions(device=args.device))

    trained = [r for r in results if not r["config"]["untrained"]]
    agg = aggregate(results)
    (out / "tables.md").write_text(markdown_tables(agg))
    (out / "aggregate.json").write_text(json.dumps(
        [{"task": k[0], "model": k[1], "k": k[2], "untrained": k[3], "stats": v} for k, v in sorted(agg.items())],
        indent=1))
    plot_prediction_changes(trained, out / "prediction_changes.png")
    plot_layer_metric(trained, out / "simaou_per_layer.png", "simaou", title="SimAOU per layer: GD vs LCGD")
    plot_layer_metric(trained, out / "simam_delta_per_layer.png", "simam_delta",
                      title="SimAM_Δ per layer: GD vs LCGD")
    plot_alpha(trained, out / "alpha.png")
    for r in trained:
        if r["config"]["seed"] == int(args.seeds.split(",")[0]):
            plot_grad_norms(r, out / f"grad_norms_{r['task']['name']}.png")
    if args.untrained:
        untrained = [r for r in results if r["config"]["untrained"]]
        plot_layer_metric(untrained, out / "untrained_simaou_per_layer.png", "simaou",
                          title="Untrained model: SimAOU per layer")
    print((out / "tables.md").read_text())


if __name__ == "__main__":
    main()
