"""The inference behind each verdict row: an estimate per task over its seeds, pooled over tasks,
p-values adjusted within a claim's family, and the verdict.

* **Within a task** the units are the seeds: each seed's value of the claim's quantity (a mean or
  ratio over its queries) and the t interval over the seed values, ``m ± t_{(1+c)/2, n−1} · s/√n``
  (:func:`icl_lens.stats.t_interval`). Each seed value already holds its queries' noise, so the
  spread of the seed values estimates the variance of their mean whatever its source; a bootstrap
  over three seeds does not (it under-covers when the seed-to-seed spread dominates). Where the
  seeds agree exactly (s = 0) the within-seed query bootstrap SE, averaged over seeds, stands in.
  With one seed, the within-seed query bootstrap SE (df = queries − 1) is used and the row says so:
  it says nothing about how another seed would fall.
* **Proportions** (Rec2FTP, the Jaccard index) also get the exact Clopper–Pearson interval of the
  counts summed over seeds; the row's interval is the hull of the two and its p-value the larger of
  the two tests' (so a count of 0 fixes never yields the point interval [0, 0]). A ratio whose
  denominator is 0 in every seed is **undefined** (no verdict).
* **Pooled, "tasks like these"**: the tasks are a sample, a random effect: the t interval over the
  task values, df = tasks − 1. **Pooled, "these tasks"**: the tasks fixed; the mean of the task
  values with SE = √(Σ SE_t²) / T and Welch–Satterthwaite df.
* **Multiplicity**: within a family (one claim in one study: its task rows and both pooled rows;
  or one claim over the layers) the p-values are Holm-adjusted (family-wise error rate
  α = 1 − confidence); findings.json keeps the raw and the adjusted p.
* **Verdicts**: a directional claim (``>`` / ``<``) holds when its adjusted p < α and the effect
  lies on the claimed side, fails when adjusted p < α on the other side, else inconclusive; a
  "differ" claim (``≠``) holds or is inconclusive; an equivalence claim (``≈``, "comparable") holds
  when the Holm-adjusted TOST p < α against the margin the claim declares, fails when the adjusted
  non-equivalence p < α, else inconclusive. An inconclusive row states the smallest effect the run
  could have detected at 80 % power, and how many seeds (or tasks) would detect the observed one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from icl_lens.errors import ConfigError
from icl_lens.reporting.aggregate import UNDEFINED, CellDraws, Quantity, cell_draws
from icl_lens.stats import (
    binomial_p_value,
    clopper_pearson,
    holm_adjust,
    min_detectable_effect,
    min_equivalence_margin,
    satterthwaite_df,
    t_interval_of,
    t_p_value,
    tost,
    units_to_detect,
)

HOLDS, FAILS, INCONCLUSIVE, UNDEFINED_VERDICT = "holds", "fails", "inconclusive", "undefined"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)
SIDES = (">", "<", "≠", "≈")
POWER = 0.8
MULTIPLICITY = (
    "Holm step-down adjustment within each family (one claim in one study: its task rows and both pooled rows; "
    "one claim over layers), family-wise error rate α = 1 − confidence"
)

Counts = Callable[[dict[str, Any]], "tuple[int, int] | None"]


@dataclass
class Estimate:
    """A value with its standard error and degrees of freedom (None: no interval), over ``n_units``
    units (seeds, or tasks pooled) of sample sd ``unit_sd``; ``counts`` (successes, trials) summed over
    seeds where the value is a proportion (of ``scale``: 100 for a percentage)."""

    value: float | None
    se: float | None = None
    df: float | None = None
    n_seeds: int = 0
    n_units: int = 0
    unit_sd: float | None = None
    method: str = ""
    missing: str = ""
    undefined: bool = False
    counts: tuple[int, int] | None = None
    scale: float = 1.0
    unit: str = "seed"
    bounds: tuple[float, float] | None = None  # a proportion's range [0, scale]: the interval is cut to it
    tests: list[str] = field(default_factory=list)

    def interval(self, confidence: float) -> list[float] | None:
        """The t interval; for a proportion, its hull with the Clopper–Pearson interval of the counts,
        cut to the proportion's range [0, scale]."""
        if self.value is None or self.se is None or self.df is None:
            return None
        t = t_interval_of(self.value, self.se, self.df, confidence)
        low, high = t.low, t.high
        if self.counts is not None:
            cp_low, cp_high = clopper_pearson(*self.counts, confidence=confidence)
            low, high = min(low, self.scale * cp_low), max(high, self.scale * cp_high)
        if self.bounds is not None:
            low, high = max(low, self.bounds[0]), min(high, self.bounds[1])
        return [low, high]

    def p_value(self, null: float) -> float | None:
        """Two-sided p against ``null``: the t test's, or the larger of it and the exact binomial's."""
        if self.value is None or self.se is None or self.df is None:
            return None
        p = t_p_value(self.value, self.se, self.df, null)
        if self.counts is not None and 0 <= null / self.scale <= 1:
            p = max(p, binomial_p_value(*self.counts, null / self.scale))
        return p


