"""A verdict per claim of Dai et al. 2023, Deutch et al. 2024 and Shen et al. 2023:
``icl-lens findings RESULTS_DIR``.

Every ``results.json`` under the folder (any depth) is one cell; cells are grouped into studies
(model, k, the preset when the run records one, dtype and device kind) and, within a study, indexed
by task, seed and whether the model is untrained. Shen et al.'s analyses written under the same
folder (``experiments/shen_analyses.py``: order sensitivity, sparsity, the demonstration-count sweep)
are read too, and LCGD cells with a clipped gradient (``experiments/lcgd_clipping.py``).

Each claim (:mod:`icl_lens.reporting.claims`: stated in the paper's direction, with its source) gets
one row per task and two pooled rows, **tasks like these** (the tasks a random sample: t over task
values) and **these tasks** (the tasks fixed). The inference (:mod:`icl_lens.reporting.verdicts`):
within a task, a t interval over the seed values (df = seeds − 1), exact Clopper–Pearson intervals
for proportions, two one-sided tests against a declared margin for "comparable" claims, Holm's
adjustment within each claim's family. Verdicts:

* **holds** — the Holm-adjusted p < α with the effect on the claimed side (equivalence: within the margin);
* **fails** — adjusted p < α on the other side (equivalence: credibly beyond the margin);
* **inconclusive** — neither; the row says what the run could have detected at 80 % power;
* **undefined** — a ratio whose denominator is 0 (e.g. Rec2FTP where finetuning fixed nothing);
* **missing: <what>** — the cells lack an input; the row names the run that would test the claim.

``icl-lens findings --calibration`` prints the simulation of this rule's coverage and false-"holds"
rate (:mod:`icl_lens.reporting.calibration`); ``--readme-table`` the claim × task table the README
embeds (:func:`readme_table`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from icl_lens.analyses.demo_sweep import CELLS_DIR as SWEEP_CELLS_DIR
from icl_lens.cell.results import RESULTS_FILE, atomic_write_text, dig, precision_of, read_results
from icl_lens.errors import ConfigError, ResultsError
from icl_lens.papers import HANDBUILT_ICL_GD_SPARSITY
from icl_lens.reporting.aggregate import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Quantity,
    column_mean,
    stable_rng,
)
from icl_lens.reporting.claims import (
    ADAM_VS_SGD,
    BATCH_EFFECT,
    CELL_CLAIMS,
    CLAIM_IDS,
    CLIPPING,
    EQUIVALENCE_MARGINS,
    GAP_VS_K,
    GAP_VS_MODEL,
    JACCARD_THRESHOLD,
    LOW_OVERLAP,
    ORDER_DIFFERS,
    REC2FTP_THRESHOLD,
    RERUN,
    SPARSITY,
    SPARSITY_RMS_THRESHOLD,
    SPARSITY_THRESHOLD,
    AnalysisClaim,
    Claim,
    layer_metric,
    metric,
)
from icl_lens.reporting.tables import MISSING, Table, format_interval
from icl_lens.reporting.verdicts import (
    MULTIPLICITY,
    VERDICTS,
    Estimate,
    Row,
    adjust_and_decide,
    estimate_row,
    pooled_fixed,
    pooled_random,
    task_estimate,
    verdict,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CLAIM_IDS",
    "FINDINGS_FORMAT",
    "FINDINGS_JSON",
    "FINDINGS_MD",
    "POOLED",
    "THESE_TASKS",
    "VERDICTS",
    "Study",
    "check_readme_table",
    "evaluate_findings",
    "find_analyses",
    "find_results",
    "findings_markdown",
    "group_studies",
    "is_clipped",
    "layer_tables",
    "lcgd_learning_rate",
    "matrix_tables",
    "readme_table",
    "README_COMPACT",
    "table_rows",
    "update_readme_table",
    "verdict",
    "write_findings",
]

FINDINGS_JSON = "findings.json"
FINDINGS_MD = "findings.md"
FINDINGS_FORMAT = 2
"""Layout of findings.json. 1: rows with effect, interval and verdict (bootstrap over seeds);
2: rows add source, margin, se, df, raw and Holm-adjusted p-values, family and the detectable effect;
two pooled rows (tasks like these / these tasks); verdicts may be "undefined"."""
POOLED = "tasks like these (pooled)"
THESE_TASKS = "these tasks (pooled)"
ANALYSES = ("order_sensitivity", "sparsity", "demo_sweep")
SWEEP_STUDY = "demonstration sweep"
"""The study of the demonstration-count sweep's rows: the gap against k per model and between models."""
README_START = "<!-- findings-table:start -->"
README_END = "<!-- findings-table:end -->"


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
    clipped: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    @property
    def label(self) -> str:
        label = f"{self.model} · k={self.k}" + (f" · {self.preset}" if self.preset else "")
        return label + (f" · {self.precision}" if self.precision != "float32/cpu" else "")

    def tasks(self, untrained: bool = False) -> list[str]:
        return sorted({task for task, u in self.cells if u == untrained})


def is_clipped(results: dict[str, Any]) -> bool:
    """Whether the cell's finetuning clipped the gradient (any of the clips of FinetuneConfig)."""
    finetune = dig(results, "config", "finetune") or {}
    return any(finetune.get(name) is not None for name in ("clip_value", "clip_norm", "clip_global_norm"))


