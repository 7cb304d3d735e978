"""Across-seed aggregation of cell results and the markdown tables of Tables 1–2, beside the
reference numbers (Dai et al. 2023, Tables 1–2).

Each scalar is summarised over seeds by its mean, its *sample* standard deviation (÷ (n − 1)) and
a two-level percentile bootstrap interval: resample the seeds with replacement, then the queries
within each drawn seed, recompute the statistic, average over the drawn seeds
(:func:`two_level_draws`). A cell without per-example values contributes a normal approximation
of its own interval when it has one (``ci``), else only its value (the interval then resamples
seeds alone).
"""

from __future__ import annotations

import math
import statistics
import warnings
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from icl_lens.cell.results import (
    SETTINGS,
    accuracy,
    accuracy_interval,
    dig,
    metric_interval,
    metric_path,
    metric_value,
    per_example,
    precision_of,
)
from icl_lens.errors import ConfigError
from icl_lens.papers import REFERENCE_ACCURACY, REFERENCE_SIMILARITY
from icl_lens.reporting.tables import Table, format_interval, format_mean_std

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95

# Scalar summaries pulled out of one cell's results: name -> getter.
SCALARS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    **{f"acc_{s}": partial(accuracy, setting=s) for s in SETTINGS},
    **{name: partial(metric_value, setting="ft", metric=name) for name in ("rec2ftp", "jaccard")},
    **{name: partial(metric_value, setting="ft", metric=name) for name in ("jaccard_correct", "jaccard_incorrect")},
    "simaou_ft": lambda r: metric_value(r, "ft", "simaou"),
    "simaou_lcgd": lambda r: metric_value(r, "lcgd", "simaou"),
    "simaou_random": lambda r: metric_value(r, None, "simaou_random"),
    "simam_ft": lambda r: metric_value(r, "ft", "simam"),
    "simam_lcgd": lambda r: metric_value(r, "lcgd", "simam"),
    "simam_zsl": lambda r: metric_value(r, None, "simam_zsl"),
    "simam_delta_ft": lambda r: metric_value(r, "ft", "simam_delta"),
    "simam_delta_lcgd": lambda r: metric_value(r, "lcgd", "simam_delta"),
    "alpha": lambda r: metric_value(r, None, "alpha"),
    "lr": lambda r: dig(r, "lr", "lr"),
    "k_used": lambda r: dig(r, "prompts", "k_used"),
}


# ---------------------------------------------------------------------------------------------
# Per-example inputs and the two-level bootstrap


def correct_flags(results: dict[str, Any], setting: str) -> np.ndarray | None:
    """Per-query 0/1 correctness of ``setting``: ``per_example.correct``, else from ``examples``."""
    flags = per_example(results, setting, "correct")
    if flags is not None:
        return np.asarray(flags, dtype=float)
    examples = results.get("examples")
    if not examples or any(setting not in (e.get("prediction") or {}) for e in examples):
        return None
    return np.asarray([float(e["prediction"][setting] == e["label"]) for e in examples])


def predictions(results: dict[str, Any], settings: Sequence[str]) -> np.ndarray | None:
    """[n, len(settings) + 1] array: each setting's predicted class, then the label (from ``examples``)."""
    examples = results.get("examples")
    if not examples or any(s not in (e.get("prediction") or {}) for e in examples for s in settings):
        return None
    return np.asarray([[e["prediction"][s] for s in settings] + [e["label"]] for e in examples], dtype=float)


