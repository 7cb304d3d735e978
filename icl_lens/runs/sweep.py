"""Resumable sweeps over cells (task × model × k × seed × variant).

:func:`run_cells` runs every cell of a list that is not already finished in the output folder (one
cell's identity, folder and run: :mod:`icl_lens.cell.store`), loading each model once per (model,
untrained) group, inline or through an executor (:mod:`icl_lens.runs.executors`). Killing a sweep at
any point and rerunning it ends with exactly the files an uninterrupted sweep writes (timestamps and
timings aside); temporary files a killed write left behind are removed on the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from icl_lens import models
from icl_lens.cell.experiment import FINETUNED_SETTINGS, ExperimentConfig, apply_task_overrides, cell_rows
from icl_lens.cell.results import remove_stray_temp_files
from icl_lens.cell.store import (
    ModelLoader,
    RuntimeOptions,
    cell_identity,
    cell_path,
    finished_results,
    run_cell,
)
from icl_lens.errors import ConfigError
from icl_lens.evaluation import check_record_fits
from icl_lens.runs.executors import ExecutorOptions, run_with_executor
from icl_lens.tasks import get_task, load_split
from icl_lens.training.lr_sweep import REFERENCE_LRS

logger = logging.getLogger(__name__)


def run_cells(
    cells: Sequence[ExperimentConfig],
    out_dir: str | Path,
    runtime: RuntimeOptions = RuntimeOptions(),
    model_loader: ModelLoader | None = None,
    on_result: Callable[[ExperimentConfig, dict[str, Any]], None] | None = None,
    executor: str | ExecutorOptions = "inline",
) -> list[dict[str, Any]]:
    """Run every cell not already finished in ``out_dir``; return all cells' results in order.

    ``executor``: ``"inline"`` (default: one cell after another in this process), ``"local"``
    (worker processes on this machine) or ``"slurm"`` (one SLURM job per cell), or an
    :class:`~icl_lens.runs.executors.ExecutorOptions`. Every executor writes the same files; a cell that
    fails under ``local``/``slurm`` stays unfinished, and the call raises
    :class:`~icl_lens.runs.executors.SweepError` naming it and its logs once the other cells are done.
    """
    if model_loader is None:
        model_loader = models.load_model  # looked up at call time, so a patched loader is used
    out_dir = Path(out_dir)
    results: list[dict[str, Any] | None] = []
    todo: list[int] = []
    identities = [cell_identity(cfg, runtime) for cfg in cells]  # reads every task first: fail before loading
    for index, cfg in enumerate(cells):
        path = cell_path(out_dir, cfg, runtime)
        remove_stray_temp_files(path.parent)
        done = finished_results(path, cfg, runtime, identities[index])
        results.append(done)
        if done is None:
            todo.append(index)
        else:
            logger.info("cell %s already finished; skipping", cfg.cell_name())
    check_cells([cells[index] for index in todo])  # fail fast: before any model is loaded

    options = executor if isinstance(executor, ExecutorOptions) else ExecutorOptions(kind=executor)
    if options.kind != "inline":
        return run_with_executor(cells, todo, results, out_dir, runtime, model_loader, on_result, options)
    groups: dict[tuple, list[int]] = {}
    for index in todo:
        cfg = cells[index]
        groups.setdefault((cfg.model, cfg.untrained, cfg.untrained_seed, cfg.untrained_init), []).append(index)
    bar = tqdm(total=len(todo), desc="cells", disable=not runtime.progress or not todo)
    for (model_name, untrained, untrained_seed, untrained_init), indices in groups.items():
        init = {"untrained_init": untrained_init} if untrained else {}
        model = model_loader(model_name, untrained=untrained, seed=untrained_seed, **runtime.loader_options(), **init)
        for index in indices:  # the one check that needs the model: top_k within its vocabulary
            check_record_fits(cells[index].record, model)
        for index in indices:
            cfg = cells[index]
            bar.set_postfix_str(cfg.cell_name())
            cell_results = run_cell(model, cfg, out_dir, runtime, identities[index])
            results[index] = cell_results
            if on_result is not None:
                on_result(cfg, cell_results)
            bar.update(1)
        del model
    bar.close()
    return [r for r in results if r is not None]


def check_cells(cells: Sequence[ExperimentConfig]) -> None:
    """Resolve and check every cell's task, data files and demonstration sampling (no model needed).

    Run before any model is loaded, so a malformed task file, a bad data row, an unknown task name,
    k beyond the train split, a learning-rate sweep left without a dev row (the demonstrations and
    evaluation queries took the whole train split) or a missing reference learning rate is reported
    in seconds. Local data files are parsed in full (each task once); hub datasets (``hf_dataset``)
    are loaded by the run.
    """
    splits: dict[tuple, tuple[Any, Any] | None] = {}
    for cfg in cells:
        task = apply_task_overrides(get_task(cfg.task), cfg)
        key = (cfg.task, task.template, task.label_words)
        if key not in splits:
            splits[key] = None
            if not task.hf_dataset:
                train = load_split(task, task.train_split)
                splits[key] = (
                    train,
                    load_split(task, task.eval_split) if task.eval_split != task.train_split else train,
                )
        tuned = any(s in cfg.settings for s in FINETUNED_SETTINGS)
        loaded = splits[key]
        if loaded is not None:
            _, _, dev = cell_rows(task, cfg, train=loaded[0], eval_dataset=loaded[1])
            sweeps = (cfg.lr is None and cfg.lr_mode == "sweep") or cfg.lcgd_lr_sweep
            if tuned and not dev and sweeps and cfg.lr_criterion == "dev":
                raise ConfigError(
                    f"cell {cfg.cell_name()}: the learning-rate sweep has no dev row: the demonstrations and "
                    f"evaluation queries take every row of task {task.name!r}'s train split; lower k or limit, "
                    "give the learning rate (lr), or set lr_criterion='demos'"
                )
        if tuned and cfg.lr is None and cfg.lr_mode == "reference" and task.name not in REFERENCE_LRS:
            raise ConfigError(f"no reference learning rate for task {task.name!r}; use lr_mode='sweep' or give lr")
