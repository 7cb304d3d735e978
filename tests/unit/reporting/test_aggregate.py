"""Across-seed aggregation: sample std, the two-level (seeds, then queries) bootstrap, and the
resampled Rec2FTP / Jaccard statistics."""

import statistics

import numpy as np
import pytest
import torch

from findings_fixtures import study, synthetic_cell
from icl_lens import metrics
from icl_lens.reporting.aggregate import (
    QUANTITIES,
    CellDraws,
    aggregate,
    jaccard_statistic,
    markdown_tables,
    rec2ftp_statistic,
    summarise_seeds,
    two_level_bootstrap,
    two_level_draws,
)
from icl_lens.errors import ConfigError


def test_two_level_bootstrap_of_a_constant_is_a_point():
    assert two_level_bootstrap([[0.3] * 5, [0.3] * 9, [0.3] * 2]) == pytest.approx((0.3, 0.3))


def test_two_level_bootstrap_resamples_seeds():
    # constant within each seed (0 and 1): the mean of two seeds drawn with replacement is 0, 0.5 or 1
    # with probabilities 1/4, 1/2, 1/4, so the central 95 % interval is [0, 1]
    assert two_level_bootstrap([[0.0] * 4, [1.0] * 4], n_resamples=4000) == (0.0, 1.0)
    draws = two_level_draws([CellDraws(0.0, None, "value only"), CellDraws(1.0, None, "value only")], 4000,
                            np.random.default_rng(0))
    assert set(np.unique(draws)) == {0.0, 0.5, 1.0}
    assert np.mean(draws == 0.5) == pytest.approx(0.5, abs=0.03)


def test_two_level_bootstrap_resamples_queries():
    # one seed of 0/1 values: the bootstrap mean has std sqrt(p(1-p)/n) = 0.05 for p = 0.5, n = 100
    low, high = two_level_bootstrap([[0.0, 1.0] * 50], n_resamples=4000, seed=1)
    assert (high - low) / (2 * 1.96) == pytest.approx(0.05, rel=0.1)
    assert low < 0.5 < high


def test_two_level_bootstrap_rejects_empty_input():
    with pytest.raises(ConfigError, match="at least one seed"):
        two_level_bootstrap([])
    with pytest.raises(ConfigError, match="at least one seed"):
        two_level_bootstrap([[1.0], []])


def test_sample_std_over_seeds_matches_statistics_stdev():
    cells = [synthetic_cell("sst2", seed, icl_gain=0.1 * seed) for seed in range(4)]
    accuracies = [c["accuracy"]["icl"] for c in cells]
    summary = summarise_seeds(cells, QUANTITIES["acc_icl"])
    assert summary.mean == pytest.approx(statistics.fmean(accuracies))
    assert summary.std == pytest.approx(statistics.stdev(accuracies))
    assert summary.std != pytest.approx(statistics.pstdev(accuracies))
    assert summary.ci[0] < summary.mean < summary.ci[1] and summary.method == "seeds × queries"
    [stats] = aggregate(cells).values()
    assert stats["acc_icl"]["std"] == pytest.approx(statistics.stdev(accuracies))
    assert stats["acc_icl"]["ci"] == pytest.approx(list(summary.ci), abs=0.05)
    assert summarise_seeds(cells[:1], QUANTITIES["acc_icl"]).std is None


def test_a_cell_without_per_query_values_uses_its_interval_or_only_its_value():
    cell = synthetic_cell("sst2", 0, with_per_example=False)
    summary = summarise_seeds([cell], QUANTITIES["simaou_ft"], n_resamples=4000)
    assert summary.method == "seeds × cell interval (normal)"  # the cell's ci is mean ± 0.01
    assert summary.ci == pytest.approx([summary.mean - 0.01, summary.mean + 0.01], abs=0.002)
    cell["metrics"]["ft"]["simaou"].pop("ci")
    assert summarise_seeds([cell], QUANTITIES["simaou_ft"]).ci is None
    two = [cell, {**cell, "metrics": {**cell["metrics"], "ft": {**cell["metrics"]["ft"], "simaou": {
        "per_layer": [1.0], "mean": 1.0}}}}]
    assert summarise_seeds(two, QUANTITIES["simaou_ft"]).method == "seeds only"


def test_resampled_statistics_match_the_metrics_on_the_full_sample():
    rng = np.random.default_rng(0)
    zsl, icl, ft, gold = (rng.integers(0, 3, 50) for _ in range(4))
    rows = np.stack([zsl, icl, ft, gold], axis=1)[None].astype(float)
    tensors = [torch.tensor(v) for v in (zsl, icl, ft, gold)]
    assert rec2ftp_statistic(rows)[0] == pytest.approx(metrics.rec2ftp(*tensors))
    assert jaccard_statistic(rows)[0] == pytest.approx(metrics.prediction_change_overlap(*tensors).jaccard)
    # by hand: FT fixes examples 0 and 1, ICL also fixes 0 -> 50 %
    hand = np.array([[[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]]], dtype=float)
    assert rec2ftp_statistic(hand)[0] == 50.0
    assert np.isnan(rec2ftp_statistic(hand[:, 2:])[0])


def test_markdown_tables_show_intervals():
    table = markdown_tables(aggregate(study(tasks=("sst2",), seeds=(0, 1), untrained_seeds=())))
    line = next(row for row in table.splitlines() if row.startswith("| sst2 | tiny | 4 |"))
    assert line.count(" ± ") == 6 and line.count("[") == 6  # ZSL ICL FT LCGD Rec2FTP Jaccard


def test_other_precision_or_untrained_init_is_another_group_never_pooled():
    """bf16-on-GPU and fp32-on-CPU cells of the same task and seed, or untrained cells with two inits,
    are separate groups and separate findings studies."""
    from icl_lens.reporting.findings import group_studies

    fp32 = synthetic_cell(seed=0)
    bf16 = synthetic_cell(seed=0, ft_gain=0.0)
    bf16["identity"] = {"dtype": "bfloat16", "device": "cuda"}
    reference = synthetic_cell(seed=0, untrained=True)
    normal = synthetic_cell(seed=0, untrained=True, icl_gain=0.0)
    reference["config"]["untrained_init"] = "reference"
    normal["config"]["untrained_init"] = "normal"
    groups = aggregate([fp32, bf16, reference, normal], n_resamples=50)
    variants = sorted(key[4] for key in groups)
    assert variants == ["", "bfloat16/cuda", "normal init", "reference init"]
    assert all(stats["acc_zsl"]["n"] == 1 for stats in groups.values())
    table = markdown_tables(groups)
    assert "tiny (bfloat16/cuda)" in table and "tiny (untrained, reference init)" in table
    studies = group_studies([fp32, bf16])
    assert sorted(s.label for s in studies) == ["tiny · k=4", "tiny · k=4 · bfloat16/cuda"]
