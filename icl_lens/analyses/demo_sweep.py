"""The ICL–GD gap as the number of demonstrations grows, across models (Shen et al. 2023).

A resumable sweep of :class:`~icl_lens.cell.experiment.ExperimentConfig` cells (model × task × k × seed)
on :func:`icl_lens.runs.sweep.run_cells`, then a summary per (model, task, k):

    gap_acc = accuracy_ICL − accuracy_FT
    SimAOU  = mean over layers and examples of cos(h_ICL − h_ZSL, h_FT − h_ZSL)   (docs/concepts/metrics.md)

each as mean and std over seeds. A k whose demonstrations do not all fit in the model's context
(or in ``max_context``) beside the longest query is **skipped, not truncated** — a truncated cell
would silently measure a smaller k — and the reason is written to ``OUT/<cell>/skipped.json``
so a rerun skips it without loading the model.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from icl_lens import models
from icl_lens.cell.experiment import ExperimentConfig, apply_task_overrides
from icl_lens.cell.presets import FINDINGS_SEEDS
from icl_lens.cell.results import accuracy, is_complete, metric_summary, metric_value, read_results, write_results
from icl_lens.cell.store import RuntimeOptions, cell_path, finished_results
from icl_lens.errors import ConfigError, IclLensError, PromptError, ResultsError
from icl_lens.models.backends import Model
from icl_lens.prompts import encode_prompts
from icl_lens.runs.sweep import run_cells
from icl_lens.tasks import get_task, load_split, sample_demonstrations, sample_queries

logger = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
SKIP_FILE = "skipped.json"
CELLS_DIR = "sweep"
"""The folder, beside ``demo_sweep.json``, that holds the sweep's cells: ``icl-lens findings`` reads the
sweep through ``demo_sweep.json`` and leaves these cells out of its studies (each k would otherwise
be a study of its own, without the nulls)."""


def _default_base() -> ExperimentConfig:
    # No costly nulls: the sweep reports the accuracy gap and SimAOU, whose uniform-random
    # baseline is computed anyway; the nulls of SimAOU belong to the findings run.
    return ExperimentConfig(settings=("zsl", "icl", "ft"), lr=1e-3, limit=100, nulls=())


@dataclass(frozen=True)
class DemoSweepConfig:
    """The grid of the demonstration-count sweep.

    Args:
        tasks: task names.
        models: model names (None: every named offline model, :func:`icl_lens.models.list_models`).
        ks: numbers of demonstrations.
        seeds: demonstration sampling seeds (default: the findings runs' five; the slope of the gap
            over k gets a t interval over seeds, which one seed cannot give).
        base: every other cell setting (default: settings ZSL, ICL, FT; lr 1e-3 fixed — give
            ``lr=None`` for the per-cell lr sweep; limit 100; none of the costly nulls). Its task, model, k and seed are
            replaced per cell.
        max_context: treat the context as at most this many tokens when deciding which k fit
            (None: the model's ``n_ctx``).
    """

    tasks: tuple[str, ...] = ("sst2",)
    models: tuple[str, ...] | None = None
    ks: tuple[int, ...] = DEFAULT_KS
    seeds: tuple[int, ...] = FINDINGS_SEEDS
    base: ExperimentConfig = field(default_factory=_default_base)
    max_context: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.models is not None:
            object.__setattr__(self, "models", tuple(self.models))
            if not self.models:
                raise ConfigError("models is empty (None means every named model)")
        if not self.tasks or not self.ks or not self.seeds:
            raise ConfigError("tasks, ks and seeds must be non-empty")
        if any(k < 1 for k in self.ks):
            raise ConfigError(f"every k must be >= 1, got {list(self.ks)}")
        if "ft" not in self.base.settings:
            raise ConfigError("the sweep measures the ICL–GD gap: base.settings must include 'ft'")
        if self.max_context is not None and self.max_context < 2:
            raise ConfigError(f"max_context must be >= 2 or None, got {self.max_context}")

    def model_names(self) -> list[str]:
        if self.models is not None:
            return list(self.models)
        return [m.name for m in models.list_models()]

    def cells(self, model: str) -> list[ExperimentConfig]:
        return [
            replace(self.base, task=task, model=model, k=k, seed=seed)
            for task in self.tasks
            for k in self.ks
            for seed in self.seeds
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "models": None if self.models is None else list(self.models),
            "ks": list(self.ks),
            "seeds": list(self.seeds),
            "base": self.base.to_dict(),
            "max_context": self.max_context,
        }


def skip_path(out_dir: str | Path, cfg: ExperimentConfig) -> Path:
    return Path(out_dir) / cfg.cell_name() / SKIP_FILE


def recorded_skip(out_dir: str | Path, cfg: ExperimentConfig, max_context: int | None) -> dict[str, Any] | None:
    """The skip record of a cell, if one was written for this configuration and context limit."""
    path = skip_path(out_dir, cfg)
    if not is_complete(path):
        return None
    record = read_results(path)
    if record.get("config") != json.loads(json.dumps(cfg.to_dict())) or record.get("max_context") != max_context:
        return None
    return record


def context_fit(model: Model, cfg: ExperimentConfig, max_context: int | None = None) -> str | None:
    """Why the cell's k demonstrations cannot all be used (None when they fit)."""
    n_ctx = model.cfg.n_ctx if max_context is None else min(model.cfg.n_ctx, max_context)
    task = apply_task_overrides(get_task(cfg.task), cfg)
    train = load_split(task, task.train_split)
    if cfg.k > len(train):
        return f"k={cfg.k} demonstrations requested but the {task.train_split} split has {len(train)} rows"
    demos = sample_demonstrations(task, cfg.k, cfg.seed, train=train)
    queries = sample_queries(task, cfg.limit, cfg.eval_seed)
    try:
        prompts = encode_prompts(model.tokenizer, task, demos, queries, cfg.prompt, n_ctx)
    except PromptError as exc:
        return f"a query does not fit in the context of {n_ctx} tokens: {exc}"
    if prompts.k < cfg.k:
        longest = max(len(q) for q in prompts.queries)
        return (
            f"only {prompts.k} of {cfg.k} demonstrations fit in the context of {n_ctx} tokens beside the "
            f"longest query ({longest} tokens) and the longest answer"
        )
    return None


@dataclass
class DemoSweepResult:
    """Per-cell rows, per (model, task, k) summary over seeds, and the skipped cells with reasons."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"analysis": "demo_sweep", **asdict(self)}


def _accuracy(results: dict[str, Any], setting: str) -> float:
    value = accuracy(results, setting)
    if value is None:
        raise ResultsError(f"cell {results['config'].get('model')!r} has no {setting} accuracy")
    return value


def cell_row(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers the sweep reports from one cell's results dict."""
    cfg = results["config"]
    row = {
        "model": cfg["model"],
        "task": results["task"]["name"],
        "k": cfg["k"],
        "seed": cfg["seed"],
        "k_used": results["prompts"]["k_used"],
        "lr": results["lr"].get("lr"),
        "accuracy": dict(results["accuracy"]),
        "gap_accuracy": _accuracy(results, "icl") - _accuracy(results, "ft"),
        "simaou_ft": metric_value(results, "ft", "simaou"),
        "simaou_random": metric_value(results, None, "simaou_random"),
    }
    if metric_summary(results, "lcgd", "simaou") is not None:
        row["simaou_lcgd"] = metric_value(results, "lcgd", "simaou")
        row["gap_accuracy_lcgd"] = _accuracy(results, "icl") - _accuracy(results, "lcgd")
    return row


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    mean = sum(finite) / len(finite)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite))


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (population) std over seeds of each number, per (model, task, k)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["task"], row["k"])].append(row)
    out = []
    for (model, task, k), members in sorted(groups.items()):
        entry: dict[str, Any] = {"model": model, "task": task, "k": k, "n_seeds": len(members)}
        for key in ("gap_accuracy", "simaou_ft", "simaou_random", "simaou_lcgd", "gap_accuracy_lcgd"):
            if any(key in m for m in members):
                entry[key], entry[f"{key}_std"] = _mean_std([m.get(key) for m in members])
        for setting in members[0]["accuracy"]:
            entry[f"accuracy_{setting}"], _ = _mean_std([m["accuracy"][setting] for m in members])
        out.append(entry)
    return out


