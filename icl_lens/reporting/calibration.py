"""Simulated calibration of the verdict rule (:mod:`icl_lens.reporting.verdicts`): how often its 95 %
interval covers the true value, and how often it says "holds" for a claim that is false.

Each scenario draws a seeded population of studies with a known truth and applies the rule, vectorised
over replicates with the same formulas as :func:`icl_lens.reporting.verdicts.task_estimate` (t over
the seed values; the Clopper–Pearson hull for proportions), :func:`~icl_lens.reporting.verdicts.pooled_random`,
:func:`icl_lens.stats.holm_adjust` and :func:`icl_lens.stats.tost` (a test checks that they agree row by
row). Scenarios: the seed-to-seed spread dominant or the query noise dominant, with 3 and 10 seeds; a
proportion at 0, at 1 and at the null; six tasks pooled as a random effect; a family of six null tasks
with and without Holm; an equivalence claim at its margin. For comparison, the previous rule (a
two-level percentile bootstrap, seeds then queries) on the same draws.

``icl-lens findings --calibration`` and ``python experiments/verdict_calibration.py`` print the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from icl_lens.reporting.tables import Table
from icl_lens.stats import holm_adjust

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
DEFAULT_REPLICATES = 4000
QUERIES = 100


@dataclass(frozen=True)
class Scenario:
    """One simulated setting: ``draw(rng, replicates, truth)`` gives seed values [R, n_seeds] (and,
    for a proportion, the counts (k, n) [R, n_seeds] each)."""

    name: str
    n_seeds: int
    null: float
    alternative: float
    draw: Callable[..., tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]]
    bootstrap: bool = False  # also run the previous rule


@dataclass
class Outcome:
    coverage: float
    false_holds: float
    holds_alternative: float
    previous_coverage: float | None = None
    previous_false_holds: float | None = None


def _t(probability, df):
    from scipy import stats as scipy_stats

    return scipy_stats.t.ppf(probability, df)


def seed_rule(
    values: np.ndarray, null: float, counts: tuple[np.ndarray, np.ndarray] | None = None, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The within-task rule on [R, n] seed values, vectorised: (mean, low, high, p against ``null``):
    the t interval over the seeds (df n − 1), for a proportion its hull with Clopper–Pearson of the
    summed counts (cut to [0, scale]) and the larger of the t and exact binomial p-values."""
    from scipy import stats as scipy_stats

    n = values.shape[-1]
    mean = values.mean(axis=-1)
    se = values.std(axis=-1, ddof=1) / np.sqrt(n)
    half = _t(0.5 + CONFIDENCE / 2, n - 1) * se
    low, high = mean - half, mean + half
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.abs(mean - null) / se
    p = np.where(se > 0, 2 * scipy_stats.t.sf(statistic, n - 1), np.where(mean == null, 1.0, 0.0))
    if counts is not None:
        k, trials = counts[0].sum(axis=-1), counts[1].sum(axis=-1)
        cp_low = np.where(k == 0, 0.0, scipy_stats.beta.ppf(ALPHA / 2, np.maximum(k, 1), trials - k + 1))
        cp_high = np.where(k == trials, 1.0, scipy_stats.beta.ppf(1 - ALPHA / 2, k + 1, np.maximum(trials - k, 1)))
        low = np.maximum(np.minimum(low, scale * cp_low), 0.0)
        high = np.minimum(np.maximum(high, scale * cp_high), scale)
        tail = np.minimum(
            scipy_stats.binom.cdf(k, trials, null / scale), scipy_stats.binom.sf(k - 1, trials, null / scale)
        )
        p = np.maximum(p, np.minimum(1.0, 2 * tail))
    return mean, low, high, p


