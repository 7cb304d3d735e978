"""Claims and verdicts (icl_lens.reporting.findings, .claims, .verdicts), the findings CLI, the README
table and the report's dashboard, on synthetic cells (tests/findings_fixtures.py) that follow the
results contract."""

import copy
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from findings_fixtures import study, synthetic_cell, write_cells
from icl_lens.cli import main
from icl_lens.reporting.findings import (
    CLAIM_IDS,
    FINDINGS_FORMAT,
    POOLED,
    THESE_TASKS,
    block_study,
    check_readme_table,
    evaluate_findings,
    readme_table,
    verdict,
    write_findings,
)
from icl_lens.stats import clopper_pearson, holm_adjust

TASK_COLUMNS = [POOLED, THESE_TASKS]


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
    tasks = ("sst2", "subj", "cb")
    holds = evaluate_findings(study(tasks=tasks, icl_gain=0.4))
    assert {r["verdict"] for r in rows_of(holds, "icl_beats_zsl")} == {"holds"}
    # ICL breaks most of ZSL's right answers: the claim fails on every task and pooled
    fails = evaluate_findings(study(tasks=tasks, icl_gain=-0.6))
    assert {r["verdict"] for r in rows_of(fails, "icl_beats_zsl")} == {"fails"}
    assert all(r["interval"][1] < 0 for r in rows_of(fails, "icl_beats_zsl"))
    # ICL predicts exactly as ZSL in every seed: the effect is 0, never a verdict
    same = evaluate_findings(study(icl_gain=0.0))
    for row in rows_of(same, "icl_beats_zsl"):
        assert row["effect"] == 0.0 and row["verdict"] == "inconclusive"
    # SimAOU at the null's level: inconclusive; far above: holds; below: fails
    for null, expected in [(0.3, "inconclusive"), (0.0, "holds"), (0.6, "fails")]:
        found = evaluate_findings(study(tasks=tasks, null_simaou=null, noise=0.05))
        row = one(found, "simaou_above_shuffled_pair")
        assert row["verdict"] == expected, (null, row)
        assert row["effect"] == pytest.approx(0.3 - null, abs=0.02)


def test_within_a_task_the_interval_is_the_t_interval_over_seed_values():
    cells = study(tasks=("sst2",), seeds=(0, 1, 2, 3))
    findings = evaluate_findings(cells)
    per_seed = [c["accuracy"]["icl"] - c["accuracy"]["zsl"] for c in cells if not c["config"]["untrained"]]
    row = one(findings, "icl_beats_zsl", "sst2")
    low, high = stats.t.interval(0.95, 3, loc=np.mean(per_seed), scale=stats.sem(per_seed))
    assert row["effect"] == pytest.approx(np.mean(per_seed)) and row["interval"] == pytest.approx([low, high])
    assert row["df"] == 3 and row["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert row["test"].startswith("t over 4 seed values (df 3)")
    assert row["p_value"] == pytest.approx(stats.ttest_1samp(per_seed, 0.0).pvalue)


def test_pooled_rows_tasks_like_these_and_these_tasks():
    findings = evaluate_findings(study(tasks=("sst2", "subj", "cb"), seeds=(0, 1)))
    per_task = [one(findings, "simaou_above_random", t) for t in ("cb", "sst2", "subj")]
    effects = [r["effect"] for r in per_task]
    random_effect = one(findings, "simaou_above_random", POOLED)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(effects), scale=stats.sem(effects))
    assert random_effect["interval"] == pytest.approx([low, high]) and random_effect["df"] == 2
    assert random_effect["test"].startswith("tasks like these: t over 3 task values (df 2)")
    fixed = one(findings, "simaou_above_random", THESE_TASKS)
    assert fixed["se"] == pytest.approx(math.sqrt(sum(r["se"] ** 2 for r in per_task)) / 3)
    assert fixed["effect"] == pytest.approx(np.mean(effects)) and fixed["n_seeds"] == 6
    # one task: no random-effect interval, the fixed row still has one
    single = evaluate_findings(study(tasks=("sst2",), seeds=(0, 1)))
    assert one(single, "simaou_above_random")["verdict"].startswith("missing: interval: tasks as a random effect")
    assert one(single, "simaou_above_random", THESE_TASKS)["verdict"] == "holds"