def _per_seed_tests(described: Sequence[str | None]) -> list[str]:
    """``["exact McNemar p=0.01", "exact McNemar p=0.2"]`` -> ``["exact McNemar p=0.01, 0.2 (per seed)"]``."""
    got = [t for t in described if t]
    if len(got) < 2:
        return got
    names = {t.split(" p=")[0] for t in got}
    if len(names) != 1:
        return got
    return [f"{names.pop()} p=" + ", ".join(t.split(" p=")[1] for t in got) + " (per seed)"]


def _draws_sd(draws: np.ndarray) -> float | None:
    """Sample sd of the finite bootstrap draws (a ratio is undefined on some resamples)."""
    finite = draws[np.isfinite(draws)]
    return float(np.std(finite, ddof=1)) if finite.size > 1 else None


def _queries(results: dict[str, Any], quantity: Quantity) -> int | None:
    rows = quantity.per_example(results)
    return None if rows is None else len(rows)


def task_estimate(
    cells: Sequence[dict[str, Any]],
    quantity: Quantity,
    n_resamples: int,
    confidence: float,
    rng: np.random.Generator,
    counts: Counts | None = None,
    scale: float = 1.0,
    cell_test: Callable[[dict[str, Any]], str | None] = lambda r: None,
) -> Estimate:
    """One task's estimate over its seed cells: the t over seed values (see the module docstring)."""
    if not cells:
        return Estimate(None, missing="no cell")
    drawn = [cell_draws(r, quantity, n_resamples, rng, confidence) for r in cells]
    if any(d is None for d in drawn):
        lacking = [str(r["config"].get("seed")) for r, d in zip(cells, drawn) if d is None]
        return Estimate(None, n_seeds=len(cells), missing=f"{quantity.needs} (seed {', '.join(lacking)})")
    present: list[CellDraws] = [d for d in drawn if d is not None]
    undefined = [str(r["config"].get("seed")) for r, d in zip(cells, present) if d.method == UNDEFINED]
    kept = [(r, d) for r, d in zip(cells, present) if d.method != UNDEFINED]
    if not kept:
        return Estimate(
            None, n_seeds=len(cells), undefined=True, missing=f"{quantity.needs}: denominator 0 in every seed"
        )
    tests = _per_seed_tests([cell_test(r) for r, _ in kept])
    values = [d.value for _, d in kept]
    mean = statistics.fmean(values)
    n = len(values)
    pooled_counts = None
    if counts is not None:
        got_counts = [c for c in (counts(r) for r, _ in kept) if c is not None and c[1] > 0]
        if len(got_counts) == len(kept):
            pooled_counts = (sum(c[0] for c in got_counts), sum(c[1] for c in got_counts))
    bounds = (0.0, scale) if counts is not None else None
    left_out = f"; denominator 0 in seed {', '.join(undefined)}, left out" if undefined else ""
    exact = "; ∪ Clopper–Pearson of the counts over seeds" if pooled_counts else ""
    if n >= 2:
        sd = statistics.stdev(values)
        se, method = sd / math.sqrt(n), f"t over {n} seed values (df {n - 1})"
        if sd == 0:
            within = [w for w in (_draws_sd(d.draws) for _, d in kept if d.draws is not None) if w is not None]
            if within:
                se = math.sqrt(statistics.fmean(w * w for w in within)) / math.sqrt(n)
                method += "; the seeds agree exactly: SE from the within-seed query spread"
        return Estimate(
            mean,
            se,
            n - 1,
            n,
            n,
            sd,
            method + exact + left_out,
            counts=pooled_counts,
            scale=scale,
            tests=tests,
            bounds=bounds,
        )
    result, draws = kept[0]
    if draws.draws is None:
        return Estimate(
            mean, n_seeds=1, n_units=1, counts=pooled_counts, scale=scale, tests=tests, bounds=bounds,
            missing="interval (one seed, no per-query values or cell interval)",
        )  # fmt: skip
    queries = _queries(result, quantity)
    df = float(queries - 1) if queries and queries > 1 else math.inf
    method = (
        f"one seed: SE from the within-seed {'query bootstrap' if draws.method == 'queries' else draws.method} "
        f"(df {df:g}); says nothing of the seed-to-seed spread"
    )
    se = _draws_sd(draws.draws) or 0.0
    return Estimate(
        mean,
        se,
        df,
        1,
        1,
        None,
        method + exact + left_out,
        counts=pooled_counts,
        scale=scale,
        tests=tests,
        bounds=bounds,
    )


