"""Bootstrap intervals, McNemar, paired bootstrap and derangements on closed-form cases."""

import math

import numpy as np
import pytest

from icl_lens.errors import MetricInputError
from icl_lens.stats import (
    bootstrap_interval,
    bootstrap_ratio,
    bootstrap_statistic,
    derangement,
    mcnemar_exact,
    mcnemar_p_value,
    paired_bootstrap,
    resample_indices,
)


def test_bootstrap_of_a_constant_is_a_point():
    interval = bootstrap_interval(np.full(50, 0.3))
    assert interval.value == pytest.approx(0.3) and interval.ci == pytest.approx([0.3, 0.3])
    per_layer = bootstrap_interval(np.tile([0.1, 0.5], (20, 1)))
    assert per_layer.per_layer == pytest.approx([0.1, 0.5])
    assert np.allclose(per_layer.per_layer_ci, [[0.1, 0.1], [0.5, 0.5]])
    assert per_layer.ci == pytest.approx([0.3, 0.3])


def test_interval_of_a_large_normal_sample_is_mean_plus_minus_1_96_se():
    values = np.random.default_rng(1).normal(2.0, 3.0, size=4000)
    interval = bootstrap_interval(values, n_resamples=2000, seed=3)
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert interval.low == pytest.approx(values.mean() - half_width, abs=0.15 * half_width)
    assert interval.high == pytest.approx(values.mean() + half_width, abs=0.15 * half_width)


def test_per_layer_interval_and_layer_mean_come_from_the_same_resamples():
    values = np.random.default_rng(0).normal(size=(30, 3))
    indices = resample_indices(30, 500, seed=7)
    joint = bootstrap_interval(values, indices=indices)
    mean_of_layers = bootstrap_interval(values.mean(axis=1), indices=indices)
    assert joint.ci == pytest.approx(mean_of_layers.ci)
    for layer in range(3):
        assert np.allclose(joint.per_layer_ci[layer], bootstrap_interval(values[:, layer], indices=indices).ci)
    assert joint.value == pytest.approx(values.mean())


def test_same_seed_same_interval_other_seed_other_interval():
    values = np.random.default_rng(0).random(40)
    assert bootstrap_interval(values, seed=5).ci == bootstrap_interval(values, seed=5).ci
    assert bootstrap_interval(values, seed=5).ci != bootstrap_interval(values, seed=6).ci


def test_ratio_and_statistic_intervals_agree_and_skip_undefined_resamples():
    num = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    den = np.array([1, 1, 1, 1, 0, 0, 1, 1])
    indices = resample_indices(8, 300, seed=2)

    def ratio(idx):
        d = den[idx].sum()
        return num[idx].sum() / d if d else math.nan

    assert bootstrap_ratio(num, den, indices) == pytest.approx(bootstrap_statistic(ratio, 8, indices=indices))
    assert bootstrap_ratio(np.zeros(4), np.zeros(4), resample_indices(4, 10)) == [pytest.approx(math.nan, nan_ok=True)] * 2


def test_mcnemar_on_a_known_table():
    # b = 10, c = 2: p = 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    expected = 2 * sum(math.comb(12, i) for i in range(3)) / 2**12
    assert expected == pytest.approx(0.03857, abs=1e-5)
    a = [1] * 10 + [0] * 2 + [1] * 5 + [0] * 3
    b = [0] * 10 + [1] * 2 + [1] * 5 + [0] * 3
    result = mcnemar_exact(a, b)
    assert (result["b"], result["c"]) == (10, 2) and result["p_value"] == pytest.approx(expected, rel=1e-12)
    assert mcnemar_p_value(0, 0) == 1.0 and mcnemar_p_value(3, 3) == 1.0
    assert mcnemar_p_value(5, 0) == pytest.approx(2 / 32)


def test_paired_bootstrap_of_a_constant_shift():
    a = np.random.default_rng(0).random(25)
    result = paired_bootstrap(a + 0.2, a, n_resamples=999)
    assert result["difference"] == pytest.approx(0.2) and result["ci"] == pytest.approx([0.2, 0.2])
    assert result["p_value"] == pytest.approx(2 / 1000)  # no resample on the far side of 0
    same = paired_bootstrap(a, a, n_resamples=999)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_derangement_has_no_fixed_point_and_is_a_permutation():
    for seed in range(200):
        for n in (2, 3, 7):
            permutation = derangement(n, seed)
            assert sorted(permutation) == list(range(n))
            assert all(permutation[i] != i for i in range(n))
    assert list(derangement(10, 4)) == list(derangement(10, 4))
    with pytest.raises(MetricInputError, match="n >= 2"):
        derangement(1)


def test_bad_input_is_named():
    with pytest.raises(MetricInputError, match="NaN"):
        bootstrap_interval([1.0, math.nan])
    with pytest.raises(MetricInputError, match="confidence"):
        bootstrap_interval([1.0, 2.0], confidence=1.5)
    with pytest.raises(MetricInputError, match="one length"):
        mcnemar_exact([1, 0], [1])