def test_holm_within_each_family_raw_and_adjusted_p_kept():
    findings = evaluate_findings(study(tasks=("sst2", "subj", "cb"), seeds=(0, 1, 2), icl_gain=0.05))
    assert "Holm" in findings["settings"]["multiplicity"]
    family = [r for r in findings["rows"] if r["claim"] == "icl_beats_zsl"]
    assert [r["task"] for r in family] == ["cb", "sst2", "subj", *TASK_COLUMNS]
    assert {r["family"] for r in family} == {"tiny · k=4 / icl_beats_zsl"}
    assert [r["p_adjusted"] for r in family] == pytest.approx(holm_adjust([r["p_value"] for r in family]))
    for r in family:  # the verdict follows the adjusted p
        significant = r["p_adjusted"] < 0.05
        assert (r["verdict"] != "inconclusive") == significant, r
    assert any(r["p_adjusted"] > r["p_value"] for r in family)


def test_inconclusive_rows_state_the_detectable_effect():
    findings = evaluate_findings(study(tasks=("sst2", "subj", "cb"), icl_gain=0.02, seeds=(0, 1, 2)))
    inconclusive = [r for r in rows_of(findings, "icl_beats_zsl") if r["verdict"] == "inconclusive"]
    assert inconclusive
    for r in inconclusive:
        mde = (stats.t.ppf(0.975, r["df"]) + stats.t.ppf(0.8, r["df"])) * r["se"]
        assert r["mde"] == pytest.approx(mde) and f"{mde:.3g}" in r["note"] and "80%" in r["note"]
    holds = [r for r in findings["rows"] if r["verdict"] == "holds"]
    assert holds and all("detectable" not in r["note"] for r in holds)


def test_untrained_claims_are_equivalence_tests_against_a_declared_margin():
    margins = evaluate_findings(study())["settings"]["equivalence_margins"]
    assert margins == {"simaou": 0.05, "simam": 0.05, "accuracy": 0.05}
    comparable = evaluate_findings(study(untrained={"icl_gain": 0.0, "simaou": 0.3}))
    rows = rows_of(comparable, "untrained_simaou_comparable")
    assert {r["verdict"] for r in rows if r["task"] != POOLED} == {"holds"}
    assert all(r["side"] == "≈" and r["margin"] == 0.05 and r["test"].startswith("TOST against ±0.05") for r in rows)
    # one untrained seed: paired with the trained cell of that seed on the same queries, within-seed SE
    assert "one seed: SE from the within-seed query bootstrap" in one(comparable, "untrained_simaou_comparable", "sst2")["test"]
    lower = evaluate_findings(study(untrained={"icl_gain": 0.0, "simaou": 0.0}))
    assert {r["verdict"] for r in rows_of(lower, "untrained_simaou_comparable") if r["task"] != POOLED} == {"fails"}
    assert one(lower, "untrained_simaou_comparable", "sst2")["effect"] == pytest.approx(-0.3, abs=0.02)
    # a difference at the margin itself: neither equivalent nor credibly beyond it
    edge = evaluate_findings(study(untrained={"icl_gain": 0.0, "simaou": 0.25}))
    assert one(edge, "untrained_simaou_comparable", "sst2")["verdict"] == "inconclusive"
    # the untrained model's ICL: equivalent to ZSL when it changes nothing, fails when it gains a lot
    assert one(comparable, "untrained_icl_no_gain", "sst2")["verdict"] == "holds"
    icl_works = evaluate_findings(study(untrained={"icl_gain": 0.5, "simaou": 0.3}))
    assert one(icl_works, "untrained_icl_no_gain", "sst2")["verdict"] == "fails"


