"""A verdict per claim of Dai et al. 2023, Deutch et al. 2024 and Shen et al. 2023:
``icl-lens findings RESULTS_DIR``.

Every ``results.json`` under the folder (any depth) is one cell; cells are grouped into studies
(model, k, and the preset when the run records one) and, within a study, indexed by task, seed and
whether the model is untrained. Shen et al.'s analyses written under the same folder
(``experiments/shen_analyses.py``: order-sensitivity and sparsity JSON) are read too.

For each claim, one row per task and one pooled over tasks, with an effect size, its interval,
the test and a verdict:

* **holds** — the interval excludes the null value on the claimed side;
* **fails** — it excludes the null value on the other side;
* **inconclusive** — it contains the null value;
* **missing: <what>** — the cells lack an input; never a verdict then.

Intervals (percentile, ``--confidence``): per task, the two-level bootstrap of
:mod:`icl_lens.reporting.aggregate` (resample seeds, then queries within each drawn seed); pooled, the tasks
are fixed and each task's draws are averaged over tasks. Every draw is seeded (``--seed``, plus a
stable hash of claim and task). Definitions the papers leave open, chosen here:

* "≫ random", "above a null": the interval of the per-query paired difference lies above 0;
* untrained model *comparable* (Deutch et al. 2024, §6): the interval of untrained − trained
  SimAOU (FT) reaches 0 or above (the untrained model is not credibly lower) **and** the
  untrained model's ICL − ZSL accuracy interval reaches 0 or below (its ICL does not credibly beat
  ZSL): holds when both, fails otherwise (this claim is never inconclusive);
* Rec2FTP (Dai et al. 2023): ICL recovers *most* of what FT fixes — the interval lies above
  :data:`REC2FTP_THRESHOLD` (50 %);
* low ICL/FT token overlap (Shen et al. 2023): the top-10 next-token overlap interval lies below
  :data:`LOW_OVERLAP` (0.5);
* order sensitivity (Shen et al. 2023): per query, ICL's output spread over demonstration orders
  minus that of the most order-sensitive SGD setting; holds when the interval lies above 0;
* attention weights not sparse (Shen et al. 2023): the fraction of W_Q/W_K/W_V entries with
  |w| < :data:`SPARSITY_THRESHOLD` (or :data:`SPARSITY_RMS_THRESHOLD` × RMS) below the hand-built
  constructions' 75 %; the weights are fixed, so the "interval" is the value itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from icl_lens.errors import ConfigError, ResultsError
from icl_lens.reporting.aggregate import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    QUANTITIES,
    UNDEFINED,
    CellDraws,
    Quantity,
    cell_draws,
    column_mean,
    correct_flags,
    jaccard_statistic,
    layer_mean_per_example,
    layer_means,
    percentile_interval,
    prediction_quantity,
    rec2ftp_statistic,
    stable_rng,
    two_level_draws,
)
from icl_lens.reporting.reference import HANDBUILT_ICL_GD_SPARSITY
from icl_lens.reporting.tables import MISSING, Table, format_interval
from icl_lens.results import (
    NULL_KINDS,
    RESULTS_FILE,
    accuracy,
    atomic_write_text,
    dig,
    jaccard_independence,
    metric_interval,
    metric_path,
    metric_summary,
    metric_value,
    null_per_example,
    null_summary,
    paired_test,
    per_example,
    precision_of,
    read_results,
)

logger = logging.getLogger(__name__)

FINDINGS_JSON = "findings.json"
FINDINGS_MD = "findings.md"
POOLED = "all tasks (pooled)"
REC2FTP_THRESHOLD = 50.0
LOW_OVERLAP = 0.5
SPARSITY_THRESHOLD = 1e-3
SPARSITY_RMS_THRESHOLD = 0.05
VERDICTS = ("holds", "fails", "inconclusive")


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class Study:
    """Cells of one model (and k, preset, dtype and device kind), indexed by (task, untrained) -> seed
    cells. Runs in another dtype or on another kind of device are other studies, never pooled."""

    model: str
    k: Any
    preset: str | None
    precision: str = "float32/cpu"
    cells: dict[tuple[str, bool], list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    @property
    def label(self) -> str:
        label = f"{self.model} · k={self.k}" + (f" · {self.preset}" if self.preset else "")
        return label + (f" · {self.precision}" if self.precision != "float32/cpu" else "")

    def tasks(self, untrained: bool = False) -> list[str]:
        return sorted({task for task, u in self.cells if u == untrained})


def find_results(results_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every verified ``results.json`` under ``results_dir`` (recursively); damaged ones are skipped."""
    out = []
    for path in sorted(Path(results_dir).rglob(RESULTS_FILE)):
        try:
            out.append((path.parent, read_results(path)))
        except ResultsError as exc:
            logger.warning("skipping %s", exc)
    return out


