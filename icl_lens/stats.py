"""Uncertainty within one cell and paired tests on the same queries.

- :func:`resample_indices`: the seeded bootstrap resamples of a cell's queries (drawn once and
  reused for every statistic of the cell, so all its intervals come from the same resamples);
- :func:`bootstrap_interval`: percentile bootstrap interval of a mean (or any statistic) over
  examples, for 1-d per-example values or [n_examples, n_layers] per-layer values;
- :func:`bootstrap_statistic`: the interval of a statistic that is not a mean (Rec2FTP, Jaccard),
  recomputed on every resample from a function of example indices;
- :func:`mcnemar_exact`: exact McNemar test of two settings' correctness on the same queries;
- :func:`paired_bootstrap`: difference of two per-example metrics, its interval and p-value;
- :func:`derangement`: a seeded permutation without fixed points (the shuffled-pair null);
- :func:`t_interval`, :func:`holm_adjust`, :func:`tost`, :func:`clopper_pearson`,
  :func:`min_detectable_effect`: the verdicts' inference over seeds and tasks (formulas in each docstring).

Percentile bootstrap (Efron & Tibshirani 1993, §13.3): resample the n queries with replacement
B times, compute the statistic on each resample, and report the (1−c)/2 and (1+c)/2 quantiles.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from icl_lens.errors import MetricInputError

logger = logging.getLogger(__name__)

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
METHOD = "percentile bootstrap over queries"


def _check_settings(n_resamples: int, confidence: float) -> None:
    if int(n_resamples) < 1:
        raise MetricInputError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise MetricInputError(f"confidence must lie in (0, 1), got {confidence}")


def resample_indices(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[n_resamples, n] example indices drawn with replacement from a ``numpy`` generator seeded
    with ``seed``: the same (n, n_resamples, seed) always gives the same resamples."""
    if n < 1:
        raise MetricInputError(f"a bootstrap needs at least one example, got n = {n}")
    _check_settings(n_resamples, 0.5)
    return np.random.default_rng(int(seed)).integers(0, n, size=(int(n_resamples), n))


