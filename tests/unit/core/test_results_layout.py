"""The results layout (icl_lens.cell.results.LAYOUT) against what the pipeline writes: a tiny-model cell
with every setting and null follows it key for key, in memory and as a results file, so the
documented layout cannot drift from experiment.py; a key too many, too few or of another type fails
with a message naming it."""

from __future__ import annotations

import copy
import re
from dataclasses import replace

import numpy as np
import pytest

import icl_lens.cell.results as layout
from icl_lens.errors import ResultsError
from icl_lens.cell.experiment import ExperimentConfig, run_experiment
from icl_lens.cell.results import layout_rows, read_results, validate_results, write_results
from icl_lens.tasks import get_task

CFG = ExperimentConfig(task="sst2", model="tiny", k=3, limit=6, lr=1e-2, batch_size=3, bootstrap_resamples=40)


@pytest.fixture(scope="module")
def cell(tiny_llama):
    return run_experiment(tiny_llama, get_task("sst2"), CFG, progress=False).results


def _written(value, parts: list[str]) -> bool:
    """Whether a layout path (``metrics.{ft,lcgd}.simaou``, ``nulls.<setting>``, ``examples[i].label``)
    is written somewhere in ``value``: ``{a,b}`` matches either key, ``<...>`` any key, ``[i]`` any item."""
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    if head.endswith("[i]"):
        items = value.get(head[:-3]) if isinstance(value, dict) else None
        return isinstance(items, list) and any(_written(item, rest) for item in items)
    if not isinstance(value, dict):
        return False
    if head.startswith("<"):
        keys = list(value)
    elif head.startswith("{"):
        keys = head[1:-1].split(",")
    else:
        keys = [head]
    return any(key in value and _written(value[key], rest) for key in keys)


def test_a_cell_the_pipeline_writes_follows_the_layout(cell, tmp_path):
    validate_results(cell)
    on_disk = read_results(write_results(tmp_path / "results.json", cell))
    validate_results(on_disk)
    # every documented key is written by a run with every setting and null, except the keys a sweep adds
    unwritten = [path for path, _, _ in layout_rows() if not _written(on_disk, re.split(r"\.(?![^{]*})", path))]
    assert unwritten == ["identity", "meta"]


def test_a_zero_shot_cell_follows_the_layout(tiny_gpt):
    validate_results(run_experiment(tiny_gpt, get_task("subj"), replace(CFG, settings=("zsl",), k=0)).results)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["metrics"]["ft"].update(simaou_extra=1.0), "results.metrics.ft: unknown key 'simaou_extra'"),
        (lambda r: r["metrics"]["ft"]["simaou"].pop("ci"), "results.metrics.ft.simaou: missing key 'ci'"),
        (lambda r: r.pop("accuracy"), "results: missing key 'accuracy'"),
        (lambda r: r["accuracy"].update(zero_shot=0.5), "results.accuracy: unknown setting 'zero_shot'"),
        (lambda r: r["accuracy_ci"].update(icl=[0.1]), "results.accuracy_ci.icl: expected an interval"),
        (lambda r: r["prompts"].update(k_used="3"), "results.prompts.k_used: expected an integer, got str"),
        (
            lambda r: r["per_example"]["ft"].update(simaou=[1.0, 2.0]),
            "results.per_example.ft.simaou: expected a list of lists",
        ),
    ],
)
def test_a_key_too_many_too_few_or_of_another_type_is_named(cell, edit, message):
    broken = copy.deepcopy(cell)
    edit(broken)
    with pytest.raises(ResultsError, match="does not follow the results layout") as info:
        validate_results(broken)
    assert message in str(info.value)


def test_the_docstring_table_is_the_layout():
    assert layout.layout_markdown() in layout.__doc__
    paths = [path for path, _, _ in layout.layout_rows()]
    assert "metrics.{ft,lcgd}.simaou" in paths and "nulls.<setting>.wrong_label.accuracy" in paths


def test_accessors_read_what_the_per_query_values_give(cell):
    n_layers = len(cell["per_example"]["ft"]["simaou"][0])
    for setting in ("zsl", "icl", "ft", "lcgd"):
        correct = layout.per_example(cell, setting, "correct")
        assert layout.accuracy(cell, setting) == pytest.approx(np.mean(correct))
        low, high = layout.accuracy_interval(cell, setting)
        assert low <= layout.accuracy(cell, setting) <= high
    for setting in ("ft", "lcgd"):
        for metric in ("simaou", "simam", "simam_delta"):
            rows = np.asarray(layout.per_example(cell, setting, metric))
            assert layout.metric_value(cell, setting, metric) == pytest.approx(rows.mean(), abs=1e-5)
            assert layout.per_layer(cell, setting, metric) == pytest.approx(rows.mean(axis=0), abs=1e-5)
            assert len(layout.metric_summary(cell, setting, metric)["per_layer_ci"]) == n_layers
        overlap = layout.per_example(cell, setting, "token_overlap")
        assert layout.metric_value(cell, setting, "token_overlap") == pytest.approx(np.mean(overlap), abs=1e-5)
        changes = cell["metrics"][setting]["prediction_changes"]
        np.testing.assert_equal(layout.metric_value(cell, setting, "jaccard"), changes["jaccard"])  # NaN: no change
        assert layout.metric_interval(cell, setting, "jaccard") == changes["jaccard_ci"]
        assert layout.metric_interval(cell, setting, "jaccard_correct") is None  # no interval recorded
        null_rows = np.asarray(cell["per_example"]["nulls"][setting]["shuffled_pair"]["simaou"])
        assert layout.null_summary(cell, setting, "shuffled_pair", "simaou")["mean"] == pytest.approx(
            null_rows.mean(), abs=1e-5
        )
    alpha = np.asarray(layout.per_example(cell, None, "alpha"))
    assert layout.metric_value(cell, None, "alpha") == pytest.approx(alpha.mean(), abs=1e-5)
    assert layout.metric_value(cell, "ft", "no_such_metric") is None


def test_a_cell_records_the_rows_behind_its_numbers_and_its_null_seeds(cell):
    from icl_lens.cell.experiment import cell_rows
    from icl_lens.cell.nulls import null_seeds

    ids = cell["query_ids"]
    assert ids["eval"] == [e["row_index"] for e in cell["examples"]]  # the order of every per-query value
    demos, queries, dev = cell_rows(get_task("sst2"), CFG)
    assert ids["eval"] == [q["row_index"] for q in queries] and ids["dev"] == [r["row_index"] for r in dev]
    assert [d["row_index"] for d in cell["demonstrations"]] == [d["row_index"] for d in demos][: len(cell["demonstrations"])]
    assert (ids["eval_split"], ids["dev_split"]) == ("validation", "train") and len(ids["dev"]) == CFG.lr_dev_size
    assert ids["dev_used_for"] == []  # the rate was given: nothing chosen
    assert cell["null_seeds"] == null_seeds(CFG.random_seed, CFG.seed)


def test_older_cells_without_the_format_4_keys_stay_valid(cell):
    old = copy.deepcopy(cell)
    for key in ("query_ids", "null_seeds"):
        old.pop(key)
    for null in ("wrong_label_answer_loss", "gradient_span"):
        old["nulls"]["ft"].pop(null)
        old["per_example"]["nulls"]["ft"].pop(null)
    old["nulls"]["ft"]["wrong_label"].pop("loss_on")
    validate_results(old)