def find_results(results_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every verified ``results.json`` under ``results_dir`` (recursively); damaged ones are skipped,
    and so are the demonstration-count sweep's cells (a ``sweep/`` folder beside ``demo_sweep.json``,
    which the findings read instead)."""
    out = []
    for path in sorted(Path(results_dir).rglob(RESULTS_FILE)):
        if _in_demo_sweep(path, Path(results_dir)):
            continue
        try:
            out.append((path.parent, read_results(path)))
        except ResultsError as exc:
            logger.warning("skipping %s", exc)
    return out


def _in_demo_sweep(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in the cells folder of a demonstration-count sweep under ``root``."""
    folder = path.parent
    while folder != root and folder.parent != folder:
        if folder.name == SWEEP_CELLS_DIR and (folder.parent / "demo_sweep.json").exists():
            return True
        folder = folder.parent
    return False


def find_analyses(results_dir: str | Path) -> list[dict[str, Any]]:
    """Shen et al. analysis outputs (order sensitivity, sparsity, the demonstration-count sweep)
    anywhere under ``results_dir``."""
    out = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        if path.name in (RESULTS_FILE, FINDINGS_JSON):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("analysis") in ANALYSES:
            out.append(data)
    return out


def group_studies(results: Sequence[dict[str, Any]]) -> list[Study]:
    """Group cells by (model, k, preset, dtype/device kind); within a study by task, untrained and seed (a second
    cell with the same task, untrained and seed is left out with a warning). Cells whose LCGD gradient
    was clipped (``experiments/lcgd_clipping.py``) are kept apart, for the clipping claim."""
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
        if is_clipped(r):
            study.clipped[task].append(r)
            continue
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
# Rows


@dataclass
class _Context:
    """What every row of one evaluation shares."""

    n_resamples: int
    confidence: float
    seed: int


def _with_run(missing: str, run: str) -> str:
    return f"{missing} — run: {run}" if run else missing


def _rows_of_tasks(
    ctx: _Context,
    study: str,
    claim_id: str,
    statement: str,
    source: str,
    per_task: dict[str, Estimate],
    null: float,
    side: str,
    margin: float | None = None,
    run: str = "",
    family: str | None = None,
    notes: dict[str, str] | None = None,
) -> list[Row]:
    """A row per task, then the two pooled rows (tasks like these, these tasks)."""
    notes = notes or {}
    ests = [*per_task.items(), (POOLED, pooled_random(per_task)), (THESE_TASKS, pooled_fixed(per_task))]
    rows = []
    for task, est in ests:
        if est.value is None and not est.undefined and est.missing:
            est.missing = _with_run(est.missing, run)
        row = estimate_row(
            study,
            claim_id,
            statement,
            source,
            task,
            est,
            null,
            side,
            ctx.confidence,
            margin,
            family,
            notes.get(task, ""),
        )
        rows.append(row)
    return rows


def _missing_row(
    study: str, claim: AnalysisClaim | Claim, what: str, task: str = POOLED, statement: str | None = None
) -> Row:
    return Row(
        study, claim.id, statement or claim.statement, task, f"missing: {_with_run(what, claim.run)}", claim.source
    )


def _same_queries(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two cells scored the same queries in the same order (``query_ids.eval``, else the
    examples' row indices)."""
    ids_a, ids_b = dig(a, "query_ids", "eval"), dig(b, "query_ids", "eval")
    if ids_a is not None and ids_b is not None:
        return list(ids_a) == list(ids_b)
    rows_a = [e.get("row_index") for e in a.get("examples") or []]
    rows_b = [e.get("row_index") for e in b.get("examples") or []]
    return bool(rows_a) and rows_a == rows_b


def paired_difference(quantity: Quantity, first: str = "untrained", second: str = "trained") -> Quantity:
    """``quantity`` of ``pair[first]`` minus that of ``pair[second]``, per query when the two cells
    scored the same queries (paired), else of the values (the interval from the two cell intervals,
    as if independent, said in the method)."""

    def rows(pair: dict[str, Any]) -> np.ndarray | None:
        a, b = pair[first], pair[second]
        x, y = quantity.per_example(a), quantity.per_example(b)
        if x is None or y is None or len(x) != len(y) or not _same_queries(a, b):
            return None
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        return np.stack([x.reshape(len(x), -1)[:, 0], y.reshape(len(y), -1)[:, 0]], axis=1)

    def value(pair: dict[str, Any]) -> float | None:
        x, y = quantity.value(pair[first]), quantity.value(pair[second])
        return None if x is None or y is None else float(x) - float(y)

    def interval(pair: dict[str, Any]) -> list[float] | None:
        x, y = quantity.interval(pair[first]), quantity.interval(pair[second])
        if not x or not y:
            return None
        mid = (x[0] + x[1]) / 2 - (y[0] + y[1]) / 2
        return [
            mid - math.hypot((x[1] - x[0]) / 2, (y[1] - y[0]) / 2),
            mid + math.hypot((x[1] - x[0]) / 2, (y[1] - y[0]) / 2),
        ]

    return Quantity(per_example=rows, value=value, statistic=column_mean, interval=interval, needs=quantity.needs)


def _pairs(first: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]], a: str, b: str) -> list[dict[str, Any]]:
    """Cells of the same seed, paired: ``{"config": {"seed": s}, a: cell, b: cell}``."""
    by_seed = {r["config"].get("seed"): r for r in second}
    return [
        {"config": {"seed": r["config"].get("seed")}, a: r, b: by_seed[r["config"].get("seed")]}
        for r in first
        if r["config"].get("seed") in by_seed
    ]


