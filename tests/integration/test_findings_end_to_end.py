"""End to end on tiny random models: a real sweep (icl_lens.runs.sweep.run_cells) of 2 tasks × 2 seeds,
trained and untrained, then ``icl-lens findings`` and ``icl-lens report`` on its folder.

The findings and the report were written against a contract and tested on synthetic cells; this
checks that what :mod:`icl_lens.cell.experiment` writes is what they read."""

from __future__ import annotations

import json
import math
import re

import pytest

from helpers import tiny_model
from icl_lens.cli import main
from icl_lens.cell.experiment import ExperimentConfig
from icl_lens.reporting.claims import ANALYSIS_CLAIMS as ANALYSIS_CLAIMS_LIST
from icl_lens.reporting.findings import (
    CLAIM_IDS,
    FINDINGS_JSON,
    FINDINGS_MD,
    POOLED,
    THESE_TASKS,
    VERDICTS,
    evaluate_findings,
)
from icl_lens.cell.results import read_results
from icl_lens.models.untrained import reinitialize_untrained
from icl_lens.reporting.report import INDEX_FILE, REPORT_FILE, build_cell_report
from icl_lens.cell.store import RuntimeOptions, cell_path
from icl_lens.runs.sweep import run_cells

TASKS = ("sst2", "subj")
SEEDS = (0, 1)
#: Claims that need outputs this sweep does not write: Shen et al.'s analyses (experiments/shen_analyses.py),
#: the clipping run (experiments/lcgd_clipping.py), and the nulls a results-format-4 cell adds.
ANALYSIS_CLAIMS = {c.id for c in ANALYSIS_CLAIMS_LIST}
MAYBE_MISSING = {"simaou_above_wrong_label_answer_loss", "simaou_above_gradient_span"}
#: Ratios that are undefined (0/0) where no query's prediction changes the way they count.
RATIO_CLAIMS = {"rec2ftp_majority", "jaccard_below_half", "jaccard_correct_above_incorrect",
                "jaccard_below_independence"}


def _loader(name, **kwargs):
    model = tiny_model(gqa=True, n_layers=2, seed=kwargs.get("seed", 0))
    if not kwargs.get("untrained"):
        return model
    return reinitialize_untrained(model, kwargs.get("seed", 0), init=kwargs.get("untrained_init", "reference"))


def _cells() -> list[ExperimentConfig]:
    # lr 0.5: large enough that finetuning changes (and fixes) a few of the 12 predictions, so
    # Rec2FTP and the Jaccard index are defined on most cells
    return [ExperimentConfig(task=task, model="tiny", k=4, limit=12, seed=seed, lr=0.5, batch_size=12,
                             bootstrap_resamples=200, untrained=untrained)
            for untrained in (False, True) for task in TASKS for seed in SEEDS]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    run_cells(_cells(), out, RuntimeOptions(progress=False, attention_examples=1), model_loader=_loader)
    return out


def test_every_claim_the_cells_support_gets_a_verdict(sweep_dir, capsys):
    assert all(cell_path(sweep_dir, cfg).exists() for cfg in _cells())
    assert main(["findings", str(sweep_dir), "--n-resamples", "200"]) == 0
    printed = capsys.readouterr().out
    assert "### Findings" in printed
    findings = json.loads((sweep_dir / FINDINGS_JSON).read_text())
    assert (sweep_dir / FINDINGS_MD).read_text().startswith("### Findings")
    rows = findings["rows"]
    assert list(dict.fromkeys(r["claim"] for r in rows)) == list(CLAIM_IDS)
    cells = _read_cells(sweep_dir)
    for row in rows:
        if row["claim"] in ANALYSIS_CLAIMS:
            assert row["verdict"].startswith("missing:") and "run: " in row["verdict"], row
        elif row["claim"] in MAYBE_MISSING and row["verdict"].startswith("missing:"):
            assert "run: a run of results format 4" in row["verdict"], row
        elif row["claim"] == "rec2ftp_majority" and row["task"] not in (POOLED, THESE_TASKS) and all(
                r["metrics"]["ft"]["rec2ftp"] is None for r in cells[row["task"], False]):
            # finetuning fixed no query in any seed: Rec2FTP is 0/0 there, and the row says so
            assert row["verdict"].startswith("undefined: metrics.ft.rec2ftp: denominator 0 in every seed"), row
        elif row["claim"] in RATIO_CLAIMS and row["verdict"].startswith("undefined"):
            pass
        else:
            assert row["verdict"] in VERDICTS, row
    # one row per task and two pooled for every claim the cells can decide
    for claim in set(CLAIM_IDS) - ANALYSIS_CLAIMS - MAYBE_MISSING:
        assert sorted(r["task"] for r in rows if r["claim"] == claim) == sorted([*TASKS, POOLED, THESE_TASKS]), claim
    for row in rows:
        if row["interval"] is None:
            continue
        low, high = row["interval"]
        assert low <= row["effect"] <= high, row
        if row["task"] not in (POOLED, THESE_TASKS):
            # two seeds per task: the t interval over the seed values (one, where the other's ratio is 0/0)
            method = row["test"].split("; ")[1 if row["side"] == "≈" else 0]
            assert method.startswith("t over 2 seed values (df 1)") or (
                method.startswith("one seed") and "left out" in row["test"]), row
    # pooled over two tasks of two seeds each
    pooled = [r for r in rows if r["task"] == POOLED and r["claim"] == "icl_beats_zsl"]
    assert pooled[0]["n_seeds"] == len(TASKS) * len(SEEDS)
    assert pooled[0]["test"].startswith("tasks like these: t over 2 task values (df 1)")


