"""Reproduce Tables 1–2 and Figures 2–4 of Dai et al. 2023 / Deutch et al. 2024 on one model.

For every task and seed: ZSL, ICL, GD (FT) and LCGD on the same queries, every metric; optionally
the untrained-model baseline (Deutch et al. 2024) too, on every seed (so its difference from the trained
model pairs by seed and query). Each cell chooses its learning rate on its own seed's dev slice (train
rows disjoint from its demonstrations and evaluation queries; grid starting from the papers' rates),
unless --lr fixes it or --lr-once chooses it once per task on the first seed's dev slice and reuses it.
Seeds default to the preset's (icl_lens.cell.presets.PRESET_SEEDS: 0-4). Writes, under --out:

    <cell>/results.json          one per task × seed (× untrained), resumable
    tables.md                    mean ± std over seeds [seed × query bootstrap interval] beside the reference
    findings.md, findings.json   a verdict per claim of the papers, per task and pooled (icl-lens findings)
    aggregate.json               the same numbers as JSON
    prediction_changes.png       stacked bars of ICL / FT prediction changes per task
    simaou_per_layer.png         per-layer SimAOU, GD vs LCGD vs random (Fig. 3)
    simam_delta_per_layer.png    per-layer SimAM_Δ, GD vs LCGD (Fig. 3)
    alpha.png                    α per task (Fig. 2)
    grad_norms_<task>.png        layers × demonstration gradient norms, GD vs LCGD (Fig. 4)

    python experiments/reproduce_tables.py --model gemma3-270m --k 16 --limit 200 --untrained

``--preset reference`` runs the reference setting (EOS after every demonstration, random
demonstrations, no calibration, k = 32, the papers' per-task rates, so no sweep); ``--untrained-init``
picks the untrained model's recipe (default ``reference``: the reference code's module defaults).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from icl_lens.reporting.aggregate import aggregate, markdown_tables
from icl_lens.cli.common import add_executor_flags, executor_options
from icl_lens.cell.experiment import ExperimentConfig
from icl_lens.reporting.findings import findings_markdown, write_findings
from icl_lens.reporting.figures import plot_alpha, plot_grad_norms, plot_layer_metric, plot_prediction_changes
from icl_lens.cell.presets import preset_config, preset_seeds
from icl_lens.prompts import PromptFormat
from icl_lens.cell.store import RuntimeOptions
from icl_lens.runs.sweep import run_cells
from icl_lens.tasks import BUILTIN_TASK_NAMES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--tasks", default=",".join(BUILTIN_TASK_NAMES))
    parser.add_argument("--seeds", default=None,
                        help="demonstration seeds, comma-separated (default: the preset's, 0,1,2,3,4)")
    parser.add_argument("--preset", choices=["default", "reference"], default=None,
                        help="start from this preset (icl_lens.cell.presets); the flags below win")
    parser.add_argument("--k", type=int, default=None, help="demonstrations (default: 16; reference preset: 32)")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--lr", type=float, default=None,
                        help="fixed lr (default: swept in every cell on its seed's dev slice)")
    parser.add_argument("--lr-grid", default=None, help="comma-separated sweep grid")
    parser.add_argument("--separator", default=None, help="demonstration separator (default: the package's)")
    parser.add_argument("--untrained", action="store_true", help="also run the untrained-model baseline")
    parser.add_argument("--untrained-init", choices=["reference", "normal"], default="reference",
                        help="untrained model's recipe: reference (module defaults, default) or normal (N(0, 0.02))")
    parser.add_argument("--untrained-seeds", type=int, default=None,
                        help="how many of the seeds also run the untrained model (default: all)")
    parser.add_argument("--lr-once", action="store_true",
                        help="sweep the lr once per task, on the first seed's dev slice, and reuse it for the other "
                             "seeds and the untrained model (default: every cell sweeps on its own seed's dev slice)")
    parser.add_argument("--out", default="results/tables")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--backend", default=None, choices=["hooked", "bridge"], help="TransformerLens model class (default: hooked on TL<4)"
    )
    add_executor_flags(parser)  # --executor inline|local|slurm, --workers, --slurm-* (as icl-lens run)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    given = dict(model=args.model, limit=args.limit, lr=args.lr, **({} if args.k is None else {"k": args.k}))
    if args.preset is not None:
        base = preset_config(args.preset, **given)
    else:
        base = ExperimentConfig(**{"k": 16, **given})
    if args.lr_grid:
        base = replace(base, lr_grid=tuple(float(x) for x in args.lr_grid.split(",")))
    if args.separator is not None:
        base = replace(base, prompt=PromptFormat(separator=args.separator.encode().decode("unicode_escape")))
    tasks = args.tasks.split(",")
    seeds = list(preset_seeds(args.preset or "default")) if args.seeds is None else [
        int(x) for x in args.seeds.split(",")]
    out = Path(args.out)
    runtime = RuntimeOptions(device=args.device, backend=args.backend)
    executor = executor_options(args)
    # 1. the first seed of every task (unless --lr fixes it, each cell sweeps the lr on its seed's dev slice)
    first = run_cells([replace(base, task=task, seed=seeds[0]) for task in tasks], out, runtime,
                      executor=executor)
    lr_of = {r["task"]["name"]: r["lr"]["lr"] for r in first}
    once = args.lr_once and args.lr is None and base.lr_mode == "sweep"
    if once:
        logging.info("lr chosen per task on seed %d's dev slice, reused for the other seeds and the untrained "
                     "model: %s", seeds[0], lr_of)

    def fixed(task: str) -> dict:
        return {"lr": lr_of[task]} if once else {}

    # 2. the untrained baseline, 3. the remaining seeds (cheapest evidence first if the run is cut short)
    later = []
    if args.untrained:
        n_untrained = len(seeds) if args.untrained_seeds is None else args.untrained_seeds
        later += [replace(base, task=t, seed=s, untrained=True, untrained_seed=s,
                          untrained_init=args.untrained_init, **fixed(t))
                  for s in seeds[:n_untrained] for t in tasks]
    later += [replace(base, task=t, seed=s, **fixed(t)) for s in seeds[1:] for t in tasks]
    results = first + run_cells(later, out, runtime, executor=executor)

    trained = [r for r in results if not r["config"]["untrained"]]
    agg = aggregate(results)
    (out / "tables.md").write_text(markdown_tables(agg))
    (out / "aggregate.json").write_text(json.dumps(
        [{"task": k[0], "model": k[1], "k": k[2], "untrained": k[3], "variant": k[4], "stats": v} for k, v in sorted(agg.items())],
        indent=1))
    plot_prediction_changes(trained, out / "prediction_changes.png")
    plot_layer_metric(trained, out / "simaou_per_layer.png", "simaou", title="SimAOU per layer: GD vs LCGD")
    plot_layer_metric(trained, out / "simam_delta_per_layer.png", "simam_delta",
                      title="SimAM_Δ per layer: GD vs LCGD")
    plot_alpha(trained, out / "alpha.png")
    for r in trained:
        if r["config"]["seed"] == seeds[0]:
            plot_grad_norms(r, out / f"grad_norms_{r['task']['name']}.png")
    if args.untrained:
        untrained = [r for r in results if r["config"]["untrained"]]
        plot_layer_metric(untrained, out / "untrained_simaou_per_layer.png", "simaou",
                          title="Untrained model: SimAOU per layer")
    print((out / "tables.md").read_text())
    print(findings_markdown(write_findings(out)))


if __name__ == "__main__":
    main()