def _claim_rows(ctx: _Context, study: Study, claim: Claim) -> list[Row]:
    label = study.label
    per_task: dict[str, Estimate] = {}
    if claim.setting == "untrained-trained":
        tasks = study.tasks(untrained=True)
        if not tasks:
            return [_missing_row(label, claim, "untrained cells")]
        quantity = paired_difference(claim.quantity)
        for task in tasks:
            pairs = _pairs(study.cells[(task, True)], study.cells.get((task, False), []), "untrained", "trained")
            rng = stable_rng(ctx.seed, label, claim.id, task)
            if not pairs:
                per_task[task] = Estimate(None, missing="trained and untrained cells of the same seed")
                continue
            per_task[task] = task_estimate(pairs, quantity, ctx.n_resamples, ctx.confidence, rng)
    else:
        untrained = claim.setting == "untrained"
        tasks = study.tasks(untrained)
        if not tasks:
            return [_missing_row(label, claim, "untrained cells" if untrained else "trained cells")]
        for task in tasks:
            rng = stable_rng(ctx.seed, label, claim.id, task)
            per_task[task] = task_estimate(
                study.cells[(task, untrained)], claim.quantity, ctx.n_resamples, ctx.confidence, rng,
                claim.counts, claim.scale, claim.cell_test,
            )  # fmt: skip
    notes = {}
    if claim.seeded_null:
        for task in per_task:
            cells = study.cells.get((task, claim.setting == "untrained"), [])
            shared = [str(r["config"].get("seed")) for r in cells if dig(r, "null_seeds", claim.seeded_null) is None]
            if len(cells) > 1 and shared:
                notes[task] = (
                    f"the null drew the same randomness in every seed (no null_seeds in seed {', '.join(shared)}): "
                    f"its seed values are not independent, so the interval may be too narrow — rerun: {RERUN}"
                )
    return _rows_of_tasks(
        ctx, label, claim.id, claim.statement, claim.source, per_task, claim.null, claim.side, claim.margin,
        claim.run, notes=notes,
    )  # fmt: skip


SERIES = Quantity(per_example=lambda r: r.get("rows"), value=lambda r: r.get("value"), needs="the analysis")
"""Pseudo-cells built from analysis outputs: per-query ``rows`` ([n, 2]: a paired difference) or a ``value``."""


def _units_estimate(values: Sequence[float], unit: str) -> Estimate:
    """The t rule over independent units (seeds or tasks) of one number each."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return Estimate(mean, n_units=n, missing=f"interval: one {unit}")
    sd = float(np.std(values, ddof=1))
    units = "task" if unit == "task" else "seed"
    method = f"{'tasks like these: ' if unit == 'task' else ''}t over {n} {units} values (df {n - 1})"
    return Estimate(mean, sd / math.sqrt(n), n - 1, 0, n, sd, method, unit=units)


def _layer_rows(ctx: _Context, study: Study, claim: Claim) -> list[Row]:
    """One claim over layers: per layer, a − b of the cells' per-layer means, t over the task values
    (tasks like these; over the seeds when one task ran), one Holm family per claim."""
    if claim.layers is None:
        return []
    a, b = claim.layers
    per_task: dict[str, np.ndarray] = {}
    seeds_of_one: np.ndarray | None = None
    for task in study.tasks(False):
        seeds = []
        for r in study.cells[(task, False)]:
            x, y = dig(a.summary(r), "per_layer"), dig(b.summary(r), "per_layer")
            if x is None or y is None or len(x) != len(y):
                continue
            seeds.append(np.asarray([np.nan if v is None else v for v in x], dtype=float) - np.asarray(
                [np.nan if v is None else v for v in y], dtype=float))  # fmt: skip
        if seeds and len({len(v) for v in seeds}) == 1:
            per_task[task] = np.mean(seeds, axis=0)
            seeds_of_one = np.stack(seeds)
    if not per_task or len({len(v) for v in per_task.values()}) != 1:
        return []
    if len(per_task) >= 2:
        units, unit, where = np.stack(list(per_task.values())), "task", POOLED
    elif seeds_of_one is not None and len(seeds_of_one) >= 2:
        units, unit, where = seeds_of_one, "seed", next(iter(per_task))
    else:
        return []
    rows = []
    for layer in range(units.shape[1]):
        column = units[:, layer]
        column = column[np.isfinite(column)]
        if not len(column):
            continue
        est = _units_estimate(list(column), unit)
        rows.append(
            estimate_row(
                study.label, claim.id, claim.statement, claim.source, f"{where} · layer {layer}", est, claim.null,
                claim.side, ctx.confidence, claim.margin, family=f"{study.label} / {claim.id} / layers",
            )
        )  # fmt: skip
    return rows


def _order_files(study: Study, analyses: Sequence[dict[str, Any]]) -> dict[str, dict[Any, dict[str, Any]]]:
    """This model's order-sensitivity outputs, task -> demonstration seed -> output."""
    by_task: dict[str, dict[Any, dict[str, Any]]] = defaultdict(dict)
    for a in analyses:
        if a.get("analysis") != "order_sensitivity" or study.model not in (dig(a, "request", "model"), a.get("model")):
            continue
        seed = dig(a, "config", "seed")
        if seed in by_task[a["task"]]:
            logger.warning("a second order-sensitivity output for %s, seed %s: left out", a["task"], seed)
            continue
        by_task[a["task"]][seed] = a
    return by_task


