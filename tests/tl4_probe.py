"""Run inside the TransformerLens 4 environment by tests/integration/test_transformer_lens_4.py (not a test module).

Loads the tiny Hugging Face models saved by the caller on the bridge backend and writes, per family:
whether the prefix cache check passed, the keyword the cache went under, the class scores of a
prefix-sharing evaluation, and the warnings the run raised. Usage: ``python tl4_probe.py DIR OUT.json``
with ``DIR/<family>`` saved by :func:`helpers.save_tiny_hf`.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import warnings
from pathlib import Path

import torch

from icl_lens.evaluation import evaluate
from icl_lens.models import load_model
from icl_lens.models.backends import bridge_prefix_cache_works, hf_cache_argument

PREFIX = [1, 40, 41, 42, 43, 44, 45, 46]
QUERIES = [[50, 51, 52], [60, 61], [70, 71, 72, 73, 74]]
LABELS = [[80], [81, 82]]


def main(root: Path, out: Path) -> None:
    report: dict = {
        "versions": {name: importlib.metadata.version(name) for name in ("torch", "transformers", "transformer-lens")},
        "families": {},
    }
    for family_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = load_model(str(family_dir), backend="bridge")
            works = bridge_prefix_cache_works(model)
            run = evaluate(model, PREFIX, QUERIES, LABELS, progress=False)
        report["families"][family_dir.name] = {
            "cache_works": works,
            "cache_argument": hf_cache_argument(model),
            "class_scores": run.class_scores.to(torch.float64).tolist(),
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught if w.category is FutureWarning],
        }
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
