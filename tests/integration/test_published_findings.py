"""The findings the README and the docs show are generated, never typed: each claim × task table
must equal :func:`icl_lens.reporting.findings.readme_table` of the findings.json its run wrote
(kept in docs/data/ with the command that made it). The demonstration-count sweep's inputs are small
enough to publish too, so its findings are recomputed here from them."""

from __future__ import annotations

import json

import pytest

from helpers import REPO
from icl_lens.reporting.findings import (
    SWEEP_STUDY,
    VERDICTS,
    block_study,
    check_readme_table,
    evaluate_findings,
    readme_block,
    readme_blocks,
)

DATA = REPO / "docs" / "data"
# published run -> (its findings.json, the preset it ran)
PUBLISHED = {"default": (DATA / "findings-default.json", "default"),
             "reference": (DATA / "findings-reference.json", "reference"),
             "smollm2": (DATA / "findings-smollm2.json", "default"),
             "sweep": (DATA / "findings-sweep.json", None)}
PAGES = [("default", "README.md"), ("default", "docs/results.md"), ("reference", "docs/results.md"),
         ("smollm2", "docs/results.md")]  # the sweep's table is the default run's sweep study (checked below)
SWEEP_INPUT = DATA / "demo-sweep.json"  # the sweep's demo_sweep.json: its findings' only input


def load(run: str) -> dict:
    return json.loads(PUBLISHED[run][0].read_text(encoding="utf-8"))


@pytest.mark.parametrize(("run", "page"), PAGES)
def test_page_shows_the_tables_generated_from_the_published_findings(run, page):
    assert check_readme_table(REPO / page, load(run)) == []


@pytest.mark.parametrize("run", sorted(PUBLISHED))
def test_published_findings_are_of_the_current_format_and_every_row_has_a_verdict(run):
    findings = load(run)
    preset = PUBLISHED[run][1]
    rows = findings["rows"]
    assert rows and all(r["verdict"].split(":")[0] in (*VERDICTS, "undefined", "missing") for r in rows)
    assert findings["settings"]["confidence"] == 0.95
    assert any(r["study"].endswith(f"· {preset}") for r in rows) if preset else {r["study"] for r in rows} == {SWEEP_STUDY}


def test_the_sweeps_published_findings_are_recomputed_from_its_published_input():
    published = load("sweep")
    sweep = json.loads(SWEEP_INPUT.read_text(encoding="utf-8"))
    settings = published["settings"]
    again = evaluate_findings([], [sweep], settings["n_resamples"], settings["confidence"], settings["seed"])
    keys = ("study", "claim", "statement", "task", "verdict", "n_seeds", "df")
    assert [{k: r[k] for k in keys} for r in again["rows"]] == [{k: r[k] for k in keys} for r in published["rows"]]
    for mine, theirs in zip(again["rows"], published["rows"]):
        for key in ("effect", "p_value", "p_adjusted"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-9), (mine["statement"], mine["task"], key)
        assert mine["interval"] == pytest.approx(theirs["interval"], abs=1e-9)
    seeds = {r["seed"] for r in sweep["rows"]}
    assert len(seeds) >= 5, "the published sweep runs the findings runs' five seeds"
    # the default run's folder holds the same sweep: its sweep study is these rows
    assert [r for r in load("default")["rows"] if r["study"] == SWEEP_STUDY] == published["rows"]


def test_every_findings_table_on_the_results_page_is_of_a_published_run():
    studies = {r["study"] for run in PUBLISHED for r in load(run)["rows"]}
    shown = [block_study(b) for b in readme_blocks((REPO / "docs" / "results.md").read_text(encoding="utf-8"))]
    assert len(shown) >= len(PUBLISHED) and all(study in studies for study in shown), shown
    # the README's block is the default-preset study, with both pooled columns
    block = readme_block((REPO / "README.md").read_text(encoding="utf-8"))
    assert block is not None and "tasks like these" in block
    assert block_study(block) == next(r["study"] for r in load("default")["rows"] if r["study"].endswith("· default"))