def _usable(tasks: dict[str, Estimate]) -> tuple[dict[str, Estimate], str, str | None]:
    """Tasks left after the undefined ones (with a note), or why the pool is missing."""
    undefined = [t for t, e in tasks.items() if e.undefined]
    kept = {t: e for t, e in tasks.items() if not e.undefined}
    note = f"; undefined on task {', '.join(undefined)}, left out" if undefined and kept else ""
    if not tasks:
        return kept, note, "no task"
    if not kept:
        return kept, note, "undefined on every task"
    lacking = [t for t, e in kept.items() if e.value is None]
    if lacking:
        what = sorted({kept[t].missing.split(" (seed")[0] for t in lacking})
        return kept, note, f"{'; '.join(what)} (task {', '.join(lacking)})"
    return kept, note, None


def pooled_random(tasks: dict[str, Estimate]) -> Estimate:
    """ "Tasks like these": t over the task values (df = tasks − 1), the tasks a random sample."""
    kept, note, missing = _usable(tasks)
    if missing:
        return Estimate(None, missing=missing, undefined=missing == "undefined on every task")
    values = [e.value for e in kept.values() if e.value is not None]  # every kept task has one (_usable)
    n_seeds = sum(e.n_seeds for e in kept.values())
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Estimate(mean, n_seeds=n_seeds, n_units=1, missing="interval: tasks as a random effect need ≥ 2 tasks")
    sd = statistics.stdev(values)
    T = len(values)
    se, method = sd / math.sqrt(T), f"tasks like these: t over {T} task values (df {T - 1})"
    if sd == 0:
        ses = [e.se for e in kept.values() if e.se is not None]
        if ses:
            se = math.sqrt(statistics.fmean(s * s for s in ses)) / math.sqrt(T)
            method += "; the tasks agree exactly: SE from the tasks' own"
    bounds = next(iter(kept.values())).bounds
    return Estimate(mean, se, T - 1, n_seeds, T, sd, method + note, unit="task", bounds=bounds)


