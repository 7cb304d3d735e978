"""Synthetic results.json cells following the uncertainty / nulls / per-example contract, so the
findings and aggregation code can be tested without running a model.

Binary tasks; every per-query value is drawn with a seeded generator, and every summary (means,
accuracies, Rec2FTP, Jaccard, the prediction-change partition) is computed from those per-query
values, so the cell is internally consistent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from icl_lens.reporting.aggregate import jaccard_statistic, rec2ftp_statistic
from icl_lens.metrics import prediction_change_overlap
from icl_lens.cell.results import write_results


def _summary(rows: np.ndarray) -> dict[str, Any]:
    per_layer = rows.mean(axis=0)
    return {"per_layer": [float(v) for v in per_layer], "mean": float(per_layer.mean()),
            "ci": [float(per_layer.mean()) - 0.01, float(per_layer.mean()) + 0.01],
            "per_layer_ci": [[float(v) - 0.01, float(v) + 0.01] for v in per_layer]}


def _flip(correct: np.ndarray, gain: float, rng: np.random.Generator) -> np.ndarray:
    """Correctness after a change of ``gain`` (fraction of queries fixed if > 0, broken if < 0)."""
    if gain >= 0:
        return correct | (rng.random(len(correct)) < gain)
    return correct & ~(rng.random(len(correct)) < -gain)


def synthetic_cell(task: str = "sst2", seed: int = 0, untrained: bool = False, model: str = "tiny", n: int = 80,
                   n_layers: int = 3, icl_gain: float = 0.3, ft_gain: float = 0.3, simaou: float = 0.3,
                   simaou_random: float = 0.0, null_simaou: float = 0.1, lcgd_shift: float = 0.1,
                   noise: float = 0.05, token_overlap: float = 0.2, with_nulls: bool = True,
                   with_per_example: bool = True) -> dict[str, Any]:
    """One cell's results dict (task × seed × trained/untrained)."""
    rng = np.random.default_rng([seed, int(untrained), sum(map(ord, task))])
    labels = np.arange(n) % 2
    zsl_ok = rng.random(n) < 0.5
    icl_ok = zsl_ok.copy() if icl_gain == 0 else _flip(zsl_ok, icl_gain, rng)
    ft_ok = zsl_ok.copy() if ft_gain == 0 else _flip(zsl_ok, ft_gain, rng)
    lcgd_ok = ft_ok.copy()
    correct = {"zsl": zsl_ok, "icl": icl_ok, "ft": ft_ok, "lcgd": lcgd_ok}
    pred = {s: np.where(ok, labels, 1 - labels) for s, ok in correct.items()}

    def layers(center: float) -> np.ndarray:
        return center + noise * rng.standard_normal((n, n_layers))

    per = {"ft": {"simaou": layers(simaou), "simam": layers(0.5), "simam_delta": layers(0.1)},
           "lcgd": {"simaou": layers(simaou + lcgd_shift), "simam": layers(0.5), "simam_delta": layers(0.1 + lcgd_shift)},
           "alpha": layers(0.4), "simaou_random": layers(simaou_random), "simam_zsl": layers(0.6)}
    null_rows = {kind: {"simaou": layers(null_simaou), "simam_delta": layers(0.0)}
                 for kind in ("shuffled_pair", "wrong_label", "random_direction")}

    def comparison(setting: str) -> dict[str, Any]:
        rows = np.stack([pred["zsl"], pred["icl"], pred[setting], labels], axis=1)[None].astype(float)
        overlap = prediction_change_overlap(*(torch.tensor(pred[s]) for s in ("zsl", "icl", setting)),
                                            torch.tensor(labels)).to_dict()
        overlap["jaccard_ci"] = [overlap["jaccard"] - 0.05, overlap["jaccard"] + 0.05]
        rec = float(rec2ftp_statistic(rows)[0])
        return {**{m: _summary(per[setting][m]) for m in ("simaou", "simam", "simam_delta")},
                "rec2ftp": rec, "rec2ftp_ci": [rec - 5, rec + 5], "prediction_changes": overlap,
                "token_overlap": {"token_overlap": token_overlap, "overlap_cosine": 0.3,
                                  "token_overlap_ci": [token_overlap - 0.05, token_overlap + 0.05],
                                  "overlap_cosine_ci": [0.25, 0.35]}}

    accuracy = {s: float(ok.mean()) for s, ok in correct.items()}
    results: dict[str, Any] = {
        "config": {"task": task, "model": model, "k": 4, "seed": seed, "untrained": untrained},
        "task": {"name": task, "label_words": ["negative", "positive"], "template": "{text}"},
        "model": {"name": model, **({"untrained_init": "reference"} if untrained else {})},
        "prompts": {"k_used": 4},
        "n_examples": n,
        "accuracy": accuracy,
        "accuracy_ci": {s: [a - 0.05, a + 0.05] for s, a in accuracy.items()},
        "metrics": {"ft": comparison("ft"), "lcgd": comparison("lcgd"), "alpha": _summary(per["alpha"]),
                    "simaou_random": _summary(per["simaou_random"]), "simam_zsl": _summary(per["simam_zsl"])},
        "examples": [{"row_index": i, "label": int(labels[i]),
                      "prediction": {s: int(pred[s][i]) for s in pred}} for i in range(n)],
        "uncertainty": {"method": "percentile bootstrap", "n_resamples": 100, "confidence": 0.95, "seed": 0},
        "tests": {f"{s}_vs_zsl": {"test": "mcnemar_exact", "b": 1, "c": 2, "p_value": 0.04,
                                  "difference": accuracy[s] - accuracy["zsl"], "ci": [-0.1, 0.1]}
                  for s in ("icl", "ft", "lcgd")},
    }
    results["tests"]["lcgd_vs_ft_simaou"] = {"test": "paired_bootstrap", "difference": lcgd_shift,
                                             "ci": [lcgd_shift - 0.02, lcgd_shift + 0.02], "p_value": 0.01}
    if with_nulls:
        zsl, icl, ft = pred["zsl"], pred["icl"], pred["ft"]
        a, b = float((icl != zsl).sum()), float((ft != zsl).sum())
        expected = (a * b / n) / (a + b - a * b / n) if a + b else float("nan")
        observed = float(jaccard_statistic(np.stack([zsl, icl, ft, labels], axis=1)[None].astype(float))[0])
        results["nulls"] = {"ft": {**{k: {m: _summary(v) for m, v in rows.items()} for k, rows in null_rows.items()},
                                   "jaccard_independence": {"expected": expected, "observed": observed,
                                                            "observed_ci": [observed - 0.05, observed + 0.05]}}}
    if with_per_example:
        results["per_example"] = {
            "correct": {s: [int(v) for v in ok] for s, ok in correct.items()},
            "ft": {m: per["ft"][m].tolist() for m in per["ft"]},
            "lcgd": {m: per["lcgd"][m].tolist() for m in per["lcgd"]},
            "alpha": per["alpha"].tolist(), "simaou_random": per["simaou_random"].tolist(),
            "nulls": {"ft": {k: {m: v.tolist() for m, v in rows.items()} for k, rows in null_rows.items()}}
            if with_nulls else {},
        }
    return results


def write_cells(root: Path, cells: list[dict[str, Any]]) -> Path:
    """Write each cell as ``root/<task>__<model>__seed<seed>[__untrained]/results.json``."""
    for r in cells:
        cfg = r["config"]
        name = f"{cfg['task']}__{cfg['model']}__seed{cfg['seed']}" + ("__untrained" if cfg["untrained"] else "")
        write_results(root / name / "results.json", r)
    return root


def study(tasks=("sst2", "subj"), seeds=(0, 1, 2), untrained_seeds=(0,), **kwargs) -> list[dict[str, Any]]:
    """Trained cells for every task × seed, and untrained ones for ``untrained_seeds``."""
    untrained_kwargs = {"icl_gain": 0.0, **kwargs.pop("untrained", {})}
    cells = [synthetic_cell(task, seed, **kwargs) for task in tasks for seed in seeds]
    cells += [synthetic_cell(task, seed, untrained=True, **{**kwargs, **untrained_kwargs})
              for task in tasks for seed in untrained_seeds]
    return cells
