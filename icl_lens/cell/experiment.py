"""One comparison cell: a task, a model, k demonstrations and a seed, run every way (Dai et al. 2023;
Deutch et al. 2024).

``run_experiment`` takes a loaded model and a task, and returns a plain-JSON results dict:

    task -> prompts -> ZSL / ICL / FT / LCGD runs (recorded activations) -> metrics -> results

ZSL and ICL run on the given model; FT and LCGD on finetuned copies; every setting scores the same
queries. All metrics are computed from the settings' recorded :class:`ActivationCache` objects and
predictions by :mod:`icl_lens.metrics`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from icl_lens import metrics, stats
from icl_lens._validation import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, SEED, Range, validate_fields
from icl_lens._version import __version__
from icl_lens.calibration import calibrate, content_free_row, content_free_scores
from icl_lens.cell import nulls as null_models
from icl_lens.errors import ConfigError, IclLensError
from icl_lens.evaluation import RecordSpec, SettingRun, encode_prefix, evaluate
from icl_lens.models.backends import Model, backend_of
from icl_lens.models.cpu_matmul import model_kernel, uses_cpu_matmul
from icl_lens.models.untrained import untrained_seed
from icl_lens.prompts import (
    EncodedPrompts,
    PromptFormat,
    encode_prompts,
    encode_text,
    sample_prompts,
)
from icl_lens.tasks import (
    Task,
    get_task,
    load_split,
    sample_demonstrations,
    sample_queries,
)
from icl_lens.training.finetune import FinetuneConfig, TrainingTrace, finetune
from icl_lens.training.lcgd import layer_causal_finetune
from icl_lens.training.lr_sweep import DEFAULT_LR_GRID, REFERENCE_LRS, dev_slice, sweep_learning_rate

logger = logging.getLogger(__name__)

SETTINGS = ("zsl", "icl", "ft", "lcgd")
DEFAULT_MODEL = "gemma3-270m"
"""The offline model where in-context learning beats zero-shot on most tasks (docs/results.md, "Does the
model learn in context?")."""
FINETUNED_SETTINGS = ("ft", "lcgd")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one comparison cell (Dai et al. 2023; Deutch et al. 2024).

    Defaults follow the reference implementations except three choices that make the small
    offline models learn in context at all (measured in ``experiments/icl_vs_zsl.py``, docs/results.md):
    the model (Gemma-3-270M), balanced demonstrations and contextual calibration, chosen on a dev
    slice of train rows disjoint from the demonstrations and the evaluation queries. The reference
    setting is the ``reference`` preset (:mod:`icl_lens.cell.presets`).

    Args:
        task: task name or task config file.
        model: model name (offline name, local HF directory, ``.gguf`` file, or hub name).
        k: demonstrations (reference 32; the true k after truncation is recorded).
        limit: at most this many evaluation queries (reference 2000).
        seed: demonstration sampling seed.
        demo_sampling: ``balanced`` (default: a seeded shuffle taken round-robin over labels) or
            ``random`` (reference: the first k of the shuffle).
        eval_seed: seed of the evaluation-set shuffle (reference 1).
        settings: which of ``zsl, icl, ft, lcgd`` to run (``zsl`` and ``icl`` are always run
            when a comparison metric needs them).
        lr: finetuning learning rate; ``None`` = the ``lr_mode`` decides.
        lr_mode: ``sweep`` (choose per task and model on a dev slice), ``reference`` (the papers'
            per-task rate) or ``fixed`` (``finetune.lr``).
        lr_grid: rates the sweep tries.
        lr_dev_size: size of the cell's dev slice (train rows disjoint from the demonstrations and
            the evaluation queries, drawn by the demonstration seed's shuffle; recorded as
            ``query_ids.dev``), on which the sweep scores.
        lr_criterion: ``dev`` (FT accuracy on the cell's dev slice) or ``demos`` (FT accuracy on the
            demonstrations).
        lcgd_lr: LCGD learning rate (None: the same as FT).
        lcgd_lr_sweep: choose LCGD's own learning rate by the same sweep as FT's (grid, criterion),
            run with LCGD; costs one LCGD training per grid value.
        lcgd_schedule: ``simultaneous`` (reference) or ``sequential``.
        attention_map: ``scores`` (pre-softmax, reference) or ``pattern`` for SimAM.
        alpha_include_sink: count the first (BOS/sink) token as a demonstration token in α.
        random_seed: base seed of the nulls' randomness: the SimAOU random baseline, the
            shuffled-pair derangement, the wrong labels and the random directions each draw from a
            seed derived from it and the demonstration ``seed`` (:func:`icl_lens.cell.nulls.null_seed`,
            recorded as ``null_seeds``), so every demonstration seed draws its own nulls.
        batch_size: queries per forward pass.
        reuse_prefix: encode the shared demonstration prefix once and reuse its key/value cache
            (fast path); False re-encodes it for every query (the straightforward path).
        calibration: ``content_free`` (default: contextual calibration of every setting's class
            scores against an "N/A" query, Zhao et al. 2021) or ``none`` (reference).
        untrained: run on the untrained baseline (attention and MLP weights re-drawn; embeddings,
            norms and unembedding kept).
        untrained_seed: seed of that re-initialisation.
        untrained_init: recipe of the untrained re-initialisation: ``reference`` (default: each
            projection at its framework module's default initialisation, as the reference code of
            Dai et al. 2023 leaves it) or ``normal`` (N(0, initializer_range) weights, zero biases).
        preset: ``reference`` (the reference code's setting: EOS after every demonstration, random
            demonstrations, no calibration, k = 32, the papers' per-task learning rates) or
            ``default``; sets those values, explicit flags win (Python: ``icl_lens.cell.presets.
            preset_config``; the field itself only records the name).
        template / label_words: override the task's template and label words.
        nulls: which costly nulls of the similarities to run for FT (``shuffled_pair``,
            ``wrong_label`` (FT's loss), ``wrong_label_answer_loss`` (the same wrong labels, loss on
            the answer tokens only), ``random_direction`` (isotropic), ``gradient_span`` (a random
            combination of the demonstrations' gradients); ``()`` none); LCGD gets the shuffled-pair
            and random-direction ones. The Jaccard independence expectation is always computed.
        bootstrap_resamples: resamples of the percentile bootstrap over queries behind every
            interval and paired test of the cell.
        bootstrap_seed: seed of those resamples (one set per cell, shared by every statistic).
        confidence: level of every interval.
    """

    task: str = "sst2"
    model: str = DEFAULT_MODEL
    k: int = 16
    limit: int | None = 200
    seed: int = 0
    demo_sampling: Literal["random", "balanced"] = "balanced"
    eval_seed: int = 1
    settings: tuple[str, ...] = SETTINGS
    prompt: PromptFormat = field(default_factory=PromptFormat)
    record: RecordSpec = field(default_factory=RecordSpec)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lr: float | None = None
    lr_mode: Literal["sweep", "reference", "fixed"] = "sweep"
    lr_grid: tuple[float, ...] = DEFAULT_LR_GRID
    lr_dev_size: int = 64
    lr_criterion: Literal["dev", "demos"] = "dev"
    lcgd_lr: float | None = None
    lcgd_lr_sweep: bool = False
    lcgd_schedule: Literal["simultaneous", "sequential"] = "simultaneous"
    attention_map: Literal["scores", "pattern"] = "scores"
    alpha_include_sink: bool = False
    random_seed: int = 0
    batch_size: int = 16
    reuse_prefix: bool = True
    calibration: Literal["none", "content_free"] = "content_free"
    untrained: bool = False
    untrained_seed: int = 0
    template: str | None = None
    label_words: tuple[str, ...] | None = None
    nulls: tuple[str, ...] = null_models.NULLS
    bootstrap_resamples: int = stats.DEFAULT_RESAMPLES
    bootstrap_seed: int = 0
    confidence: float = stats.DEFAULT_CONFIDENCE
    untrained_init: Literal["reference", "normal"] = "reference"
    preset: Literal["default", "reference"] | None = None

    def __post_init__(self) -> None:
        validate_fields(self, _EXPERIMENT_BOUNDS)
        object.__setattr__(self, "settings", tuple(self.settings))
        unknown = [s for s in self.settings if s not in SETTINGS]
        if unknown or not self.settings:
            raise ConfigError(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
        if self.lcgd_lr is not None and self.lcgd_lr_sweep:
            raise ConfigError("give lcgd_lr or lcgd_lr_sweep, not both")
        if self.k == 0 and any(s in self.settings for s in ("icl", *FINETUNED_SETTINGS)):
            raise ConfigError("k = 0 leaves nothing to learn from: run settings=('zsl',) only")
        if self.label_words is not None:
            object.__setattr__(self, "label_words", tuple(self.label_words))
        if not self.lr_grid:
            raise ConfigError("lr_grid is empty")
        object.__setattr__(self, "lr_grid", tuple(float(x) for x in self.lr_grid))
        object.__setattr__(self, "nulls", tuple(self.nulls))
        unknown_nulls = [name for name in self.nulls if name not in null_models.NULLS]
        if unknown_nulls:
            raise ConfigError(f"unknown nulls {unknown_nulls}; choose from {list(null_models.NULLS)} (or none)")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in _WRITTEN_ONLY_WHEN_SET:  # so cells finished before the field existed stay valid
            if out[name] == self.__dataclass_fields__[name].default:
                del out[name]
        if not self.untrained or self.untrained_init == "normal":
            # meaningless on a trained model; "normal" is what untrained cells before the field used
            del out["untrained_init"]
        out["finetune"] = self.finetune.to_dict()  # drops its own later-added fields at their defaults
        out["settings"] = list(self.settings)
        out["lr_grid"] = list(self.lr_grid)
        if "nulls" in out:
            out["nulls"] = list(self.nulls)
        if self.label_words is not None:
            out["label_words"] = list(self.label_words)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are dropped with a warning (old result files)."""
        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in raw.items():
            if key not in known:
                logger.warning("ignoring unknown config key %r", key)
                continue
            values[key] = value
        nested = {"prompt": PromptFormat, "record": RecordSpec, "finetune": FinetuneConfig}
        for key, kind in nested.items():
            if isinstance(values.get(key), dict):
                values[key] = kind(**values[key])
        for key in ("settings", "lr_grid", "label_words", "nulls"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        if values.get("untrained") and "untrained_init" not in values:
            values["untrained_init"] = "normal"  # untrained cells written before the field existed
        return cls(**values)

    def cell_name(self) -> str:
        """A file-system-safe, unique name for this cell: task, model, k, seed, variant, and a short
        digest of the whole configuration (so two cells differing in any option never collide)."""
        model = self.model.replace("/", "_").replace("\\", "_")
        task = self.task.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".json").removesuffix(".toml")
        name = f"{task}__{model}__k{self.k}__seed{self.seed}" + ("__untrained" if self.untrained else "")
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{name}__{digest}"


_EXPERIMENT_BOUNDS = {
    "k": NON_NEGATIVE,
    "limit": AT_LEAST_ONE,
    "seed": SEED,
    "eval_seed": SEED,
    "lr": POSITIVE,
    "lr_grid": POSITIVE,
    "lr_dev_size": AT_LEAST_ONE,
    "lcgd_lr": POSITIVE,
    "random_seed": SEED,
    "batch_size": AT_LEAST_ONE,
    "untrained_seed": SEED,
    "bootstrap_resamples": AT_LEAST_ONE,
    "bootstrap_seed": SEED,
    "confidence": Range(gt=0, lt=1),
}
"""Bounds of ExperimentConfig's numeric fields (types, NaN/inf and Literal choices come from the hints)."""

_WRITTEN_ONLY_WHEN_SET = ("lcgd_lr_sweep", "nulls", "bootstrap_resamples", "bootstrap_seed", "confidence", "preset")
"""Config fields added after results existed: left out of ``to_dict`` (and so of the cell's digest)
while at their default, so a rerun still recognises the cells finished before them."""


def apply_task_overrides(task: Task, cfg: ExperimentConfig) -> Task:
    return task.with_overrides(template=cfg.template, label_words=cfg.label_words)


def _layer_summary(per_example: np.ndarray | torch.Tensor, indices: np.ndarray, confidence: float) -> dict[str, Any]:
    """A per-layer metric from its [n_examples, n_layers] terms: each layer's mean over examples,
    the mean over layers, and their percentile bootstrap intervals from the cell's resamples."""
    interval = stats.bootstrap_interval(
        np.asarray(per_example, dtype=np.float64), indices=indices, confidence=confidence
    )
    return {
        "per_layer": interval.per_layer,
        "mean": interval.value,
        "ci": interval.ci,
        "per_layer_ci": interval.per_layer_ci,
    }


def _map_name(cfg: ExperimentConfig) -> str:
    return "attn_scores" if cfg.attention_map == "scores" else "pattern"


def comparison_per_example(
    zsl: SettingRun, icl: SettingRun, tuned: SettingRun, cfg: ExperimentConfig
) -> dict[str, np.ndarray]:
    """The per-example terms of the ICL-vs-finetuned similarities: SimAOU, SimAM and SimAM_Δ as
    [n_examples, n_layers]; token overlap and overlap cosine as [n_examples]."""
    zsl_maps, icl_maps, tuned_maps = (r.activations.stack_activation(_map_name(cfg)) for r in (zsl, icl, tuned))
    dist_icl = metrics.TopKDistribution(icl.next_token_ids, icl.next_token_probs)
    dist_tuned = metrics.TopKDistribution(tuned.next_token_ids, tuned.next_token_probs)
    k = cfg.record.top_k
    return {
        "simaou": metrics.simaou_per_example(zsl.activations, icl.activations, tuned.activations).cpu().numpy(),
        "simam": metrics.simam_per_example(icl_maps, tuned_maps).cpu().numpy(),
        "simam_delta": metrics.simam_delta_per_example(zsl_maps, icl_maps, tuned_maps).cpu().numpy(),
        "token_overlap": metrics.token_overlap(dist_icl, dist_tuned, k=k).double().cpu().numpy(),
        "overlap_cosine": metrics.overlap_cosine(dist_icl, dist_tuned, k=k).double().cpu().numpy(),
    }


def comparison_metrics(
    zsl: SettingRun,
    icl: SettingRun,
    tuned: SettingRun,
    labels: torch.Tensor,
    cfg: ExperimentConfig,
    indices: np.ndarray | None = None,
    per_example: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Every ICL-vs-finetuned metric of Dai et al. 2023 and Deutch et al. 2024 for one finetuned setting
    (FT or LCGD), each with
    its percentile bootstrap interval over queries.

    Args:
        indices: the cell's bootstrap resamples (default: drawn from ``cfg``).
        per_example: :func:`comparison_per_example` of these runs, if already computed.
    """
    if indices is None:
        indices = stats.resample_indices(len(labels), cfg.bootstrap_resamples, cfg.bootstrap_seed)
    if per_example is None:
        per_example = comparison_per_example(zsl, icl, tuned, cfg)
    overlap = metrics.prediction_change_overlap(zsl.predictions, icl.predictions, tuned.predictions, labels)
    fixes, both_fix, same_change, jaccard_denominator = _prediction_indicators(
        zsl.predictions, icl.predictions, tuned.predictions, labels
    )
    level = cfg.confidence
    token: dict[str, Any] = {}
    for name in ("token_overlap", "overlap_cosine"):
        interval = stats.bootstrap_interval(per_example[name], indices=indices, confidence=level)
        token[name], token[f"{name}_ci"] = interval.value, interval.ci
    return {
        "rec2ftp": metrics.rec2ftp(zsl.predictions, icl.predictions, tuned.predictions, labels),
        "rec2ftp_ci": [100 * v for v in stats.bootstrap_ratio(both_fix, fixes, indices, level)],
        "prediction_changes": {
            **overlap.to_dict(),
            "jaccard_ci": stats.bootstrap_ratio(same_change, jaccard_denominator, indices, level),
        },
        **{name: _layer_summary(per_example[name], indices, level) for name in ("simaou", "simam", "simam_delta")},
        "token_overlap": token,
    }


def _prediction_indicators(zsl, icl, tuned, labels) -> tuple[np.ndarray, ...]:
    """Per-example terms whose sums make Rec2FTP (both fix / FT fixes) and the Jaccard index
    (|S| / (|C_ICL| + |C_FT| − |S|)), so both can be recomputed on resampled examples."""
    zsl, icl, tuned, labels = (np.asarray(torch.as_tensor(x).cpu()) for x in (zsl, icl, tuned, labels))
    fixes = (zsl != labels) & (tuned == labels)
    both_fix = fixes & (icl == labels)
    icl_changed, tuned_changed = icl != zsl, tuned != zsl
    same_change = tuned_changed & (tuned == icl)
    jaccard_denominator = icl_changed.astype(int) + tuned_changed.astype(int) - same_change.astype(int)
    return fixes, both_fix, same_change, jaccard_denominator


def _per_example(queries, runs: dict[str, SettingRun]) -> list[dict[str, Any]]:
    rows = []
    for i, query in enumerate(queries):
        rows.append(
            {
                "row_index": query["row_index"],
                "label": query["label"],
                "prediction": {name: int(run.predictions[i]) for name, run in runs.items()},
                "class_scores": {name: [round(float(s), 6) for s in run.class_scores[i]] for name, run in runs.items()},
            }
        )
    return rows


@dataclass
class ExperimentOutput:
    """The results dict plus the in-memory runs and finetuned models (for notebooks)."""

    results: dict[str, Any]
    runs: dict[str, SettingRun]
    prompts: EncodedPrompts
    models: dict[str, Model]
    traces: dict[str, TrainingTrace]


@uses_cpu_matmul
def run_experiment(
    model: Model, task: Task, cfg: ExperimentConfig, progress: bool = True, keep_models: bool = False
) -> ExperimentOutput:
    """Run the configured settings on the same queries and compute every metric.

    The results record what actually ran, taken from the objects passed in: the task's name from
    ``task``, the model's name from ``model.cfg.model_name``, and ``untrained`` (with its seed) only
    when ``model`` was re-initialised by :func:`~icl_lens.models.untrained.reinitialize_untrained`.
    ``cfg.task`` / ``cfg.model`` left at their defaults (``"sst2"``, :data:`DEFAULT_MODEL`) and
    ``cfg.untrained=False`` are filled in from the objects (the notebook call
    ``run_experiment(model, get_task("mr"), ExperimentConfig(k=8))`` records task ``mr`` and the
    model's own name); a ``cfg`` that names something else than what was passed raises
    :class:`~icl_lens.errors.ConfigError`. ``results["config"]`` is the filled-in configuration.
    """
    cfg = config_for_objects(model, task, cfg)
    started = time.perf_counter()
    cell = prepare_cell(model, apply_task_overrides(task, cfg), cfg, progress)
    run_prompted_settings(cell)
    run_finetuned_settings(cell, keep_models)
    results = assemble_results(cell)
    cell.timings["total"] = time.perf_counter() - started
    results["timing_seconds"] = {k: round(v, 3) for k, v in cell.timings.items()}
    return ExperimentOutput(
        results=results, runs=cell.runs, prompts=cell.prompts, models=cell.tuned_models, traces=cell.traces
    )


@dataclass
class CellState:
    """One cell's inputs (model, task, config, prompts) and what its stages add: the settings' runs,
    the null models' runs, training traces, learning-rate choices, calibration offsets, timings."""

    model: Model
    task: Task
    cfg: ExperimentConfig
    progress: bool
    prompts: EncodedPrompts
    demos: list[dict[str, Any]]
    queries: list[dict[str, Any]]
    train: Any
    content_free_query: list[int]
    dev_rows: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, SettingRun] = field(default_factory=dict)
    null_runs: dict[str, dict[str, SettingRun]] = field(default_factory=dict)
    null_facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    traces: dict[str, TrainingTrace] = field(default_factory=dict)
    tuned_models: dict[str, Model] = field(default_factory=dict)
    lr_record: dict[str, Any] = field(default_factory=dict)
    lcgd_lr_record: dict[str, Any] = field(default_factory=dict)
    content_free_record: dict[str, list[float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([q["label"] for q in self.queries])

    @property
    def null_seeds(self) -> dict[str, int]:
        """The seed of each null's randomness in this cell (:func:`icl_lens.cell.nulls.null_seeds`)."""
        return null_models.null_seeds(self.cfg.random_seed, self.cfg.seed)

    @property
    def needs_comparison(self) -> bool:
        return any(s in self.cfg.settings for s in FINETUNED_SETTINGS)

    def evaluate_setting(self, name: str, setting_model: Model, prefix: list[int]) -> SettingRun:
        """Score the cell's queries after ``prefix`` on ``setting_model`` (recording the activations the
        metrics need), calibrated against the content-free query when the cell asks for it."""
        cfg, prompts = self.cfg, self.prompts
        t0 = time.perf_counter()
        encoded = encode_prefix(setting_model, prefix) if cfg.reuse_prefix else None  # shared with calibration
        result = evaluate(
            setting_model,
            prefix,
            prompts.queries,
            prompts.labels,
            setting=name,
            n_start=prompts.n_start,
            record=cfg.record,
            batch_size=cfg.batch_size,
            reuse_prefix=cfg.reuse_prefix,
            progress=self.progress,
            encoded_prefix=encoded,
        )
        if cfg.calibration == "content_free":
            bias = content_free_scores(
                setting_model, prefix, self.content_free_query, prompts.labels, prompts.n_start, encoded_prefix=encoded
            )
            self.content_free_record[name] = [float(v) for v in bias[0]]
            result.class_scores = calibrate(result.class_scores, bias)
        self.timings[f"eval_{name}"] = time.perf_counter() - t0
        return result


def prepare_cell(model: Model, task: Task, cfg: ExperimentConfig, progress: bool) -> CellState:
    """Stage 1, prompts: sample the demonstrations and queries and encode every prompt of the cell."""
    train = load_split(task, task.train_split)
    needs_demos = any(s in cfg.settings for s in ("icl", *FINETUNED_SETTINGS))
    prompts, demos, queries = sample_prompts(
        model.tokenizer,
        task,
        cfg.prompt,
        model.cfg.n_ctx,
        cfg.k,
        cfg.seed,
        cfg.limit,
        cfg.eval_seed,
        sampling=cfg.demo_sampling,
        require_demos=needs_demos,
        train=train,
    )
    content_free_query = encode_text(model.tokenizer, task.format_input(content_free_row(task.template_fields)))
    dev_rows = cell_dev_slice(task, cfg, train, demos, queries)
    return CellState(model, task, cfg, progress, prompts, demos, queries, train, content_free_query, dev_rows)


def cell_rows(
    task: Task, cfg: ExperimentConfig, train=None, eval_dataset=None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows a cell reads, without a model: every sampled demonstration (before truncation to the
    context), the evaluation queries and the dev slice (:func:`cell_dev_slice`), as
    :func:`prepare_cell` draws them. ``train`` / ``eval_dataset``: the splits, if already loaded."""
    train = load_split(task, task.train_split) if train is None else train
    demos = sample_demonstrations(task, cfg.k, cfg.seed, train=train, sampling=cfg.demo_sampling)
    queries = sample_queries(task, cfg.limit, cfg.eval_seed, dataset=eval_dataset)
    return demos, queries, cell_dev_slice(task, cfg, train, demos, queries)


def cell_dev_slice(
    task: Task, cfg: ExperimentConfig, train, demos: list[dict[str, Any]], queries: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The cell's dev slice: ``cfg.lr_dev_size`` train rows in the order of the demonstration seed's
    shuffle, none of them a demonstration (every sampled one, before truncation to the context), an
    evaluation query (for a task whose evaluation queries come from its train split) or a row with an
    evaluation query's input. Whatever a cell chooses (the learning rate) is chosen here, never on the
    evaluation queries."""
    rows = dev_slice(
        train,
        cfg.lr_dev_size,
        cfg.seed,
        [d["row_index"] for d in demos],
        task=task,
        query_rows=[q["row_index"] for q in queries],
        query_inputs=[task.format_input(q) for q in queries],
    )
    sweeps_on_dev = cfg.lr is None and cfg.lr_mode == "sweep" and cfg.lr_criterion == "dev"
    if len(rows) < cfg.lr_dev_size and sweeps_on_dev:
        logger.warning(
            "task %s: the dev slice has %d rows, not %d: the train split has no more rows outside the "
            "demonstrations and evaluation queries",
            task.name,
            len(rows),
            cfg.lr_dev_size,
        )
    return rows


def run_prompted_settings(cell: CellState) -> None:
    """Stage 2: ZSL and ICL on the loaded model (both whenever a comparison metric needs them)."""
    settings = cell.cfg.settings
    if "zsl" in settings or cell.needs_comparison:
        cell.runs["zsl"] = cell.evaluate_setting("zsl", cell.model, cell.prompts.zsl_prefix)
    if "icl" in settings or cell.needs_comparison:
        cell.runs["icl"] = cell.evaluate_setting("icl", cell.model, cell.prompts.icl_prefix)


def run_finetuned_settings(cell: CellState, keep_models: bool) -> None:
    """Stage 3: choose the learning rate(s), train FT and LCGD copies on the demonstrations, score them
    on the zero-shot prompts, and run each one's null models."""
    if not cell.needs_comparison:
        return
    model, cfg, prompts, progress = cell.model, cell.cfg, cell.prompts, cell.progress
    sweep_inputs = _sweep_inputs(model, cell.task, cfg, prompts, cell.dev_rows, cell.demos, cell.content_free_query)
    ft_cfg, cell.lr_record = _choose_lr(model, cell.task, cfg, sweep_inputs, progress, cell.timings)
    for name in FINETUNED_SETTINGS:
        if name not in cfg.settings:
            continue
        t0 = time.perf_counter()
        if name == "ft":
            train_cfg = ft_cfg
            tuned, trace = finetune(model, prompts.demo_sequences, prompts.demo_answer_lengths, ft_cfg, progress)
        else:
            train_cfg, cell.lcgd_lr_record = _choose_lcgd_lr(model, cfg, ft_cfg, sweep_inputs, progress, cell.timings)
            tuned, trace = layer_causal_finetune(
                model, prompts.demo_sequences, prompts.demo_answer_lengths, train_cfg, cfg.lcgd_schedule, progress
            )
        cell.timings[f"train_{name}"] = time.perf_counter() - t0
        cell.traces[name] = trace
        cell.runs[name] = cell.evaluate_setting(name, tuned, prompts.zsl_prefix)
        cell.null_runs[name], cell.null_facts[name] = run_null_models(cell, name, tuned, train_cfg)
        if keep_models:
            cell.tuned_models[name] = tuned
        del tuned


def assemble_results(cell: CellState) -> dict[str, Any]:
    """Stage 4, metrics -> results: per-example values, every metric with its interval, the paired
    tests and the nulls, as the plain-JSON results dict (timings are added by the caller)."""
    cfg, task, runs, labels, prompts = cell.cfg, cell.task, cell.runs, cell.labels, cell.prompts
    indices = stats.resample_indices(len(cell.queries), cfg.bootstrap_resamples, cfg.bootstrap_seed)
    per_example = per_example_values(runs, cell.null_runs, labels, cfg, cell.null_seeds)
    results: dict[str, Any] = {
        "icl_lens_version": __version__,
        "config": cfg.to_dict(),
        "task": {
            "name": task.name,
            "template": task.template,
            "label_words": list(task.label_words),
            "eval_split": task.eval_split,
            "n_classes": task.n_classes,
        },
        "model": _model_facts(cell.model),
        "prompts": prompts.summary(),
        "demonstrations": [{"row_index": d["row_index"], "label": d["label"]} for d in cell.demos[: prompts.k]],
        "n_examples": len(cell.queries),
        "query_ids": query_ids(cell),
        "accuracy": {name: metrics.accuracy(run.predictions, labels) for name, run in runs.items()},
        "accuracy_ci": {
            name: stats.bootstrap_interval(values, indices=indices, confidence=cfg.confidence).ci
            for name, values in per_example["correct"].items()
        },
        "uncertainty": {
            "method": stats.METHOD,
            "n_resamples": cfg.bootstrap_resamples,
            "confidence": cfg.confidence,
            "seed": cfg.bootstrap_seed,
        },
        "lr": cell.lr_record,
        **({"lcgd_lr": cell.lcgd_lr_record} if cell.lcgd_lr_record else {}),
        "calibration": {"method": cfg.calibration, "content_free_scores": cell.content_free_record},
        "metrics": cell_metrics(runs, per_example, labels, indices, cfg),
        "tests": paired_tests(runs, per_example, indices, cfg),
        "nulls": null_summaries(runs, per_example, cell.null_facts, labels, indices, cfg),
        "null_seeds": cell.null_seeds,
        "per_example": _rounded(per_example),
        "training": {name: trace.to_dict() for name, trace in cell.traces.items()},
    }
    results["examples"] = _per_example(cell.queries, runs)
    return results


def query_ids(cell: CellState) -> dict[str, Any]:
    """The rows behind the cell's numbers, as row indices in their split: the evaluation queries (in
    the order of every per-query array), the dev slice, and what the cell chose on the dev slice."""
    used = [
        name
        for name, record in (("lr", cell.lr_record), ("lcgd_lr", cell.lcgd_lr_record))
        if record.get("mode") == "sweep" and record.get("criterion") == "dev"
    ]
    return {
        "eval_split": cell.task.eval_split,
        "eval": [int(q["row_index"]) for q in cell.queries],
        "dev_split": cell.task.train_split,
        "dev": [int(r["row_index"]) for r in cell.dev_rows],
        "dev_used_for": used,
    }


def _task_matches(name_or_path: str, task: Task) -> bool:
    if name_or_path == task.name:
        return True
    path = Path(name_or_path)
    if path.suffix in (".json", ".toml"):
        try:
            return get_task(name_or_path).name == task.name
        except IclLensError:
            return path.stem == task.name
    return False


def _model_matches(name_or_path: str, model_name: str) -> bool:
    path = Path(name_or_path.rstrip("/\\"))
    return model_name in (name_or_path, path.name, path.stem)


def config_for_objects(model: Model, task: Task, cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``task``, ``model`` and ``untrained`` made to say what ``model`` and ``task`` are.

    Defaults are filled in from the objects; a value naming something else raises
    :class:`ConfigError` (see :func:`run_experiment`).
    """
    changes: dict[str, Any] = {}
    defaults = ExperimentConfig.__dataclass_fields__
    if not _task_matches(cfg.task, task):
        if cfg.task != defaults["task"].default:
            raise ConfigError(
                f"the config names task {cfg.task!r} but the task passed is {task.name!r}: "
                f"pass get_task({cfg.task!r}) or set task={task.name!r}"
            )
        changes["task"] = task.name
    model_name = str(model.cfg.model_name)
    if not _model_matches(cfg.model, model_name):
        if cfg.model != defaults["model"].default:
            raise ConfigError(
                f"the config names model {cfg.model!r} but the model passed is {model_name!r}: "
                f"load {cfg.model!r} or set model={model_name!r}"
            )
        changes["model"] = model_name
    seed = untrained_seed(model)
    if seed is None and cfg.untrained:
        raise ConfigError(
            f"the config says untrained (seed {cfg.untrained_seed}) but model {model_name!r} was not "
            "re-initialised: load it with load_model(..., untrained=True) or set untrained=False"
        )
    if seed is not None:
        if cfg.untrained and cfg.untrained_seed != seed:
            raise ConfigError(
                f"the config says untrained_seed={cfg.untrained_seed} but model {model_name!r} was "
                f"re-initialised with seed {seed}"
            )
        init = getattr(model.cfg, "untrained_init", None)
        if cfg.untrained and init is not None and cfg.untrained_init != init:
            raise ConfigError(
                f"the config says untrained_init={cfg.untrained_init!r} but model {model_name!r} was "
                f"re-initialised with the {init!r} recipe"
            )
        changes.update(untrained=True, untrained_seed=seed, **({"untrained_init": init} if init else {}))
    if changes:
        logger.info("recording what was passed in, not the config's defaults: %s", changes)
    return replace(cfg, **changes) if changes else cfg


WRONG_LABEL_NULLS: dict[str, Literal["all", "answer"] | None] = {
    "wrong_label": None,
    "wrong_label_answer_loss": "answer",
}
"""The wrong-label nulls and the loss each trains with (None: FT's own ``finetune.loss_on``)."""


def run_null_models(
    cell: CellState, name: str, tuned: Model, train_cfg: FinetuneConfig
) -> tuple[dict[str, SettingRun], dict[str, Any]]:
    """Evaluate the null models of one finetuned setting on the cell's queries: the random-direction
    update of ``tuned``'s size (FT and LCGD); for FT also wrong-label finetuning (same lr) with FT's
    own loss and with the loss on the answer tokens only, and the gradient-span update.

    Each null model is scored on the zero-shot prompt like every other finetuned setting
    (:meth:`CellState.evaluate_setting`, calibration included), its randomness seeded by the cell's
    :attr:`CellState.null_seeds`; each null's wall time (training and scoring) goes to the cell's
    timings as ``null_<setting>_<null>``. Returns the null runs and facts to record (the wrong labels).
    """
    model, cfg, prompts, seeds = cell.model, cell.cfg, cell.prompts, cell.null_seeds
    null_runs: dict[str, SettingRun] = {}
    facts: dict[str, Any] = {}

    def timed(null: str, make_model) -> None:
        t0 = time.perf_counter()
        null_model = make_model()
        null_runs[null] = cell.evaluate_setting(f"{name}_{null}", null_model, prompts.zsl_prefix)
        del null_model
        cell.timings[f"null_{name}_{null}"] = time.perf_counter() - t0

    if "random_direction" in cfg.nulls:
        timed(
            "random_direction",
            lambda: null_models.random_direction_model(model, tuned, train_cfg.params, seeds["random_direction"]),
        )
    if name != "ft":
        return null_runs, facts
    if "gradient_span" in cfg.nulls:
        timed(
            "gradient_span",
            lambda: null_models.gradient_span_model(
                model,
                tuned,
                prompts.demo_sequences,
                prompts.demo_answer_lengths,
                train_cfg,
                seeds["gradient_span"],
            ),
        )
    wanted = [null for null in WRONG_LABEL_NULLS if null in cfg.nulls]
    if not wanted:
        return null_runs, facts
    demos = cell.demos[: prompts.k]
    true_labels = [d["label"] for d in demos]
    wrong = null_models.wrong_labels(true_labels, cell.task.n_classes, seeds["wrong_label"])
    relabelled = encode_prompts(
        model.tokenizer,
        cell.task,
        [dict(d, label=w) for d, w in zip(demos, wrong)],
        cell.queries,
        cfg.prompt,
        model.cfg.n_ctx,
    )
    label_facts = {
        "labels": wrong[: relabelled.k],
        "n_relabelled": sum(t != w for t, w in zip(true_labels, wrong[: relabelled.k])),
    }
    for null in wanted:
        loss_on = WRONG_LABEL_NULLS[null] or train_cfg.loss_on
        same_run = next((done for done in null_runs if facts.get(done, {}).get("loss_on") == loss_on), None)
        if same_run is not None:  # FT itself trains on the answer tokens only: one run is both nulls
            null_runs[null] = null_runs[same_run]
            cell.timings[f"null_{name}_{null}"] = 0.0
        else:
            wrong_cfg = replace(train_cfg, loss_on=loss_on)
            timed(
                null,
                lambda wrong_cfg=wrong_cfg: finetune(
                    model, relabelled.demo_sequences, relabelled.demo_answer_lengths, wrong_cfg, cell.progress
                )[0],
            )
        facts[null] = {**label_facts, "loss_on": loss_on}
    return null_runs, facts


def per_example_values(
    runs: dict[str, SettingRun],
    null_runs: dict[str, dict[str, SettingRun]],
    labels: torch.Tensor,
    cfg: ExperimentConfig,
    seeds: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Every per-example metric term of the cell, as numpy arrays ([n_examples] or
    [n_examples, n_layers]): correctness per setting, the comparison metrics of FT and LCGD, α,
    the random baseline, ZSL SimAM and the nulls' SimAOU and SimAM_Δ. Every mean and interval of
    the results is computed from these arrays.

    ``seeds``: the cell's null seeds (:func:`icl_lens.cell.nulls.null_seeds`; default: derived from
    ``cfg.random_seed`` and ``cfg.seed``)."""
    seeds = null_models.null_seeds(cfg.random_seed, cfg.seed) if seeds is None else seeds
    values: dict[str, Any] = {
        "correct": {
            name: (run.predictions.cpu() == labels.cpu()).numpy().astype(np.int64) for name, run in runs.items()
        }
    }
    if "icl" in runs:
        icl = runs["icl"]
        values["alpha"] = (
            metrics.alpha_per_example(icl.demo_attention_mass, icl.sink_attention_mass, cfg.alpha_include_sink)
            .cpu()
            .numpy()
        )
    if "icl" in runs and "zsl" in runs:
        zsl, icl = runs["zsl"], runs["icl"]
        values["simam_zsl"] = (
            metrics.simam_per_example(
                icl.activations.stack_activation(_map_name(cfg)), zsl.activations.stack_activation(_map_name(cfg))
            )
            .cpu()
            .numpy()
        )
        values["simaou_random"] = (
            metrics.simaou_random_per_example(zsl.activations, icl.activations, seed=seeds["simaou_random"])
            .cpu()
            .numpy()
        )
    null_values: dict[str, Any] = {}
    for name in FINETUNED_SETTINGS:
        if name not in runs:
            continue
        zsl, icl = runs["zsl"], runs["icl"]
        values[name] = comparison_per_example(zsl, icl, runs[name], cfg)
        null_values[name] = {}
        if "shuffled_pair" in cfg.nulls and len(labels) < 2:
            logger.warning("shuffled-pair null skipped: it needs at least 2 queries, got %d", len(labels))
        elif "shuffled_pair" in cfg.nulls:
            null_values[name]["shuffled_pair"] = {
                key: tensor.cpu().numpy()
                for key, tensor in null_models.shuffled_pair(
                    zsl.activations, icl.activations, runs[name].activations, _map_name(cfg), seeds["shuffled_pair"]
                ).items()
            }
        for null, run in null_runs.get(name, {}).items():
            terms = comparison_per_example(zsl, icl, run, cfg)
            null_values[name][null] = {
                "simaou": terms["simaou"],
                "simam_delta": terms["simam_delta"],
                "correct": (run.predictions.cpu() == labels.cpu()).numpy().astype(np.int64),
            }
    values["nulls"] = null_values
    return values


def cell_metrics(
    runs: dict[str, SettingRun],
    per_example: dict[str, Any],
    labels: torch.Tensor,
    indices: np.ndarray,
    cfg: ExperimentConfig,
) -> dict[str, Any]:
    """The ``metrics`` block: α, ZSL SimAM, the random baseline and every FT/LCGD comparison
    metric, each with its interval."""
    out: dict[str, Any] = {}
    for name in ("alpha", "simam_zsl", "simaou_random"):
        if name in per_example:
            out[name] = _layer_summary(per_example[name], indices, cfg.confidence)
    for name in FINETUNED_SETTINGS:
        if name in runs:
            out[name] = comparison_metrics(
                runs["zsl"], runs["icl"], runs[name], labels, cfg, indices, per_example[name]
            )
    return out


PAIRED_ACCURACY_TESTS = (("icl", "zsl"), ("ft", "zsl"), ("lcgd", "zsl"))
PAIRED_METRIC_TESTS = (("lcgd", "ft", "simaou"), ("lcgd", "ft", "simam_delta"))


def paired_tests(
    runs: dict[str, SettingRun], per_example: dict[str, Any], indices: np.ndarray, cfg: ExperimentConfig
) -> dict[str, Any]:
    """Paired tests on the same queries: exact McNemar of accuracy (b = #(a right, b wrong) for
    "a_vs_b", with the accuracy difference a − b and its paired bootstrap interval), and paired
    bootstrap of LCGD − FT SimAOU and SimAM_Δ (per-example means over layers)."""
    out: dict[str, Any] = {}
    correct = per_example["correct"]
    for a, b in PAIRED_ACCURACY_TESTS:
        if a in runs and b in runs:
            paired = stats.paired_bootstrap(correct[a], correct[b], indices=indices, confidence=cfg.confidence)
            out[f"{a}_vs_{b}"] = {
                **stats.mcnemar_exact(correct[a], correct[b]),
                "difference": paired["difference"],
                "ci": paired["ci"],
            }
    for a, b, metric in PAIRED_METRIC_TESTS:
        if a in runs and b in runs:
            out[f"{a}_vs_{b}_{metric}"] = stats.paired_bootstrap(
                per_example[a][metric].mean(axis=1),
                per_example[b][metric].mean(axis=1),
                indices=indices,
                confidence=cfg.confidence,
            )
    return out


def null_summaries(
    runs: dict[str, SettingRun],
    per_example: dict[str, Any],
    null_facts: dict[str, dict[str, Any]],
    labels: torch.Tensor,
    indices: np.ndarray,
    cfg: ExperimentConfig,
) -> dict[str, Any]:
    """The ``nulls`` block: per finetuned setting, each null's SimAOU and SimAM_Δ summaries (with
    intervals), wrong-label finetuning's accuracy, and the Jaccard independence expectation."""
    out: dict[str, Any] = {}
    for name, nulls_of_setting in per_example.get("nulls", {}).items():
        entry: dict[str, Any] = {}
        for null, terms in nulls_of_setting.items():
            entry[null] = {
                key: _layer_summary(terms[key], indices, cfg.confidence) for key in ("simaou", "simam_delta")
            }
            if null in WRONG_LABEL_NULLS:
                interval = stats.bootstrap_interval(terms["correct"], indices=indices, confidence=cfg.confidence)
                entry[null] = {
                    "accuracy": interval.value,
                    "accuracy_ci": interval.ci,
                    **entry[null],
                    **null_facts.get(name, {}).get(null, {}),
                }
        zsl, icl, tuned = (runs[s].predictions for s in ("zsl", "icl", name))
        _, _, same_change, denominator = _prediction_indicators(zsl, icl, tuned, labels)
        entry["jaccard_independence"] = {
            "expected": null_models.jaccard_independence(zsl, icl, tuned),
            "observed": metrics.prediction_change_overlap(zsl, icl, tuned, labels).jaccard,
            "observed_ci": stats.bootstrap_ratio(same_change, denominator, indices, cfg.confidence),
        }
        out[name] = entry
    return out


def _rounded(value: Any) -> Any:
    """Per-example arrays as nested lists rounded to 6 decimals (JSON)."""
    if isinstance(value, dict):
        return {key: _rounded(v) for key, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.round(6).tolist() if value.dtype.kind == "f" else value.tolist()
    return value


def _sweep_inputs(model, task, cfg, prompts, dev_rows, demos, content_free_query) -> dict[str, Any]:
    """What every lr sweep of this cell scores on: the demonstrations to train on, and the queries
    (the cell's dev slice, disjoint from the demonstrations and the evaluation queries, or the
    demonstrations) with their labels."""
    score_rows = dev_rows if cfg.lr_criterion == "dev" else demos[: prompts.k]
    scored = encode_prompts(model.tokenizer, task, [], score_rows, cfg.prompt, model.cfg.n_ctx)
    return dict(
        demo_sequences=prompts.demo_sequences,
        answer_lengths=prompts.demo_answer_lengths,
        score_prefix=prompts.zsl_prefix,
        score_queries=scored.queries,
        score_labels=[r["label"] for r in score_rows],
        label_tokens=prompts.labels,
        grid=cfg.lr_grid,
        criterion=cfg.lr_criterion,
        n_start=prompts.n_start,
        batch_size=cfg.batch_size,
        content_free_query=content_free_query if cfg.calibration == "content_free" else None,
    )


def _choose_lr(model, task, cfg, sweep_inputs, progress, timings) -> tuple[FinetuneConfig, dict[str, Any]]:
    if cfg.lr is not None:
        return replace(cfg.finetune, lr=cfg.lr), {"lr": cfg.lr, "mode": "given"}
    if cfg.lr_mode == "fixed":
        return cfg.finetune, {"lr": cfg.finetune.lr, "mode": "fixed"}
    if cfg.lr_mode == "reference":
        if task.name not in REFERENCE_LRS:
            raise ConfigError(f"no reference learning rate for task {task.name!r}; use lr_mode='sweep' or give lr")
        lr = REFERENCE_LRS[task.name]
        return replace(cfg.finetune, lr=lr), {"lr": lr, "mode": "reference"}
    t0 = time.perf_counter()
    choice = sweep_learning_rate(model, base=cfg.finetune, progress=progress, **sweep_inputs)
    timings["lr_sweep"] = time.perf_counter() - t0
    logger.info("learning rate chosen by sweep: %g", choice.lr)
    return replace(cfg.finetune, lr=choice.lr), choice.to_dict()


def _choose_lcgd_lr(model, cfg, ft_cfg, sweep_inputs, progress, timings) -> tuple[FinetuneConfig, dict[str, Any]]:
    """LCGD's rate: given (``lcgd_lr``), swept with LCGD itself (``lcgd_lr_sweep``), or FT's."""
    if cfg.lcgd_lr is not None:
        return replace(ft_cfg, lr=cfg.lcgd_lr), {"lr": cfg.lcgd_lr, "mode": "given"}
    if not cfg.lcgd_lr_sweep:
        return ft_cfg, {"lr": ft_cfg.lr, "mode": "same as ft"}
    t0 = time.perf_counter()
    trainer = partial(layer_causal_finetune, schedule=cfg.lcgd_schedule)
    choice = sweep_learning_rate(model, base=ft_cfg, progress=progress, trainer=trainer, **sweep_inputs)
    timings["lcgd_lr_sweep"] = time.perf_counter() - t0
    logger.info("LCGD learning rate chosen by sweep: %g", choice.lr)
    return replace(ft_cfg, lr=choice.lr), choice.to_dict()


def _model_facts(model: Model) -> dict[str, Any]:
    c = model.cfg
    return {
        "name": c.model_name,
        "n_layers": c.n_layers,
        "d_model": c.d_model,
        "n_heads": c.n_heads,
        "n_key_value_heads": c.n_key_value_heads,
        "d_vocab": c.d_vocab,
        "n_ctx": c.n_ctx,
        "dtype": str(c.dtype).removeprefix("torch."),
        "device": str(c.device),
        "untrained_init": getattr(c, "untrained_init", None),  # set by reinitialize_untrained
        "backend": backend_of(model).name,
        "matmul": model_kernel(model),  # results differ by float32 rounding between onednn and blas
    }