def test_proportions_get_exact_intervals_and_a_zero_denominator_is_undefined():
    # ICL right wherever FT is: Rec2FTP 100 % in every seed, yet the interval is not the point [100, 100]
    cells = [synthetic_cell("sst2", s, icl_gain=1.0) for s in (0, 1, 2)]
    row = one(evaluate_findings(cells), "rec2ftp_majority", "sst2")
    fixes = [sum(1 for e in c["examples"] if e["prediction"]["zsl"] != e["label"] == e["prediction"]["ft"])
             for c in cells]
    assert row["effect"] == 100.0 and row["verdict"] == "holds"
    assert row["interval"] == pytest.approx([100 * clopper_pearson(sum(fixes), sum(fixes))[0], 100.0])
    assert "Clopper–Pearson" in row["test"]
    # FT fixes nothing on subj: Rec2FTP is 0/0, "undefined", never a verdict; the pool leaves subj out
    cells = study(seeds=(0, 1), tasks=("sst2",)) + [synthetic_cell("subj", s, ft_gain=0.0) for s in (0, 1)]
    findings = evaluate_findings(cells)
    assert one(findings, "rec2ftp_majority", "subj")["verdict"].startswith("undefined: ")
    fixed, sst2 = one(findings, "rec2ftp_majority", THESE_TASKS), one(findings, "rec2ftp_majority", "sst2")
    assert fixed["effect"] == sst2["effect"] and "undefined on task subj, left out" in fixed["test"]


def test_every_claim_has_a_source_and_rows_per_task_and_pooled():
    findings = evaluate_findings(study(tasks=("sst2", "subj", "cb"), seeds=(0, 1)))
    claims = [r["claim"] for r in findings["rows"]]
    assert list(dict.fromkeys(claims)) == list(CLAIM_IDS)
    assert findings["findings_format"] == FINDINGS_FORMAT == 2
    for claim in ("icl_beats_zsl", "icl_beats_ft", "lcgd_simaou_above_gd", "untrained_simaou_comparable",
                  "rec2ftp_majority", "jaccard_below_half", "simam_ft_above_zsl", "low_overlap_cosine"):
        assert [r["task"] for r in rows_of(findings, claim)] == ["cb", "sst2", "subj", *TASK_COLUMNS], claim
    for r in findings["rows"]:
        assert r["source"].startswith(("Dai et al. 2023", "Deutch et al. 2024", "Shen et al. 2023", "icl_lens nulls")), r
    assert one(findings, "jaccard_below_half", "sst2")["side"] == "<"  # Deutch: J < 0.5
    assert rows_of(findings, "icl_beats_zsl", "sst2")[0]["test"].endswith("p=0.04, 0.04 (per seed)")


def test_missing_inputs_say_missing_and_name_the_run():
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
    for claim in ("simaou_above_gradient_span", "simaou_above_wrong_label_answer_loss"):
        assert "run: a run of results format 4" in one(findings, claim, "sst2")["verdict"]
    assert one(findings, "low_token_overlap", "sst2")["verdict"] == "missing: metrics.ft.token_overlap.token_overlap (seed 0)"
    assert one(findings, "untrained_simaou_comparable")["verdict"].startswith("missing: untrained cells — run: ")
    assert one(findings, "order_sensitivity_differs")["verdict"].startswith("missing: order-sensitivity outputs")
    assert "experiments/shen_analyses.py order" in one(findings, "order_sensitivity_differs")["verdict"]
    assert one(findings, "attention_not_sparse")["verdict"].startswith("missing: sparsity")
    assert "experiments/lcgd_clipping.py" in one(findings, "clipping_restores_lcgd_simam")["verdict"]
    assert "two models" in one(findings, "gap_varies_with_model")["verdict"]
    # one seed, no per-query values, no cell interval: the value is known, its interval is not
    row = one(findings, "simaou_above_random", "sst2")
    assert row["effect"] is not None and row["verdict"].startswith("missing: interval")
    # accuracy still has per-query values (from "examples"): a verdict, from the within-seed query spread
    row = one(findings, "icl_beats_zsl", "sst2")
    assert row["verdict"] in ("holds", "fails", "inconclusive") and row["test"].startswith("one seed")


def _order_output(task, seed, icl=0.3, sgd=(0.1, 0.0), adam=None, n=40):
    per_query = lambda v: [v + 0.01 * ((i * (seed + 3)) % 7) for i in range(n)]
    settings = [{"setting": "icl", "optimizer": None, "batch_size": None, "output_std": icl,
                 "per_example_output_std": per_query(icl)}]
    for batch, value in zip((1, 4), sgd):
        settings.append({"setting": f"sgd_bs{batch}", "optimizer": "sgd", "batch_size": batch, "output_std": value,
                         "per_example_output_std": per_query(value)})
    for batch, value in zip((1, 4), adam or ()):
        settings.append({"setting": f"adam_bs{batch}", "optimizer": "adam", "batch_size": batch, "output_std": value,
                         "per_example_output_std": per_query(value)})
    return {"analysis": "order_sensitivity", "task": task, "model": "tiny", "k": 4, "config": {"seed": seed},
            "settings": settings}


