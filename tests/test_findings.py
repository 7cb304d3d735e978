"""Claims and verdicts (icl_lens.reporting.findings), the findings CLI and the report's dashboard, on
synthetic cells (tests/findings_fixtures.py) that follow the results contract."""

import json

import pytest

from findings_fixtures import study, synthetic_cell, write_cells
from icl_lens.cli import main
from icl_lens.reporting.findings import CLAIM_IDS, POOLED, evaluate_findings, verdict


def rows_of(findings, claim, task=None):
    rows = [r for r in findings["rows"] if r["claim"] == claim]
    return rows if task is None else [r for r in rows if r["task"] == task]


def one(findings, claim, task=POOLED):
    [row] = rows_of(findings, claim, task)
    return row


@pytest.mark.parametrize("interval, side, expected", [
    ([0.1, 0.3], ">", "holds"), ([-0.3, -0.1], ">", "fails"), ([-0.1, 0.2], ">", "inconclusive"),
    ([0.0, 0.0], ">", "inconclusive"), ([-0.3, -0.1], "<", "holds"), ([0.1, 0.3], "<", "fails"),
    ([0.0, 0.1], "<", "inconclusive"),
])
def test_verdict_rule(interval, side, expected):
    assert verdict(interval, 0.0, side) == expected


def test_verdicts_hold_fail_and_are_inconclusive_on_constructed_cells():
    holds = evaluate_findings(study(icl_gain=0.4))
    assert {r["verdict"] for r in rows_of(holds, "icl_beats_zsl")} == {"holds"}
    # ICL breaks a third of ZSL's right answers: the claim fails on every task and pooled
    fails = evaluate_findings(study(icl_gain=-0.6))
    assert {r["verdict"] for r in rows_of(fails, "icl_beats_zsl")} == {"fails"}
    assert all(r["interval"][1] < 0 for r in rows_of(fails, "icl_beats_zsl"))
    # ICL predicts exactly as ZSL: every resample's difference is 0, so the interval is the point 0
    same = evaluate_findings(study(icl_gain=0.0))
    for row in rows_of(same, "icl_beats_zsl"):
        assert row["interval"] == [0.0, 0.0] and row["effect"] == 0.0 and row["verdict"] == "inconclusive"
    # SimAOU at the null's level: inconclusive; far above: holds; below: fails
    for null, expected in [(0.3, "inconclusive"), (0.0, "holds"), (0.6, "fails")]:
        found = evaluate_findings(study(null_simaou=null, noise=0.05))
        row = one(found, "simaou_above_shuffled_pair")
        assert row["verdict"] == expected, (null, row)
        assert row["effect"] == pytest.approx(0.3 - null, abs=0.02)


def test_every_claim_has_a_pooled_row_and_per_task_rows():
    findings = evaluate_findings(study(tasks=("sst2", "subj", "cb"), seeds=(0, 1)))
    claims = [r["claim"] for r in findings["rows"]]
    assert list(dict.fromkeys(claims)) == list(CLAIM_IDS)
    for claim in ("icl_beats_zsl", "lcgd_simaou_above_gd", "untrained_comparable", "rec2ftp_majority"):
        assert [r["task"] for r in rows_of(findings, claim)] == ["cb", "sst2", "subj", POOLED]
    pooled = one(findings, "simaou_above_random")
    per_task = [r["effect"] for r in rows_of(findings, "simaou_above_random") if r["task"] != POOLED]
    assert pooled["effect"] == pytest.approx(sum(per_task) / 3)
    assert pooled["n_seeds"] == 6 and pooled["verdict"] == "holds"
    assert rows_of(findings, "icl_beats_zsl", "sst2")[0]["test"].endswith("p=0.04, 0.04 (per seed)")


