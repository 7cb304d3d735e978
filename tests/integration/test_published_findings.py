"""The findings the README and the docs show are generated, never typed: their claim × task table
must equal :func:`icl_lens.reporting.findings.readme_table` of the findings.json the run wrote
(kept in docs/data/ with the command that made it)."""

from __future__ import annotations

import json

import pytest

from helpers import REPO
from icl_lens.reporting.findings import VERDICTS, check_readme_table, readme_block

PUBLISHED = REPO / "docs" / "data" / "findings-default.json"


@pytest.fixture(scope="module")
def findings() -> dict:
    return json.loads(PUBLISHED.read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", ["README.md", "docs/results.md"])
def test_page_shows_the_table_generated_from_the_published_findings(page, findings):
    assert check_readme_table(REPO / page, findings) == []


def test_published_findings_are_of_the_current_format_and_every_row_has_a_verdict(findings):
    rows = findings["rows"]
    assert rows and all(r["verdict"].split(":")[0] in (*VERDICTS, "undefined", "missing") for r in rows)
    assert findings["settings"]["confidence"] == 0.95
    # the README's block is the default-preset study, with both pooled columns
    block = readme_block((REPO / "README.md").read_text(encoding="utf-8"))
    assert block is not None and "tasks like these" in block