def test_order_sensitivity_differs_two_sided_for_each_sgd_setting_over_seeds():
    order = [_order_output(t, s, adam=(0.2, 0.2)) for t in ("sst2", "subj") for s in (0, 1, 2)]
    findings = evaluate_findings(study(), order)
    rows = rows_of(findings, "order_sensitivity_differs")
    statements = list(dict.fromkeys(r["statement"] for r in rows))
    assert statements == ["ICL's and SGD's (batch 1) order sensitivity differ",
                          "ICL's and SGD's (batch 4) order sensitivity differ"]
    first = [r for r in rows if r["statement"] == statements[0]]
    assert [r["task"] for r in first] == ["sst2", "subj", *TASK_COLUMNS]
    assert first[0]["n_seeds"] == 3 and first[0]["side"] == "≠" and first[0]["effect"] == pytest.approx(0.2)
    assert first[0]["verdict"] == "holds" and first[0]["family"].endswith("icl − sgd_bs1")
    # ICL less order-sensitive than SGD: they still differ (the paper's claim is two-sided)
    less = evaluate_findings(study(), [_order_output("sst2", s, icl=0.05, sgd=(0.4, 0.3)) for s in (0, 1)])
    row = [r for r in rows_of(less, "order_sensitivity_differs", "sst2")][0]
    assert row["effect"] == pytest.approx(-0.35) and row["verdict"] == "holds"
    # Adam vs SGD at each batch size, and the batch effect
    adam = rows_of(findings, "order_sensitivity_adam_vs_sgd", "sst2")
    assert [r["effect"] for r in adam] == pytest.approx([0.1, 0.2])
    batch = rows_of(findings, "order_sensitivity_batch", "sst2")
    assert [r["statement"] for r in batch] == ["SGD's order sensitivity differs between batch 4 and 1",
                                               "Adam's order sensitivity differs between batch 4 and 1"]
    assert batch[0]["effect"] == pytest.approx(-0.1) and batch[1]["effect"] == pytest.approx(0.0)


def test_sparsity_reads_the_shen_output():
    sparsity = {"analysis": "sparsity", "handbuilt": 0.75, "models": [
        {"model": "tiny", "thresholds": [1e-4, 1e-3, 1e-2], "scale": "absolute", "pooled": [0.01, 0.05, 0.4]}]}
    row = one(evaluate_findings(study(), [sparsity]), "attention_not_sparse")
    assert row["effect"] == 0.05 and row["interval"] == [0.05, 0.05] and row["verdict"] == "holds"
    assert row["p_value"] is None and "no family" in row["test"]
    dense_not = {**sparsity, "models": [{**sparsity["models"][0], "pooled": [0.8, 0.9, 0.99]}]}
    assert one(evaluate_findings(study(), [dense_not]), "attention_not_sparse")["verdict"] == "fails"


def test_gap_against_k_and_between_models_are_the_sweeps_own_study():
    rows = [{"model": model, "task": "sst2", "k": k, "seed": seed,
             "gap_accuracy": slope * math.log2(k) + 0.01 * seed + offset}
            for model, slope, offset in (("tiny", 0.05, 0.0), ("other", -0.1, 0.2))
            for k in (1, 2, 4, 8) for seed in (0, 1, 2)]
    sweep = {"analysis": "demo_sweep", "rows": rows}
    findings = evaluate_findings(study(), [sweep])
    slopes = rows_of(findings, "gap_varies_with_k", "sst2")
    assert {r["study"] for r in slopes} == {"demonstration sweep"}
    by_model = {r["statement"].rsplit(": ", 1)[1]: r for r in slopes}
    assert by_model["tiny"]["effect"] == pytest.approx(0.05) and by_model["other"]["effect"] == pytest.approx(-0.1)
    assert by_model["tiny"]["n_seeds"] == 3 and by_model["tiny"]["family"].endswith("gap_varies_with_k / tiny")
    # the preset study the sweep covers holds no copy of the sweep's rows
    assert not [r for r in findings["rows"] if r["study"] == "tiny · k=4" and r["claim"] == "gap_varies_with_k"]
    # the gap averaged over k = 1…8: tiny 0.075 + 0.01 s, other 0.2 − 0.15 + 0.01 s
    between = rows_of(findings, "gap_varies_with_model", "sst2")
    assert between[0]["study"] == "demonstration sweep" and between[0]["effect"] == pytest.approx(-0.025)
    assert between[0]["statement"].endswith("other − tiny")
    # a table of a study other than the default one says so in its caption, and is read back as that study
    table = readme_table(findings, "demonstration sweep")
    assert "--readme-table --study 'demonstration sweep'`" in table and block_study(table) == "demonstration sweep"
    assert "--study" not in readme_table(findings) and block_study(readme_table(findings)) == "tiny · k=4"
    # without a sweep of its model, the preset study says which run would test the claim
    alone = one(evaluate_findings(study()), "gap_varies_with_k")
    assert alone["study"] == "tiny · k=4" and "experiments/shen_analyses.py sweep" in alone["verdict"]