def find_analyses(results_dir: str | Path) -> list[dict[str, Any]]:
    """Shen et al. analysis outputs (order sensitivity, sparsity) anywhere under ``results_dir``."""
    out = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        if path.name in (RESULTS_FILE, FINDINGS_JSON):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("analysis") in ("order_sensitivity", "sparsity"):
            out.append(data)
    return out


def group_studies(results: Sequence[dict[str, Any]]) -> list[Study]:
    """Group cells by (model, k, preset, dtype/device kind); within a study by task, untrained and seed (a second
    cell with the same task, untrained and seed is left out with a warning)."""
    studies: dict[tuple, Study] = {}
    seen: set[tuple] = set()
    for r in results:
        cfg = r.get("config") or {}
        task = dig(r, "task", "name") or cfg.get("task")
        if task is None or cfg.get("model") is None:
            logger.warning("skipping a results file without task or model")
            continue
        key = (str(cfg["model"]), cfg.get("k"), cfg.get("preset"), precision_of(r))
        study = studies.setdefault(key, Study(*key))
        untrained = bool(cfg.get("untrained"))
        cell_key = (*key, task, untrained, cfg.get("seed"))
        if cell_key in seen:
            logger.warning(
                "a second cell for %s, task %s, seed %s%s: left out",
                study.label,
                task,
                cfg.get("seed"),
                " (untrained)" if untrained else "",
            )
            continue
        seen.add(cell_key)
        study.cells[(task, untrained)].append(r)
    for study in studies.values():
        for members in study.cells.values():
            members.sort(key=lambda r: (r["config"].get("seed") is None, r["config"].get("seed")))
    return [studies[k] for k in sorted(studies, key=lambda k: tuple(str(x) for x in k))]


# ---------------------------------------------------------------------------------------------
# Verdicts


def verdict(interval: Sequence[float] | None, null: float, side: str) -> str:
    """holds / fails / inconclusive: does the interval exclude ``null`` on the claimed ``side``
    (``>``: the claim says the effect is above ``null``; ``<``: below)?"""
    if side not in (">", "<"):
        raise ConfigError(f"side must be '>' or '<', got {side!r}")
    if interval is None:
        return "missing: interval"
    lo, hi = float(interval[0]), float(interval[1])
    above, below = lo > null, hi < null
    if side == ">":
        return "holds" if above else "fails" if below else "inconclusive"
    return "holds" if below else "fails" if above else "inconclusive"


@dataclass
class Row:
    """One claim on one task (or pooled): effect, interval, test and verdict."""

    study: str
    claim: str
    statement: str
    task: str
    verdict: str
    effect: float | None = None
    interval: list[float] | None = None
    null: float | None = None
    side: str | None = None
    test: str = ""
    n_seeds: int | None = None
    std: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Claim:
    """A claim tested as "the quantity is above (``>``) / below (``<``) ``null``"."""

    id: str
    statement: str
    source: str
    quantity: Quantity
    null: float = 0.0
    side: str = ">"
    setting: str = "trained"  # trained or untrained cells
    cell_test: Callable[[dict[str, Any]], str | None] = lambda r: None


def _diff(
    a: Callable[[dict], np.ndarray | None], b: Callable[[dict], np.ndarray | None]
) -> Callable[[dict], np.ndarray | None]:
    def rows(r: dict) -> np.ndarray | None:
        x, y = a(r), b(r)
        if x is None or y is None or len(x) != len(y):
            return None
        return np.stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)], axis=1)

    return rows


def _value_diff(a: Callable[[dict], Any], b: Callable[[dict], Any]) -> Callable[[dict], float | None]:
    def value(r: dict) -> float | None:
        x, y = a(r), b(r)
        return None if x is None or y is None else float(x) - float(y)

    return value


def _ci_diff(a: Callable[[dict], Any], b: Callable[[dict], Any]) -> Callable[[dict], list[float] | None]:
    """Interval of a − b from the two intervals (half-widths added in quadrature: independence)."""

    def interval(r: dict) -> list[float] | None:
        x, y = a(r), b(r)
        if not x or not y:
            return None
        mid = (x[0] + x[1]) / 2 - (y[0] + y[1]) / 2
        half = math.hypot((x[1] - x[0]) / 2, (y[1] - y[0]) / 2)
        return [mid - half, mid + half]

    return interval


