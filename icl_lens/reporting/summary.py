"""Plain-text tables of results dicts, shaped like the papers' Tables 1–2 (accuracy, Rec2FTP,
Jaccard; SimAOU vs random, SimAM, SimAM_Δ) and the nulls. Returned as strings: the CLI prints them.
A number with a bootstrap interval in the results prints as ``0.855 [0.805, 0.900]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from icl_lens.cell.results import (
    FINETUNED,
    NULL_KINDS,
    SETTINGS,
    accuracy,
    accuracy_interval,
    dig,
    jaccard_independence,
    metric_interval,
    metric_summary,
    metric_value,
    null_summary,
)
from icl_lens.reporting.tables import Table, format_interval, format_summary

__all__ = ["accuracy_table", "format_interval", "nulls_table", "similarity_table", "summary"]


def accuracy_table(results_list: Sequence[dict[str, Any]]) -> str:
    """Accuracy per setting (ZSL / ICL / FT / LCGD), one row per cell, with Rec2FTP and Jaccard."""
    header = ["task", "model", "k", "seed", "ZSL", "ICL", "FT", "LCGD", "Rec2FTP", "Jaccard%"]
    rows = []
    for r in results_list:
        rows.append(
            [
                r["task"]["name"],
                r["config"]["model"] + (" (untrained)" if r["config"].get("untrained") else ""),
                str(r["prompts"]["k_used"]),
                str(r["config"]["seed"]),
                *(format_interval(accuracy(r, s), accuracy_interval(r, s)) for s in SETTINGS),
                format_interval(metric_value(r, "ft", "rec2ftp"), metric_interval(r, "ft", "rec2ftp"), 1),
                format_interval(metric_value(r, "ft", "jaccard"), metric_interval(r, "ft", "jaccard"), 1, scale=100),
            ]
        )
    return Table(header, rows).text()


def similarity_table(results_list: Sequence[dict[str, Any]]) -> str:
    """Mean-over-layers SimAOU (vs random), SimAM, ZSL SimAM and SimAM_Δ for FT and LCGD, and α."""
    header = ["task", "SimAOU FT", "SimAOU LCGD", "random", "SimAM FT", "SimAM ZSL", "SimAM_Δ FT", "SimAM_Δ LCGD", "α"]
    rows = []
    for r in results_list:
        cell = lambda setting, metric, r=r: format_summary(metric_summary(r, setting, metric))
        rows.append(
            [
                r["task"]["name"],
                cell("ft", "simaou"),
                cell("lcgd", "simaou"),
                cell(None, "simaou_random"),
                cell("ft", "simam"),
                cell(None, "simam_zsl"),
                cell("ft", "simam_delta"),
                cell("lcgd", "simam_delta"),
                cell(None, "alpha"),
            ]
        )
    return Table(header, rows).text()


def nulls_table(results_list: Sequence[dict[str, Any]]) -> str:
    """Each finetuned setting's SimAOU and SimAM_Δ against its nulls (shuffled pair, wrong-label
    finetuning, random-direction update), and its Jaccard index against the independence
    expectation; one row per cell and setting that ran."""
    header = ["task", "setting", "metric", "observed", "shuffled pair", "wrong label", "random direction"]
    rows = []
    for r in results_list:
        for setting in FINETUNED:
            if dig(r, "nulls", setting) is None:
                continue
            for metric in ("simaou", "simam_delta"):
                rows.append(
                    [
                        r["task"]["name"],
                        setting.upper(),
                        metric,
                        format_summary(metric_summary(r, setting, metric)),
                        *(format_summary(null_summary(r, setting, null, metric)) for null in NULL_KINDS),
                    ]
                )
            independence = jaccard_independence(r, setting) or {}
            rows.append(
                [
                    r["task"]["name"],
                    setting.upper(),
                    "Jaccard% (vs independent)",
                    format_interval(independence.get("observed"), independence.get("observed_ci"), 1, scale=100),
                    f"expected {format_interval(independence.get('expected'), None, 1, scale=100)}",
                    "",
                    "",
                ]
            )
    return Table(header, rows).text() if rows else ""


def summary(results_list: Sequence[dict[str, Any]]) -> str:
    tables = [accuracy_table(results_list), similarity_table(results_list), nulls_table(results_list)]
    return "\n\n".join(t for t in tables if t)