def test_a_sweep_adds_its_own_study_and_changes_no_row_of_the_preset_studies():
    """Each claim is its own Holm family, so a preset study's rows are the same with or without a sweep
    beside it, except the gap-against-k row, which the sweep's study then holds."""
    rows = [{"model": "tiny", "task": task, "k": k, "seed": seed, "gap_accuracy": 0.02 * k + 0.01 * seed}
            for task in ("sst2", "subj") for k in (2, 4, 8) for seed in (0, 1, 2)]
    cells = study(tasks=("sst2", "subj"), seeds=(0, 1, 2))
    without = evaluate_findings(cells)["rows"]
    with_sweep = evaluate_findings(cells, [{"analysis": "demo_sweep", "rows": rows}])["rows"]
    preset = [r for r in with_sweep if r["study"] != "demonstration sweep"]
    assert preset == [r for r in without if r["claim"] != "gap_varies_with_k"]
    assert {r["claim"] for r in with_sweep if r["study"] == "demonstration sweep"} == {"gap_varies_with_k"}


def test_the_sweeps_own_cells_are_read_through_demo_sweep_json_not_as_studies(tmp_path):
    root = write_cells(tmp_path / "results", study(seeds=(0, 1)))
    sweep_cells = [synthetic_cell("sst2", seed) for seed in (0, 1)]
    for cell in sweep_cells:
        cell["config"]["k"] = 2
    write_cells(root / "shen" / "sweep", sweep_cells)
    labels = {row["study"] for row in write_findings(root)["rows"]}
    assert labels == {"tiny · k=2", "tiny · k=4"}  # without demo_sweep.json the folder is a study like any
    rows = [{"model": "tiny", "task": "sst2", "k": k, "seed": seed, "gap_accuracy": 0.1 * k}
            for k in (2, 4) for seed in (0, 1)]
    (root / "shen" / "demo_sweep.json").write_text(json.dumps({"analysis": "demo_sweep", "rows": rows}))
    findings = write_findings(root)
    assert {row["study"] for row in findings["rows"]} == {"tiny · k=4", "demonstration sweep"}
    assert one(findings, "gap_varies_with_k", "sst2")["effect"] == pytest.approx(0.2)
    # a folder with the sweep alone has findings of its own: the sweep's study
    alone = write_findings(root / "shen")
    assert {row["study"] for row in alone["rows"]} == {"demonstration sweep"}
    assert one(alone, "gap_varies_with_k", "sst2")["effect"] == pytest.approx(0.2)


def test_clipping_claim_pairs_clipped_and_unclipped_lcgd_cells_by_seed():
    cells = study(tasks=("subj",), seeds=(0, 1))
    for seed in (0, 1):
        clipped = synthetic_cell("subj", seed)
        clipped["config"]["finetune"] = {"clip_global_norm": 12.0}
        per_query = np.asarray(clipped["per_example"]["lcgd"]["simam"]) + 0.2
        clipped["per_example"]["lcgd"]["simam"] = per_query.tolist()
        clipped["metrics"]["lcgd"]["simam"]["mean"] += 0.2
        cells.append(clipped)
    row = one(evaluate_findings(cells), "clipping_restores_lcgd_simam", "subj")
    assert row["effect"] == pytest.approx(0.2) and row["n_seeds"] == 2 and row["verdict"] == "holds"
    assert "learning rates differ" not in row["note"]
    for cell in cells:
        cell["config"]["lr"] = 1e-3
    cells[-1]["config"]["lr"] = 0.5
    row = one(evaluate_findings(cells), "clipping_restores_lcgd_simam", "subj")
    assert "learning rates differ (0.5 vs" in row["note"]