def _test_of(name: str, label: str) -> Callable[[dict[str, Any]], str | None]:
    def describe(r: dict) -> str | None:
        p = dig(paired_test(r, name), "p_value")
        return None if p is None else f"{label} p={float(p):.3g}"

    return describe


def _accuracy_claim(cid: str, setting: str, source: str, statement: str, untrained: bool = False) -> Claim:
    return Claim(
        cid,
        statement,
        source,
        Quantity(
            per_example=_diff(lambda r: correct_flags(r, setting), lambda r: correct_flags(r, "zsl")),
            value=_value_diff(lambda r: accuracy(r, setting), lambda r: accuracy(r, "zsl")),
            interval=lambda r: dig(paired_test(r, f"{setting}_vs_zsl"), "ci"),
            needs=f"accuracy.{setting} and accuracy.zsl",
        ),
        setting="untrained" if untrained else "trained",
        cell_test=_test_of(f"{setting}_vs_zsl", "exact McNemar"),
    )


@dataclass(frozen=True)
class Layered:
    """A per-layer metric a claim compares: its per-query rows, its summary in the results, and where."""

    rows: Callable[[dict[str, Any]], np.ndarray | None]
    summary: Callable[[dict[str, Any]], dict[str, Any] | None]
    where: str


def _metric(setting: str | None, metric: str) -> Layered:
    return Layered(
        lambda r: layer_mean_per_example(r, setting, metric),
        lambda r: metric_summary(r, setting, metric),
        ".".join(metric_path(setting, metric)),
    )


def _null(setting: str, kind: str, metric: str) -> Layered:
    return Layered(
        lambda r: layer_means(null_per_example(r, setting, kind, metric)),
        lambda r: null_summary(r, setting, kind, metric),
        f"nulls.{setting}.{kind}.{metric}",
    )


def _layer_diff_claim(cid: str, statement: str, source: str, a: Layered, b: Layered, test: str | None = None) -> Claim:
    """a − b of two per-layer metrics, per query (means over layers) and of their summaries; the
    cell's interval is the paired test's when one is named, else the difference of the two intervals."""
    cell_interval = (
        (lambda r: dig(paired_test(r, test), "ci"))
        if test
        else _ci_diff(lambda r: dig(a.summary(r), "ci"), lambda r: dig(b.summary(r), "ci"))
    )
    return Claim(
        cid,
        statement,
        source,
        Quantity(
            per_example=_diff(a.rows, b.rows),
            value=_value_diff(lambda r: dig(a.summary(r), "mean"), lambda r: dig(b.summary(r), "mean")),
            interval=cell_interval,
            needs=f"{a.where} and {b.where}",
        ),
        cell_test=_test_of(test, "paired bootstrap") if test else lambda r: None,
    )


def _null_claim(kind: str) -> Claim:
    return _layer_diff_claim(
        f"simaou_above_{kind}",
        f"SimAOU (FT) above the {kind.replace('_', '-')} null",
        "icl_lens nulls",
        _metric("ft", "simaou"),
        _null("ft", kind, "simaou"),
    )


def _jaccard_minus_expected() -> Quantity:
    """Jaccard (FT) minus the cell's independence expectation (held fixed while queries resample)."""

    def expected(r: dict) -> float | None:
        value = dig(jaccard_independence(r, "ft"), "expected")
        return None if value is None else float(value)

    def rows(r: dict) -> np.ndarray | None:
        e = expected(r)
        base = prediction_quantity("ft", jaccard_statistic, "jaccard").per_example(r)
        if e is None or base is None:
            return None
        return np.concatenate([base, np.full((len(base), 1), e)], axis=1)

    return Quantity(
        per_example=rows,
        statistic=lambda s: jaccard_statistic(s[..., :4]) - s[..., 0, 4],
        value=_value_diff(lambda r: dig(jaccard_independence(r, "ft"), "observed"), expected),
        interval=lambda r: (
            None
            if expected(r) is None or not dig(jaccard_independence(r, "ft"), "observed_ci")
            else [v - expected(r) for v in dig(jaccard_independence(r, "ft"), "observed_ci")]
        ),
        needs="nulls.ft.jaccard_independence",
    )


def _token_overlap() -> Quantity:
    """ICL/FT top-k token overlap: resampled from the cell's per-query overlaps when recorded
    (``per_example.ft.token_overlap``), else from the cell's own interval."""
    return Quantity(
        per_example=lambda r: per_example(r, "ft", "token_overlap"),
        value=lambda r: metric_value(r, "ft", "token_overlap"),
        interval=lambda r: metric_interval(r, "ft", "token_overlap"),
        needs="metrics.ft.token_overlap",
    )