def _order_contrast_rows(
    ctx: _Context,
    study: Study,
    files: dict[str, dict[Any, dict[str, Any]]],
    claim: AnalysisClaim,
    contrasts: Sequence[tuple[str, str, str]],
) -> list[Row]:
    """Rows of ``(a, b, statement)`` contrasts: per query, a's output spread over orders minus b's,
    two-sided ("differ"), each contrast its own family."""
    rows: list[Row] = []
    for a_name, b_name, statement in contrasts:
        per_task: dict[str, Estimate] = {}
        for task, by_seed in sorted(files.items()):
            cells = []
            for seed, output in sorted(by_seed.items(), key=lambda kv: str(kv[0])):
                settings = {s["setting"]: s for s in output.get("settings", [])}
                if a_name in settings and b_name in settings:
                    a = np.asarray(settings[a_name]["per_example_output_std"], dtype=float)
                    b = np.asarray(settings[b_name]["per_example_output_std"], dtype=float)
                    cells.append({"config": {"seed": seed}, "rows": np.stack([a, b], axis=1)})
            if cells:
                rng = stable_rng(ctx.seed, study.label, claim.id, a_name, b_name, task)
                per_task[task] = task_estimate(cells, SERIES, ctx.n_resamples, ctx.confidence, rng)
        if per_task:
            rows += _rows_of_tasks(
                ctx, study.label, claim.id, statement, claim.source, per_task, 0.0, "≠", run=claim.run,
                family=f"{study.label} / {claim.id} / {a_name} − {b_name}",
                notes={t: f"{a_name} − {b_name}: per-query output spread over demonstration orders" for t in per_task},
            )  # fmt: skip
    return rows


def _order_rows(ctx: _Context, study: Study, analyses: Sequence[dict[str, Any]]) -> list[Row]:
    """ICL vs each SGD setting (Shen et al.: they differ); Adam vs SGD at each batch size; the largest
    vs the smallest batch of each optimizer."""
    files = _order_files(study, analyses)
    if not files:
        return [
            _missing_row(study.label, c, "order-sensitivity outputs")
            for c in (ORDER_DIFFERS, ADAM_VS_SGD, BATCH_EFFECT)
        ]
    settings: dict[str, dict[str, Any]] = {}
    for by_seed in files.values():
        for output in by_seed.values():
            for s in output.get("settings", []):
                settings.setdefault(s["setting"], s)
    sgd = sorted((s for s in settings.values() if s.get("optimizer") == "sgd"), key=lambda s: s.get("batch_size") or 0)
    adam = {s.get("batch_size"): s for s in settings.values() if s.get("optimizer") == "adam"}
    rows: list[Row] = []
    icl_contrasts = [
        ("icl", s["setting"], f"ICL's and SGD's (batch {s.get('batch_size')}) order sensitivity differ") for s in sgd
    ]
    rows += _order_contrast_rows(ctx, study, files, ORDER_DIFFERS, icl_contrasts if "icl" in settings else [])
    if not any(r.claim == ORDER_DIFFERS.id for r in rows):
        rows.append(_missing_row(study.label, ORDER_DIFFERS, "ICL and SGD settings in the order-sensitivity outputs"))
    optimizer_contrasts = [
        (
            adam[s.get("batch_size")]["setting"],
            s["setting"],
            f"Adam's and SGD's order sensitivity differ (batch {s.get('batch_size')})",
        )
        for s in sgd
        if s.get("batch_size") in adam
    ]
    rows += _order_contrast_rows(ctx, study, files, ADAM_VS_SGD, optimizer_contrasts)
    if not optimizer_contrasts:
        rows.append(_missing_row(study.label, ADAM_VS_SGD, "Adam and SGD at one batch size"))
    batch_contrasts = []
    for optimizer, members in (("SGD", sgd), ("Adam", sorted(adam.values(), key=lambda s: s.get("batch_size") or 0))):
        if len(members) >= 2:
            low, high = members[0], members[-1]
            sizes = f"batch {high.get('batch_size')} and {low.get('batch_size')}"
            batch_contrasts.append(
                (high["setting"], low["setting"], f"{optimizer}'s order sensitivity differs between {sizes}")
            )
    rows += _order_contrast_rows(ctx, study, files, BATCH_EFFECT, batch_contrasts)
    if not batch_contrasts:
        rows.append(_missing_row(study.label, BATCH_EFFECT, "two batch sizes of one optimizer"))
    return rows


def _sweep_rows(analyses: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for a in analyses if a.get("analysis") == "demo_sweep" for row in a.get("rows", [])]


SweepGaps = dict[str, dict[tuple[str, Any], dict[Any, float]]]
"""model -> (task, seed) -> k -> the ICL − GD accuracy gap the demonstration-count sweep measured."""


def _sweep_gaps(analyses: Sequence[dict[str, Any]]) -> SweepGaps:
    """The sweep's gaps by model, (task, seed) and k; a model without a gap to read is absent."""
    gaps: SweepGaps = defaultdict(lambda: defaultdict(dict))
    for r in _sweep_rows(analyses):
        if r.get("gap_accuracy") is not None:
            gaps[r["model"]][(r["task"], r.get("seed"))][r["k"]] = float(r["gap_accuracy"])
    return gaps


