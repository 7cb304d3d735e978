"""TransformerLens 4 (no HookedTransformer: the bridge is the default backend), in an environment of its own.

A session builds (once per machine, then reuses) a virtual environment with TransformerLens 4 and
this checkout installed editable, and runs the backend tests and a command-line cell there. It pins
transformers 5.23, where the bridge's prefix cache works, so the cached path is exercised there while
this environment (transformers 5.24) exercises the re-encoding fallback.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PINS = ("torch==2.13.0", "transformer-lens==4.3.0", "transformers==5.23.0", "pytest>=8")

pytestmark = pytest.mark.tl4


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def tl4_python() -> Path:
    """The Python of a TransformerLens 4 environment with this checkout installed (editable)."""
    key = hashlib.sha256(" ".join((sys.version, *PINS)).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("ICL_LENS_CACHE", Path.home() / ".cache" / "icl_lens"))
    venv = cache / "venvs" / f"tl4-{key}"
    python = venv / "bin" / "python"
    if not python.exists():
        created = _run([sys.executable, "-m", "venv", str(venv)])
        assert created.returncode == 0, created.stderr
    # every time: cheap when satisfied, and it points the editable install at this checkout
    installed = _run([str(python), "-m", "pip", "install", "-q", "-e", str(REPO), *PINS], timeout=1800)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return python


def test_transformer_lens_4_environment_has_no_hooked_transformer(tl4_python):
    probe = _run(
        [
            str(tl4_python),
            "-c",
            (
                "import importlib.metadata as m, icl_lens, transformer_lens\n"
                "from icl_lens.models.backends import default_backend, has_hooked_transformer\n"
                "print(m.version('transformer-lens'), default_backend(), has_hooked_transformer(), icl_lens.__file__)"
            ),
        ],
        cwd="/",
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    version, backend, hooked, location = probe.stdout.split()
    assert version.startswith("4.") and backend == "bridge" and hooked == "False"
    assert Path(location).resolve().is_relative_to(REPO)


def test_backend_tests_pass_on_transformer_lens_4(tl4_python):
    """tests/test_backends.py under TransformerLens 4: the bridge checks and the command line run;
    the HookedTransformer comparisons skip."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    run = _run(
        [str(tl4_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_backends.py", "-rs"],
        cwd=REPO,
        env=env,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
