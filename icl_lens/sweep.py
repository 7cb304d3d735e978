"""Resumable sweeps over cells (task × model × k × seed × variant).

Every cell's results are written atomically to ``OUT/<cell>/results.json`` the moment the cell
finishes. A rerun skips every cell whose file verifies and was made with the same configuration;
a damaged, partial or differently-configured file is recomputed. Killing a sweep at any point and
rerunning it therefore ends with exactly the files an uninterrupted sweep writes (timestamps and
timings aside). Models are loaded once per (model, untrained) group.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from icl_lens.errors import ConfigError
from icl_lens.evaluation import check_record_fits
from icl_lens.experiment import ExperimentConfig, run_experiment
from icl_lens.results import RESULTS_FILE, is_complete, read_results, write_results
from icl_lens.tasks import get_task
from icl_lens.viz import save_experiment_attention_maps

if TYPE_CHECKING:
    from icl_lens.executors import ExecutorOptions

logger = logging.getLogger(__name__)

ModelLoader = Callable[..., HookedTransformer]


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how cells run; not part of a cell's identity (results record them).

    ``attention_examples``: how many queries get their full attention maps (every setting) saved
    beside the results for the HTML report (0: none; about 4 MB per example on SmolLM2).
    """

    device: str = "cpu"
    dtype: str = "float32"
    progress: bool = True
    attention_examples: int = 2


def cell_path(out_dir: str | Path, cfg: ExperimentConfig) -> Path:
    return Path(out_dir) / cfg.cell_name() / RESULTS_FILE


def finished_results(path: Path, cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The cell's verified results if they exist and match ``cfg``; None means (re)compute."""
    if not is_complete(path):
        return None
    results = read_results(path)
    if results.get("config") != _json_roundtrip(cfg.to_dict()):
        logger.warning("%s was made with another configuration; it will be recomputed", path)
        return None
    return results


def _json_roundtrip(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


def run_cell(model: HookedTransformer, cfg: ExperimentConfig, out_dir: str | Path,
             runtime: RuntimeOptions) -> dict[str, Any]:
    """Run one cell on a loaded model and write its results; every executor's cells end here.

    The attention maps are written first and ``results.json`` last (atomically, checksummed), so a
    cell whose results file verifies is complete. Returns the results as read back from disk.
    """
    output = run_experiment(model, get_task(cfg.task), cfg, progress=runtime.progress,
                            keep_models=runtime.attention_examples > 0)
    if runtime.attention_examples > 0:
        # maps first: a cell whose results.json exists always has its maps
        save_experiment_attention_maps(cell_path(out_dir, cfg).parent, output, model,
                                       n_examples=runtime.attention_examples)
    output.models.clear()
    payload = dict(output.results)
    payload["meta"] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(),
        "device": runtime.device, "dtype": runtime.dtype,
    }
    write_results(cell_path(out_dir, cfg), payload)
    return read_results(cell_path(out_dir, cfg))


def run_cells(
    cells: Sequence[ExperimentConfig],
    out_dir: str | Path,
    runtime: RuntimeOptions = RuntimeOptions(),
    model_loader: ModelLoader | None = None,
    on_result: Callable[[ExperimentConfig, dict[str, Any]], None] | None = None,
    executor: "str | ExecutorOptions" = "inline",
) -> list[dict[str, Any]]:
    """Run every cell not already finished in ``out_dir``; return all cells' results in order.

    ``executor``: ``"inline"`` (default: one cell after another in this process), ``"local"``
    (worker processes on this machine) or ``"slurm"`` (one SLURM job per cell), or an
    :class:`~icl_lens.executors.ExecutorOptions`. Every executor writes the same files; a cell that
    fails under ``local``/``slurm`` stays unfinished, and the call raises
    :class:`~icl_lens.executors.SweepError` naming it and its logs once the other cells are done.
    """
    if model_loader is None:
        from icl_lens.models import load_model as model_loader
    out_dir = Path(out_dir)
    results: list[dict[str, Any] | None] = []
    todo: list[int] = []
    for index, cfg in enumerate(cells):
        done = finished_results(cell_path(out_dir, cfg), cfg)
        results.append(done)
        if done is None:
            todo.append(index)
        else:
            logger.info("cell %s already finished; skipping", cfg.cell_name())
    check_cells([cells[index] for index in todo])  # fail fast: before any model is loaded

    from icl_lens.executors import ExecutorOptions, run_with_executor

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
        model = model_loader(model_name, device=runtime.device, dtype=runtime.dtype,
                             untrained=untrained, seed=untrained_seed, **init)
        for index in indices:  # the one check that needs the model: top_k within its vocabulary
            check_record_fits(cells[index].record, model)
        for index in indices:
            cfg = cells[index]
            bar.set_postfix_str(cfg.cell_name())
            results[index] = run_cell(model, cfg, out_dir, runtime)
            if on_result is not None:
                on_result(cfg, results[index])
            bar.update(1)
        del model
    bar.close()
    return [r for r in results if r is not None]


def check_cells(cells: Sequence[ExperimentConfig]) -> None:
    """Resolve and check every cell's task, data files and demonstration sampling (no model needed).

    Run before any model is loaded, so a malformed task file, a bad data row, an unknown task name,
    k beyond the train split or a missing reference learning rate is reported in seconds. Local data
    files are parsed in full (each task once); hub datasets (``hf_dataset``) are loaded by the run.
    """
    from icl_lens.experiment import FINETUNED_SETTINGS, apply_task_overrides
    from icl_lens.lr_sweep import REFERENCE_LRS
    from icl_lens.tasks import load_split, sample_demonstrations

    train_splits: dict[tuple, Any] = {}
    for cfg in cells:
        task = apply_task_overrides(get_task(cfg.task), cfg)
        key = (cfg.task, task.template, task.label_words)
        if key not in train_splits:
            train_splits[key] = None
            if not task.hf_dataset:
                train_splits[key] = load_split(task, task.train_split)
                if task.eval_split != task.train_split:
                    load_split(task, task.eval_split)
        if train_splits[key] is not None:
            sample_demonstrations(task, cfg.k, cfg.seed, train=train_splits[key], sampling=cfg.demo_sampling)
        tuned = any(s in cfg.settings for s in FINETUNED_SETTINGS)
        if tuned and cfg.lr is None and cfg.lr_mode == "reference" and task.name not in REFERENCE_LRS:
            raise ConfigError(f"no reference learning rate for task {task.name!r}; use lr_mode='sweep' or give lr")
