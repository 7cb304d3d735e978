"""Plain-text tables of results dicts, shaped like the papers' Tables 1–2 (accuracy, Rec2FTP,
Jaccard; SimAOU vs random, SimAM, SimAM_Δ) and the nulls. Returned as strings: the CLI prints them.
A number with a bootstrap interval in the results prints as ``0.855 [0.805, 0.900]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from icl_lens.results import dig


def format_interval(value: Any, ci: Sequence[float] | None, digits: int = 3, scale: float = 1.0) -> str:
    """``value [low, high]`` (each times ``scale``, ``digits`` decimals), or the bare value when
    there is no (finite) interval, e.g. in results written before intervals existed; ``–`` for a
    missing or NaN value. The one formatter of intervals in the printed tables, the HTML reports
    and the findings."""
    if value is None or isinstance(value, bool) or (isinstance(value, float) and value != value):
        return "–"
    text = f"{scale * value:.{digits}f}"
    if (
        ci is not None
        and len(ci) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v for v in ci)
    ):
        text += f" [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"
    return text


def _summary_cell(summary: dict[str, Any] | None) -> str:
    """A per-layer summary dict as its mean over layers with the interval."""
    if not summary:
        return "–"
    return format_interval(summary.get("mean"), summary.get("ci"))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def accuracy_table(results_list: Sequence[dict[str, Any]]) -> str:
    """Accuracy per setting (ZSL / ICL / FT / LCGD), one row per cell, with Rec2FTP and Jaccard."""
    header = ["task", "model", "k", "seed", "ZSL", "ICL", "FT", "LCGD", "Rec2FTP", "Jaccard%"]
    rows = []
    for r in results_list:
        acc, acc_ci = r.get("accuracy", {}), r.get("accuracy_ci", {})
        ft = r.get("metrics", {}).get("ft", {})
        changes = ft.get("prediction_changes", {})
        rows.append(
            [
                r["task"]["name"],
                r["config"]["model"] + (" (untrained)" if r["config"].get("untrained") else ""),
                str(r["prompts"]["k_used"]),
                str(r["config"]["seed"]),
                *(format_interval(acc.get(s), acc_ci.get(s)) for s in ("zsl", "icl", "ft", "lcgd")),
                format_interval(ft.get("rec2ftp"), ft.get("rec2ftp_ci"), 1),
                format_interval(changes.get("jaccard"), changes.get("jaccard_ci"), 1, scale=100),
            ]
        )
    return _table(header, rows)


def similarity_table(results_list: Sequence[dict[str, Any]]) -> str:
    """Mean-over-layers SimAOU (vs random), SimAM, ZSL SimAM and SimAM_Δ for FT and LCGD, and α."""
    header = ["task", "SimAOU FT", "SimAOU LCGD", "random", "SimAM FT", "SimAM ZSL", "SimAM_Δ FT", "SimAM_Δ LCGD", "α"]
    rows = []
    for r in results_list:
        m = r.get("metrics", {})
        cell = lambda *path, m=m: _summary_cell(dig(m, *path))
        rows.append(
            [
                r["task"]["name"],
                cell("ft", "simaou"),
                cell("lcgd", "simaou"),
                cell("simaou_random"),
                cell("ft", "simam"),
                cell("simam_zsl"),
                cell("ft", "simam_delta"),
                cell("lcgd", "simam_delta"),
                cell("alpha"),
            ]
        )
    return _table(header, rows)


def nulls_table(results_list: Sequence[dict[str, Any]]) -> str:
    """Each finetuned setting's SimAOU and SimAM_Δ against its nulls (shuffled pair, wrong-label
    finetuning, random-direction update), and its Jaccard index against the independence
    expectation; one row per cell and setting that ran."""
    header = ["task", "setting", "metric", "observed", "shuffled pair", "wrong label", "random direction"]
    rows = []
    for r in results_list:
        for setting in ("ft", "lcgd"):
            nulls = r.get("nulls", {}).get(setting)
            if nulls is None:
                continue
            for metric in ("simaou", "simam_delta"):
                rows.append(
                    [
                        r["task"]["name"],
                        setting.upper(),
                        metric,
                        _summary_cell(dig(r, "metrics", setting, metric)),
                        *(
                            _summary_cell(dig(nulls, null, metric))
                            for null in ("shuffled_pair", "wrong_label", "random_direction")
                        ),
                    ]
                )
            independence = nulls.get("jaccard_independence", {})
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
    return _table(header, rows) if rows else ""


def summary(results_list: Sequence[dict[str, Any]]) -> str:
    tables = [accuracy_table(results_list), similarity_table(results_list), nulls_table(results_list)]
    return "\n\n".join(t for t in tables if t)
