"""The findings the README and the docs show are generated, never typed: each claim × task table
must equal :func:`icl_lens.reporting.findings.readme_table` of the findings.json its run wrote
(kept in docs/data/ with the command that made it)."""

from __future__ import annotations

import json

import pytest

from helpers import REPO
from icl_lens.reporting.findings import VERDICTS, block_study, check_readme_table, readme_block, readme_blocks

DATA = REPO / "docs" / "data"
PUBLISHED = {"default": DATA / "findings-default.json", "reference": DATA / "findings-reference.json"}
PAGES = [("default", "README.md"), ("default", "docs/results.md"), ("reference", "docs/results.md")]


def load(preset: str) -> dict:
    return json.loads(PUBLISHED[preset].read_text(encoding="utf-8"))


@pytest.mark.parametrize(("preset", "page"), PAGES)
def test_page_shows_the_tables_generated_from_the_published_findings(preset, page):
    assert check_readme_table(REPO / page, load(preset)) == []


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_published_findings_are_of_the_current_format_and_every_row_has_a_verdict(preset):
    findings = load(preset)
    rows = findings["rows"]
    assert rows and all(r["verdict"].split(":")[0] in (*VERDICTS, "undefined", "missing") for r in rows)
    assert findings["settings"]["confidence"] == 0.95
    assert any(r["study"].endswith(f"· {preset}") for r in rows)


def test_every_findings_table_on_the_results_page_is_of_a_published_run():
    studies = {r["study"] for preset in PUBLISHED for r in load(preset)["rows"]}
    shown = [block_study(b) for b in readme_blocks((REPO / "docs" / "results.md").read_text(encoding="utf-8"))]
    assert len(shown) >= 2 and all(study in studies for study in shown), shown
    # the README's block is the default-preset study, with both pooled columns
    block = readme_block((REPO / "README.md").read_text(encoding="utf-8"))
    assert block is not None and "tasks like these" in block and block_study(block).endswith("· default")