CELL_CLAIMS: tuple[Claim, ...] = (
    _accuracy_claim("icl_beats_zsl", "icl", "Dai et al. 2023", "ICL beats ZSL (accuracy)"),
    _accuracy_claim("ft_beats_zsl", "ft", "Dai et al. 2023", "FT beats ZSL (accuracy)"),
    _layer_diff_claim(
        "simaou_above_random",
        "SimAOU (FT) ≫ the uniform-random baseline",
        "Dai et al. 2023",
        _metric("ft", "simaou"),
        _metric(None, "simaou_random"),
    ),
    *(_null_claim(kind) for kind in NULL_KINDS),
    _layer_diff_claim(
        "lcgd_simaou_above_gd",
        "LCGD SimAOU above GD's",
        "Deutch et al. 2024",
        _metric("lcgd", "simaou"),
        _metric("ft", "simaou"),
        test="lcgd_vs_ft_simaou",
    ),
    _layer_diff_claim(
        "lcgd_simam_delta_above_gd",
        "LCGD SimAM_Δ above GD's",
        "Deutch et al. 2024",
        _metric("lcgd", "simam_delta"),
        _metric("ft", "simam_delta"),
        test="lcgd_vs_ft_simam_delta",
    ),
    Claim(
        "jaccard_below_independence",
        "Jaccard (ICL, FT changes) below the independence expectation",
        "Deutch et al. 2024",
        _jaccard_minus_expected(),
        side="<",
    ),
    Claim(
        "rec2ftp_majority",
        f"Rec2FTP above {REC2FTP_THRESHOLD:g} % (ICL covers most of what FT fixes)",
        "Dai et al. 2023",
        prediction_quantity("ft", rec2ftp_statistic, "rec2ftp"),
        null=REC2FTP_THRESHOLD,
    ),
    Claim(
        "low_token_overlap",
        f"ICL/FT top-10 token overlap below {LOW_OVERLAP:g}",
        "Shen et al. 2023",
        _token_overlap(),
        null=LOW_OVERLAP,
        side="<",
    ),
)
UNTRAINED_CLAIM = (
    "untrained_comparable",
    "untrained model: SimAOU comparable to the trained model's, while its ICL does not beat ZSL",
    "Deutch et al. 2024",
)
ORDER_CLAIM = ("icl_more_order_sensitive", "ICL more order-sensitive than SGD", "Shen et al. 2023")
SPARSITY_CLAIM = (
    "attention_not_sparse",
    "attention weights not sparse like the hand-built constructions (75 %)",
    "Shen et al. 2023",
)
#: The order of the findings table (the numbering of the README's claims).
CLAIM_IDS = (
    "icl_beats_zsl",
    "ft_beats_zsl",
    "simaou_above_random",
    *(f"simaou_above_{k}" for k in NULL_KINDS),
    "lcgd_simaou_above_gd",
    "lcgd_simam_delta_above_gd",
    UNTRAINED_CLAIM[0],
    "jaccard_below_independence",
    "rec2ftp_majority",
    ORDER_CLAIM[0],
    "low_token_overlap",
    SPARSITY_CLAIM[0],
)


@dataclass
class TaskEstimate:
    """A task's value (mean over seeds), sample std, n seeds and draws of the mean (or why missing)."""

    value: float | None
    std: float | None = None
    n: int = 0
    draws: np.ndarray | None = None
    method: str = ""
    missing: str = ""
    tests: list[str] = field(default_factory=list)