def _gap_k_rows(ctx: _Context, gaps: SweepGaps) -> list[Row]:
    """Per model of the sweep, per task and seed, the least-squares slope of the ICL − GD accuracy gap over
    log₂ k; t over seeds. The rows belong to the sweep's own study (its cells run at one fixed learning
    rate and k of their own, not a preset study's); one family per model."""
    out: list[Row] = []
    for model, by_cell in sorted(gaps.items()):
        per_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for (task, seed), at_k in sorted(by_cell.items(), key=lambda kv: str(kv[0])):
            if len(at_k) >= 2:
                ks = np.log2(np.asarray(list(at_k), dtype=float))
                slope = float(np.polyfit(ks, np.asarray(list(at_k.values())), 1)[0])
                per_task[task].append({"config": {"seed": seed}, "value": slope})
        statement = f"{GAP_VS_K.statement}: {model}"
        if not per_task:
            what = "a demonstration-count sweep with two k or more"
            out.append(_missing_row(SWEEP_STUDY, GAP_VS_K, what, statement=statement))
            continue
        estimates = {
            task: task_estimate(cells, SERIES, ctx.n_resamples, ctx.confidence, stable_rng(ctx.seed, model, task))
            for task, cells in sorted(per_task.items())
        }
        for est in estimates.values():
            if est.missing.startswith("interval"):
                est.missing = "interval: one seed of the sweep (slopes vary by seed; run it with two seeds or more)"
        out += _rows_of_tasks(
            ctx, SWEEP_STUDY, GAP_VS_K.id, statement, GAP_VS_K.source, estimates, 0.0, "≠", run=GAP_VS_K.run,
            family=f"{SWEEP_STUDY} / {GAP_VS_K.id} / {model}",
            notes={t: "slope of (ICL − GD accuracy) per doubling of k, per seed" for t in estimates},
        )  # fmt: skip
    return out


def _gap_model_rows(ctx: _Context, gaps: SweepGaps) -> list[Row]:
    """Between two models of the sweep: per task and seed, the difference of their gaps (mean over the
    k both ran); t over seeds. One family per pair of models."""
    models = sorted(gaps)
    out: list[Row] = []
    for i, first in enumerate(models):
        for second in models[i + 1 :]:
            per_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for (task, seed), mine in gaps[first].items():
                other = gaps[second].get((task, seed)) or {}
                common = sorted(set(mine) & set(other))
                if common:
                    value = float(np.mean([mine[k] - other[k] for k in common]))
                    per_task[task].append({"config": {"seed": seed}, "value": value})
            estimates = {
                t: task_estimate(c, SERIES, ctx.n_resamples, ctx.confidence, stable_rng(ctx.seed, first, second, t))
                for t, c in sorted(per_task.items())
            }
            if estimates:
                out += _rows_of_tasks(
                    ctx, SWEEP_STUDY, GAP_VS_MODEL.id, f"{GAP_VS_MODEL.statement}: {first} − {second}",
                    GAP_VS_MODEL.source, estimates, 0.0, "≠", run=GAP_VS_MODEL.run,
                    family=f"{SWEEP_STUDY} / {GAP_VS_MODEL.id} / {first} − {second}",
                )  # fmt: skip
    return out


def _clipping_rows(ctx: _Context, study: Study) -> list[Row]:
    """LCGD's SimAM with the reference clip (global ℓ2 12) minus without, paired by seed and query."""
    quantity = paired_difference(layer_metric(metric("lcgd", "simam")), "clipped", "unclipped")
    per_task: dict[str, Estimate] = {}
    notes: dict[str, str] = {}
    for task, clipped in sorted(study.clipped.items()):
        reference = [r for r in clipped if dig(r, "config", "finetune", "clip_global_norm") is not None]
        pairs = _pairs(reference, study.cells.get((task, False), []), "clipped", "unclipped")
        if pairs:
            rng = stable_rng(ctx.seed, study.label, CLIPPING.id, task)
            per_task[task] = task_estimate(pairs, quantity, ctx.n_resamples, ctx.confidence, rng)
            rates = {(lcgd_learning_rate(p["clipped"]), lcgd_learning_rate(p["unclipped"])) for p in pairs}
            differing = sorted(f"{a:g} vs {b:g}" for a, b in rates if a is not None and b is not None and a != b)
            notes[task] = "clipped − unclipped LCGD cell of the same seed" + (
                f"; learning rates differ ({', '.join(differing)}): not only the clip changed" if differing else ""
            )
    if not per_task:
        return [_missing_row(study.label, CLIPPING, "LCGD cells with a global-norm clip beside unclipped ones")]
    return _rows_of_tasks(
        ctx, study.label, CLIPPING.id, CLIPPING.statement, CLIPPING.source, per_task, 0.0, ">", run=CLIPPING.run,
        notes=notes,
    )  # fmt: skip


def lcgd_learning_rate(results: dict[str, Any]) -> float | None:
    """The learning rate LCGD ran with: its own when chosen apart (``lcgd_lr``), else the cell's."""
    value = dig(results, "lcgd_lr", "lr") or dig(results, "lr", "lr") or dig(results, "config", "lr")
    return None if value is None else float(value)


def _sparsity_rows(study: Study, analyses: Sequence[dict[str, Any]]) -> list[Row]:
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
                    study.label, SPARSITY.id, SPARSITY.statement, POOLED, verdict([value, value], handbuilt, "<"),
                    SPARSITY.source, value, [value, value], handbuilt, "<",
                    test="fixed weights: a count, no sampling (no p-value, in no family)",
                    note=f"fraction of W_Q/W_K/W_V entries with |w| < {thresholds[j]:g}{unit}",
                )
            ]  # fmt: skip
    return [_missing_row(study.label, SPARSITY, "sparsity output for this model")]