def test_missing_inputs_say_missing_never_a_verdict():
    old = [synthetic_cell("sst2", 0, with_nulls=False, with_per_example=False)]
    for r in old:  # an older file: no intervals, tests or token overlap
        for key in ("accuracy_ci", "tests", "uncertainty"):
            r.pop(key)
        r["metrics"]["ft"].pop("token_overlap")
        for summary in (r["metrics"]["ft"]["simaou"], r["metrics"]["simaou_random"]):
            summary.pop("ci")
    findings = evaluate_findings(old)
    for claim in ("simaou_above_shuffled_pair", "simaou_above_wrong_label", "simaou_above_random_direction",
                  "jaccard_below_independence"):
        for row in rows_of(findings, claim):
            assert row["verdict"].startswith("missing: ") and "nulls" in row["verdict"] and row["effect"] is None
    assert one(findings, "low_token_overlap", "sst2")["verdict"] == "missing: metrics.ft.token_overlap (seed 0)"
    assert one(findings, "untrained_comparable")["verdict"] == "missing: untrained cells"
    assert one(findings, "icl_more_order_sensitive")["verdict"].startswith("missing: order-sensitivity")
    assert one(findings, "attention_not_sparse")["verdict"].startswith("missing: sparsity")
    # one seed, no per-query values, no cell interval: the value is known, its interval is not
    row = one(findings, "simaou_above_random", "sst2")
    assert row["effect"] is not None and row["verdict"].startswith("missing: interval")
    # accuracy still has per-query values (from "examples"): a verdict
    assert one(findings, "icl_beats_zsl", "sst2")["verdict"] in ("holds", "fails", "inconclusive")


def test_untrained_claim():
    comparable = evaluate_findings(study(untrained={"icl_gain": 0.0, "simaou": 0.3}))
    assert {r["verdict"] for r in rows_of(comparable, "untrained_comparable")} == {"holds"}
    lower = evaluate_findings(study(untrained={"icl_gain": 0.0, "simaou": 0.0}))
    assert {r["verdict"] for r in rows_of(lower, "untrained_comparable")} == {"fails"}
    assert one(lower, "untrained_comparable")["effect"] == pytest.approx(-0.3, abs=0.02)
    icl_works = evaluate_findings(study(untrained={"icl_gain": 0.5, "simaou": 0.3}))
    assert {r["verdict"] for r in rows_of(icl_works, "untrained_comparable")} == {"fails"}


def test_order_and_sparsity_claims_read_the_shen_outputs():
    per_query = lambda v, n=40: [v + 0.01 * (i % 5) for i in range(n)]
    order = [{"analysis": "order_sensitivity", "task": task, "model": "tiny", "k": 4, "settings": [
        {"setting": "icl", "optimizer": None, "output_std": 0.3, "per_example_output_std": per_query(0.3)},
        {"setting": "sgd_bs1", "optimizer": "sgd", "output_std": 0.1, "per_example_output_std": per_query(0.1)},
        {"setting": "sgd_bs4", "optimizer": "sgd", "output_std": 0.0, "per_example_output_std": per_query(0.0)},
    ]} for task in ("sst2", "subj")]
    sparsity = {"analysis": "sparsity", "handbuilt": 0.75, "models": [
        {"model": "tiny", "thresholds": [1e-4, 1e-3, 1e-2], "scale": "absolute", "pooled": [0.01, 0.05, 0.4]}]}
    findings = evaluate_findings(study(), [*order, sparsity])
    rows = rows_of(findings, "icl_more_order_sensitive")
    assert [r["verdict"] for r in rows] == ["holds"] * 3
    assert rows[0]["effect"] == pytest.approx(0.2) and "sgd_bs1" in rows[0]["note"]
    row = one(findings, "attention_not_sparse")
    assert row["effect"] == 0.05 and row["interval"] == [0.05, 0.05] and row["verdict"] == "holds"
    dense_not = {**sparsity, "models": [{**sparsity["models"][0], "pooled": [0.8, 0.9, 0.99]}]}
    assert one(evaluate_findings(study(), [dense_not]), "attention_not_sparse")["verdict"] == "fails"


def test_findings_are_seeded():
    cells = study(seeds=(0, 1))
    assert evaluate_findings(cells, seed=3) == evaluate_findings(cells, seed=3)
    assert evaluate_findings(cells, seed=3)["rows"] != evaluate_findings(cells, seed=4)["rows"]