def estimate(
    cells: Sequence[dict[str, Any]],
    quantity: Quantity,
    n_resamples: int,
    confidence: float,
    rng: np.random.Generator,
    cell_test: Callable[[dict], str | None] = lambda r: None,
) -> TaskEstimate:
    """The two-level bootstrap estimate of ``quantity`` over a task's seed cells."""
    if not cells:
        return TaskEstimate(None, missing="no cell")
    draws = [cell_draws(r, quantity, n_resamples, rng, confidence) for r in cells]
    if any(d is None for d in draws):
        lacking = [str(r["config"].get("seed")) for r, d in zip(cells, draws) if d is None]
        return TaskEstimate(None, n=len(cells), missing=f"{quantity.needs} (seed {', '.join(lacking)})")
    present = [d for d in draws if d is not None]  # all of them (returned above otherwise)
    undefined = [str(r["config"].get("seed")) for r, d in zip(cells, present) if d.method == UNDEFINED]
    got: list[CellDraws] = [d for d in present if d.method != UNDEFINED]
    if not got:
        return TaskEstimate(None, n=len(cells), missing=f"{quantity.needs} undefined in every seed")
    values = [d.value for d in got]
    std = statistics.stdev(values) if len(values) > 1 else None
    tests = _per_seed_tests([cell_test(r) for r in cells])
    if len(got) < 2 and got[0].draws is None:
        return TaskEstimate(
            statistics.fmean(values),
            std,
            len(values),
            None,
            tests=tests,
            missing="interval (one seed, no per-query values or cell interval)",
        )
    methods = {d.method for d in got}
    method = "seeds only" if methods == {"value only"} else "seeds × " + " / ".join(sorted(methods - {"value only"}))
    if undefined:
        method += f"; undefined in seed {', '.join(undefined)}, left out"
    return TaskEstimate(
        statistics.fmean(values), std, len(values), two_level_draws(got, n_resamples, rng), method, tests=tests
    )


def _per_seed_tests(described: Sequence[str | None]) -> list[str]:
    """``["exact McNemar p=0.01", "exact McNemar p=0.2"]`` -> ``["exact McNemar p=0.01, 0.2 (per seed)"]``."""
    got = [t for t in described if t]
    if len(got) < 2:
        return got
    names = {t.split(" p=")[0] for t in got}
    if len(names) != 1:
        return got
    return [f"{names.pop()} p=" + ", ".join(t.split(" p=")[1] for t in got) + " (per seed)"]


def _interval(draws: np.ndarray | None, confidence: float) -> list[float] | None:
    interval = None if draws is None else percentile_interval(draws, confidence)
    return None if interval is None else list(interval)


def _row(
    study: Study,
    claim_id: str,
    statement: str,
    task: str,
    est: TaskEstimate,
    null: float,
    side: str,
    confidence: float,
    test: str = "",
    note: str = "",
) -> Row:
    if est.value is None:
        return Row(
            study.label,
            claim_id,
            statement,
            task,
            f"missing: {est.missing}",
            n_seeds=est.n or None,
            null=null,
            side=side,
            note=note,
        )
    interval = _interval(est.draws, confidence)
    if interval is None:
        result = f"missing: {est.missing or 'interval'}"
    else:
        result = verdict(interval, null, side)
    test = test or "; ".join(
        filter(None, [f"two-level bootstrap ({est.method})" if est.draws is not None else "", *est.tests])
    )
    return Row(
        study.label, claim_id, statement, task, result, est.value, interval, null, side, test, est.n, est.std, note
    )


def _pooled(tasks: dict[str, TaskEstimate], n_resamples: int) -> TaskEstimate:
    """Tasks fixed: the mean over tasks of each task's value and draws."""
    undefined = [t for t, e in tasks.items() if e.value is None and e.missing.endswith("undefined in every seed")]
    if undefined and len(undefined) < len(tasks):
        pooled = _pooled({t: e for t, e in tasks.items() if t not in undefined}, n_resamples)
        pooled.method += f"; undefined on task {', '.join(undefined)}, left out"
        return pooled
    if not tasks:
        return TaskEstimate(None, missing="no task")
    lacking = [t for t, e in tasks.items() if e.value is None]
    if lacking:
        what = sorted({tasks[t].missing.split(" (seed")[0] for t in lacking})
        return TaskEstimate(None, missing=f"{'; '.join(what)} (task {', '.join(lacking)})")
    value = statistics.fmean(e.value for e in tasks.values())  # type: ignore[misc]
    n = sum(e.n for e in tasks.values())
    if any(e.draws is None for e in tasks.values()):
        no = [t for t, e in tasks.items() if e.draws is None]
        return TaskEstimate(value, None, n, None, missing=f"interval of task(s) {', '.join(no)}")
    draws = np.mean(np.stack([e.draws for e in tasks.values()]), axis=0)  # type: ignore[misc]
    methods = sorted({e.method for e in tasks.values()})
    return TaskEstimate(value, None, n, draws, "tasks fixed; " + " / ".join(methods))


def _claim_rows(study: Study, claim: Claim, n_resamples: int, confidence: float, seed: int) -> list[Row]:
    untrained = claim.setting == "untrained"
    per_task = {}
    for task in study.tasks(untrained):
        rng = stable_rng(seed, study.label, claim.id, task)
        per_task[task] = estimate(
            study.cells[(task, untrained)], claim.quantity, n_resamples, confidence, rng, claim.cell_test
        )
    rows = [
        _row(study, claim.id, claim.statement, task, est, claim.null, claim.side, confidence)
        for task, est in per_task.items()
    ]
    pooled = _pooled(per_task, n_resamples)
    rows.append(_row(study, claim.id, claim.statement, POOLED, pooled, claim.null, claim.side, confidence))
    return rows