def evaluate_findings(
    results: Sequence[dict[str, Any]],
    analyses: Sequence[dict[str, Any]] = (),
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Every claim's rows for every study of ``results`` (cell dicts) and ``analyses``, Holm-adjusted
    within each family, with their verdicts."""
    if n_resamples < 2:
        raise ConfigError(f"n_resamples must be >= 2, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    ctx = _Context(n_resamples, confidence, seed)
    rows: list[Row] = []
    layer_rows: list[Row] = []
    gaps = _sweep_gaps(analyses)
    for study in group_studies(results):
        if not study.tasks(untrained=False):
            continue  # untrained-only studies are read by their trained study's claims
        by_claim: dict[str, list[Row]] = defaultdict(list)
        for claim in CELL_CLAIMS:
            by_claim[claim.id] = _claim_rows(ctx, study, claim)
        for row in _order_rows(ctx, study, analyses):
            by_claim[row.claim].append(row)
        if study.model not in gaps:  # else the sweep's own study holds its rows
            by_claim[GAP_VS_K.id] = [
                _missing_row(study.label, GAP_VS_K, "a demonstration-count sweep with two k or more for this model")
            ]
        by_claim[CLIPPING.id] = _clipping_rows(ctx, study)
        by_claim[SPARSITY.id] = _sparsity_rows(study, analyses)
        if len({r.get("model") for r in _sweep_rows(analyses)}) < 2:
            by_claim[GAP_VS_MODEL.id] = [_missing_row(study.label, GAP_VS_MODEL, "a sweep of two models or more")]
        for cid in CLAIM_IDS:
            rows.extend(by_claim.get(cid, []))
        for claim in CELL_CLAIMS:
            layer_rows.extend(_layer_rows(ctx, study, claim))
    rows += _gap_k_rows(ctx, gaps) + _gap_model_rows(ctx, gaps)
    alpha = 1 - confidence
    adjust_and_decide([*rows, *layer_rows], alpha)
    return {
        "findings_format": FINDINGS_FORMAT,
        "settings": {
            "n_resamples": n_resamples,
            "confidence": confidence,
            "alpha": alpha,
            "seed": seed,
            "multiplicity": MULTIPLICITY,
            "equivalence_margins": dict(EQUIVALENCE_MARGINS),
            "rec2ftp_threshold": REC2FTP_THRESHOLD,
            "jaccard_threshold": JACCARD_THRESHOLD,
            "low_overlap": LOW_OVERLAP,
            "sparsity_threshold": SPARSITY_THRESHOLD,
            "sparsity_rms_threshold": SPARSITY_RMS_THRESHOLD,
        },
        "method": METHOD_TEXT,
        "verdicts": VERDICT_TEXT,
        "rows": [r.to_dict() for r in rows],
        "layer_rows": [r.to_dict() for r in layer_rows],
    }


METHOD_TEXT = (
    "Within a task: a t interval over the seed values (df = seeds − 1); with one seed, the within-seed query "
    "bootstrap SE (said on the row); proportions also get the exact Clopper–Pearson interval of their counts "
    "(the row's interval is the hull). Pooled: 'tasks like these' treats the tasks as a random sample (t over task "
    "values, df = tasks − 1); 'these tasks' holds them fixed (SE from each task's, Satterthwaite df). "
    "Comparable claims: two one-sided tests against the margin the claim declares."
)
VERDICT_TEXT = (
    "holds: Holm-adjusted p < α on the claimed side (equivalence: within the margin); fails: on the other side "
    "(equivalence: beyond the margin); inconclusive: neither (the note says what the run could detect at 80 % "
    "power); undefined: a ratio with a zero denominator; missing: an input is absent (the note names the run)"
)


# ---------------------------------------------------------------------------------------------
# Output


FINDINGS_HEADER = (
    "study",
    "claim",
    "source",
    "task",
    "seeds",
    "effect [interval]",
    "null",
    "p (Holm)",
    "test",
    "verdict",
)
COLUMN_NAMES = {POOLED: "tasks like these", THESE_TASKS: "these tasks"}


def _null_text(r: dict[str, Any]) -> str:
    if r.get("null") is None:
        return MISSING
    if r.get("side") == "≈":
        return f"{r['null']:g} ± {r['margin']:g}"
    return f"{r['side']} {r['null']:g}"


def _p_text(r: dict[str, Any]) -> str:
    if r.get("p_value") is None:
        return MISSING
    return f"{r['p_value']:.3g} ({r['p_adjusted']:.3g})" if r.get("p_adjusted") is not None else f"{r['p_value']:.3g}"


def table_rows(findings: dict[str, Any]) -> list[list[str]]:
    """The findings as rows of strings (:data:`FINDINGS_HEADER`), for markdown and HTML."""
    out = []
    for r in findings["rows"]:
        test = r["test"] + (f" ({r['note']})" if r["note"] else "")
        out.append(
            [
                r["study"],
                r["statement"],
                r.get("source", ""),
                r["task"],
                MISSING if r["n_seeds"] is None else str(r["n_seeds"]),
                format_interval(r["effect"], r["interval"]),
                _null_text(r),
                _p_text(r),
                test,
                r["verdict"],
            ]
        )
    return out


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    tasks = sorted({r["task"] for r in rows} - {POOLED, THESE_TASKS})
    return tasks + [t for t in (POOLED, THESE_TASKS) if any(r["task"] == t for r in rows)]


def matrix_tables(findings: dict[str, Any], bold: bool = True) -> list[Table]:
    """The findings at a glance, one table per study: a row per claim, a column per task and the two
    pooled columns (tasks like these, these tasks), each cell ``effect [interval] verdict`` (``–``
    where the claim has no row for that task). Claims keep their order; tasks are sorted."""
    tables = []
    studies = list(dict.fromkeys(r["study"] for r in findings["rows"]))
    for study in studies:
        rows = [r for r in findings["rows"] if r["study"] == study]
        columns = _columns(rows)
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
        header = ["claim", *(COLUMN_NAMES.get(t, t) for t in columns)]
        tables.append(Table(header, body, caption=study))
    return tables


def layer_tables(findings: dict[str, Any]) -> list[Table]:
    """The per-layer rows, one table per study: a row per claim, a column per layer, each cell
    ``effect verdict`` (Holm over the layers of the claim)."""
    tables = []
    layer_rows = findings.get("layer_rows") or []
    for study in dict.fromkeys(r["study"] for r in layer_rows):
        rows = [r for r in layer_rows if r["study"] == study]
        layers = list(dict.fromkeys(r["task"].rsplit(" · ", 1)[-1] for r in rows))
        cells = {(r["statement"], r["task"].rsplit(" · ", 1)[-1]): r for r in rows}
        body = []
        for claim in dict.fromkeys(r["statement"] for r in rows):
            line = [claim]
            for layer in layers:
                r = cells.get((claim, layer))
                line.append(MISSING if r is None else f"{format_interval(r['effect'], None)} {r['verdict']}")
            body.append(line)
        over = rows[0]["task"].rsplit(" · ", 1)[0]
        caption = f"{study}: per layer ({COLUMN_NAMES.get(over, over)}; Holm over the layers of each claim)"
        tables.append(Table(["claim", *layers], body, caption=caption))
    return tables


def findings_markdown(findings: dict[str, Any]) -> str:
    """The findings as markdown: the settings, the inference and the verdict rule (with the
    multiplicity adjustment), each study's claim × task matrix, then every row with its test."""
    s = findings["settings"]
    lines = [
        f"### Findings ({100 * s['confidence']:g} % intervals, {s['n_resamples']} resamples, seed {s['seed']})",
        "",
    ]
    if "method" in findings:
        lines += [findings["method"], ""]
    lines += [findings["verdicts"] + ".", ""]
    if "multiplicity" in s:
        lines += [f"Multiplicity: {s['multiplicity']}; findings.json holds the raw and the adjusted p.", ""]
    if "equivalence_margins" in s:
        margins = ", ".join(f"{k} ±{v:g}" for k, v in s["equivalence_margins"].items())
        lines += [f"Equivalence margins, declared with the claims: {margins}.", ""]
    for matrix in matrix_tables(findings):
        lines += [f"#### {matrix.caption}", "", matrix.markdown(), ""]
    for table in layer_tables(findings):
        lines += [f"#### {table.caption}", "", table.markdown(), ""]
    header = list(FINDINGS_HEADER)
    lines += ["#### Every row, with its test", "", Table(header, table_rows(findings)).markdown()]
    return "\n".join(lines) + "\n"


_README_START_OPEN = README_START.removesuffix(" -->")
"""The start marker without its closing ``-->``: a compact table's marker continues it."""
README_COMPACT = "compact"
"""The word after :data:`README_START` that marks the compact table (the pooled columns, and per
task only how many verdicts of each kind)."""


def readme_table(findings: dict[str, Any], study: str | None = None, compact: bool = False) -> str:
    """The claim × task table of one study (default: the study with the most rows that have a
    verdict) as markdown between :data:`README_START` and :data:`README_END`, for a page to embed
    verbatim. Each cell: ``effect [interval] verdict``; the source column cites the paper.

    ``compact`` keeps the two pooled columns and replaces the task columns by one that counts each
    verdict over the tasks (its start marker says ``compact``, so :func:`check_readme_table` knows)."""
    rows = findings["rows"]
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r["study"]] += r["verdict"] in VERDICTS
    if not counts:
        raise ResultsError("the findings hold no row")
    default_study = max(counts, key=lambda k: (counts[k], k))
    study = default_study if study is None else study
    mine = [r for r in rows if r["study"] == study]
    if not mine:
        raise ResultsError(f"no finding of study {study!r}; have {sorted({r['study'] for r in rows})}")
    columns = _columns(mine)
    cells = {(r["statement"], r["task"]): r for r in mine}
    sources = {r["statement"]: r.get("source", "") for r in mine}
    pooled = [t for t in columns if t in COLUMN_NAMES]
    tasks = [t for t in columns if t not in COLUMN_NAMES]

    def cell_text(claim: str, task: str) -> str:
        r = cells.get((claim, task))
        effect = MISSING if r is None else format_interval(r["effect"], r["interval"])
        verdict_text = MISSING if r is None else r["verdict"].split(":")[0]
        return verdict_text if effect == MISSING else f"{effect} {verdict_text}"

    def verdict_counts(claim: str) -> str:
        kinds = [cells[(claim, t)]["verdict"].split(":")[0] for t in tasks if (claim, t) in cells]
        order = [*VERDICTS, *sorted(set(kinds) - set(VERDICTS))]
        return " · ".join(f"{kinds.count(v)} {v}" for v in order if kinds.count(v)) or MISSING

    body = []
    for claim in dict.fromkeys(r["statement"] for r in mine):
        if compact:
            body.append([claim, sources[claim], *(cell_text(claim, t) for t in pooled), verdict_counts(claim)])
        else:
            body.append([claim, sources[claim], *(cell_text(claim, t) for t in columns)])
    shown = [*pooled, f"per task ({len(tasks)})"] if compact else columns
    table = Table(["claim", "source", *(COLUMN_NAMES.get(t, t) for t in shown)], body).markdown()
    s = findings["settings"]
    flag = (" --compact" if compact else "") + (f" --study '{study}'" if study != default_study else "")
    caption = (
        f"Findings for {study} ({100 * s['confidence']:g} % intervals; verdicts Holm-adjusted within each claim; "
        f"generated by `icl-lens findings RESULTS_DIR --readme-table{flag}` from findings.json)."
    )
    start = f"{_README_START_OPEN} {README_COMPACT} -->" if compact else README_START
    return f"{start}\n{caption}\n\n{table}\n{README_END}\n"