def test_findings_cli_writes_json_and_markdown(tmp_path, capsys):
    root = write_cells(tmp_path / "results" / "nested", study(seeds=(0, 1))).parent
    assert main(["findings", str(root), "--n-resamples", "200"]) == 0
    out = capsys.readouterr().out
    findings = json.loads((root / "findings.json").read_text())
    markdown = (root / "findings.md").read_text()
    assert out == markdown and "| verdict |" in markdown and "ICL beats ZSL" in markdown
    assert findings["settings"]["n_resamples"] == 200
    assert len(findings["rows"]) == markdown.count("\n| tiny")
    assert main(["findings", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no finished cell" in err


def test_matrix_puts_each_claim_on_a_row_and_each_task_in_a_column():
    from icl_lens.reporting.findings import findings_markdown, matrix_tables

    def row(claim, task, effect, interval, verdict, study="m · k=4"):
        return {"study": study, "claim": claim, "statement": claim, "task": task, "verdict": verdict,
                "effect": effect, "interval": interval, "null": 0.0, "side": ">", "test": "t",
                "n_seeds": 2, "std": None, "note": ""}

    findings = {
        "settings": {"confidence": 0.95, "n_resamples": 10, "seed": 0},
        "verdicts": "holds: ...",
        "rows": [
            row("A", "sst2", 0.1, [0.05, 0.15], "holds"),
            row("A", "all tasks (pooled)", 0.1, [0.05, 0.15], "holds"),
            row("A", "cb", -0.2, [-0.3, -0.1], "fails"),
            row("B", "sst2", None, None, "missing: no untrained cell"),
            row("A", "sst2", 0.5, [0.0, 1.0], "inconclusive", study="other · k=8"),
        ],
    }
    first, second = matrix_tables(findings)
    assert first.caption == "m · k=4" and list(first.header) == ["claim", "cb", "sst2", "pooled"]
    assert [list(r) for r in first.rows] == [
        ["A", "-0.200 [-0.300, -0.100] **fails**", "0.100 [0.050, 0.150] **holds**", "0.100 [0.050, 0.150] **holds**"],
        ["B", "–", "**missing: no untrained cell**", "–"],
    ]
    assert list(second.header) == ["claim", "sst2"] and second.rows[0][1] == "0.500 [0.000, 1.000] **inconclusive**"
    assert matrix_tables(findings, bold=False)[0].rows[0][1] == "-0.200 [-0.300, -0.100] fails"
    markdown = findings_markdown(findings)
    assert markdown.index("#### m · k=4") < markdown.index("#### other · k=8") < markdown.index("| study | claim |")


def test_report_index_is_a_dashboard_with_the_findings(tmp_path):
    from icl_lens.reporting.report import build_report

    root = write_cells(tmp_path / "results", study(seeds=(0, 1)))
    build_report(root)
    index = (root / "index.html").read_text()
    assert "Findings: a verdict per claim" in index and "LCGD SimAOU above GD" in index
    assert index.count("<td>holds</td>") >= 10
    assert "Across cells" in index and "sst2" in index and "[" in index  # intervals in the cross-cell table
    assert index.count('src="data:image/png;base64,') == 2  # SimAOU and SimAM_Δ across tasks
    assert 'href="sst2__tiny__seed0/report.html"' in index


def test_an_undefined_rec2ftp_is_left_out_not_averaged_as_zero():
    # FT fixes nothing on subj (FT predicts as ZSL): Rec2FTP is undefined there
    cells = study(seeds=(0, 1), tasks=("sst2",)) + [synthetic_cell("subj", s, ft_gain=0.0) for s in (0, 1)]
    findings = evaluate_findings(cells)
    assert one(findings, "rec2ftp_majority", "subj")["verdict"] == "missing: metrics.ft.rec2ftp undefined in every seed"
    pooled, sst2 = one(findings, "rec2ftp_majority"), one(findings, "rec2ftp_majority", "sst2")
    assert pooled["effect"] == sst2["effect"] and "undefined on task subj, left out" in pooled["test"] + pooled["note"]