def pooled_fixed(tasks: dict[str, Estimate]) -> Estimate:
    """ "These tasks": the mean of the task values, SE = √(Σ SE_t²) / T, Welch–Satterthwaite df;
    exact counts summed over tasks where every task has them."""
    kept, note, missing = _usable(tasks)
    if missing:
        return Estimate(None, missing=missing, undefined=missing == "undefined on every task")
    T = len(kept)
    mean = statistics.fmean(e.value for e in kept.values())  # type: ignore[misc]
    n_seeds = sum(e.n_seeds for e in kept.values())
    no_interval = [t for t, e in kept.items() if e.se is None or e.df is None]
    if no_interval:
        return Estimate(mean, n_seeds=n_seeds, n_units=T, missing=f"interval of task(s) {', '.join(no_interval)}")
    ses = [e.se / T for e in kept.values()]  # type: ignore[operator]
    dfs = [e.df for e in kept.values()]
    se = math.sqrt(sum(s * s for s in ses))
    df = satterthwaite_df(ses, dfs) if se > 0 else float(sum(dfs))  # type: ignore[arg-type]
    counts_each = [e.counts for e in kept.values() if e.counts is not None]
    counts = None
    if len(counts_each) == T:
        counts = (sum(c[0] for c in counts_each), sum(c[1] for c in counts_each))
    scale = next(iter(kept.values())).scale
    method = f"these tasks (fixed): mean of {T} task values, SE from each task's, Satterthwaite df {df:.3g}" + note
    bounds = next(iter(kept.values())).bounds
    return Estimate(mean, se, df, n_seeds, T, None, method, counts=counts, scale=scale, bounds=bounds)


# ---------------------------------------------------------------------------------------------
# Rows, multiplicity and verdicts


@dataclass
class Row:
    """One claim on one task (or pooled): effect, interval, raw and adjusted p, verdict."""

    study: str
    claim: str
    statement: str
    task: str
    verdict: str
    source: str = ""
    effect: float | None = None
    interval: list[float] | None = None
    null: float | None = None
    side: str | None = None
    margin: float | None = None
    test: str = ""
    n_seeds: int | None = None
    std: float | None = None
    se: float | None = None
    df: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    p_nonequivalence: float | None = None
    p_nonequivalence_adjusted: float | None = None
    family: str = ""
    mde: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready values: an infinite df (a normal approximation) becomes None."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out


def estimate_row(
    study: str,
    claim: str,
    statement: str,
    source: str,
    task: str,
    est: Estimate,
    null: float,
    side: str,
    confidence: float,
    margin: float | None = None,
    family: str | None = None,
    note: str = "",
) -> Row:
    """A row from an estimate, its raw p-values filled in; :func:`decide` sets the verdict after the
    family's adjustment."""
    if side not in SIDES:
        raise ConfigError(f"side must be one of {SIDES}, got {side!r}")
    if side == "≈" and not (margin and margin > 0):
        raise ConfigError(f"an equivalence claim ({claim}) needs a margin > 0")
    row = Row(
        study, claim, statement, task, "", source, est.value, None, null, side, margin,
        n_seeds=est.n_seeds or None, std=est.unit_sd, se=est.se, df=est.df,
        family=family or f"{study} / {claim}", note=note,
    )  # fmt: skip
    if est.value is None:
        row.verdict = f"{UNDEFINED_VERDICT}: {est.missing}" if est.undefined else f"missing: {est.missing or 'value'}"
        return row
    if est.se is None or est.df is None:
        row.verdict = f"missing: {est.missing or 'interval'}"
        return row
    alpha = 1 - confidence
    tests = "; ".join(filter(None, [est.method, *est.tests]))
    if side == "≈":
        eq = tost(est.value - null, est.se, est.df, margin, alpha)  # type: ignore[arg-type]
        row.interval = [null + eq.ci[0], null + eq.ci[1]]
        row.p_value, row.p_nonequivalence = eq.p_value, eq.p_nonequivalence
        row.test = f"TOST against ±{margin:g} ({100 * (1 - 2 * alpha):g} % interval); " + tests
    else:
        row.interval = est.interval(confidence)
        row.p_value = est.p_value(null)
        row.test = tests
    row.mde = _reach(est, side, alpha)
    row.note = "; ".join(filter(None, [note, _power_note(est, null, side, alpha)]))
    return row