def readme_blocks(text: str) -> list[str]:
    """Every block of ``text`` from a :data:`README_START` line (plain or compact) to the next
    :data:`README_END` (both lines included), in order."""
    blocks: list[str] = []
    position = 0
    while True:
        start = text.find(_README_START_OPEN, position)
        end = text.find(README_END, start)
        if start < 0 or end < 0:
            return blocks
        blocks.append(text[start : end + len(README_END)] + "\n")
        position = end + len(README_END)


def readme_block(text: str) -> str | None:
    """The first of :func:`readme_blocks`, None when the markers are absent."""
    blocks = readme_blocks(text)
    return blocks[0] if blocks else None


_CAPTION_STUDY = re.compile(r"^Findings for (.+) \([\d.]+ % intervals")


def block_study(block: str) -> str | None:
    """The study a findings block shows, read from its caption (None for bare markers)."""
    lines = block.splitlines()
    match = _CAPTION_STUDY.match(lines[1]) if len(lines) > 1 else None
    return match.group(1) if match else None


def _blocks_of(findings: dict[str, Any], blocks: Sequence[str], study: str | None) -> list[tuple[str, str | None]]:
    """The blocks of a page that show a study of ``findings`` (or ``study``), each with the study to
    render; bare markers take ``study`` (None: the default study). Blocks of other studies (another
    run's table on the same page) are not these findings' to check or rewrite."""
    studies = {r["study"] for r in findings["rows"]}
    mine = []
    for block in blocks:
        shown = block_study(block)
        if shown is None:
            mine.append((block, study))
        elif shown == study or (study is None and shown in studies):
            mine.append((block, shown))
    return mine