def test_findings_are_seeded():
    cells = study(seeds=(0,))
    assert evaluate_findings(cells, seed=3) == evaluate_findings(cells, seed=3)
    assert evaluate_findings(cells, seed=3)["rows"] != evaluate_findings(cells, seed=4)["rows"]


def test_findings_cli_writes_json_and_markdown(tmp_path, capsys):
    root = write_cells(tmp_path / "results" / "nested", study(seeds=(0, 1))).parent
    assert main(["findings", str(root), "--n-resamples", "200"]) == 0
    out = capsys.readouterr().out
    findings = json.loads((root / "findings.json").read_text())
    markdown = (root / "findings.md").read_text()
    assert out == markdown and "| verdict |" in markdown and "ICL beats ZSL" in markdown
    assert "Holm" in markdown and "Equivalence margins" in markdown and "tasks like these" in markdown
    assert findings["settings"]["n_resamples"] == 200
    assert len(findings["rows"]) == markdown.count("\n| tiny")
    assert main(["findings", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no finished cell" in err


def test_readme_table_is_rendered_from_findings_json_and_checked(tmp_path, capsys):
    root = write_cells(tmp_path / "results", study(seeds=(0, 1)))
    assert main(["findings", str(root), "--n-resamples", "100"]) == 0
    capsys.readouterr()
    assert main(["findings", str(root), "--readme-table"]) == 0
    block = capsys.readouterr().out
    findings = json.loads((root / "findings.json").read_text())
    assert block == readme_table(findings)
    assert block.startswith("<!-- findings-table:start -->\n") and block.endswith("<!-- findings-table:end -->\n")
    assert "| claim | source | sst2 | subj | tasks like these | these tasks |" in block
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nText.\n\n" + block + "\nMore text.\n")
    assert check_readme_table(readme, root / "findings.json") == []
    readme.write_text(readme.read_text().replace("holds", "fails", 1))
    assert check_readme_table(readme, findings) == [
        f"{readme}: the findings table differs from findings.json; "
        f"run `icl-lens findings RESULTS_DIR --update-page {readme}`"]
    readme.write_text("no table\n")
    assert "no <!-- findings-table:start -->" in check_readme_table(readme, findings)[0]


def test_tables_are_rendered_from_findings_computed_again_when_a_cell_is_newer(tmp_path, capsys):
    root = write_cells(tmp_path / "results", study(seeds=(0, 1)))
    assert main(["findings", str(root), "--n-resamples", "100"]) == 0
    path = root / "findings.json"
    # a findings.json newer than every cell is read as it is (here: marked, to see that it was read)
    marked = json.loads(path.read_text())
    for r in marked["rows"]:
        r["verdict"] = "fails"
    path.write_text(json.dumps(marked))
    capsys.readouterr()
    assert main(["findings", str(root), "--readme-table"]) == 0
    assert capsys.readouterr().out == readme_table(marked)
    # a cell finished after it (a later mtime) makes the findings be computed again, with that cell
    later = path.stat().st_mtime + 10
    for cell in root.rglob("results.json"):
        os.utime(cell, (later, later))
    assert main(["findings", str(root), "--readme-table", "--n-resamples", "100"]) == 0
    fresh = json.loads(path.read_text())
    assert capsys.readouterr().out == readme_table(fresh) != readme_table(marked)
    assert any(r["verdict"] != "fails" for r in fresh["rows"])


def test_update_page_rewrites_only_the_block_in_the_form_its_marker_names(tmp_path, capsys):
    root = write_cells(tmp_path / "results", study(seeds=(0, 1)))
    assert main(["findings", str(root), "--n-resamples", "100"]) == 0
    findings = json.loads((root / "findings.json").read_text())
    stale_full = readme_table(findings).replace("holds", "fails")
    stale_compact = readme_table(findings, compact=True).replace("holds", "fails")
    full_page, compact_page = tmp_path / "results.md", tmp_path / "README.md"
    full_page.write_text("# Results\n\nBefore.\n\n" + stale_full + "\nAfter.\n")
    compact_page.write_text("Intro.\n\n" + stale_compact)
    assert check_readme_table(full_page, findings) and check_readme_table(compact_page, findings)
    capsys.readouterr()
    assert main(["findings", str(root), "--update-page", str(full_page), "--update-page", str(compact_page)]) == 0
    assert capsys.readouterr().out == f"{full_page}: updated\n{compact_page}: updated\n"
    # the text around the block is kept; each page keeps its own form
    assert full_page.read_text() == "# Results\n\nBefore.\n\n" + readme_table(findings) + "\nAfter.\n"
    assert compact_page.read_text() == "Intro.\n\n" + readme_table(findings, compact=True)
    assert check_readme_table(full_page, findings) == [] and check_readme_table(compact_page, findings) == []
    assert main(["findings", str(root), "--update-page", str(full_page)]) == 0
    assert capsys.readouterr().out == f"{full_page}: already up to date\n"
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    assert main(["findings", str(root), "--update-page", str(bare)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no <!-- findings-table:start --> … <!-- findings-table:end --> block" in err
    assert bare.read_text() == "no markers\n"


def test_a_page_holds_tables_of_two_runs_and_each_run_rewrites_only_its_own(tmp_path, capsys):
    first = write_cells(tmp_path / "first", study(seeds=(0, 1)))
    second_cells = study(seeds=(0, 1))
    for cell in second_cells:
        cell["config"]["k"] = 32
    second = write_cells(tmp_path / "second", second_cells)
    for root in (first, second):
        assert main(["findings", str(root), "--n-resamples", "100"]) == 0
    a, b = (json.loads((root / "findings.json").read_text()) for root in (first, second))
    assert block_study(readme_table(a)) == "tiny · k=4" and block_study(readme_table(b)) == "tiny · k=32"
    page = tmp_path / "results.md"
    stale_b = readme_table(b).replace("holds", "fails")
    page.write_text("# Results\n\n" + readme_table(a, compact=True) + "\nThe papers' setting:\n\n" + stale_b)
    assert check_readme_table(page, a) == [] and check_readme_table(page, b)
    capsys.readouterr()
    assert main(["findings", str(second), "--update-page", str(page)]) == 0
    assert page.read_text() == "# Results\n\n" + readme_table(a, compact=True) + "\nThe papers' setting:\n\n" \
        + readme_table(b)
    assert check_readme_table(page, a) == [] and check_readme_table(page, b) == []
    # a run of neither study finds no table of its own on the page, and says which studies it shows
    other_cells = study(seeds=(0, 1), model="other")
    other = json.loads(json.dumps(evaluate_findings(other_cells, n_resamples=100)))
    assert "the page shows ['tiny · k=32', 'tiny · k=4']" in check_readme_table(page, other)[0]


def test_compact_readme_table_counts_task_verdicts_and_is_checked_as_compact(tmp_path, capsys):
    root = write_cells(tmp_path / "results", study(seeds=(0, 1)))
    assert main(["findings", str(root), "--n-resamples", "100"]) == 0
    capsys.readouterr()
    assert main(["findings", str(root), "--readme-table", "--compact"]) == 0
    block = capsys.readouterr().out
    findings = json.loads((root / "findings.json").read_text())
    assert block == readme_table(findings, compact=True)
    assert block.startswith("<!-- findings-table:start compact -->\n")
    assert "| claim | source | tasks like these | these tasks | per task (2) |" in block
    full = readme_table(findings)
    study_rows = [r for r in findings["rows"] if r["task"] in ("sst2", "subj")]
    for claim in dict.fromkeys(r["statement"] for r in study_rows):
        kinds = [r["verdict"].split(":")[0] for r in study_rows if r["statement"] == claim]
        line = next(line for line in block.splitlines() if line.startswith(f"| {claim} |"))
        counts = line.rsplit("|", 2)[-2].strip()
        # each verdict's count over the two tasks, as the full table's task cells give them
        assert sum(int(part.split()[0]) for part in counts.split(" · ")) == len(kinds)
        for part in counts.split(" · "):
            n, kind = part.split(" ", 1)
            assert kinds.count(kind) == int(n)
        assert f"| {claim} |" in full
    readme = tmp_path / "README.md"
    readme.write_text("Intro.\n\n" + block)
    assert check_readme_table(readme, findings) == []
    readme.write_text("Intro.\n\n" + full)  # a full table is checked as a full one
    assert check_readme_table(readme, findings) == []
    readme.write_text("Intro.\n\n" + block.replace("compact -->", "-->"))
    assert "--update-page" in check_readme_table(readme, findings)[0]


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
            row("A", POOLED, 0.1, [0.05, 0.15], "holds"),
            row("A", "cb", -0.2, [-0.3, -0.1], "fails"),
            row("B", "sst2", None, None, "missing: no untrained cell"),
            row("A", "sst2", 0.5, [0.0, 1.0], "inconclusive", study="other · k=8"),
        ],
    }
    first, second = matrix_tables(findings)
    assert first.caption == "m · k=4" and list(first.header) == ["claim", "cb", "sst2", "tasks like these"]
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


def test_null_rows_say_when_the_null_drew_the_same_randomness_in_every_seed():
    cells = study(tasks=("sst2",), seeds=(0, 1))
    row = one(evaluate_findings(cells), "simaou_above_shuffled_pair", "sst2")
    assert "the null drew the same randomness in every seed (no null_seeds in seed 0, 1)" in row["note"]
    for cell in cells:  # results format 4: each seed its own null seed
        cell["null_seeds"] = {"shuffled_pair": 100 + cell["config"]["seed"]}
    row = one(evaluate_findings(cells), "simaou_above_shuffled_pair", "sst2")
    assert "same randomness" not in row["note"]


def test_both_wrong_label_nulls_read_the_seed_of_their_shared_relabelling():
    """The label-token-loss wrong-label run relabels with the wrong-label seed (one relabelling,
    two losses), so its row looks that seed up, not a seed of its own name."""
    cells = study(tasks=("sst2",), seeds=(0, 1))
    for cell in cells:
        cell["null_seeds"] = {"wrong_label": 7 + cell["config"]["seed"]}
        cell["nulls"]["ft"]["wrong_label_answer_loss"] = copy.deepcopy(cell["nulls"]["ft"]["wrong_label"])
    findings = evaluate_findings(cells)
    for claim in ("simaou_above_wrong_label", "simaou_above_wrong_label_answer_loss"):
        row = one(findings, claim, "sst2")
        assert row["verdict"] in ("holds", "fails", "inconclusive"), (claim, row["verdict"])
        assert "same randomness" not in row["note"], claim
    for cell in cells:
        cell["null_seeds"] = {"shuffled_pair": 3}
    row = one(evaluate_findings(cells), "simaou_above_wrong_label_answer_loss", "sst2")
    assert "no null_seeds in seed 0, 1" in row["note"]


def test_one_claim_over_layers_is_one_holm_family():
    findings = evaluate_findings(study(tasks=("sst2", "subj", "cb")))
    layers = [r for r in findings["layer_rows"] if r["claim"] == "lcgd_simaou_above_gd"]
    assert [r["task"] for r in layers] == [f"{POOLED} · layer {i}" for i in range(3)]
    assert {r["family"] for r in layers} == {"tiny · k=4 / lcgd_simaou_above_gd / layers"}
    assert [r["p_adjusted"] for r in layers] == pytest.approx(holm_adjust([r["p_value"] for r in layers]))
    # layer 0's effect: the mean over tasks of each task's mean over seeds of the per-layer difference
    cells = study(tasks=("sst2", "subj", "cb"))
    per_task = []
    for task in ("sst2", "subj", "cb"):
        mine = [c for c in cells if c["task"]["name"] == task and not c["config"]["untrained"]]
        per_task.append(np.mean([c["metrics"]["lcgd"]["simaou"]["per_layer"][0] - c["metrics"]["ft"]["simaou"]["per_layer"][0]
                                 for c in mine]))
    assert layers[0]["effect"] == pytest.approx(np.mean(per_task)) and layers[0]["df"] == 2
    assert all(r["verdict"] == "holds" for r in layers)
    from icl_lens.reporting.findings import findings_markdown
    assert "per layer (tasks like these; Holm over the layers of each claim)" in findings_markdown(findings)
