"""One comparison cell: a task, a model, k demonstrations and a seed, run every way (SPEC §1–§5).

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
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from typing import Any, Literal

import torch
from transformer_lens import HookedTransformer

from icl_lens import metrics
from icl_lens._version import __version__
from icl_lens.calibration import calibrate, content_free_row, content_free_scores
from icl_lens.errors import ConfigError
from icl_lens.evaluation import RecordSpec, SettingRun, evaluate
from icl_lens.finetune import FinetuneConfig, TrainingTrace, finetune
from icl_lens.lcgd import layer_causal_finetune
from icl_lens.lr_sweep import DEFAULT_LR_GRID, REFERENCE_LRS, sweep_learning_rate
from icl_lens.prompts import (
    EncodedPrompts,
    PromptFormat,
    encode_prompts,
    encode_text,
    sample_prompts,
)
from icl_lens.tasks import (
    Task,
    load_split,
    shuffled_indices,
)

logger = logging.getLogger(__name__)

SETTINGS = ("zsl", "icl", "ft", "lcgd")
DEFAULT_MODEL = "gemma3-270m"
"""The offline model where in-context learning beats zero-shot on most tasks (see README)."""
FINETUNED_SETTINGS = ("ft", "lcgd")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one comparison cell (SPEC §1–§5).

    Defaults follow the reference implementations except three choices that make the small
    offline models learn in context at all (measured in ``experiments/icl_vs_zsl.py``, see the
    README): the model (Gemma-3-270M), balanced demonstrations and contextual calibration. The
    reference setting is ``demo_sampling="random", calibration="none"``.

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
        lr_mode: ``sweep`` (choose per task and model on a dev slice), ``reference`` (SPEC §2's
            per-task rate) or ``fixed`` (``finetune.lr``).
        lr_grid: rates the sweep tries.
        lr_dev_size: dev-slice size of the sweep.
        lr_criterion: ``dev`` (FT accuracy on a held-out train slice disjoint from the demos) or
            ``demos`` (FT accuracy on the demonstrations).
        lcgd_lr: LCGD learning rate (None: the same as FT).
        lcgd_lr_sweep: choose LCGD's own learning rate by the same sweep as FT's (grid, criterion),
            run with LCGD; costs one LCGD training per grid value.
        lcgd_schedule: ``simultaneous`` (reference) or ``sequential``.
        attention_map: ``scores`` (pre-softmax, reference) or ``pattern`` for SimAM.
        alpha_include_sink: count the first (BOS/sink) token as a demonstration token in α.
        random_seed: seed of the SimAOU random baseline.
        batch_size: queries per forward pass.
        reuse_prefix: encode the shared demonstration prefix once and reuse its key/value cache
            (fast path); False re-encodes it for every query (the straightforward path).
        calibration: ``content_free`` (default: contextual calibration of every setting's class
            scores against an "N/A" query, Zhao et al. 2021) or ``none`` (reference).
        template / label_words: override the task's template and label words.
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", tuple(self.settings))
        unknown = [s for s in self.settings if s not in SETTINGS]
        if unknown or not self.settings:
            raise ConfigError(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
        if self.k < 0:
            raise ConfigError(f"k must be >= 0, got {self.k}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 or None, got {self.limit}")
        if self.lr_criterion not in ("dev", "demos"):
            raise ConfigError(f"lr_criterion must be 'dev' or 'demos', got {self.lr_criterion!r}")
        if self.lr_mode not in ("sweep", "reference", "fixed"):
            raise ConfigError(f"lr_mode must be sweep, reference or fixed, got {self.lr_mode!r}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr}")
        if self.lcgd_lr is not None and not (self.lcgd_lr > 0 and math.isfinite(self.lcgd_lr)):
            raise ConfigError(f"lcgd_lr must be a positive finite number, got {self.lcgd_lr}")
        if self.lcgd_lr is not None and self.lcgd_lr_sweep:
            raise ConfigError("give lcgd_lr or lcgd_lr_sweep, not both")
        if self.attention_map not in ("scores", "pattern"):
            raise ConfigError(f"attention_map must be 'scores' or 'pattern', got {self.attention_map!r}")
        if self.demo_sampling not in ("random", "balanced"):
            raise ConfigError(f"demo_sampling must be 'random' or 'balanced', got {self.demo_sampling!r}")
        if self.calibration not in ("none", "content_free"):
            raise ConfigError(f"calibration must be 'none' or 'content_free', got {self.calibration!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.k == 0 and any(s in self.settings for s in ("icl", *FINETUNED_SETTINGS)):
            raise ConfigError("k = 0 leaves nothing to learn from: run settings=('zsl',) only")
        if self.label_words is not None:
            object.__setattr__(self, "label_words", tuple(self.label_words))
        if not self.lr_grid:
            raise ConfigError("lr_grid is empty")
        object.__setattr__(self, "lr_grid", tuple(float(x) for x in self.lr_grid))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in _WRITTEN_ONLY_WHEN_SET:  # so cells finished before the field existed stay valid
            if out[name] == self.__dataclass_fields__[name].default:
                del out[name]
        out["finetune"] = self.finetune.to_dict()  # drops its own later-added fields at their defaults
        out["settings"] = list(self.settings)
        out["lr_grid"] = list(self.lr_grid)
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
        for key in ("settings", "lr_grid", "label_words"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)

    def cell_name(self) -> str:
        """A file-system-safe, unique name for this cell: task, model, k, seed, variant, and a short
        digest of the whole configuration (so two cells differing in any option never collide)."""
        model = self.model.replace("/", "_").replace("\\", "_")
        task = self.task.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".json").removesuffix(".toml")
        name = f"{task}__{model}__k{self.k}__seed{self.seed}" + ("__untrained" if self.untrained else "")
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{name}__{digest}"


_WRITTEN_ONLY_WHEN_SET = ("lcgd_lr_sweep",)
"""Config fields added after results existed: left out of ``to_dict`` (and so of the cell's digest)
while at their default, so a rerun still recognises the cells finished before them."""


def apply_task_overrides(task: Task, cfg: ExperimentConfig) -> Task:
    return task.with_overrides(template=cfg.template, label_words=cfg.label_words)


def _layer_summary(per_layer: torch.Tensor) -> dict[str, Any]:
    values = [float(v) for v in per_layer]
    return {"per_layer": values, "mean": float(sum(values) / len(values))}


def comparison_metrics(
    zsl: SettingRun, icl: SettingRun, tuned: SettingRun, labels: torch.Tensor, cfg: ExperimentConfig
) -> dict[str, Any]:
    """Every ICL-vs-finetuned metric of SPEC §4 for one finetuned setting (FT or LCGD)."""
    kind = cfg.attention_map
    map_name = "attn_scores" if kind == "scores" else "pattern"
    zsl_maps, icl_maps, tuned_maps = (r.activations.stack_activation(map_name) for r in (zsl, icl, tuned))
    overlap = metrics.prediction_change_overlap(zsl.predictions, icl.predictions, tuned.predictions, labels)
    return {
        "rec2ftp": metrics.rec2ftp(zsl.predictions, icl.predictions, tuned.predictions, labels),
        "prediction_changes": overlap.to_dict(),
        "simaou": _layer_summary(metrics.simaou(zsl.activations, icl.activations, tuned.activations)),
        "simam": _layer_summary(metrics.simam(icl_maps, tuned_maps)),
        "simam_delta": _layer_summary(metrics.simam_delta(zsl_maps, icl_maps, tuned_maps)),
        "token_overlap": _topk_overlap(icl, tuned, cfg.record.top_k),
    }


def _topk_overlap(a: SettingRun, b: SettingRun, k: int) -> dict[str, float]:
    dist_a = metrics.TopKDistribution(a.next_token_ids, a.next_token_probs)
    dist_b = metrics.TopKDistribution(b.next_token_ids, b.next_token_probs)
    return {
        "token_overlap": float(metrics.token_overlap(dist_a, dist_b, k=k).mean()),
        "overlap_cosine": float(metrics.overlap_cosine(dist_a, dist_b, k=k).mean()),
    }


def _per_example(queries, runs: dict[str, SettingRun]) -> list[dict[str, Any]]:
    rows = []
    for i, query in enumerate(queries):
        rows.append({
            "row_index": query["row_index"],
            "label": query["label"],
            "prediction": {name: int(run.predictions[i]) for name, run in runs.items()},
            "class_scores": {name: [round(float(s), 6) for s in run.class_scores[i]] for name, run in runs.items()},
        })
    return rows


@dataclass
class ExperimentOutput:
    """The results dict plus the in-memory runs and finetuned models (for notebooks)."""

    results: dict[str, Any]
    runs: dict[str, SettingRun]
    prompts: EncodedPrompts
    models: dict[str, HookedTransformer]
    traces: dict[str, TrainingTrace]


def run_experiment(
    model: HookedTransformer, task: Task, cfg: ExperimentConfig, progress: bool = True, keep_models: bool = False
) -> ExperimentOutput:
    """Run the configured settings on the same queries and compute every metric."""
    task = apply_task_overrides(task, cfg)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    train = load_split(task, task.train_split)
    needs_demos = any(s in cfg.settings for s in ("icl", *FINETUNED_SETTINGS))
    prompts, demos, queries = sample_prompts(
        model.tokenizer, task, cfg.prompt, model.cfg.n_ctx, cfg.k, cfg.seed, cfg.limit, cfg.eval_seed,
        sampling=cfg.demo_sampling, require_demos=needs_demos, train=train)
    labels = torch.tensor([q["label"] for q in queries])
    n_start = prompts.n_start
    content_free_query = encode_text(model.tokenizer, task.format_input(content_free_row(task.template_fields)))
    content_free_record: dict[str, list[float]] = {}

    def run_setting(name: str, setting_model: HookedTransformer, prefix) -> SettingRun:
        t0 = time.perf_counter()
        result = evaluate(setting_model, prefix, prompts.queries, prompts.labels, setting=name, n_start=n_start,
                          record=cfg.record, batch_size=cfg.batch_size, reuse_prefix=cfg.reuse_prefix,
                          progress=progress)
        if cfg.calibration == "content_free":
            bias = content_free_scores(setting_model, prefix, content_free_query, prompts.labels, n_start)
            content_free_record[name] = [float(v) for v in bias[0]]
            result.class_scores = calibrate(result.class_scores, bias)
        timings[f"eval_{name}"] = time.perf_counter() - t0
        return result

    needs_comparison = any(s in cfg.settings for s in FINETUNED_SETTINGS)
    runs: dict[str, SettingRun] = {}
    if "zsl" in cfg.settings or needs_comparison:
        runs["zsl"] = run_setting("zsl", model, prompts.zsl_prefix)
    if "icl" in cfg.settings or needs_comparison:
        runs["icl"] = run_setting("icl", model, prompts.icl_prefix)

    lr_record: dict[str, Any] = {}
    lcgd_lr_record: dict[str, Any] = {}
    tuned_models: dict[str, HookedTransformer] = {}
    traces: dict[str, TrainingTrace] = {}
    if needs_comparison:
        sweep_inputs = _sweep_inputs(model, task, cfg, prompts, train, demos, content_free_query)
        ft_cfg, lr_record = _choose_lr(model, task, cfg, sweep_inputs, progress, timings)
        for name in FINETUNED_SETTINGS:
            if name not in cfg.settings:
                continue
            t0 = time.perf_counter()
            if name == "ft":
                tuned, trace = finetune(model, prompts.demo_sequences, prompts.demo_answer_lengths, ft_cfg, progress)
            else:
                lcgd_cfg, lcgd_lr_record = _choose_lcgd_lr(model, cfg, ft_cfg, sweep_inputs, progress, timings)
                tuned, trace = layer_causal_finetune(model, prompts.demo_sequences, prompts.demo_answer_lengths,
                                                     lcgd_cfg, cfg.lcgd_schedule, progress)
            timings[f"train_{name}"] = time.perf_counter() - t0
            traces[name] = trace
            runs[name] = run_setting(name, tuned, prompts.zsl_prefix)
            if keep_models:
                tuned_models[name] = tuned
            else:
                del tuned

    results: dict[str, Any] = {
        "icl_lens_version": __version__,
        "config": cfg.to_dict(),
        "task": {"name": task.name, "template": task.template, "label_words": list(task.label_words),
                 "eval_split": task.eval_split, "n_classes": task.n_classes},
        "model": _model_facts(model),
        "prompts": prompts.summary(),
        "demonstrations": [{"row_index": d["row_index"], "label": d["label"]} for d in demos[: prompts.k]],
        "n_examples": len(queries),
        "accuracy": {name: metrics.accuracy(run.predictions, labels) for name, run in runs.items()},
        "lr": lr_record,
        **({"lcgd_lr": lcgd_lr_record} if lcgd_lr_record else {}),
        "calibration": {"method": cfg.calibration, "content_free_scores": content_free_record},
        "metrics": {},
        "training": {name: trace.to_dict() for name, trace in traces.items()},
    }
    if "icl" in runs:
        results["metrics"]["alpha"] = _layer_summary(
            metrics.alpha(runs["icl"].demo_attention_mass, runs["icl"].sink_attention_mass, cfg.alpha_include_sink)
        )
    if "icl" in runs and "zsl" in runs:
        map_name = "attn_scores" if cfg.attention_map == "scores" else "pattern"
        results["metrics"]["simam_zsl"] = _layer_summary(metrics.simam(
            runs["icl"].activations.stack_activation(map_name), runs["zsl"].activations.stack_activation(map_name)))
        results["metrics"]["simaou_random"] = _layer_summary(
            metrics.simaou_random_baseline(runs["zsl"].activations, runs["icl"].activations, seed=cfg.random_seed))
    for name in FINETUNED_SETTINGS:
        if name in runs:
            results["metrics"][name] = comparison_metrics(runs["zsl"], runs["icl"], runs[name], labels, cfg)
    results["examples"] = _per_example(queries, runs)
    timings["total"] = time.perf_counter() - started
    results["timing_seconds"] = {k: round(v, 3) for k, v in timings.items()}
    return ExperimentOutput(results=results, runs=runs, prompts=prompts, models=tuned_models, traces=traces)


def _sweep_inputs(model, task, cfg, prompts, train, demos, content_free_query) -> dict[str, Any]:
    """What every lr sweep of this cell scores on: the demonstrations to train on, and the queries
    (a dev slice disjoint from the demonstrations, or the demonstrations) with their labels."""
    if cfg.lr_criterion == "dev":
        demo_rows = {d["row_index"] for d in demos}
        order = [i for i in shuffled_indices(len(train), cfg.seed) if i not in demo_rows][: cfg.lr_dev_size]
        score_rows = [dict(train[i], row_index=i) for i in order]
    else:
        score_rows = demos[: prompts.k]
    scored = encode_prompts(model.tokenizer, task, [], score_rows, cfg.prompt, model.cfg.n_ctx)
    return dict(
        demo_sequences=prompts.demo_sequences, answer_lengths=prompts.demo_answer_lengths,
        score_prefix=prompts.zsl_prefix, score_queries=scored.queries,
        score_labels=[r["label"] for r in score_rows], label_tokens=prompts.labels, grid=cfg.lr_grid,
        criterion=cfg.lr_criterion, n_start=prompts.n_start, batch_size=cfg.batch_size,
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


def _model_facts(model: HookedTransformer) -> dict[str, Any]:
    c = model.cfg
    return {
        "name": c.model_name, "n_layers": c.n_layers, "d_model": c.d_model, "n_heads": c.n_heads,
        "n_key_value_heads": c.n_key_value_heads, "d_vocab": c.d_vocab, "n_ctx": c.n_ctx,
        "dtype": str(c.dtype).removeprefix("torch."), "device": str(c.device),
    }
