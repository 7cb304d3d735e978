"""Reporting moved into icl_lens.reporting; the old module paths stay importable for existing code and
give the same objects."""

import importlib

import pytest


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("icl_lens.summary", "icl_lens.reporting.summary", "format_interval"),
        ("icl_lens.aggregate", "icl_lens.reporting.aggregate", "markdown_tables"),
        ("icl_lens.report", "icl_lens.reporting.report", "build_report"),
        ("icl_lens.findings", "icl_lens.reporting.findings", "write_findings"),
        ("icl_lens.figures", "icl_lens.reporting.figures", "plot_layer_metric"),
        ("icl_lens.reference", "icl_lens.reporting.reference", "REFERENCE_ACCURACY"),
        ("icl_lens.analyses.figures", "icl_lens.reporting.figures", "plot_sparsity"),
        ("icl_lens.metrics", "icl_lens.reporting.reference", "HANDBUILT_ICL_GD_SPARSITY"),
    ],
)
def test_old_paths_give_the_moved_objects(old, new, name):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_reporting_submodules_load_on_first_access():
    import icl_lens

    assert icl_lens.reporting.tables.format_interval(0.855, [0.805, 0.9]) == "0.855 [0.805, 0.900]"
    with pytest.raises(AttributeError, match="no_such_module"):
        icl_lens.reporting.no_such_module  # noqa: B018
