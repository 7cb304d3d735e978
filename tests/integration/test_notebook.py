"""experiments/walkthrough.ipynb: committed without outputs, and every cell runs (nbclient).

The notebook reads its model and sizes from ``ICL_LENS_NOTEBOOK_*`` environment variables; the kernel
inherits this process's environment, so ``monkeypatch.setenv`` shrinks the run. ``PYTHONPATH`` puts this
checkout first so the kernel imports the ``icl_lens`` under test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from helpers import REPO

NOTEBOOK = REPO / "experiments" / "walkthrough.ipynb"


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama (GQA) saved as a Hugging Face directory, with a byte tokenizer and a
    1024-token context so that a few SST-2 demonstrations fit."""
    from helpers import save_tiny_hf_llama

    path = tmp_path_factory.mktemp("models") / "tiny-notebook-model"
    save_tiny_hf_llama(path, max_position_embeddings=1024)
    return path


def _execute(tmp_path: Path, monkeypatch, model: str, limit: int, k: int, resamples: int,
             cell_timeout: int) -> nbformat.NotebookNode:
    """Run a copy of the notebook in ``tmp_path``; any cell error raises (CellExecutionError)."""
    copy = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, copy)
    monkeypatch.setenv("ICL_LENS_NOTEBOOK_MODEL", model)
    monkeypatch.setenv("ICL_LENS_NOTEBOOK_LIMIT", str(limit))
    monkeypatch.setenv("ICL_LENS_NOTEBOOK_K", str(k))
    monkeypatch.setenv("ICL_LENS_NOTEBOOK_RESAMPLES", str(resamples))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    nbformat.write(nb, copy)
    return nb


def _cell(nb: nbformat.NotebookNode, marker: str) -> nbformat.NotebookNode:
    matches = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(matches) == 1, f"{len(matches)} code cells contain {marker!r}"
    return matches[0]


def _text(cell: nbformat.NotebookNode, mime: str) -> str:
    """Everything ``cell`` put out under ``mime`` (``stream`` for printed text)."""
    parts = []
    for output in cell.outputs:
        if mime == "stream" and output.output_type == "stream":
            parts.append(output.text)
        elif mime != "stream" and mime in output.get("data", {}):
            parts.append(output.data[mime])
    return "".join(parts)


def _check_outputs(nb: nbformat.NotebookNode, n_layers: int) -> None:
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    assert not [o for c in code_cells for o in c.outputs if o.output_type == "error"]

    setup = _text(_cell(nb, "icl_lens.load_model(MODEL)"), "stream")
    assert f"{n_layers} layers" in setup

    accuracy = _text(_cell(nb, 'results["accuracy_ci"]'), "text/markdown")
    for setting in ("ZSL", "ICL", "FT", "LCGD"):
        assert f"| {setting} |" in accuracy
    tests = _text(_cell(nb, 'results["tests"]'), "text/markdown")
    assert "icl_vs_zsl" in tests and "McNemar" in tests and "lcgd_vs_ft_simaou" in tests

    caches = _text(_cell(nb, "for name, run in out.runs.items()"), "stream")
    assert all(f"{s} " in caches for s in ("ZSL", "ICL", "FT", "LCGD"))

    plots = _cell(nb, "fill_between")
    assert _text(plots, "image/png"), "the per-layer plot cell drew no figure"
    summary = _text(_cell(nb, "jaccard_independence"), "text/markdown")
    assert "null: shuffled_pair" in summary and "null: wrong_label" in summary and "random baseline" in summary

    panes = _text(_cell(nb, "compare_settings"), "text/html")
    assert "LCGD" in panes and "ICL − ZSL" in panes

    sweep = _text(_cell(nb, "run_cells"), "stream")
    assert "seed 0:" in sweep and "seed 1:" in sweep
    findings = _text(_cell(nb, "write_findings"), "text/markdown")
    assert findings.startswith("### Findings") and "| sst2 |" in findings
    assert any(v in findings for v in ("holds", "fails", "inconclusive"))

    own = _text(_cell(nb, "moods.json"), "stream")
    assert "moods | Text: {text} Mood: | ('sad', 'happy')" in own and "accuracy:" in own


def test_walkthrough_runs_on_a_tiny_model(tmp_path, monkeypatch, tiny_llama_dir):
    nb = _execute(tmp_path, monkeypatch, str(tiny_llama_dir), limit=8, k=4, resamples=50, cell_timeout=120)
    _check_outputs(nb, n_layers=2)


@pytest.mark.real_model
def test_walkthrough_runs_on_the_default_model(tmp_path, monkeypatch):
    nb = _execute(tmp_path, monkeypatch, "gemma3-270m", limit=16, k=4, resamples=200, cell_timeout=1200)
    _check_outputs(nb, n_layers=18)


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, "the notebook has no code cells"
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"cells {dirty} hold outputs or execution counts; clear them before committing"
    # the seven sections, in order, each a markdown explanation followed by code
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert [h.split(".")[0] for h in headings] == [f"## {i}" for i in range(1, 8)]
    for i, c in enumerate(nb.cells):
        if c.cell_type == "markdown" and c.source.startswith("## "):
            assert nb.cells[i + 1].cell_type == "code", f"section {c.source.splitlines()[0]!r} has no code"
