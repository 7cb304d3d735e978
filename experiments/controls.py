"""The full control run (von Oswald et al. 2023; Dherin et al. 2025): every control against the GD and
FT comparators, then Dherin's context patch on real offline models, into one folder::

    python experiments/controls.py --out results/controls
    python experiments/controls.py --out results/controls --models gemma3-270m,smollm2-135m --dherin-only

Writes ``controls.json`` (checksummed), ``controls.md`` / ``control_table.json`` (the one-page table)
and ``dherin_<model>.json`` per real model, and prints the table. The same as
``icl-lens control run`` plus the real-model part.
"""

# ruff: noqa: T201  (a script: it prints its results)

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from icl_lens.controls.comparators import ComparatorConfig
from icl_lens.controls.report import control_table, dherin_table, write_report
from icl_lens.controls.suite import ROWS, SuiteConfig, read_controls, run_controls
from icl_lens.cell.results import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/controls")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--models", default="gemma3-270m,smollm2-135m", help="real models for Dherin's patch ('' none)")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--dherin-only", action="store_true", help="skip the controls (reuse controls.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if not args.dherin_only:
        rows = tuple(r for r in args.rows.split(",") if r)
        run_controls(SuiteConfig(rows, args.steps, args.batch_size, comparator=ComparatorConfig()), out, progress=True)
        write_report(out)
    if (out / "controls.json").is_file():
        print(control_table(read_controls(out)))
    studies = []
    for name in [m for m in args.models.split(",") if m]:
        import icl_lens
        from icl_lens.controls.dherin import dherin_study

        start = time.perf_counter()
        model = icl_lens.load_model(name)
        study = dherin_study(model, args.task, k=args.k, n_queries=args.queries)
        study |= {"model": name, "seconds": time.perf_counter() - start}
        atomic_write_text(out / f"dherin_{name}.json", json.dumps(study, indent=1) + "\n")
        studies.append(study)
        del model
    if studies:
        table = dherin_table(studies)
        atomic_write_text(out / "dherin.md", table)
        print(table)


if __name__ == "__main__":
    main()