def _untrained_rows(study: Study, n_resamples: int, confidence: float, seed: int) -> list[Row]:
    cid, statement, _ = UNTRAINED_CLAIM
    simaou = QUANTITIES["simaou_ft"]
    icl = _accuracy_claim("untrained_icl", "icl", "", "", untrained=True)
    tasks = study.tasks(untrained=True)
    if not tasks:
        return [Row(study.label, cid, statement, POOLED, "missing: untrained cells")]
    diffs: dict[str, TaskEstimate] = {}
    icls: dict[str, TaskEstimate] = {}
    for task in tasks:
        rng = stable_rng(seed, study.label, cid, task)
        u = estimate(study.cells[(task, True)], simaou, n_resamples, confidence, rng)
        t = estimate(study.cells.get((task, False), []), simaou, n_resamples, confidence, rng)
        if u.value is None or t.value is None:
            diffs[task] = TaskEstimate(
                None, missing=("untrained " + u.missing) if u.value is None else ("trained " + t.missing)
            )
        else:
            draws = None if u.draws is None or t.draws is None else u.draws - t.draws
            diffs[task] = TaskEstimate(
                u.value - t.value,
                None,
                u.n,
                draws,
                "independent: untrained − trained",
                missing="" if draws is not None else "interval",
            )
        icls[task] = estimate(study.cells[(task, True)], icl.quantity, n_resamples, confidence, rng, icl.cell_test)
    rows = []
    for task, diff, icl_est in [
        *((t, diffs[t], icls[t]) for t in tasks),
        (POOLED, _pooled(diffs, n_resamples), _pooled(icls, n_resamples)),
    ]:
        diff_ci, icl_ci = _interval(diff.draws, confidence), _interval(icl_est.draws, confidence)
        note = (
            "untrained ICL − ZSL accuracy: "
            + format_interval(icl_est.value, icl_ci)
            + "; comparable = untrained − trained SimAOU interval reaches 0 or above; ICL does not beat ZSL = "
            "its interval reaches 0 or below"
        )
        if diff.value is None or icl_est.value is None:
            what = diff.missing if diff.value is None else "untrained ICL − ZSL: " + icl_est.missing
            rows.append(Row(study.label, cid, statement, task, f"missing: {what}", note=note))
            continue
        if diff_ci is None or icl_ci is None:
            rows.append(
                Row(
                    study.label,
                    cid,
                    statement,
                    task,
                    "missing: interval",
                    diff.value,
                    diff_ci,
                    0.0,
                    "≥",
                    n_seeds=diff.n,
                    note=note,
                )
            )
            continue
        comparable, no_icl_gain = diff_ci[1] >= 0, icl_ci[0] <= 0
        result = "holds" if comparable and no_icl_gain else "fails"
        rows.append(
            Row(
                study.label,
                cid,
                statement,
                task,
                result,
                diff.value,
                diff_ci,
                0.0,
                "≥",
                "two-level bootstrap of each model, difference of draws" + "".join(f"; {t}" for t in icl_est.tests),
                diff.n,
                None,
                note,
            )
        )
    return rows


def _order_rows(
    study: Study, analyses: Sequence[dict[str, Any]], n_resamples: int, confidence: float, seed: int
) -> list[Row]:
    cid, statement, _ = ORDER_CLAIM
    mine = [
        a
        for a in analyses
        if a.get("analysis") == "order_sensitivity" and study.model in (dig(a, "request", "model"), a.get("model"))
    ]
    if not mine:
        return [
            Row(
                study.label,
                cid,
                statement,
                POOLED,
                "missing: order-sensitivity outputs (experiments/shen_analyses.py order) under the results folder",
            )
        ]
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in mine:
        by_task[a["task"]].append(a)
    quantity = Quantity(
        per_example=lambda r: r.get("rows"), value=lambda r: None, statistic=column_mean, needs="ICL and SGD settings"
    )
    per_task: dict[str, TaskEstimate] = {}
    notes: dict[str, str] = {}
    for task, files in sorted(by_task.items()):
        cells = []
        for a in files:
            settings = {s["setting"]: s for s in a.get("settings", [])}
            sgd = [s for s in settings.values() if s.get("optimizer") == "sgd"]
            if "icl" not in settings or not sgd:
                continue
            worst = max(sgd, key=lambda s: s["output_std"])
            notes[task] = f"ICL vs {worst['setting']} (the most order-sensitive SGD setting); per-query output spread"
            cells.append(
                {
                    "config": {"seed": a.get("k")},
                    "rows": np.stack(
                        [
                            np.asarray(settings["icl"]["per_example_output_std"], dtype=float),
                            np.asarray(worst["per_example_output_std"], dtype=float),
                        ],
                        axis=1,
                    ),
                }
            )
        rng = stable_rng(seed, study.label, cid, task)
        per_task[task] = estimate(cells, quantity, n_resamples, confidence, rng)
    rows = [
        _row(study, cid, statement, task, est, 0.0, ">", confidence, note=notes.get(task, ""))
        for task, est in per_task.items()
    ]
    pooled = _pooled(per_task, n_resamples)
    rows.append(_row(study, cid, statement, POOLED, pooled, 0.0, ">", confidence))
    return rows


