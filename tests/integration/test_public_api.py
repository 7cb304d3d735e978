"""The public API a notebook user meets: every subpackage after ``import icl_lens``, and the README's
Python example run as written (on a tiny model instead of the default one)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import icl_lens
from helpers import tiny_model
from helpers import REPO

README = REPO / "README.md"


def test_subpackages_reachable_after_plain_import():
    code = (
        "import icl_lens\n"
        "for name in icl_lens._SUBMODULES:\n"
        "    module = getattr(icl_lens, name)\n"
        "    assert module.__name__ == 'icl_lens.' + name, module\n"
        "print(icl_lens.metrics.simaou.__name__, icl_lens.viz.compare_settings.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["simaou", "compare_settings"]


def test_every_public_name_resolves():
    for name in icl_lens.__all__:
        assert getattr(icl_lens, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_thing"):
        icl_lens.no_such_thing  # noqa: B018


def _readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_python_example_runs(monkeypatch):
    """The notebook example of the README, verbatim except that the model is a tiny random one."""
    blocks = _readme_python_blocks()
    assert blocks, "README has no python example"
    model = tiny_model(gqa=True, n_layers=4)  # the example reads layer 3
    monkeypatch.setattr(icl_lens, "load_model", lambda *args, **kwargs: model)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102
    out = namespace["out"]
    accuracy = out.results["accuracy"]
    assert set(accuracy) >= {"zsl", "icl", "ft"}
    assert all(0.0 <= value <= 1.0 for value in accuracy.values())