def previous_rule(queries: np.ndarray, rng: np.random.Generator, resamples: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """The rule this replaces, on [R, n, m] per-query values: resample the seeds, then (a normal
    approximation of) each drawn seed's query bootstrap, average, take the percentile interval."""
    replicates, n, m = queries.shape
    seed_means = queries.mean(axis=-1)
    seed_se = queries.std(axis=-1, ddof=1) / np.sqrt(m)
    picks = rng.integers(n, size=(replicates, resamples, n))
    rows = np.arange(replicates)[:, None, None]
    drawn = seed_means[rows, picks] + seed_se[rows, picks] * rng.standard_normal((replicates, resamples, n))
    draws = drawn.mean(axis=-1)
    return np.percentile(draws, 100 * ALPHA / 2, axis=1), np.percentile(draws, 100 * (1 - ALPHA / 2), axis=1)


def hierarchical_draws(seed_sd: float, query_sd: float, n_seeds: int, queries: int = QUERIES):
    """Seed values of a mean over ``queries`` queries: truth + a seed effect (SD ``seed_sd``) + query
    noise (SD ``query_sd``); with ``keep_queries`` the [R, n_seeds, queries] values themselves."""

    def draw(rng: np.random.Generator, replicates: int, truth: float, keep_queries: bool = False):
        seeds = truth + seed_sd * rng.standard_normal((replicates, n_seeds, 1))
        per_query = seeds + query_sd * rng.standard_normal((replicates, n_seeds, queries))
        return (per_query if keep_queries else per_query.mean(axis=-1)), None

    return draw


def proportion_draws(trials_mean: float, n_seeds: int):
    """Rec2FTP-like: per seed a few fixes (Poisson + 1), each recovered with the true probability."""

    def draw(rng: np.random.Generator, replicates: int, truth: float, keep_queries: bool = False):
        trials = rng.poisson(trials_mean, (replicates, n_seeds)) + 1
        k = rng.binomial(trials, truth / 100.0)
        return 100.0 * k / trials, (k, trials)

    return draw


SCENARIOS = (
    Scenario("seed spread dominant (seed SD 0.12, query SD 0.3)", 3, 0.0, 0.3, hierarchical_draws(0.12, 0.3, 3), True),
    Scenario("seed spread dominant (seed SD 0.12, query SD 0.3)", 10, 0.0, 0.3, hierarchical_draws(0.12, 0.3, 10)),
    Scenario("query noise dominant (seed SD 0.01, query SD 1)", 3, 0.0, 0.3, hierarchical_draws(0.01, 1.0, 3), True),
    Scenario("query noise dominant (seed SD 0.01, query SD 1)", 10, 0.0, 0.3, hierarchical_draws(0.01, 1.0, 10)),
    Scenario("proportion (Rec2FTP %, ~6 fixes a seed), truth 0 vs null 50", 3, 50.0, 0.0, proportion_draws(5, 3)),
    Scenario("proportion (Rec2FTP %, ~6 fixes a seed), truth 100 vs null 50", 3, 50.0, 100.0, proportion_draws(5, 3)),
    Scenario("proportion (Rec2FTP %, ~6 fixes a seed), truth 100 vs null 50", 10, 50.0, 100.0, proportion_draws(5, 10)),
    Scenario("proportion (Rec2FTP %, ~6 fixes a seed), truth 90 vs null 50", 3, 50.0, 90.0, proportion_draws(5, 3)),
)


def run_scenario(scenario: Scenario, replicates: int, seed: int) -> Outcome:
    """Coverage (of the true value, both under the null and the alternative), the share of "holds"
    when the truth equals the null (a false claim) and when it is the alternative."""
    rng = np.random.default_rng([seed, scenario.n_seeds, len(scenario.name)])
    covered = []
    holds = {}
    previous: dict[str, float] = {}
    scale = 100.0 if "proportion" in scenario.name else 1.0
    for label, truth in (("null", scenario.null), ("alternative", scenario.alternative)):
        values, counts = scenario.draw(rng, replicates, truth)
        mean, low, high, p = seed_rule(values, scenario.null, counts, scale)
        covered.append((low <= truth) & (truth <= high))
        holds[label] = float(((p < ALPHA) & (mean > scenario.null)).mean())
        if scenario.bootstrap and label == "null":
            queries, _ = scenario.draw(rng, replicates // 4, truth, keep_queries=True)
            old_low, old_high = previous_rule(queries, rng)
            previous["coverage"] = float(((old_low <= truth) & (truth <= old_high)).mean())
            previous["false_holds"] = float((old_low > scenario.null).mean())
    return Outcome(
        float(np.concatenate(covered).mean()),
        holds["null"],
        holds["alternative"],
        previous.get("coverage"),
        previous.get("false_holds"),
    )


def pooled_random_effect(replicates: int, seed: int, tasks: int = 6, task_sd: float = 0.1) -> dict[str, float]:
    """Six tasks, their true effects a random sample (SD ``task_sd``) around 0, three seeds each (seed
    SD 0.05, query SD 0.3): coverage of the population mean by 'tasks like these' (t over task values,
    df 5) and by 'these tasks' (fixed), and their false-"holds" rates for "the mean is above 0"."""
    from scipy import stats as scipy_stats

    rng = np.random.default_rng([seed, 17])
    effects = task_sd * rng.standard_normal((replicates, tasks, 1))
    values = effects + 0.05 * rng.standard_normal((replicates, tasks, 3))
    values = values + 0.3 * rng.standard_normal((replicates, tasks, 3)) / np.sqrt(QUERIES)
    task_means = values.mean(axis=-1)
    task_se = values.std(axis=-1, ddof=1) / np.sqrt(3)
    _, low, high, p = seed_rule(task_means, 0.0)
    mean = task_means.mean(axis=-1)
    fixed_se = np.sqrt((task_se**2).sum(axis=-1)) / tasks
    df = (task_se**2).sum(axis=-1) ** 2 / ((task_se**4) / 2).sum(axis=-1)
    half = scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df) * fixed_se
    return {
        "random coverage": float(((low <= 0) & (0 <= high)).mean()),
        "random false holds": float(((p < ALPHA) & (task_means.mean(axis=-1) > 0)).mean()),
        "fixed coverage": float(((mean - half <= 0) & (0 <= mean + half)).mean()),
        "fixed false holds": float((mean - half > 0).mean()),
    }


def holm_family(replicates: int, seed: int, tasks: int = 6) -> dict[str, float]:
    """A family of six tasks where the claim is false on every one (3 seeds each, seed spread
    dominant): the share of replicates with at least one "holds", raw and Holm-adjusted."""
    rng = np.random.default_rng([seed, 29])
    draw = hierarchical_draws(0.12, 0.3, 3)
    means, ps = [], []
    for _ in range(tasks):
        values, _ = draw(rng, replicates, 0.0)
        mean, _, _, p = seed_rule(values, 0.0)
        means.append(mean)
        ps.append(p)
    mean_array, p_array = np.stack(means, axis=1), np.stack(ps, axis=1)
    adjusted = np.asarray([holm_adjust(row) for row in p_array])
    return {
        "raw": float(((p_array < ALPHA) & (mean_array > 0)).any(axis=1).mean()),
        "holm": float(((adjusted < ALPHA) & (mean_array > 0)).any(axis=1).mean()),
    }


def equivalence_at_margin(replicates: int, seed: int, margin: float = 0.05, n_seeds: int = 5) -> dict[str, float]:
    """TOST of "comparable within ±margin" on paired seed differences (seed SD 0.03): the share of
    "holds" when the true difference sits on the margin (a false claim) and when it is 0."""
    from scipy import stats as scipy_stats

    rng = np.random.default_rng([seed, 31])
    out = {}
    for label, truth in (("at margin", margin), ("at 0", 0.0)):
        values = truth + 0.03 * rng.standard_normal((replicates, n_seeds))
        mean, se = values.mean(axis=1), values.std(axis=1, ddof=1) / np.sqrt(n_seeds)
        p_lower = scipy_stats.t.sf((mean + margin) / se, n_seeds - 1)
        p_upper = scipy_stats.t.cdf((mean - margin) / se, n_seeds - 1)
        out[label] = float((np.maximum(p_lower, p_upper) < ALPHA).mean())
    return out


def _binomial_se(rate: float, replicates: int) -> float:
    return float(np.sqrt(max(rate * (1 - rate), 0.05 * 0.95) / replicates))


def calibration_table(replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> Table:
    """The simulation as a table (percentages; each with its simulation SE ≈ √(p(1−p)/replicates))."""
    rows = []
    for scenario in SCENARIOS:
        o = run_scenario(scenario, replicates, seed)
        previous = (
            "–"
            if o.previous_coverage is None
            else f"{100 * o.previous_coverage:.1f} / {100 * o.previous_false_holds:.1f}"  # type: ignore[operator]
        )
        rows.append(
            [
                scenario.name,
                str(scenario.n_seeds),
                f"{100 * o.coverage:.1f}",
                f"{100 * o.false_holds:.1f}",
                f"{100 * o.holds_alternative:.1f}",
                previous,
            ]
        )
    pooled = pooled_random_effect(replicates, seed)
    rows.append(
        [
            "six tasks, task SD 0.1 dominant: tasks like these (t over tasks, df 5)",
            "3 per task",
            f"{100 * pooled['random coverage']:.1f}",
            f"{100 * pooled['random false holds']:.1f}",
            "–",
            f"these tasks (fixed): {100 * pooled['fixed coverage']:.1f} / {100 * pooled['fixed false holds']:.1f}",
        ]
    )
    family = holm_family(replicates, seed)
    rows.append(
        [
            "family of six false claims (seed spread dominant): any 'holds'",
            "3 per task",
            "–",
            f"{100 * family['holm']:.1f} (Holm)",
            "–",
            f"unadjusted: {100 * family['raw']:.1f}",
        ]
    )
    tost_rates = equivalence_at_margin(replicates, seed)
    rows.append(
        [
            "equivalence (TOST, margin ±0.05, seed SD 0.03): truth at the margin / at 0",
            "5",
            "–",
            f"{100 * tost_rates['at margin']:.1f}",
            f"{100 * tost_rates['at 0']:.1f}",
            "–",
        ]
    )
    header = [
        "scenario",
        "seeds",
        "coverage %",
        "false 'holds' %",
        "'holds' % (alternative)",
        "previous rule: coverage / false 'holds' %",
    ]
    simulation_se = 100 * _binomial_se(0.05, replicates)
    caption = (
        f"{replicates} replicates a scenario, seed {seed}; 95 % intervals; simulation SE ≈ {simulation_se:.2f} points "
        "at 95 % and at 5 %. False 'holds': the truth equals the null and the rule says the claim (effect above it) "
        "holds. Coverage: of the true value, under the null and the alternative together."
    )
    return Table(header, rows, caption=caption)


def calibration_markdown(replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> str:
    """:func:`calibration_table` as markdown with its caption."""
    table = calibration_table(replicates, seed)
    return f"### Calibration of the verdict rule\n\n{table.caption}\n\n{table.markdown()}\n"