def _sparsity_rows(study: Study, analyses: Sequence[dict[str, Any]]) -> list[Row]:
    cid, statement, _ = SPARSITY_CLAIM
    for a in analyses:
        if a.get("analysis") != "sparsity":
            continue
        for m in a.get("models", []):
            if m.get("model") != study.model:
                continue
            level = SPARSITY_RMS_THRESHOLD if m.get("scale") == "rms" else SPARSITY_THRESHOLD
            thresholds = m["thresholds"]
            j = int(np.argmin([abs(math.log(max(t, 1e-30)) - math.log(level)) for t in thresholds]))
            value = float(m["pooled"][j])
            handbuilt = float(m.get("handbuilt", a.get("handbuilt", HANDBUILT_ICL_GD_SPARSITY)))
            unit = " × RMS" if m.get("scale") == "rms" else ""
            return [
                Row(
                    study.label,
                    cid,
                    statement,
                    POOLED,
                    verdict([value, value], handbuilt, "<"),
                    value,
                    [value, value],
                    handbuilt,
                    "<",
                    "fixed weights: a count, no sampling",
                    None,
                    None,
                    f"fraction of W_Q/W_K/W_V entries with |w| < {thresholds[j]:g}{unit}",
                )
            ]
    return [
        Row(
            study.label,
            cid,
            statement,
            POOLED,
            "missing: sparsity output (experiments/shen_analyses.py sparsity) for this model under the results folder",
        )
    ]


