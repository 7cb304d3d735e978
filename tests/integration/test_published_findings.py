"""The findings the README and the docs show are generated, never typed: each claim × task table
must equal :func:`icl_lens.reporting.findings.readme_table` of the findings.json its run wrote
(kept in docs/data/ with the command that made it)."""

from __future__ import annotations

import json

import pytest

from helpers import REPO
from icl_lens.reporting.findings import VERDICTS, block_study, check_readme_table, readme_block, readme_blocks

DATA = REPO / "docs" / "data"
# published run -> (its findings.json, the preset it ran)
PUBLISHED = {"default": (DATA / "findings-default.json", "default"),
             "reference": (DATA / "findings-reference.json", "reference"),
             "smollm2": (DATA / "findings-smollm2.json", "default")}
PAGES = [("default", "README.md"), ("default", "docs/results.md"), ("reference", "docs/results.md"),
         ("smollm2", "docs/results.md")]


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
    assert any(r["study"].endswith(f"· {preset}") for r in rows)


def test_every_findings_table_on_the_results_page_is_of_a_published_run():
    studies = {r["study"] for run in PUBLISHED for r in load(run)["rows"]}
    shown = [block_study(b) for b in readme_blocks((REPO / "docs" / "results.md").read_text(encoding="utf-8"))]
    assert len(shown) >= len(PUBLISHED) and all(study in studies for study in shown), shown
    # the README's block is the default-preset study, with both pooled columns
    block = readme_block((REPO / "README.md").read_text(encoding="utf-8"))
    assert block is not None and "tasks like these" in block
    assert block_study(block) == next(r["study"] for r in load("default")["rows"] if r["study"].endswith("· default"))
