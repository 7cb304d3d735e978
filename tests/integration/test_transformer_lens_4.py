"""TransformerLens 4 (no HookedTransformer: the bridge is the default backend), in an environment of its own.

A session builds (once per machine, then reuses and upgrades) a virtual environment with this checkout
installed editable and the newest versions pip resolves for its runtime dependencies (no lock: torch is
pinned only to take the CPU wheel), the same install a new user gets. Dependency drift then shows up
here as a failing test rather than as a silent slowdown: the bridge must take the prefix cache's fast
path, hand transformers no deprecated keyword, and give the hooked backend's numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import save_tiny_hf
from tl4_probe import LABELS, PREFIX, QUERIES

from icl_lens.evaluation import evaluate
from icl_lens.models import load_model
from icl_lens.models.backends import has_hooked_transformer
from helpers import REPO

PINS = ("torch==2.13.0", "pytest>=8")  # torch: the CPU wheel; everything else resolves to its newest

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
    # every time: upgrades every runtime dependency to the newest pip resolves, and points the editable
    # install at this checkout
    installed = _run(
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "--upgrade-strategy", "eager", "-e", str(REPO), *PINS],
        timeout=1800,
    )
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
    """tests/unit/models/test_backends.py under TransformerLens 4: the bridge checks and the command line run;
    the HookedTransformer comparisons skip."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    run = _run(
        [str(tl4_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/models/test_backends.py", "-rs"],
        cwd=REPO,
        env=env,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


def test_newest_dependencies_take_the_prefix_cache_fast_path(tl4_python, tmp_path):
    """With the newest transformers and TransformerLens 4, the shared prefix's key/value cache works on
    the bridge (no re-encoding fallback), no deprecated keyword reaches transformers, and the scores are
    the hooked backend's (TransformerLens 3 in this environment) on the same saved models."""
    families = ("llama", "gemma3", "gpt2")
    for family in families:
        save_tiny_hf(family, tmp_path / "models" / family)
    out = tmp_path / "probe.json"
    probe = _run([str(tl4_python), str(REPO / "tests" / "tl4_probe.py"), str(tmp_path / "models"), str(out)], cwd="/")
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["versions"]["transformer-lens"].startswith("4."), report["versions"]
    for family in families:
        got = report["families"][family]
        assert got["cache_works"] is True, (family, report["versions"])
        assert got["warnings"] == [], (family, got["warnings"])
    if not has_hooked_transformer():  # pragma: no cover - the dev extra installs TransformerLens 3
        pytest.skip("this environment has no HookedTransformer to compare with")
    for family in ("llama", "gpt2"):  # TransformerLens 3 configures Gemma-3 by hub name only
        hooked = load_model(str(tmp_path / "models" / family), backend="hooked")
        expected = evaluate(hooked, PREFIX, QUERIES, LABELS, progress=False).class_scores.to(torch.float64)
        bridge = torch.tensor(report["families"][family]["class_scores"], dtype=torch.float64)
        assert torch.allclose(bridge, expected, atol=1e-5), (family, (bridge - expected).abs().max())
