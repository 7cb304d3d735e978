"""The library passes its type checker (mypy, configured in pyproject.toml: check_untyped_defs,
per-module ignores only for dependencies that ship no type information)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from helpers import REPO



def test_mypy_is_clean():
    out = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_reports_a_type_error(tmp_path):
    """The configuration does check: a wrong argument type in a checked module is an error."""
    bad = tmp_path / "bad.py"
    bad.write_text("from icl_lens.stats import resample_indices\n\nresample_indices('ten', 5, 0)\n")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 1 and "arg-type" in out.stdout, out.stdout + out.stderr