def _read_cells(sweep_dir) -> dict[tuple[str, bool], list[dict]]:
    cells: dict[tuple[str, bool], list[dict]] = {}
    for cfg in _cells():
        cells.setdefault((cfg.task, cfg.untrained), []).append(read_results(cell_path(sweep_dir, cfg)))
    return cells


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _effect(findings, claim, task):
    [row] = [r for r in findings["rows"] if r["claim"] == claim and r["task"] == task]
    return row["effect"]


#: claim -> each cell's value of its effect, read from the cell's summaries (not its per-query arrays)
CELL_EFFECTS = {
    "icl_beats_zsl": lambda r: r["accuracy"]["icl"] - r["accuracy"]["zsl"],
    "ft_beats_zsl": lambda r: r["accuracy"]["ft"] - r["accuracy"]["zsl"],
    "simaou_above_random": lambda r: r["metrics"]["ft"]["simaou"]["mean"] - r["metrics"]["simaou_random"]["mean"],
    **{f"simaou_above_{null}": (lambda r, null=null: r["metrics"]["ft"]["simaou"]["mean"]
                                - r["nulls"]["ft"][null]["simaou"]["mean"])
       for null in ("shuffled_pair", "wrong_label", "random_direction")},
    "lcgd_simaou_above_gd": lambda r: r["tests"]["lcgd_vs_ft_simaou"]["difference"],
    "lcgd_simam_delta_above_gd": lambda r: r["tests"]["lcgd_vs_ft_simam_delta"]["difference"],
    "low_token_overlap": lambda r: r["metrics"]["ft"]["token_overlap"]["token_overlap"],
}


def test_findings_effects_are_the_cells_own_numbers(sweep_dir):
    """Each task's effect is the mean over seeds of the number the cell itself reports: findings
    reads the per-query arrays and the summaries under the keys the experiment writes them."""
    findings = evaluate_findings([r for members in _read_cells(sweep_dir).values() for r in members],
                                 n_resamples=50)
    cells = _read_cells(sweep_dir)
    for claim, of_cell in CELL_EFFECTS.items():
        for task in TASKS:
            expected = sum(of_cell(r) for r in cells[task, False]) / len(SEEDS)
            assert _effect(findings, claim, task) == pytest.approx(expected, abs=1e-5), (claim, task)
    for task in TASKS:
        defined = [r for r in cells[task, False] if _finite(r["metrics"]["ft"]["prediction_changes"]["jaccard"])]
        if defined:
            jaccard = [r["nulls"]["ft"]["jaccard_independence"] for r in defined]
            expected = sum(j["observed"] - j["expected"] for j in jaccard) / len(jaccard)
            assert _effect(findings, "jaccard_below_independence", task) == pytest.approx(expected, abs=1e-9)
        untrained_gap = (sum(r["metrics"]["ft"]["simaou"]["mean"] for r in cells[task, True])
                         - sum(r["metrics"]["ft"]["simaou"]["mean"] for r in cells[task, False])) / len(SEEDS)
        assert _effect(findings, "untrained_simaou_comparable", task) == pytest.approx(untrained_gap, abs=1e-5)