def evaluate_findings(
    results: Sequence[dict[str, Any]],
    analyses: Sequence[dict[str, Any]] = (),
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Every claim's rows for every study of ``results`` (cell dicts) and ``analyses``."""
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    rows: list[Row] = []
    for study in group_studies(results):
        if not study.tasks(untrained=False):
            continue  # untrained-only studies are read by their trained study's claim 6
        by_claim: dict[str, list[Row]] = {}
        for claim in CELL_CLAIMS:
            by_claim[claim.id] = _claim_rows(study, claim, n_resamples, confidence, seed)
        by_claim[UNTRAINED_CLAIM[0]] = _untrained_rows(study, n_resamples, confidence, seed)
        by_claim[ORDER_CLAIM[0]] = _order_rows(study, analyses, n_resamples, confidence, seed)
        by_claim[SPARSITY_CLAIM[0]] = _sparsity_rows(study, analyses)
        for cid in CLAIM_IDS:
            rows.extend(by_claim[cid])
    return {
        "settings": {
            "n_resamples": n_resamples,
            "confidence": confidence,
            "seed": seed,
            "rec2ftp_threshold": REC2FTP_THRESHOLD,
            "low_overlap": LOW_OVERLAP,
            "sparsity_threshold": SPARSITY_THRESHOLD,
            "sparsity_rms_threshold": SPARSITY_RMS_THRESHOLD,
        },
        "verdicts": "holds: the interval excludes the null value on the claimed side; fails: on the other side; "
        "inconclusive: it contains the null value; missing: an input is absent",
        "rows": [r.to_dict() for r in rows],
    }


# ---------------------------------------------------------------------------------------------
# Output


FINDINGS_HEADER = ("study", "claim", "task", "seeds", "effect [interval]", "null", "test", "verdict")


def table_rows(findings: dict[str, Any]) -> list[list[str]]:
    """The findings as rows of strings (:data:`FINDINGS_HEADER`), for markdown and HTML."""
    out = []
    for r in findings["rows"]:
        null = "–" if r["null"] is None else f"{r['side']} {r['null']:g}"
        test = r["test"] + (f" ({r['note']})" if r["note"] else "")
        out.append(
            [
                r["study"],
                r["statement"],
                r["task"],
                "–" if r["n_seeds"] is None else str(r["n_seeds"]),
                format_interval(r["effect"], r["interval"]),
                null,
                test,
                r["verdict"],
            ]
        )
    return out


def matrix_tables(findings: dict[str, Any], bold: bool = True) -> list[Table]:
    """The findings at a glance, one table per study: a row per claim, a column per task and one
    for the pooled row, each cell ``effect [interval] verdict`` (``–`` where the claim has no row for
    that task). Claims keep their order; tasks are sorted, the pooled column last."""
    tables = []
    studies = list(dict.fromkeys(r["study"] for r in findings["rows"]))
    for study in studies:
        rows = [r for r in findings["rows"] if r["study"] == study]
        tasks = sorted({r["task"] for r in rows} - {POOLED})
        columns = tasks + ([POOLED] if any(r["task"] == POOLED for r in rows) else [])
        claims = list(dict.fromkeys(r["statement"] for r in rows))
        cells = {(r["statement"], r["task"]): r for r in rows}
        body = []
        for claim in claims:
            line = [claim]
            for task in columns:
                r = cells.get((claim, task))
                if r is None:
                    line.append(MISSING)
                    continue
                mark = f"**{r['verdict']}**" if bold else r["verdict"]
                effect = format_interval(r["effect"], r["interval"])
                line.append(mark if effect == MISSING else f"{effect} {mark}")
            body.append(line)
        header = ["claim", *("pooled" if t == POOLED else t for t in columns)]
        tables.append(Table(header, body, caption=study))
    return tables


def findings_markdown(findings: dict[str, Any]) -> str:
    """The findings as markdown: the interval settings and the verdict rule, each study's claim ×
    task matrix (:func:`matrix_tables`), then every row with its test."""
    s = findings["settings"]
    lines = [
        f"### Findings ({100 * s['confidence']:g} % intervals, {s['n_resamples']} resamples, seed {s['seed']})",
        "",
        findings["verdicts"] + ".",
        "",
    ]
    for matrix in matrix_tables(findings):
        lines += [f"#### {matrix.caption}", "", matrix.markdown(), ""]
    lines += ["#### Every row, with its test", "", Table(FINDINGS_HEADER, table_rows(findings)).markdown()]
    return "\n".join(lines) + "\n"


def write_findings(
    results_dir: str | Path, n_resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0
) -> dict[str, Any]:
    """Evaluate the claims on every cell under ``results_dir``; write findings.json and findings.md."""
    results_dir = Path(results_dir)
    cells = [r for _, r in find_results(results_dir)]
    if not cells:
        raise ResultsError(f"no finished cell (verified {RESULTS_FILE}) under {results_dir}")
    findings = evaluate_findings(cells, find_analyses(results_dir), n_resamples, confidence, seed)
    atomic_write_text(results_dir / FINDINGS_JSON, json.dumps(findings, indent=1) + "\n")
    atomic_write_text(results_dir / FINDINGS_MD, findings_markdown(findings))
    logger.info("wrote %s and %s", results_dir / FINDINGS_JSON, results_dir / FINDINGS_MD)
    return findings


def add_findings_command(subparsers) -> argparse.ArgumentParser:
    """Add ``findings RESULTS_DIR`` to the ``icl-lens`` sub-commands (dispatch to :func:`cmd_findings`)."""
    parser = subparsers.add_parser(
        "findings",
        help="a verdict (holds / fails / inconclusive) per claim of Dai et al. 2023, Deutch et al. "
        "2024 and Shen et al. 2023, per task and pooled; writes findings.json and findings.md",
    )
    parser.add_argument(
        "results_dir", metavar="RESULTS_DIR", help="results folder; every results.json under it is a cell"
    )
    parser.add_argument(
        "--n-resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        metavar="N",
        help=f"bootstrap resamples (default: {DEFAULT_RESAMPLES})",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=DEFAULT_CONFIDENCE,
        metavar="X",
        help=f"interval coverage (default: {DEFAULT_CONFIDENCE})",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="SEED", help="bootstrap seed (default: 0)")
    parser.set_defaults(func=cmd_findings)
    return parser


def cmd_findings(args: argparse.Namespace) -> int:
    """``icl-lens findings``: write the files and print the markdown table."""
    findings = write_findings(args.results_dir, args.n_resamples, args.confidence, args.seed)
    sys.stdout.write(findings_markdown(findings))
    return 0