def test_mean_by_resample_counts_equals_the_gathered_mean():
    values = np.random.default_rng(0).normal(size=(40, 3))
    indices = resample_indices(40, 200, seed=1)
    by_counts = bootstrap_interval(values, indices=indices)
    gathered = bootstrap_interval(values, statistic=lambda a, axis: np.mean(a, axis=axis), indices=indices)
    assert np.allclose(by_counts.ci, gathered.ci) and np.allclose(by_counts.per_layer_ci, gathered.per_layer_ci)
    median = bootstrap_interval(values[:, 0], statistic=np.median, indices=indices)
    assert median.value == pytest.approx(np.median(values[:, 0]))


# ---------------------------------------------------------------------------------------------
# Inference over seeds and tasks: hand-computed cases, and scipy where it has the same procedure


def test_t_interval_of_three_seed_means_by_hand_and_against_scipy():
    from scipy import stats

    from icl_lens.stats import t_interval

    # mean 2, s = 1, SE = 1/sqrt(3), t_{0.975, 2} = 4.302653: half-width 2.484138
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.df == 2 and interval.se == pytest.approx(1 / math.sqrt(3))
    assert interval.ci == pytest.approx([2 - 2.484138, 2 + 2.484138], abs=1e-6)
    values = np.random.default_rng(0).normal(size=7)
    low, high = stats.t.interval(0.9, 6, loc=values.mean(), scale=stats.sem(values))
    assert t_interval(values, 0.9).ci == pytest.approx([low, high])
    with pytest.raises(MetricInputError, match="at least two"):
        t_interval([1.0])


def test_t_p_value_matches_the_interval():
    from icl_lens.stats import t_interval, t_p_value

    interval = t_interval([0.1, 0.3, 0.2, 0.25])
    # the interval's end is the null at which p = 1 − confidence
    assert t_p_value(interval.mean, interval.se, interval.df, null=interval.low) == pytest.approx(0.05)
    assert t_p_value(0.0, 0.0, 2, 0.0) == 1.0 and t_p_value(0.1, 0.0, 2, 0.0) == 0.0


def test_holm_by_hand():
    from icl_lens.stats import holm_adjust

    # sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005, 3·0.01, 2·0.03, max(1·0.04, 0.06), in input order
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm_adjust([]) == []
    with pytest.raises(MetricInputError):
        holm_adjust([0.1, 1.5])


def test_tost_by_hand():
    from icl_lens.stats import tost

    # d = 0, SE = 1, df = 10, margin 2: each one-sided p = P(T_10 >= 2) = 0.036694; the 90 % interval ±1.812461
    result = tost(0.0, 1.0, 10, 2.0)
    assert result.p_value == pytest.approx(0.036694, abs=1e-6) and result.p_lower == result.p_upper
    assert result.ci == pytest.approx([-1.812461, 1.812461], abs=1e-6)
    # the 90 % interval touches the margin exactly: p = 0.05
    assert tost(2.0 - 1.812461, 1.0, 10, 2.0).p_value == pytest.approx(0.05, abs=1e-6)
    # wholly beyond the margin: non-equivalence p = 2·P(T_10 >= (5 − 2)/1) = 2·0.006671
    assert tost(5.0, 1.0, 10, 2.0).p_nonequivalence == pytest.approx(2 * 0.0066718, abs=1e-6)


def test_clopper_pearson_by_hand_and_against_scipy():
    from scipy import stats

    from icl_lens.stats import binomial_p_value, clopper_pearson

    # k = 0 of 5: [0, 1 − 0.025^(1/5)]; k = 5 of 5: [0.025^(1/5), 1]
    assert clopper_pearson(0, 5) == pytest.approx([0.0, 1 - 0.025 ** 0.2])
    assert clopper_pearson(5, 5) == pytest.approx([0.025 ** 0.2, 1.0])
    for k, n in [(3, 10), (17, 40), (1, 2)]:
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
        assert clopper_pearson(k, n) == pytest.approx([ci.low, ci.high])
    assert binomial_p_value(0, 5, 0.5) == pytest.approx(2 / 32)
    assert binomial_p_value(7, 10, 0.5) == pytest.approx(stats.binomtest(7, 10, 0.5).pvalue)


def test_minimum_detectable_effect_by_hand():
    from icl_lens.stats import min_detectable_effect, units_to_detect

    # (t_{0.975, 2} + t_{0.8, 2}) · 1 = 4.302653 + 1.060660
    assert min_detectable_effect(1.0, 2) == pytest.approx(5.363313, abs=1e-6)
    assert min_detectable_effect(1.0, 1e9) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    # sd 1, effect 1: n = 10 is the first with (t_{0.975, n-1} + t_{0.8, n-1}) / sqrt(n) <= 1
    assert units_to_detect(1.0, 1.0) == 10
    assert min_detectable_effect(1 / math.sqrt(9), 8) > 1.0 >= min_detectable_effect(1 / math.sqrt(10), 9)


def test_satterthwaite_by_hand():
    from icl_lens.stats import satterthwaite_df

    # two estimates of SE 1 with 2 df each: (1 + 1)² / (1/2 + 1/2) = 4
    assert satterthwaite_df([1.0, 1.0], [2, 2]) == pytest.approx(4.0)


def test_min_equivalence_margin_by_hand():
    from icl_lens.stats import min_equivalence_margin

    # (t_{0.95, inf} + t_{0.9, inf}) · 1 = 1.644854 + 1.281552
    assert min_equivalence_margin(1.0, 1e9) == pytest.approx(2.926405, abs=1e-5)
