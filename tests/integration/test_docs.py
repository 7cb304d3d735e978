"""The docs site builds without a warning: ``mkdocs build --strict`` (mkdocs-material, the API reference
from the docstrings by mkdocstrings, the walkthrough notebook rendered by mkdocs-jupyter without running
it), and every relative link of the README points at a file that exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from helpers import REPO



def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for page in ("index.html", "getting-started/index.html", "walkthrough/index.html", "api/metrics/index.html",
                 "changelog/index.html", "performance/index.html"):
        assert (site / page).is_file(), page
    # the API reference is generated from the docstrings, not empty headings
    assert "simaou_random_baseline" in (site / "api" / "metrics" / "index.html").read_text(encoding="utf-8")
    # the changelog is CHANGELOG.md itself, included at build time
    first_entry = re.search(r"^## (.+)$", (REPO / "CHANGELOG.md").read_text(encoding="utf-8"), flags=re.M)
    assert first_entry is not None
    assert first_entry.group(1).split()[0] in (site / "changelog" / "index.html").read_text(encoding="utf-8")


def test_readme_links_resolve():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://", t) and not t.startswith("#")]
    assert local, "the README links no docs page"
    missing = [t for t in local if t and not (REPO / t).exists()]
    assert not missing, missing