def percentile_interval(samples: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> list[Any]:
    """[low, high]: the (1−c)/2 and (1+c)/2 quantiles of bootstrap samples along axis 0, NaN
    resamples ignored (a ratio undefined on some resamples); [nan, nan] if every one is NaN. For 2-d
    samples, one [low, high] per column."""
    samples = np.asarray(samples, dtype=np.float64)
    tail = 100 * (1 - confidence) / 2
    if samples.ndim == 1 and np.isnan(samples).all():
        return [math.nan, math.nan]
    with warnings.catch_warnings():  # an all-NaN column gives NaN, which is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    if samples.ndim == 1:
        return [float(low), float(high)]
    return np.stack([low, high], axis=-1).tolist()


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval of a mean over examples.

    For per-layer values, ``value``/``low``/``high`` are of the mean over layers and
    ``per_layer``/``per_layer_ci`` give each layer's mean and interval; for 1-d values the
    per-layer fields are None.
    """

    value: float
    low: float
    high: float
    per_layer: list[float] | None = None
    per_layer_ci: list[list[float]] | None = None

    @property
    def ci(self) -> list[float]:
        return [self.low, self.high]


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[..., np.ndarray] = np.mean,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    indices: np.ndarray | None = None,
) -> Interval:
    """Percentile bootstrap interval over examples of ``statistic`` (default: the mean).

    Args:
        values: per-example values, [n] or [n, n_layers] (then every layer gets its interval and
            the mean over layers gets one too, from the same resamples).
        statistic: reduces axis 0 (``statistic(array, axis=0)``), e.g. ``np.mean``, ``np.median``.
        n_resamples, confidence, seed: the bootstrap (ignored ``n_resamples``/``seed`` when
            ``indices`` is given).
        indices: precomputed [n_resamples, n] resamples (:func:`resample_indices`), so that
            several statistics of one cell share them.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[0] == 0:
        raise MetricInputError(f"bootstrap_interval expects [n] or [n, n_layers] values, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise MetricInputError("bootstrap_interval: the per-example values hold NaN or infinite entries")
    _check_settings(n_resamples, confidence)
    if indices is None:
        indices = resample_indices(array.shape[0], n_resamples, seed)
    _check_indices(indices, array.shape[0])
    resampled = _resampled_statistic(array, statistic, indices)  # [B] or [B, n_layers]
    point = statistic(array, axis=0)
    if array.ndim == 1:
        low, high = percentile_interval(resampled, confidence)
        return Interval(float(point), low, high)
    layer_mean = resampled.mean(axis=1)
    low, high = percentile_interval(layer_mean, confidence)
    return Interval(
        float(point.mean()), low, high, [float(v) for v in point], percentile_interval(resampled, confidence)
    )


def resample_counts(indices: np.ndarray) -> np.ndarray:
    """[n_resamples, n]: how often each example occurs in each resample."""
    n_resamples, n = indices.shape
    offsets = (np.arange(n_resamples)[:, None] * n + indices).ravel()
    return np.bincount(offsets, minlength=n_resamples * n).reshape(n_resamples, n)


_GATHER_BUDGET = 2**22
"""Most values one chunk of a non-mean statistic gathers at a time (32 MiB of float64)."""


def _resampled_statistic(array: np.ndarray, statistic: Callable[..., np.ndarray], indices: np.ndarray) -> np.ndarray:
    """``statistic`` of every resample. The mean is a product with the resample counts, so a
    [1000, 2000, 18] gather is never built; other statistics gather in chunks of resamples."""
    if statistic is np.mean:
        return resample_counts(indices) @ array / array.shape[0]
    per_resample = max(1, array.size)
    chunk = max(1, _GATHER_BUDGET // per_resample)
    return np.concatenate([statistic(array[indices[i : i + chunk]], axis=1) for i in range(0, indices.shape[0], chunk)])


def _check_indices(indices: np.ndarray, n: int) -> None:
    if indices.ndim != 2 or indices.shape[1] != n:
        raise MetricInputError(f"resample indices must be [n_resamples, {n}], got shape {indices.shape}")


def bootstrap_statistic(
    statistic: Callable[[np.ndarray], float],
    n: int,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    indices: np.ndarray | None = None,
) -> list[float]:
    """Interval of a statistic that is not a mean over examples (Rec2FTP, Jaccard): the examples
    are resampled and ``statistic(index_array)`` recomputed on each resample. Resamples on which
    the statistic is undefined (NaN, e.g. Rec2FTP with no FT fix) are left out."""
    _check_settings(n_resamples, confidence)
    if indices is None:
        indices = resample_indices(n, n_resamples, seed)
    _check_indices(indices, n)
    samples = np.array([statistic(row) for row in indices], dtype=np.float64)
    return percentile_interval(samples, confidence)


def bootstrap_ratio(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    indices: np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[float]:
    """Interval of a ratio of sums over examples, Σ numerator_i / Σ denominator_i (Rec2FTP and the
    Jaccard index are such ratios of per-example indicators), recomputed on every resample.
    Resamples with a zero denominator (ratio undefined) are left out; [nan, nan] if all are."""
    num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    if num.ndim != 1 or num.shape != den.shape or num.size == 0:
        raise MetricInputError(
            f"bootstrap_ratio needs two non-empty 1-d arrays of one length, got {num.shape}, {den.shape}"
        )
    _check_indices(indices, num.size)
    counts = resample_counts(indices)
    num_sums, den_sums = counts @ num, counts @ den
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(den_sums != 0, num_sums / np.where(den_sums != 0, den_sums, 1), np.nan)
    return percentile_interval(ratios, confidence)


def mcnemar_exact(correct_a: Sequence[int] | np.ndarray, correct_b: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of two settings scored on the same queries.

    b = #(a right, b wrong), c = #(a wrong, b right); under H0 each discordant pair is equally
    likely either way, so with X ~ Bin(b + c, 1/2): p = min(1, 2·P(X ≤ min(b, c))), and p = 1
    when there is no discordant pair.
    """
    a, b_arr = _paired_bool(correct_a, correct_b)
    b = int((a & ~b_arr).sum())
    c = int((~a & b_arr).sum())
    return {"test": "mcnemar_exact", "b": b, "c": c, "p_value": mcnemar_p_value(b, c)}


def mcnemar_p_value(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of discordant counts b and c (see :func:`mcnemar_exact`)."""
    if b < 0 or c < 0:
        raise MetricInputError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def _paired_bool(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise MetricInputError(f"paired tests need two non-empty 1-d arrays of one length, got {a.shape} and {b.shape}")
    return a.astype(bool), b.astype(bool)


def paired_bootstrap(
    values_a: Sequence[float] | np.ndarray,
    values_b: Sequence[float] | np.ndarray,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    indices: np.ndarray | None = None,
) -> dict[str, Any]:
    """Paired bootstrap over examples of mean(a) − mean(b) (a and b on the same examples).

    The interval is the percentile interval of the resampled differences; the two-sided p-value
    is p = min(1, 2·(1 + #{d* on the far side of 0}) / (B + 1)), where the far side is the
    smaller of #{d* ≤ 0} and #{d* ≥ 0} (the +1 keeps p > 0 with finitely many resamples).
    """
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise MetricInputError(
            f"paired_bootstrap needs two non-empty 1-d arrays of one length, got {a.shape}, {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise MetricInputError("paired_bootstrap: the per-example values hold NaN or infinite entries")
    _check_settings(n_resamples, confidence)
    if indices is None:
        indices = resample_indices(a.size, n_resamples, seed)
    _check_indices(indices, a.size)
    diff = a - b
    resampled = resample_counts(indices) @ diff / diff.size
    far = min(int((resampled <= 0).sum()), int((resampled >= 0).sum()))
    p_value = min(1.0, 2.0 * (1 + far) / (resampled.size + 1))
    return {
        "test": "paired_bootstrap",
        "difference": float(diff.mean()),
        "ci": percentile_interval(resampled, confidence),
        "p_value": p_value,
    }


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A seeded uniformly random permutation of range(n) with no fixed point (π(i) ≠ i).

    Drawn by rejection (about e ≈ 2.72 draws on average). n < 2 has no derangement: an error.
    """
    if n < 2:
        raise MetricInputError(f"a derangement needs n >= 2 elements, got n = {n}")
    rng = np.random.default_rng(int(seed))
    identity = np.arange(n)
    while True:
        permutation = rng.permutation(n)
        if not (permutation == identity).any():
            return permutation


# ---------------------------------------------------------------------------------------------
# Inference over seeds and tasks, multiplicity, equivalence, exact proportions, power


@dataclass(frozen=True)
class TInterval:
    """A mean over independent units (seeds, tasks) with its standard error, degrees of freedom and
    the ``confidence`` t interval ``[low, high]``."""

    mean: float
    se: float
    df: float
    low: float
    high: float

    @property
    def ci(self) -> list[float]:
        return [self.low, self.high]


def t_quantile(probability: float | np.ndarray, df: float | np.ndarray) -> Any:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom (vectorised)."""
    from scipy import stats as scipy_stats

    return scipy_stats.t.ppf(probability, df)


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> TInterval:
    """t interval of the mean of n ≥ 2 independent units (seed means within a task, task means pooled).

        m = Σ x_i / n,  s² = Σ (x_i − m)² / (n − 1),  SE = s / √n,  m ± t_{(1+c)/2, n−1} · SE

    The units are the seeds (or tasks), not the queries: each seed's mean already holds its queries'
    noise, so the spread of the seed means estimates the variance of their mean whatever its source.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < 2:
        raise MetricInputError(f"a t interval needs at least two values, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise MetricInputError("t_interval: the values hold NaN or infinite entries")
    _check_settings(1, confidence)
    mean, se = float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))
    return t_interval_of(mean, se, x.size - 1, confidence)


def t_interval_of(mean: float, se: float, df: float, confidence: float = DEFAULT_CONFIDENCE) -> TInterval:
    """``mean ± t_{(1+c)/2, df} · se`` (see :func:`t_interval`)."""
    if se < 0 or not df > 0:
        raise MetricInputError(f"need se >= 0 and df > 0, got se={se}, df={df}")
    half = float(t_quantile(0.5 + confidence / 2, df)) * se
    return TInterval(mean, se, float(df), mean - half, mean + half)


def t_p_value(estimate: float, se: float, df: float, null: float = 0.0) -> float:
    """Two-sided p-value of ``estimate`` against ``null``: 2 · P(T_df ≥ |estimate − null| / se).
    With se = 0 the statistic is infinite (p = 0) unless estimate = null (p = 1)."""
    from scipy import stats as scipy_stats

    if se == 0:
        return 1.0 if estimate == null else 0.0
    return float(min(1.0, 2 * scipy_stats.t.sf(abs(estimate - null) / se, df)))


def satterthwaite_df(ses: Sequence[float], dfs: Sequence[float]) -> float:
    """Welch–Satterthwaite degrees of freedom of a sum of independent estimates with standard errors
    ``ses`` and degrees of freedom ``dfs``: (Σ se_i²)² / Σ (se_i⁴ / df_i)."""
    se2 = np.asarray(ses, dtype=np.float64) ** 2
    dfs_array = np.asarray(dfs, dtype=np.float64)
    denominator = float((se2**2 / dfs_array).sum())
    if denominator == 0:
        return float(dfs_array.sum())
    return float(se2.sum() ** 2 / denominator)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), controlling the family-wise error rate.

    With the m p-values sorted, p_(1) ≤ … ≤ p_(m): adj_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)),
    returned in the input's order. Rejecting where adj < α rejects exactly what Holm's procedure does.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise MetricInputError(f"holm_adjust expects a 1-d list of p-values, got shape {p.shape}")
    if ((p < 0) | (p > 1) | ~np.isfinite(p)).any():
        raise MetricInputError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests (TOST) of |effect| < margin and the test of |effect| > margin."""

    p_value: float  # TOST: max of the two one-sided p-values; < α shows equivalence
    p_lower: float  # H0: effect ≤ −margin
    p_upper: float  # H0: effect ≥ +margin
    p_nonequivalence: float  # two-sided test that the effect lies outside [−margin, margin]
    ci: list[float]  # the (1 − 2α) interval whose inclusion in (−margin, margin) is the TOST


def tost(estimate: float, se: float, df: float, margin: float, alpha: float = 1 - DEFAULT_CONFIDENCE) -> Equivalence:
    """Two one-sided t tests of equivalence within ±``margin`` (Schuirmann 1987).

        p_lower = P(T_df ≥ (d + margin) / se),  p_upper = P(T_df ≤ (d − margin) / se),
        p_TOST = max(p_lower, p_upper)

    p_TOST < α iff the (1 − 2α) interval d ± t_{1−α, df} · se lies inside (−margin, margin). The
    non-equivalence p-value, 2 · min(P(T ≥ (d − margin)/se), P(T ≤ (d + margin)/se)), is < α iff the
    (1 − α) interval lies wholly beyond one of the margins.
    """
    from scipy import stats as scipy_stats

    if not margin > 0:
        raise MetricInputError(f"an equivalence margin must be > 0, got {margin}")
    if se < 0 or not df > 0:
        raise MetricInputError(f"need se >= 0 and df > 0, got se={se}, df={df}")
    if se == 0:
        inside = -margin < estimate < margin
        p_lower = 0.0 if estimate > -margin else 1.0
        p_upper = 0.0 if estimate < margin else 1.0
        return Equivalence(max(p_lower, p_upper), p_lower, p_upper, 1.0 if inside else 0.0, [estimate, estimate])
    p_lower = float(scipy_stats.t.sf((estimate + margin) / se, df))
    p_upper = float(scipy_stats.t.cdf((estimate - margin) / se, df))
    above = float(scipy_stats.t.sf((estimate - margin) / se, df))
    below = float(scipy_stats.t.cdf((estimate + margin) / se, df))
    beyond = 2 * min(above, below)
    half = float(t_quantile(1 - alpha, df)) * se
    return Equivalence(max(p_lower, p_upper), p_lower, p_upper, min(1.0, beyond), [estimate - half, estimate + half])


def clopper_pearson(successes: int, trials: int, confidence: float = DEFAULT_CONFIDENCE) -> list[float]:
    """Exact (Clopper–Pearson 1934) interval of a binomial proportion k / n:

        low = B_{α/2}(k, n − k + 1)  (0 when k = 0),  high = B_{1−α/2}(k + 1, n − k)  (1 when k = n)

    with B_q(a, b) the q quantile of the Beta(a, b) distribution and α = 1 − confidence.
    """
    from scipy import stats as scipy_stats

    k, n = int(successes), int(trials)
    if n < 1 or not 0 <= k <= n:
        raise MetricInputError(f"Clopper-Pearson needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    _check_settings(1, confidence)
    alpha = 1 - confidence
    low = 0.0 if k == 0 else float(scipy_stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(scipy_stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return [low, high]


def binomial_p_value(successes: int, trials: int, null: float) -> float:
    """Two-sided exact binomial p-value of k successes in n against proportion ``null``, the one
    the Clopper–Pearson interval inverts: min(1, 2 · min(P(X ≤ k), P(X ≥ k))), X ~ Bin(n, null)."""
    from scipy import stats as scipy_stats

    k, n = int(successes), int(trials)
    if n < 1 or not 0 <= k <= n or not 0 <= null <= 1:
        raise MetricInputError(f"binomial test needs 0 <= k <= n, n >= 1, null in [0, 1]; got {k}, {n}, {null}")
    tail = min(float(scipy_stats.binom.cdf(k, n, null)), float(scipy_stats.binom.sf(k - 1, n, null)))
    return min(1.0, 2 * tail)


def min_detectable_effect(se: float, df: float, alpha: float = 1 - DEFAULT_CONFIDENCE, power: float = 0.8) -> float:
    """Smallest true |effect − null| a two-sided level-α t test with this standard error and df
    detects with probability ``power``: (t_{1−α/2, df} + t_{power, df}) · se."""
    if se < 0 or not df > 0 or not 0 < power < 1 or not 0 < alpha < 1:
        raise MetricInputError(f"need se >= 0, df > 0, alpha and power in (0, 1); got {se}, {df}, {alpha}, {power}")
    return float((t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * se)


def units_to_detect(
    effect: float, sd: float, alpha: float = 1 - DEFAULT_CONFIDENCE, power: float = 0.8, most: int = 1000
) -> int | None:
    """Fewest units n (seeds, tasks) with :func:`min_detectable_effect`(sd / √n, n − 1) ≤ |effect|:
    how many seeds would detect an effect of this size given this seed-to-seed sd; None beyond ``most``."""
    if effect == 0 or not math.isfinite(effect) or not math.isfinite(sd):
        return None
    if sd == 0:
        return 2
    for n in range(2, most + 1):
        if min_detectable_effect(sd / math.sqrt(n), n - 1, alpha, power) <= abs(effect):
            return n
    return None


def min_equivalence_margin(se: float, df: float, alpha: float = 1 - DEFAULT_CONFIDENCE, power: float = 0.8) -> float:
    """Narrowest margin :func:`tost` at level α confirms with probability ``power`` when the true
    difference is 0: (t_{1−α, df} + t_{1−(1−power)/2, df}) · se (each one-sided test needs
    margin/se − t_{1−α} ≥ t_{1−(1−power)/2} for both to pass together with that power)."""
    if se < 0 or not df > 0 or not 0 < power < 1 or not 0 < alpha < 1:
        raise MetricInputError(f"need se >= 0, df > 0, alpha and power in (0, 1); got {se}, {df}, {alpha}, {power}")
    return float((t_quantile(1 - alpha, df) + t_quantile(1 - (1 - power) / 2, df)) * se)