def _no_block_of(page: str | Path, findings: dict[str, Any], blocks: Sequence[str]) -> str:
    if not blocks:
        return f"{page}: no {README_START} … {README_END} block"
    shown = sorted({str(block_study(b)) for b in blocks})
    return f"{page}: no findings block of these findings' studies (the page shows {shown})"


def check_readme_table(
    readme: str | Path, findings: dict[str, Any] | str | Path, study: str | None = None
) -> list[str]:
    """Problems (empty: none) with a page's findings tables: each block that shows a study of
    ``findings`` (a dict or a findings.json path) must equal :func:`readme_table` of it, compact when
    its start marker says so. A page may hold tables of several runs, one block each."""
    loaded = findings if isinstance(findings, dict) else json.loads(Path(findings).read_text(encoding="utf-8"))
    blocks = readme_blocks(Path(readme).read_text(encoding="utf-8"))
    mine = _blocks_of(loaded, blocks, study)
    if not mine:
        return [_no_block_of(readme, loaded, blocks)]
    if any(block != readme_table(loaded, shown, compact=_is_compact(block)) for block, shown in mine):
        return [
            f"{readme}: the findings table differs from findings.json; "
            f"run `icl-lens findings RESULTS_DIR --update-page {readme}`"
        ]
    return []


def _is_compact(block: str) -> bool:
    """Whether a page's findings block is the compact form (its start marker says so)."""
    return block.splitlines()[0].split()[2:3] == [README_COMPACT]


def update_readme_table(page: str | Path, findings: dict[str, Any], study: str | None = None) -> bool:
    """Replace each findings block of ``page`` that shows a study of ``findings`` (bare markers: the
    default study, or ``study``) by :func:`readme_table`, in the form (full or compact) its start
    marker names; True when the page changed. The page must already hold the markers: where the
    table goes is the page author's choice, not this function's."""
    page = Path(page)
    text = page.read_text(encoding="utf-8")
    blocks = readme_blocks(text)
    mine = _blocks_of(findings, blocks, study)
    if not mine:
        raise ResultsError(_no_block_of(page, findings, blocks) + " to update; add the two marker lines")
    new_text = text
    for block, shown in mine:
        new_text = new_text.replace(block, readme_table(findings, shown, compact=_is_compact(block)), 1)
    if new_text == text:
        return False
    atomic_write_text(page, new_text)
    logger.info("updated the findings table in %s", page)
    return True


def write_findings(
    results_dir: str | Path, n_resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0
) -> dict[str, Any]:
    """Evaluate the claims on every cell under ``results_dir``; write findings.json and findings.md."""
    results_dir = Path(results_dir)
    cells = [r for _, r in find_results(results_dir)]
    analyses = find_analyses(results_dir)
    if not cells and not analyses:
        raise ResultsError(
            f"no finished cell (verified {RESULTS_FILE}) and no analysis output ({', '.join(ANALYSES)}) "
            f"under {results_dir}"
        )
    findings = evaluate_findings(cells, analyses, n_resamples, confidence, seed)
    atomic_write_text(results_dir / FINDINGS_JSON, json.dumps(findings, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(results_dir / FINDINGS_MD, findings_markdown(findings))
    logger.info("wrote %s and %s", results_dir / FINDINGS_JSON, results_dir / FINDINGS_MD)
    return findings
