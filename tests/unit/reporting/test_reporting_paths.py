"""Where reporting's pieces live: the papers' published numbers in a leaf module every layer may read,
the reporting submodules loaded on first access, and no module left at an old path."""

import ast
import importlib
from pathlib import Path

import pytest

import icl_lens


def test_the_papers_numbers_are_a_leaf_module():
    source = Path(importlib.import_module("icl_lens.papers").__file__).read_text()
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert all(name == "__future__" for name in imported), imported
    from icl_lens.metrics import HANDBUILT_ICL_GD_SPARSITY
    from icl_lens.papers import HANDBUILT_ICL_GD_SPARSITY as published

    assert HANDBUILT_ICL_GD_SPARSITY is published


@pytest.mark.parametrize(
    "old", ["summary", "aggregate", "report", "findings", "figures", "reference", "sweep", "executors", "finetune"]
)
def test_old_module_paths_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"icl_lens.{old}")


def test_reporting_submodules_load_on_first_access():
    assert icl_lens.reporting.tables.format_interval(0.855, [0.805, 0.9]) == "0.855 [0.805, 0.900]"
    with pytest.raises(AttributeError, match="no_such_module"):
        icl_lens.reporting.no_such_module  # noqa: B018