def layer_means(rows: Sequence[Sequence[float | None]] | None) -> np.ndarray | None:
    """Per-query mean over layers of ``[query][layer]`` values (None and NaN layers skipped)."""
    if not rows:
        return None
    values = np.asarray([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    with warnings.catch_warnings():  # an all-NaN row stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=1)


def layer_mean_per_example(results: dict[str, Any], setting: str | None, metric: str) -> np.ndarray | None:
    """Per-query mean over layers of a per-layer metric in ``per_example`` (NaN layers skipped);
    ``setting`` None for the cell's own metrics (α, ZSL SimAM, the random baseline)."""
    return layer_means(per_example(results, setting, metric))


def column_mean(samples: np.ndarray) -> np.ndarray:
    """Statistic of ``[..., n, m]`` resampled rows: the mean of column 0 minus column 1 if there
    are two columns (a paired difference), else of column 0."""
    values = samples[..., 0] - samples[..., 1] if samples.shape[-1] == 2 else samples[..., 0]
    return values.mean(axis=-1)


@dataclass(frozen=True)
class Quantity:
    """One number per cell, and how to resample it over queries.

    Args:
        per_example: the cell's ``[n, m]`` per-query inputs of ``statistic`` (None: not recorded).
        statistic: maps resampled rows ``[..., n, m]`` to the statistic ``[...]`` (vectorised).
        value: the cell's value when per-query inputs are missing (None: missing).
        interval: the cell's own interval of the value (None: none recorded).
        needs: what is missing when neither gives a value (said as "missing: <needs>").
    """

    per_example: Callable[[dict[str, Any]], np.ndarray | Sequence[Any] | None]
    value: Callable[[dict[str, Any]], float | None]
    statistic: Callable[[np.ndarray], np.ndarray] = column_mean
    interval: Callable[[dict[str, Any]], Sequence[float] | None] = lambda r: None
    needs: str = "value"


@dataclass
class CellDraws:
    """A cell's value and ``n_resamples`` bootstrap draws of it (None: no way to resample it)."""

    value: float
    draws: np.ndarray | None
    method: str


UNDEFINED = "undefined"


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _z(confidence: float) -> float:
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def cell_draws(
    results: dict[str, Any],
    quantity: Quantity,
    n_resamples: int,
    rng: np.random.Generator,
    confidence: float = DEFAULT_CONFIDENCE,
) -> CellDraws | None:
    """Bootstrap draws of one cell's ``quantity`` over its queries; None when the cell lacks it,
    ``method == UNDEFINED`` (value NaN) when the statistic is undefined on the cell's queries."""
    rows = quantity.per_example(results)
    if rows is not None and len(rows):
        rows = np.asarray(rows, dtype=float)
        if rows.ndim == 1:
            rows = rows[:, None]
        value = _finite(quantity.statistic(rows[None])[0])
        if value is None:  # e.g. Rec2FTP when finetuning fixed nothing: left out of the mean over seeds
            return CellDraws(math.nan, None, UNDEFINED)
        idx = rng.integers(len(rows), size=(n_resamples, len(rows)))
        with np.errstate(all="ignore"):
            draws = np.asarray(quantity.statistic(rows[idx]), dtype=float)
        return CellDraws(value, draws, "queries")
    value = _finite(quantity.value(results))
    if value is None:
        return None
    interval = quantity.interval(results)
    if interval is not None and len(interval) == 2 and all(_finite(v) is not None for v in interval):
        se = (float(interval[1]) - float(interval[0])) / (2 * _z(confidence))
        return CellDraws(value, rng.normal(value, max(se, 0.0), n_resamples), "cell interval (normal)")
    return CellDraws(value, None, "value only")


def two_level_draws(cells: Sequence[CellDraws], n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of the mean over seeds: resample the seeds with replacement, then (through each drawn
    seed's own query-bootstrap draws) the queries within it; a cell without draws contributes its
    value (seed-level resampling only). NaN draws (an undefined statistic) are left out of the mean."""
    if not cells:
        raise ConfigError("two_level_draws needs at least one cell")
    n_seeds = len(cells)
    table = np.stack([c.draws if c.draws is not None else np.full(n_resamples, c.value) for c in cells])
    seeds = rng.integers(n_seeds, size=(n_resamples, n_seeds))
    picks = rng.integers(n_resamples, size=(n_resamples, n_seeds))
    with warnings.catch_warnings():  # a draw whose every seed is NaN stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(table[seeds, picks], axis=1)


def percentile_interval(draws: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float] | None:
    """The central ``confidence`` percentile interval of the draws (NaN draws left out)."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return None
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))


def two_level_bootstrap(
    per_seed: Sequence[Sequence[float]],
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Interval of the mean over seeds of per-query values (``per_seed[s]`` = seed s's queries):
    seeds resampled, then queries within each seed."""
    if not per_seed or any(len(v) == 0 for v in per_seed):
        raise ConfigError(f"two_level_bootstrap needs at least one seed with queries, got {len(per_seed)} seed(s)")
    quantity = Quantity(per_example=lambda r: r["values"], value=lambda r: None)
    rng = np.random.default_rng(seed)
    drawn = [cell_draws({"values": np.asarray(v, dtype=float)}, quantity, n_resamples, rng) for v in per_seed]
    cells = [d for d in drawn if d is not None]  # none is: every seed has per-query values
    return percentile_interval(two_level_draws(cells, n_resamples, rng), confidence)  # type: ignore[return-value]


def stable_rng(seed: int, *key: Any) -> np.random.Generator:
    """A generator seeded by ``seed`` and a key (e.g. claim, task), stable across runs and orderings."""
    return np.random.default_rng([seed, zlib.crc32(repr(key).encode())])


@dataclass
class SeedSummary:
    """A quantity over the seeds of one group: mean, sample std (None below two seeds), interval."""

    mean: float
    std: float | None
    n: int
    ci: tuple[float, float] | None
    method: str
    draws: np.ndarray | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            "ci": None if self.ci is None else list(self.ci),
            "method": self.method,
        }


def summarise_seeds(
    cells: Sequence[dict[str, Any]],
    quantity: Quantity,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    rng: np.random.Generator | None = None,
) -> SeedSummary | None:
    """Mean, sample std and two-level bootstrap interval of ``quantity`` over the seed cells; None
    when a cell lacks the quantity. With one seed and nothing to resample, no interval."""
    rng = rng if rng is not None else np.random.default_rng(0)
    draws = [cell_draws(r, quantity, n_resamples, rng, confidence) for r in cells]
    if not draws or any(d is None for d in draws):
        return None
    draws = [d for d in draws if d.method != UNDEFINED]  # type: ignore[union-attr]
    if not draws:
        return None
    values = [d.value for d in draws]  # type: ignore[union-attr]
    methods = sorted({d.method for d in draws})  # type: ignore[union-attr]
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    if all(d.draws is None for d in draws) and len(draws) < 2:  # type: ignore[union-attr]
        return SeedSummary(mean, std, len(values), None, "no interval: one seed, no per-query values", None)
    combined = two_level_draws(draws, n_resamples, rng)  # type: ignore[arg-type]
    method = (
        "seeds × " + " / ".join(m for m in methods if m != "value only")
        if any(m != "value only" for m in methods)
        else "seeds only"
    )
    if "value only" in methods and method != "seeds only":
        method += " (some seeds: value only)"
    return SeedSummary(mean, std, len(values), percentile_interval(combined, confidence), method, combined)


def _accuracy(setting: str) -> Quantity:
    return Quantity(
        per_example=lambda r: correct_flags(r, setting),
        value=lambda r: accuracy(r, setting),
        interval=lambda r: accuracy_interval(r, setting),
        needs=f"accuracy.{setting}",
    )


def _layer_metric(setting: str | None, metric: str) -> Quantity:
    return Quantity(
        per_example=lambda r: layer_mean_per_example(r, setting, metric),
        value=lambda r: metric_value(r, setting, metric),
        interval=lambda r: metric_interval(r, setting, metric),
        needs=".".join(metric_path(setting, metric)),
    )


def rec2ftp_statistic(samples: np.ndarray) -> np.ndarray:
    """Rec2FTP (%) of resampled ``[..., n, 4]`` rows (ZSL, ICL, FT predictions, label); NaN when
    finetuning fixed nothing."""
    zsl, icl, ft, gold = (samples[..., i] for i in range(4))
    fixes = (zsl != gold) & (ft == gold)
    both = fixes & (icl == gold)
    with np.errstate(all="ignore"):
        return 100.0 * both.sum(axis=-1) / np.where(fixes.sum(axis=-1) > 0, fixes.sum(axis=-1), np.nan)


def jaccard_statistic(samples: np.ndarray) -> np.ndarray:
    """Jaccard of ICL's and FT's prediction changes from ZSL (Deutch et al. 2024) of resampled
    ``[..., n, 4]`` rows (ZSL, ICL, FT predictions, label); NaN on an empty union."""
    zsl, icl, ft = samples[..., 0], samples[..., 1], samples[..., 2]
    icl_changed, ft_changed = icl != zsl, ft != zsl
    same = ft_changed & (ft == icl)
    union = icl_changed.sum(axis=-1) + ft_changed.sum(axis=-1) - same.sum(axis=-1)
    with np.errstate(all="ignore"):
        return same.sum(axis=-1) / np.where(union > 0, union, np.nan)


def prediction_quantity(
    setting: str, statistic: Callable[[np.ndarray], np.ndarray], value_key: str, shift: float = 0.0
) -> Quantity:
    """Rec2FTP or Jaccard of ``setting`` (ft / lcgd), recomputed on resampled queries, minus ``shift``."""
    value = lambda r: metric_value(r, setting, value_key)
    interval = lambda r: metric_interval(r, setting, value_key)

    def shifted(f):
        def g(r):
            out = f(r)
            if out is None:
                return None
            return [v - shift for v in out] if isinstance(out, (list, tuple)) else out - shift

        return g

    return Quantity(
        per_example=lambda r: predictions(r, ("zsl", "icl", setting)),
        statistic=lambda s: statistic(s) - shift,
        value=shifted(value),
        interval=shifted(interval),
        needs=f"metrics.{setting}.{value_key}",
    )


#: Quantities summarised over seeds (mean, sample std, two-level bootstrap interval).
QUANTITIES: dict[str, Quantity] = {
    "acc_zsl": _accuracy("zsl"),
    "acc_icl": _accuracy("icl"),
    "acc_ft": _accuracy("ft"),
    "acc_lcgd": _accuracy("lcgd"),
    "rec2ftp": prediction_quantity("ft", rec2ftp_statistic, "rec2ftp"),
    "jaccard": prediction_quantity("ft", jaccard_statistic, "jaccard"),
    "simaou_ft": _layer_metric("ft", "simaou"),
    "simaou_lcgd": _layer_metric("lcgd", "simaou"),
    "simaou_random": _layer_metric(None, "simaou_random"),
    "simam_ft": _layer_metric("ft", "simam"),
    "simam_lcgd": _layer_metric("lcgd", "simam"),
    "simam_zsl": _layer_metric(None, "simam_zsl"),
    "simam_delta_ft": _layer_metric("ft", "simam_delta"),
    "simam_delta_lcgd": _layer_metric("lcgd", "simam_delta"),
    "alpha": _layer_metric(None, "alpha"),
}


def group_key(results: dict[str, Any]) -> tuple[str, str, int, bool, str]:
    """Cells averaged together: (task, model, k, untrained, variant). The variant names what else must
    match — the untrained init, the preset, the dtype and device kind — so another init or precision is
    another group, never pooled; it is empty for the defaults (float32 on CPU, no preset)."""
    cfg = results["config"]
    parts = [
        f"{cfg.get('untrained_init', 'normal')} init" if cfg.get("untrained") else "",
        f"{cfg['preset']} preset" if cfg.get("preset") else "",
        "" if precision_of(results) == "float32/cpu" else precision_of(results),
    ]
    return results["task"]["name"], cfg["model"], cfg["k"], bool(cfg.get("untrained")), ", ".join(p for p in parts if p)


def group_label(model: str, untrained: bool, variant: str) -> str:
    """The model column of a table row: the model, "untrained", and the variant if any."""
    details = ", ".join(part for part in ("untrained" if untrained else "", variant) if part)
    return model + (f" ({details})" if details else "")


def aggregate(
    results_list: Sequence[dict[str, Any]],
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[tuple, dict[str, dict[str, Any]]]:
    """Per (task, model, k, untrained): every scalar's mean, std (sample, n-1) and n over seeds,
    and, where the cells allow it, ``ci``: the two-level (seeds, then queries) bootstrap interval
    (:func:`summarise_seeds`; ``ci_method`` says what was resampled)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results_list:
        groups[group_key(r)].append(r)
    out = {}
    for key, members in groups.items():
        stats: dict[str, dict[str, Any]] = {}
        for name, getter in SCALARS.items():
            values = [
                v
                for v in (getter(m) for m in members)
                if v is not None and not (isinstance(v, float) and math.isnan(v))
            ]
            if values:
                stats[name] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "n": len(values),
                }
                quantity = QUANTITIES.get(name)
                summary = (
                    None
                    if quantity is None
                    else summarise_seeds(members, quantity, n_resamples, confidence, stable_rng(seed, key, name))
                )
                if summary is not None and summary.ci is not None:
                    stats[name]["ci"] = list(summary.ci)
                    stats[name]["ci_method"] = summary.method
        out[key] = stats
    return out


def markdown_tables(agg: dict[tuple, dict[str, dict[str, float]]]) -> str:
    """Table 1 (accuracy, Rec2FTP, Jaccard) and Table 2 (SimAOU, SimAM, SimAM_Δ), ours beside the
    reference (1.3B GPT, k = 32) in parentheses."""
    header1 = [
        "task",
        "model",
        "k",
        "ZSL",
        "ICL",
        "FT",
        "LCGD",
        "Rec2FTP",
        "Jaccard %",
        "ref ZSL / FT / ICL, Jaccard %",
    ]
    header2 = ["task", "model", "SimAOU GD (ref)", "SimAOU LCGD (ref)", "random", "SimAM GD", "ZSL SimAM"]
    header2 += ["SimAM_Δ GD (ref)", "SimAM_Δ LCGD (ref)", "α"]
    rows1, rows2 = [], []
    for (task, model, k, untrained, variant), s in sorted(agg.items()):
        label = group_label(model, untrained, variant)
        pm = lambda name, scale=1.0, digits=3, s=s: format_mean_std(s.get(name), scale, digits)
        ref_acc = REFERENCE_ACCURACY.get(task, {})
        ref_acc_text = (
            f"{ref_acc['zsl']:.1f} / {ref_acc['ft']:.1f} / {ref_acc['icl']:.1f}, {ref_acc['jaccard']:.1f}"
            if ref_acc
            else "–"
        )
        rows1.append(
            [task, label, k, pm("acc_zsl", 100, 1), pm("acc_icl", 100, 1), pm("acc_ft", 100, 1)]
            + [pm("acc_lcgd", 100, 1), pm("rec2ftp", 1, 1), pm("jaccard", 100, 1), ref_acc_text]
        )
        ref = REFERENCE_SIMILARITY.get(task, {})
        if untrained:
            ref_ft, ref_delta = ref.get("untrained_simaou"), ref.get("untrained_simam_delta")
            ref_lcgd = ref_delta_lcgd = None
        else:
            ref_ft, ref_delta = ref.get("simaou_ft"), ref.get("simam_delta_ft")
            ref_lcgd, ref_delta_lcgd = ref.get("simaou_lcgd"), ref.get("simam_delta_lcgd")
        with_ref = lambda name, value, pm=pm: f"{pm(name)} ({format_interval(value, None)})"
        rows2.append(
            [task, label, with_ref("simaou_ft", ref_ft), with_ref("simaou_lcgd", ref_lcgd), pm("simaou_random")]
            + [pm("simam_ft"), pm("simam_zsl"), with_ref("simam_delta_ft", ref_delta)]
            + [with_ref("simam_delta_lcgd", ref_delta_lcgd), pm("alpha")]
        )
    return (
        "### Table 1 — predictions (accuracy %, mean ± sample std over seeds [two-level bootstrap "
        "interval: seeds, then queries])\n\n"
        + Table(header1, rows1).markdown()
        + "\n\n### Table 2 — attention (mean over layers, mean ± sample std over seeds [interval]; reference in "
        "parentheses)\n\n" + Table(header2, rows2).markdown() + "\n"
    )
