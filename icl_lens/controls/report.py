"""The one-page control table: what each comparator sees on each control (markdown and JSON).

One row per control, comparator and metric, with the mean over evaluation tasks, its percentile
bootstrap interval and the verdict: the GD comparator's claim by the thresholds fixed in
:mod:`icl_lens.controls.comparators`, the FT comparator's claims by the findings' rule (the interval
of the paired difference excludes 0 above: holds; below: fails; else inconclusive).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from icl_lens.cell.results import atomic_write_text
from icl_lens.controls.suite import read_controls

REPORT_MD = "controls.md"
REPORT_JSON = "control_table.json"

_GD_METRICS = (
    ("sensitivity_cosine", "sensitivity cos(∂ŷ/∂x_q)"),
    ("relative_prediction_gap", "mean|ŷ_TF − ŷ_GD| / mean|ŷ_GD − y|"),
    ("prediction_gap", "mean|ŷ_TF − ŷ_GD|"),
    ("sensitivity_l2", "‖∂ŷ_TF/∂x_q − ∂ŷ_GD/∂x_q‖"),
)
_FT_METRICS = (
    ("simaou", "SimAOU"),
    ("simaou_random", "SimAOU random baseline"),
    ("simam", "SimAM (ICL, FT)"),
    ("zsl_simam", "ZSL SimAM (ICL, ZSL)"),
    ("simam_delta", "SimAM_Δ"),
)
_FT_CLAIMS = (
    ("simaou_above_random", "SimAOU − random baseline"),
    ("simaou_above_shuffled_pair", "SimAOU − shuffled-pair null"),
    ("simaou_above_wrong_label", "SimAOU − wrong-label null"),
    ("simaou_above_random_direction", "SimAOU − random-direction null"),
    ("icl_beats_zsl", "ICL gain over ZSL (½ squared error)"),
)


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    value = float(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.4f}"


def _escape(text: str) -> str:
    """A markdown table cell's text: a literal | would end the cell."""
    return text.replace("|", "\\|")


def _cell(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "–"
    low, high = summary.get("ci") or (None, None)
    return f"{_number(summary.get('mean'))} [{_number(low)}, {_number(high)}]"


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The table as records: control, comparator, metric, value, interval, verdict."""
    records = []
    for row in results["rows"]:
        gd, ft = row["gd"], row["ft"]
        for i, (key, label) in enumerate(_GD_METRICS):
            records.append(
                {
                    "control": row["control"],
                    "comparator": f"GD ({gd['gd_steps']} step{'s' if gd['gd_steps'] > 1 else ''}, η {gd['eta']:.3f})",
                    "metric": label,
                    "summary": gd[key],
                    "verdict": (
                        gd["verdict"]
                        + (f" (expected {row['expected_gd_verdict']})" if row["expected_gd_verdict"] else "")
                    )
                    if i == 0
                    else "",
                }
            )
        comparator = f"FT (W_K/W_V, {ft['ft_steps']} step, lr {ft['ft_rate']:.3g})"
        for key, label in _FT_METRICS:
            records.append(
                {
                    "control": row["control"],
                    "comparator": comparator,
                    "metric": label,
                    "summary": ft["metrics"][key],
                    "verdict": "",
                }
            )
        for key, label in _FT_CLAIMS:
            claim = ft["claims"][key]
            records.append(
                {
                    "control": row["control"],
                    "comparator": comparator,
                    "metric": label,
                    "summary": claim,
                    "verdict": claim["verdict"],
                }
            )
    return records


def control_table(results: dict[str, Any]) -> str:
    """The one-page markdown table (with the thresholds and each control's identity below it)."""
    thresholds = results["thresholds"]
    lines = [
        "| control | comparator | metric | mean [95 % CI] | verdict |",
        "|---|---|---|---|---|",
    ]
    for record in table_rows(results):
        lines.append(
            f"| {record['control']} | {record['comparator']} | {_escape(record['metric'])} |"
            f" {_cell(record['summary'])} |"
            f" {record['verdict']} |"
        )
    lines += [
        "",
        f"GD claim (von Oswald et al. 2023): holds when the interval of the mean sensitivity cosine is ≥ "
        f"{thresholds['sensitivity_cosine_low']} and the interval of the relative prediction gap is ≤ "
        f"{thresholds['relative_gap_high']} (fixed before any run); otherwise fails. FT claims (Dai et al. 2023, the "
        "project's nulls): the interval of the paired per-task difference above 0 holds, below 0 fails, else "
        "inconclusive.",
        "",
        "| control | identity | training |",
        "|---|---|---|",
    ]
    for row in results["rows"]:
        ident = row["identity"]
        if ident.get("trained"):
            who = f"config {ident['config_digest']}, weights sha256 {ident['weights_sha256'][:16]}…"
            how = f"{ident['train_seconds']:.0f} s, final loss {ident['final_train_loss']:.4f}"
        elif "max_abs_difference_to_gd" in ident:
            exact = ident["max_abs_difference_to_gd"]
            who = "A.1 construction"
            how = f"max \\|ŷ − ŷ_GD\\|: float32 {exact['float32']:.1e}, float64 {exact['float64']:.1e}"
        else:
            who, how = f"initialisation of config {ident.get('init_of')}", "untrained"
        lines.append(f"| {row['control']} | {who} | {how} |")
    lines.append("")
    lines.append(f"Run config {results['config_digest']}, icl_lens {results['version']}, {results['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def dherin_table(results: list[dict[str, Any]]) -> str:
    """Dherin et al. 2025's patch per model and layer: the identity's error and the comparison with FT."""
    lines = [
        "| model | layer | max \\|patched − with context\\| (float64) | relative | cos(ΔW_patch, ΔW_FT) |"
        " cos vs wrong-label FT | cos vs random | aligned above wrong-label null | ‖ΔW_patch‖/‖ΔW_FT‖ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for layer, v in r["layers"].items():
            c = v["ft_comparison"]
            cell = lambda s: f"{s['mean']:.4f} [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]"  # noqa: E731
            claim = c["claims"]["patch_aligned_with_ft_above_null"]
            lines.append(
                f"| {r['model']} | {layer} | {v['identity_max_abs_error']:.1e} | {v['identity_max_relative_error']:.1e}"
                f" | {cell(c['cos_ft'])} | {cell(c['cos_null'])} | {cell(c['cos_random'])} | {claim['verdict']}"
                f" ({claim['mean']:+.4f}) | {c['norm_ratio']['mean']:.3g} |"
            )
    return "\n".join(lines) + "\n"


def write_report(results_dir: str | Path) -> tuple[Path, Path]:
    """Read ``controls.json`` under ``results_dir`` (checksum verified) and write the table beside it."""
    results_dir = Path(results_dir)
    results = read_controls(results_dir)
    markdown, table_json = results_dir / REPORT_MD, results_dir / REPORT_JSON
    studies = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(results_dir.glob("dherin_*.json"))]
    text = "# Controls with known answers\n\n" + control_table(results)
    if studies:
        text += "\n## Dherin et al. 2025: the context as a rank-1 MLP patch\n\n" + dherin_table(studies)
    atomic_write_text(markdown, text)
    payload = {
        "config_digest": results["config_digest"],
        "thresholds": results["thresholds"],
        "rows": table_rows(results),
    }
    atomic_write_text(table_json, json.dumps(payload, indent=1) + "\n")
    return markdown, table_json