def test_report_index_holds_the_findings_table(sweep_dir):
    assert main(["report", str(sweep_dir), "--max-examples", "1"]) == 0
    index = (sweep_dir / INDEX_FILE).read_text()
    assert 'id="findings"' in index
    for header in ("effect [interval]", "verdict"):
        assert header in index
    # a verdict cell for a claim every cell supports, and a bracketed interval in the findings table
    findings_section = index.split('id="findings"')[1].split("</section>")[0]
    assert "ICL beats ZSL (accuracy)" in findings_section
    assert re.search(r"<td>(holds|fails|inconclusive)</td>", findings_section)
    assert re.search(r"-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]", findings_section)
    for cfg in _cells():
        assert (cell_path(sweep_dir, cfg).parent / REPORT_FILE).exists()


def _metrics_section(page: str) -> str:
    return page.split('<section id="metrics">')[1].split("</section>")[0]


def test_cell_report_shows_intervals_nulls_and_paired_tests(sweep_dir):
    # a trained cell where finetuning fixed a query (Rec2FTP defined)
    cfg = next(c for c in _cells() if read_results(cell_path(sweep_dir, c))["metrics"]["ft"]["rec2ftp"] is not None)
    results = read_results(cell_path(sweep_dir, cfg))
    page = build_cell_report(cell_path(sweep_dir, cfg).parent, results, max_examples=1)
    metrics = _metrics_section(page.read_text())
    # accuracies as `value [low, high]`, read from the cell's own intervals
    for setting, value in results["accuracy"].items():
        low, high = results["accuracy_ci"][setting]
        assert low <= value <= high
        assert f"<td>{value:.3f} [{low:.3f}, {high:.3f}]</td>" in metrics, setting
    ft = results["metrics"]["ft"]
    assert f"{ft['rec2ftp']:.1f} [{ft['rec2ftp_ci'][0]:.1f}, {ft['rec2ftp_ci'][1]:.1f}]" in metrics
    simaou = ft["simaou"]
    assert f"{simaou['mean']:.3f} [{simaou['ci'][0]:.3f}, {simaou['ci'][1]:.3f}]" in metrics
    layer0, layer0_ci = simaou["per_layer"][0], simaou["per_layer_ci"][0]
    assert f"{layer0:.3f} [{layer0_ci[0]:.3f}, {layer0_ci[1]:.3f}]" in metrics  # the per-layer tables
    # the nulls table: FT's SimAOU and SimAM_Δ beside each null, with intervals
    nulls = metrics.split('id="nulls"')[1]
    for header in ("uniform random", "shuffled pair", "wrong labels", "random direction"):
        assert f"<th>{header}</th>" in nulls
    for null in ("shuffled_pair", "wrong_label", "random_direction"):
        s = results["nulls"]["ft"][null]["simam_delta"]
        assert f"{s['mean']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]" in nulls, null
    random = results["metrics"]["simaou_random"]
    assert f"{random['mean']:.3f} [{random['ci'][0]:.3f}, {random['ci'][1]:.3f}]" in nulls
    independence = results["nulls"]["ft"]["jaccard_independence"]
    assert f"<td>{100 * independence['expected']:.1f}</td>" in nulls
    # the paired tests: McNemar counts and p, bootstrap difference with its interval
    tests = metrics.split('id="tests"')[1]
    mcnemar = results["tests"]["icl_vs_zsl"]
    assert f"b={mcnemar['b']}, c={mcnemar['c']}" in tests and "exact McNemar" in tests
    paired = results["tests"]["lcgd_vs_ft_simaou"]
    assert f"{paired['difference']:.3f} [{paired['ci'][0]:.3f}, {paired['ci'][1]:.3f}]" in tests
    assert "paired bootstrap" in tests and "FT vs ZSL" in tests


def _without_intervals(value):
    """A results dict as written before intervals existed: no *_ci / ci keys, tests, nulls, uncertainty."""
    dropped = {"ci", "per_layer_ci", "tests", "nulls", "uncertainty", "per_example"}
    if isinstance(value, dict):
        return {k: _without_intervals(v) for k, v in value.items() if k not in dropped and not k.endswith("_ci")}
    return value


def test_cell_report_of_old_results_shows_bare_values(sweep_dir, tmp_path):
    results = _without_intervals(read_results(cell_path(sweep_dir, _cells()[0])))
    page = build_cell_report(tmp_path, results)
    metrics = _metrics_section(page.read_text())
    assert f"<td>{results['accuracy']['icl']:.3f}</td>" in metrics
    simaou = results["metrics"]["ft"]["simaou"]
    assert f"<td>{simaou['mean']:.3f}</td>" in metrics and f"<td>{simaou['per_layer'][0]:.3f}</td>" in metrics
    assert "[" not in metrics and 'id="nulls"' not in metrics and 'id="tests"' not in metrics