def run_demo_sweep(
    cfg: DemoSweepConfig,
    out_dir: str | Path,
    runtime: RuntimeOptions = RuntimeOptions(),
    model_loader: Callable[..., Model] | None = None,
) -> DemoSweepResult:
    """Run (or resume) the sweep into ``out_dir`` and summarise it."""
    if model_loader is None:
        model_loader = models.load_model  # looked up at call time, so a patched loader is used
    out_dir = Path(out_dir)
    all_results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for model_name in cfg.model_names():
        cells = cfg.cells(model_name)
        known_skips = {c.cell_name(): recorded_skip(out_dir, c, cfg.max_context) for c in cells}
        pending = [
            c
            for c in cells
            if known_skips[c.cell_name()] is None
            and finished_results(cell_path(out_dir, c, runtime), c, runtime) is None
        ]
        model = None
        if pending:
            base = cfg.base
            init: dict[str, Any] = {"untrained_init": base.untrained_init} if base.untrained else {}
            try:
                model = model_loader(
                    model_name,
                    device=runtime.device,
                    dtype=runtime.dtype,
                    untrained=base.untrained,
                    seed=base.untrained_seed,
                    **init,
                )
            except IclLensError as exc:
                logger.warning("skipping model %s: %s", model_name, exc)
                skipped.extend(
                    {
                        "model": model_name,
                        "task": c.task,
                        "k": c.k,
                        "seed": c.seed,
                        "reason": f"model failed to load: {exc}",
                    }
                    for c in cells
                )
                continue
            for c in pending:
                reason = context_fit(model, c, cfg.max_context)
                if reason is not None:
                    logger.info("skipping %s: %s", c.cell_name(), reason)
                    record = {
                        "config": c.to_dict(),
                        "max_context": cfg.max_context,
                        "reason": reason,
                        "n_ctx": model.cfg.n_ctx,
                    }
                    write_results(skip_path(out_dir, c), record)
                    known_skips[c.cell_name()] = read_results(skip_path(out_dir, c))
        runnable = [c for c in cells if known_skips[c.cell_name()] is None]
        for c in cells:
            skip = known_skips[c.cell_name()]
            if skip is not None:
                skipped.append(
                    {"model": model_name, "task": c.task, "k": c.k, "seed": c.seed, "reason": skip["reason"]}
                )

        def loader(name, model=model, **kwargs):  # the model loaded for planning serves run_cells too
            return model if model is not None else model_loader(name, **kwargs)

        all_results.extend(run_cells(runnable, out_dir, runtime, model_loader=loader))
        del model
    rows = [cell_row(r) for r in all_results]
    return DemoSweepResult(rows=rows, summary=summarise(rows), skipped=skipped, config=cfg.to_dict())
