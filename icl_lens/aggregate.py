"""Across-seed aggregation of cell results (mean ± std) and the markdown tables of Tables 1–2,
beside the reference numbers of SPEC §7."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Callable, Sequence

from icl_lens.reference import REFERENCE_ACCURACY, REFERENCE_SIMILARITY
from icl_lens.results import dig

# Scalar summaries pulled out of one cell's results: name -> getter.
SCALARS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "acc_zsl": lambda r: r["accuracy"].get("zsl"),
    "acc_icl": lambda r: r["accuracy"].get("icl"),
    "acc_ft": lambda r: r["accuracy"].get("ft"),
    "acc_lcgd": lambda r: r["accuracy"].get("lcgd"),
    "rec2ftp": lambda r: dig(r, "metrics", "ft", "rec2ftp"),
    "jaccard": lambda r: dig(r, "metrics", "ft", "prediction_changes", "jaccard"),
    "jaccard_correct": lambda r: dig(r, "metrics", "ft", "prediction_changes", "jaccard_correct"),
    "jaccard_incorrect": lambda r: dig(r, "metrics", "ft", "prediction_changes", "jaccard_incorrect"),
    "simaou_ft": lambda r: dig(r, "metrics", "ft", "simaou", "mean"),
    "simaou_lcgd": lambda r: dig(r, "metrics", "lcgd", "simaou", "mean"),
    "simaou_random": lambda r: dig(r, "metrics", "simaou_random", "mean"),
    "simam_ft": lambda r: dig(r, "metrics", "ft", "simam", "mean"),
    "simam_lcgd": lambda r: dig(r, "metrics", "lcgd", "simam", "mean"),
    "simam_zsl": lambda r: dig(r, "metrics", "simam_zsl", "mean"),
    "simam_delta_ft": lambda r: dig(r, "metrics", "ft", "simam_delta", "mean"),
    "simam_delta_lcgd": lambda r: dig(r, "metrics", "lcgd", "simam_delta", "mean"),
    "alpha": lambda r: dig(r, "metrics", "alpha", "mean"),
    "lr": lambda r: dig(r, "lr", "lr"),
    "k_used": lambda r: dig(r, "prompts", "k_used"),
}



def group_key(results: dict[str, Any]) -> tuple[str, str, int, bool]:
    cfg = results["config"]
    return results["task"]["name"], cfg["model"], cfg["k"], bool(cfg.get("untrained"))


def aggregate(results_list: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, float]]]:
    """Per (task, model, k, untrained): every scalar's mean, std (sample, n-1) and n over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results_list:
        groups[group_key(r)].append(r)
    out = {}
    for key, members in groups.items():
        stats = {}
        for name, getter in SCALARS.items():
            values = [v for v in (getter(m) for m in members) if v is not None and not (
                isinstance(v, float) and math.isnan(v))]
            if values:
                stats[name] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "n": len(values),
                }
        out[key] = stats
    return out


def _pm(stats: dict[str, dict[str, float]], name: str, scale: float = 1.0, digits: int = 3) -> str:
    if name not in stats:
        return "–"
    s = stats[name]
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"


def _ref(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_tables(agg: dict[tuple, dict[str, dict[str, float]]]) -> str:
    """Table 1 (accuracy, Rec2FTP, Jaccard) and Table 2 (SimAOU, SimAM, SimAM_Δ), ours beside the
    reference (1.3B GPT, k = 32) in brackets."""
    rows1 = ["| task | model | k | ZSL | ICL | FT | LCGD | Rec2FTP | Jaccard % | ref ZSL / FT / ICL, Jaccard % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows2 = ["| task | model | SimAOU GD (ref) | SimAOU LCGD (ref) | random | SimAM GD | ZSL SimAM | "
             "SimAM_Δ GD (ref) | SimAM_Δ LCGD (ref) | α |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (task, model, k, untrained), s in sorted(agg.items()):
        label = model + (" (untrained)" if untrained else "")
        ref_acc = REFERENCE_ACCURACY.get(task, {})
        ref_acc_text = (f"{ref_acc['zsl']:.1f} / {ref_acc['ft']:.1f} / {ref_acc['icl']:.1f}, {ref_acc['jaccard']:.1f}"
                        if ref_acc else "–")
        rows1.append(
            f"| {task} | {label} | {k} | {_pm(s, 'acc_zsl', 100, 1)} | {_pm(s, 'acc_icl', 100, 1)} | "
            f"{_pm(s, 'acc_ft', 100, 1)} | {_pm(s, 'acc_lcgd', 100, 1)} | {_pm(s, 'rec2ftp', 1, 1)} | "
            f"{_pm(s, 'jaccard', 100, 1)} | {ref_acc_text} |")
        ref = REFERENCE_SIMILARITY.get(task, {})
        if untrained:
            ref_ft, ref_delta = ref.get("untrained_simaou"), ref.get("untrained_simam_delta")
        else:
            ref_ft, ref_delta = ref.get("simaou_ft"), ref.get("simam_delta_ft")
        rows2.append(
            f"| {task} | {label} | {_pm(s, 'simaou_ft')} ({_ref(ref_ft)}) | "
            f"{_pm(s, 'simaou_lcgd')} ({_ref(None if untrained else ref.get('simaou_lcgd'))}) | "
            f"{_pm(s, 'simaou_random')} | {_pm(s, 'simam_ft')} | {_pm(s, 'simam_zsl')} | "
            f"{_pm(s, 'simam_delta_ft')} ({_ref(ref_delta)}) | "
            f"{_pm(s, 'simam_delta_lcgd')} ({_ref(None if untrained else ref.get('simam_delta_lcgd'))}) | "
            f"{_pm(s, 'alpha')} |")
    return ("### Table 1 — predictions (accuracy %, mean ± std over seeds)\n\n" + "\n".join(rows1) +
            "\n\n### Table 2 — attention (mean over layers, mean ± std over seeds; reference in brackets)\n\n" +
            "\n".join(rows2) + "\n")
