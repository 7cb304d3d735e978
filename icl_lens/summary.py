"""Plain-text tables of results dicts, shaped like the papers' Tables 1–2 (accuracy, Rec2FTP,
Jaccard; SimAOU vs random, SimAM, SimAM_Δ). Returned as strings: the CLI prints them."""

from __future__ import annotations

from typing import Any, Sequence

from icl_lens.results import dig


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def accuracy_table(results_list: Sequence[dict[str, Any]]) -> str:
    """Accuracy per setting (ZSL / ICL / FT / LCGD), one row per cell, with Rec2FTP and Jaccard."""
    header = ["task", "model", "k", "seed", "ZSL", "ICL", "FT", "LCGD", "Rec2FTP", "Jaccard%"]
    rows = []
    for r in results_list:
        acc = r.get("accuracy", {})
        ft = r.get("metrics", {}).get("ft", {})
        jaccard = ft.get("prediction_changes", {}).get("jaccard")
        rows.append([
            r["task"]["name"], r["config"]["model"] + (" (untrained)" if r["config"].get("untrained") else ""),
            str(r["prompts"]["k_used"]), str(r["config"]["seed"]),
            *(_fmt(acc.get(s)) for s in ("zsl", "icl", "ft", "lcgd")),
            _fmt(ft.get("rec2ftp"), 1), _fmt(None if jaccard is None else 100 * jaccard, 1),
        ])
    return _table(header, rows)


def similarity_table(results_list: Sequence[dict[str, Any]]) -> str:
    """Mean-over-layers SimAOU (vs random), SimAM, ZSL SimAM and SimAM_Δ for FT and LCGD, and α."""
    header = ["task", "SimAOU FT", "SimAOU LCGD", "random", "SimAM FT", "SimAM ZSL",
              "SimAM_Δ FT", "SimAM_Δ LCGD", "α"]
    rows = []
    for r in results_list:
        m = r.get("metrics", {})
        mean = lambda *path: dig(m, *path, "mean")
        rows.append([
            r["task"]["name"], _fmt(mean("ft", "simaou")), _fmt(mean("lcgd", "simaou")), _fmt(mean("simaou_random")),
            _fmt(mean("ft", "simam")), _fmt(mean("simam_zsl")), _fmt(mean("ft", "simam_delta")),
            _fmt(mean("lcgd", "simam_delta")), _fmt(mean("alpha")),
        ])
    return _table(header, rows)



def summary(results_list: Sequence[dict[str, Any]]) -> str:
    return accuracy_table(results_list) + "\n\n" + similarity_table(results_list)
