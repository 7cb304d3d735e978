"""The library passes its own lint and format rules (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO



@pytest.mark.parametrize("command", [["check", "icl_lens"], ["format", "--check", "icl_lens"]])
def test_ruff_is_clean(command):
    out = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
