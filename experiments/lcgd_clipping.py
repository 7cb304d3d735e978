"""LCGD gradient-clipping sweep and the sequential schedule.

Gradient clipping is off by default. Deutch et al. 2024's reference trainer clips LCGD on Subj with
one global ℓ2 norm of 12 over all trained parameters of all layers together (``--clip-norm 12``;
variant "global 12", labelled as the reference in the table). This runs LCGD on one task with no
clipping, with that global clip, with per-layer ℓ∞ value clips and per-layer ℓ2 norm clips, and with
the strictly sequential schedule, and writes a markdown table (accuracy, SimAOU, SimAM_Δ, max
per-layer gradient norm before clipping) plus the cells' results.

    python experiments/lcgd_clipping.py --task subj --k 16 --limit 200 --lr 1e-3 --out results/clipping
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from icl_lens.cell.experiment import ExperimentConfig
from icl_lens.training.finetune import FinetuneConfig
from icl_lens.cell.store import RuntimeOptions
from icl_lens.runs.sweep import run_cells

REFERENCE_VARIANT = "global 12"
"""The reference trainer's clip (Deutch et al. 2024, LCGD on Subj)."""

VARIANTS: dict[str, dict] = {
    "none": {},
    "global 12": {"clip_global_norm": 12.0},
    "value 12": {"clip_value": 12.0},
    "value 1": {"clip_value": 1.0},
    "value 0.1": {"clip_value": 0.1},
    "norm 1": {"clip_norm": 1.0},
    "norm 0.1": {"clip_norm": 0.1},
    "sequential": {"schedule": "sequential"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--task", default="subj")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, required=True, help="LCGD learning rate (e.g. the sweep's choice)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="results/clipping")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    names = [v.strip() for v in args.variants.split(",")]
    cells = []
    for name in names:
        options = dict(VARIANTS[name])
        schedule = options.pop("schedule", "simultaneous")
        cells.append(ExperimentConfig(
            task=args.task, model=args.model, k=args.k, limit=args.limit, seed=args.seed, lr=args.lr,
            settings=("zsl", "icl", "lcgd"), lcgd_schedule=schedule, finetune=FinetuneConfig(**options)))
    results = run_cells(cells, args.out, RuntimeOptions())
    lines = ["| LCGD variant | accuracy | SimAOU | SimAM_Δ | SimAM | max layer ‖∇‖ |", "|---|---|---|---|---|---|"]
    for name, r in zip(names, results):
        m = r["metrics"]["lcgd"]
        max_norm = max(max(row) for row in r["training"]["lcgd"]["grad_norms"])
        label = f"{name} (reference clip)" if name == REFERENCE_VARIANT else name
        lines.append(f"| {label} | {r['accuracy']['lcgd']:.3f} | {m['simaou']['mean']:.3f} | "
                     f"{m['simam_delta']['mean']:.3f} | {m['simam']['mean']:.3f} | {max_norm:.3g} |")
    first = results[0]
    header = (f"task {args.task}, {args.model}, k={first['prompts']['k_used']}, lr={args.lr}, "
              f"{first['n_examples']} queries; ZSL {first['accuracy']['zsl']:.3f}, ICL {first['accuracy']['icl']:.3f}\n\n")
    table = header + "\n".join(lines) + "\n"
    Path(args.out, "clipping.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
