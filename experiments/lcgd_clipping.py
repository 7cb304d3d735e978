"""LCGD gradient-clipping sweep and the sequential schedule.

Gradient clipping is off by default. Deutch et al. 2024's reference trainer clips LCGD on Subj with
one global ℓ2 norm of 12 over all trained parameters of all layers together (``--clip-norm 12``;
variant "global 12", labelled as the reference in the table). This runs LCGD on one task with no
clipping, with that global clip, with per-layer ℓ∞ value clips and per-layer ℓ2 norm clips, and with
the strictly sequential schedule, and writes a markdown table (accuracy, SimAOU, SimAM_Δ, max
per-layer gradient norm before clipping) plus the cells' results.

    python experiments/lcgd_clipping.py --task subj --k 16 --limit 200 --lr 1e-3 --out results/clipping

For the clipping claim of ``icl-lens findings`` (Deutch et al. 2024: the clip restores LCGD's SimAM
on Subj), run the reference clip beside an existing findings run: same preset, queries and seeds,
and each seed's LCGD learning rate read from that run's unclipped cell, so that only the clip
differs. The clipped cells go under the run's folder, where the findings find them:

    python experiments/lcgd_clipping.py --task subj --preset default --seeds 0,1,2,3,4 --limit 100 \
        --variants "global 12" --lr-from results/findings_default --out results/findings_default/clipping
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from icl_lens.cell.experiment import ExperimentConfig
from icl_lens.cell.presets import preset_config
from icl_lens.cell.store import RuntimeOptions
from icl_lens.errors import ConfigError
from icl_lens.reporting.findings import find_results, is_clipped, lcgd_learning_rate
from icl_lens.runs.sweep import run_cells
from icl_lens.training.finetune import FinetuneConfig

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


def unclipped_lcgd_lrs(results_dir: str | Path, model: str, task: str, k: int, preset: str | None) -> dict[int, float]:
    """Each seed's LCGD learning rate (:func:`icl_lens.reporting.findings.lcgd_learning_rate`) in the
    unclipped, trained cells of ``task`` under ``results_dir``, so a clipped cell can change only the clip."""
    rates: dict[int, float] = {}
    for _, r in find_results(results_dir):
        cfg = r["config"]
        if (cfg.get("model"), cfg.get("task"), cfg.get("k"), cfg.get("preset")) != (model, task, k, preset):
            continue
        if cfg.get("untrained") or is_clipped(r) or "lcgd" not in cfg.get("settings", ()):
            continue
        rate = lcgd_learning_rate(r)
        if rate is not None:
            rates[int(cfg["seed"])] = rate
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--task", default="subj")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--preset", default=None, help="the preset of the run to pair with (default: none)")
    parser.add_argument("--seeds", default="0", help="demonstration seeds, comma-separated (default: 0)")
    parser.add_argument("--lr", type=float, default=None, help="LCGD learning rate (e.g. the sweep's choice)")
    parser.add_argument("--lr-from", default=None, metavar="RESULTS_DIR",
                        help="each seed's LCGD learning rate from the unclipped cell of the same model, task, k, "
                             "preset and seed under RESULTS_DIR (instead of --lr)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="results/clipping")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if (args.lr is None) == (args.lr_from is None):
        raise SystemExit("give --lr or --lr-from, exactly one")
    names = [v.strip() for v in args.variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    seeds = [int(x) for x in args.seeds.split(",")]
    if args.lr_from is not None:
        rates = unclipped_lcgd_lrs(args.lr_from, args.model, args.task, args.k, args.preset)
        absent = [s for s in seeds if s not in rates]
        if absent:
            raise SystemExit(f"no unclipped {args.task} cell of seeds {absent} under {args.lr_from} "
                             f"(model {args.model}, k {args.k}, preset {args.preset})")
    else:
        rates = {s: args.lr for s in seeds}

    def config(name: str, seed: int) -> ExperimentConfig:
        options = dict(VARIANTS[name])
        schedule = options.pop("schedule", "simultaneous")
        fields = dict(task=args.task, model=args.model, k=args.k, limit=args.limit, seed=seed, lr=rates[seed],
                      settings=("zsl", "icl", "lcgd"), lcgd_schedule=schedule)
        if args.preset is None:
            return ExperimentConfig(**fields, finetune=FinetuneConfig(**options))
        try:
            return preset_config(args.preset, **fields, finetune=options)
        except ConfigError as exc:
            raise SystemExit(f"preset {args.preset!r}: {exc}") from None

    cells = [(name, seed, config(name, seed)) for seed in seeds for name in names]
    results = run_cells([c for _, _, c in cells], args.out, RuntimeOptions())
    lines = ["| LCGD variant | seed | lr | accuracy | SimAOU | SimAM_Δ | SimAM | max layer ‖∇‖ |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, seed, _), r in zip(cells, results):
        m = r["metrics"]["lcgd"]
        max_norm = max(max(row) for row in r["training"]["lcgd"]["grad_norms"])
        label = f"{name} (reference clip)" if name == REFERENCE_VARIANT else name
        lines.append(f"| {label} | {seed} | {rates[seed]:g} | {r['accuracy']['lcgd']:.3f} | "
                     f"{m['simaou']['mean']:.3f} | {m['simam_delta']['mean']:.3f} | {m['simam']['mean']:.3f} | "
                     f"{max_norm:.3g} |")
    first = results[0]
    header = (f"task {args.task}, {args.model}, k={first['prompts']['k_used']}, preset {args.preset or 'none'}, "
              f"{first['n_examples']} queries; ZSL {first['accuracy']['zsl']:.3f}, ICL {first['accuracy']['icl']:.3f} "
              f"(seed {seeds[0]})\n\n")
    table = header + "\n".join(lines) + "\n"
    Path(args.out, "clipping.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