def _reach(est: Estimate, side: str, alpha: float) -> float | None:
    if est.se is None or est.df is None:
        return None
    if side == "≈":
        return min_equivalence_margin(est.se, est.df, alpha, POWER)
    return min_detectable_effect(est.se, est.df, alpha, POWER)


def _power_note(est: Estimate, null: float, side: str, alpha: float) -> str:
    """What the run could have detected (written on every row; the verdict decides whether it matters)."""
    reach = _reach(est, side, alpha)
    if reach is None:
        return ""
    units = "tasks" if est.unit == "task" else "seeds"
    if side == "≈":
        text = f"narrowest margin confirmable at {POWER:.0%} power if the true difference were 0: ±{reach:.3g}"
        return text
    text = f"detectable |effect − null| at {POWER:.0%} power: {reach:.3g} (SE {est.se:.3g}, df {est.df:.3g})"
    if est.unit_sd is not None and est.n_units >= 2 and est.value is not None:
        needed = units_to_detect(est.value - null, est.unit_sd, alpha, POWER)
        if needed is not None and needed > est.n_units:
            text += f"; ≈{needed} {units} would detect the observed {est.value - null:+.3g}"
    return text


def decide(row: Row, alpha: float) -> str:
    """The verdict of a row whose adjusted p-values are set (see the module docstring)."""
    if row.verdict:
        return row.verdict
    if row.p_adjusted is None or row.effect is None or row.null is None:
        return "missing: interval"
    if row.side == "≈":
        if row.p_adjusted < alpha:
            return HOLDS
        if row.p_nonequivalence_adjusted is not None and row.p_nonequivalence_adjusted < alpha:
            return FAILS
        return INCONCLUSIVE
    if row.p_adjusted >= alpha or row.effect == row.null:
        return INCONCLUSIVE
    if row.side == "≠":
        return HOLDS
    above = row.effect > row.null
    return HOLDS if above == (row.side == ">") else FAILS


def adjust_and_decide(rows: Sequence[Row], alpha: float) -> None:
    """Holm-adjust the p-values within each family, then set every row's verdict (in place)."""
    families: dict[str, list[Row]] = {}
    for row in rows:
        if row.p_value is not None:
            families.setdefault(row.family, []).append(row)
    for members in families.values():
        for row, adjusted in zip(members, holm_adjust([r.p_value for r in members])):  # type: ignore[misc]
            row.p_adjusted = adjusted
        equivalence = [r for r in members if r.p_nonequivalence is not None]
        for row, adjusted in zip(equivalence, holm_adjust([r.p_nonequivalence for r in equivalence])):  # type: ignore[misc]
            row.p_nonequivalence_adjusted = adjusted
    for row in rows:
        row.verdict = decide(row, alpha)
        if row.verdict != INCONCLUSIVE:
            row.note = _drop_power(row.note)


def _drop_power(note: str) -> str:
    """The power sentence only matters on inconclusive rows."""
    parts = [p for p in note.split("; ") if not p.startswith(("detectable |effect", "≈", "narrowest margin"))]
    return "; ".join(parts)


def verdict(interval: Sequence[float] | None, null: float, side: str) -> str:
    """holds / fails / inconclusive of an interval alone: does it exclude ``null`` on the claimed
    ``side`` (``>``: the claim says the effect is above ``null``; ``<``: below)? Used where there is
    nothing to adjust (a fixed count, such as the weights' sparsity)."""
    if side not in (">", "<"):
        raise ConfigError(f"side must be '>' or '<', got {side!r}")
    if interval is None:
        return "missing: interval"
    lo, hi = float(interval[0]), float(interval[1])
    above, below = lo > null, hi < null
    if side == ">":
        return HOLDS if above else FAILS if below else INCONCLUSIVE
    return HOLDS if below else FAILS if above else INCONCLUSIVE
