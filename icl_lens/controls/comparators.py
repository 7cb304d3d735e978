"""Two comparators on the same control: von Oswald et al.'s GD comparator and Dai et al.'s FT comparator.

**GD comparator** (von Oswald et al. 2023, §4): the transformer's prediction ŷ_TF(C, x_q) against
K plain GD steps of the linear model from W0 = 0 (η tuned on dev tasks), on fresh evaluation tasks:

    prediction gap     |ŷ_TF − ŷ_GD|
    sensitivity cos    cos(∂ŷ_TF/∂x_q, ∂ŷ_GD/∂x_q)      (∂ŷ_GD/∂x_q = W_K, the GD weights)
    sensitivity L2     ‖∂ŷ_TF/∂x_q − ∂ŷ_GD/∂x_q‖

each a mean over tasks with a percentile-bootstrap interval (:func:`icl_lens.stats.bootstrap_interval`).
The claim "the control implements GD" is decided by thresholds fixed before any run
(:data:`COSINE_THRESHOLD`, :data:`GAP_THRESHOLD`): it **holds** when the interval of the mean cosine lies
at or above 0.99 and the interval of the relative prediction gap
mean|ŷ_TF − ŷ_GD| / mean|ŷ_GD − y_q| lies at or below 0.2, and **fails** otherwise.

**FT comparator** (Dai et al. 2023): the transformer's own W_K/W_V finetuned on the task's N
demonstrations, each shown zero-shot as the token (x_i, 0) with target y_i (loss ½(ŷ − y_i)², mean
over the demonstrations, plain GD with a rate tuned on dev tasks), one copy per task. The query's
attention output and scores are recorded zero-shot (the query alone), in context and finetuned, and
read by the project's metrics (:func:`icl_lens.metrics.simaou` and friends) with its nulls and the
findings' verdict rule (:func:`icl_lens.reporting.findings.verdict`). The zero-shot input has no
context key, so in all three settings the query also attends to itself (``query_in_keys``); with the
reference's context-only keys the zero-shot attention output would be 0 and the finetuning gradient
of W_K/W_V exactly 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from transformer_lens import ActivationCache

from icl_lens import metrics
from icl_lens._validation import AT_LEAST_ONE, POSITIVE, SEED, validate_fields
from icl_lens.controls.models import ControlTransformer
from icl_lens.controls.tasks import RegressionBatch, RegressionConfig, context_tokens, gd_weights, sample_tasks
from icl_lens.errors import ConfigError
from icl_lens.reporting.findings import verdict
from icl_lens.stats import bootstrap_interval, derangement, resample_indices

logger = logging.getLogger(__name__)

COSINE_THRESHOLD = 0.99
"""The GD claim needs the interval of the mean sensitivity cosine at or above this (fixed up front)."""
GAP_THRESHOLD = 0.2
"""... and the interval of mean|ŷ_TF − ŷ_GD| / mean|ŷ_GD − y_q| at or below this (fixed up front)."""
EVAL_SEED_OFFSET = 1000
"""Evaluation tasks are drawn with seed + this, dev tasks (η, FT rate) with seed + 1: never the training stream."""


@dataclass(frozen=True)
class ComparatorConfig:
    """How a control is compared with GD and with FT.

    Args:
        n_eval: evaluation tasks (the reference: 10000).
        n_dev: dev tasks for tuning η and the FT rate.
        n_ft_tasks: evaluation tasks of the FT comparator (one finetuned copy each).
        ft_steps: plain GD steps of the FT comparator on each task's demonstrations.
        n_resamples: bootstrap resamples of every interval.
        confidence: interval coverage.
        seed: seeds the dev and evaluation tasks, the bootstrap and the nulls.
    """

    n_eval: int = 10_000
    n_dev: int = 10_000
    n_ft_tasks: int = 2000
    ft_steps: int = 1
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        validate_fields(
            self,
            {
                "n_eval": AT_LEAST_ONE,
                "n_dev": AT_LEAST_ONE,
                "n_ft_tasks": AT_LEAST_ONE,
                "ft_steps": AT_LEAST_ONE,
                "n_resamples": AT_LEAST_ONE,
                "confidence": POSITIVE,
                "seed": SEED,
            },
        )
        if self.n_ft_tasks < 2:
            raise ConfigError(f"n_ft_tasks must be >= 2 (the shuffled-pair null), got {self.n_ft_tasks}")
        if not self.confidence < 1:
            raise ConfigError(f"confidence must lie in (0, 1), got {self.confidence}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summary(interval: Any) -> dict[str, Any]:
    return {"mean": interval.value, "ci": [interval.low, interval.high]}


def query_sensitivity(
    model: ControlTransformer, batch: RegressionBatch
) -> tuple[Float[torch.Tensor, " batch"], Float[torch.Tensor, "batch d"]]:
    """The prediction ŷ_TF and its gradient ∂ŷ_TF/∂x_q per task (tasks are independent, so the
    gradient of Σ_b ŷ_b with respect to every x_q,b is each task's own)."""
    x_query = batch.x_query.clone().requires_grad_(True)
    tokens = context_tokens(batch.x, batch.y, x_query)
    with torch.enable_grad():
        prediction = model.predict(tokens)
        (gradient,) = torch.autograd.grad(prediction.sum(), x_query)
    return prediction.detach(), gradient.detach()


def gd_comparator(
    model: ControlTransformer, task: RegressionConfig, eta: float, gd_steps: int, cfg: ComparatorConfig
) -> dict[str, Any]:
    """von Oswald et al.'s metrics of ``model`` against ``gd_steps`` GD steps of size η, with intervals and verdict."""
    batch = sample_tasks(task, cfg.n_eval, cfg.seed + EVAL_SEED_OFFSET, dtype=next(model.parameters()).dtype)
    prediction, sensitivity = query_sensitivity(model, batch)
    batch64 = RegressionBatch(*(t.double() for t in (batch.x, batch.y, batch.x_query, batch.y_query, batch.w)))
    gd_weight = gd_weights(batch64, eta, gd_steps)
    gd_prediction = torch.einsum("bd,bd->b", gd_weight, batch64.x_query)
    prediction, sensitivity = prediction.double(), sensitivity.double()
    gap = (prediction - gd_prediction).abs().numpy()
    gd_error = (gd_prediction - batch64.y_query).abs().numpy()
    cos = torch.nn.functional.cosine_similarity(sensitivity, gd_weight, dim=-1, eps=1e-12).numpy()
    l2 = (sensitivity - gd_weight).norm(dim=-1).numpy()
    indices = resample_indices(len(batch), cfg.n_resamples, cfg.seed)
    counts_gap = np.array([gap[row].mean() / max(gd_error[row].mean(), 1e-300) for row in indices])
    tail = 100 * (1 - cfg.confidence) / 2
    relative_gap_ci = [float(v) for v in np.percentile(counts_gap, [tail, 100 - tail])]
    relative_gap = {"mean": float(gap.mean() / gd_error.mean()), "ci": relative_gap_ci}
    cos_summary = _summary(bootstrap_interval(cos, indices=indices, confidence=cfg.confidence))
    holds = cos_summary["ci"][0] >= COSINE_THRESHOLD and relative_gap_ci[1] <= GAP_THRESHOLD
    loss = lambda p: 0.5 * float(((p - batch64.y_query) ** 2).mean())  # noqa: E731
    return {
        "comparator": "gd",
        "gd_steps": gd_steps,
        "eta": eta,
        "n_tasks": len(batch),
        "loss_tf": loss(prediction),
        "loss_gd": loss(gd_prediction),
        "prediction_gap": _summary(bootstrap_interval(gap, indices=indices, confidence=cfg.confidence)),
        "relative_prediction_gap": relative_gap,
        "sensitivity_cosine": cos_summary,
        "sensitivity_l2": _summary(bootstrap_interval(l2, indices=indices, confidence=cfg.confidence)),
        "verdict": "holds" if holds else "fails",
        "rule": f"cosine CI >= {COSINE_THRESHOLD} and relative-gap CI <= {GAP_THRESHOLD}",
    }


FT_RATE_GRID = tuple(float(r) for r in np.logspace(-3, 6, 37))
"""Learning rates the FT comparator tries on the dev tasks (the untrained control's gradients are tiny)."""


def finetune_kv(
    model: ControlTransformer, batch: RegressionBatch, lr: float, steps: int
) -> dict[str, Float[torch.Tensor, "batch ..."]]:
    """One finetuned copy of every layer's W_K and W_V per task: ``steps`` plain GD steps of rate
    ``lr`` on the task's demonstrations, each shown alone as (x_i, 0) with target y_i, loss
    (1/N) Σ_i ½(ŷ_i − y_i)². Returns per-task weights [batch, ...] keyed by parameter name."""
    n_tasks, n_context = batch.y.shape
    demos = batch.demo_tokens().reshape(n_tasks * n_context, 1, -1)
    weights = {name: p.detach()[None].repeat(n_tasks, *[1] * p.ndim) for name, p in model.kv_parameters().items()}
    for _ in range(steps):
        leaves = {name: w.requires_grad_(True) for name, w in weights.items()}
        with torch.enable_grad():
            per_demo = {name: w.repeat_interleave(n_context, dim=0) for name, w in leaves.items()}
            prediction = model.predict(demos, query_in_keys=True, overrides=per_demo).view(n_tasks, n_context)
            loss = (0.5 * (prediction - batch.y) ** 2).mean(dim=1).sum()  # tasks independent: each its own gradient
            grads = torch.autograd.grad(loss, list(leaves.values()))
        weights = {name: (w - lr * g).detach() for (name, w), g in zip(leaves.items(), grads)}
    return weights


def tune_ft_rate(model: ControlTransformer, task: RegressionConfig, cfg: ComparatorConfig) -> float:
    """The FT rate of :data:`FT_RATE_GRID` with the lowest mean zero-shot query loss after finetuning, on dev tasks."""
    batch = sample_tasks(task, min(cfg.n_dev, 2000), cfg.seed + 1, dtype=next(model.parameters()).dtype)
    best, best_loss = FT_RATE_GRID[0], math.inf
    with torch.no_grad():
        for lr in FT_RATE_GRID:
            tuned = finetune_kv(model, batch, lr, cfg.ft_steps)
            loss = float((0.5 * (model.predict(batch.query_tokens(), True, tuned) - batch.y_query) ** 2).mean())
            if math.isfinite(loss) and loss < best_loss:
                best, best_loss = lr, loss
    logger.info("FT comparator rate %.3g (dev query loss %.4f)", best, best_loss)
    return best


def recorded_cache(model: ControlTransformer, tokens: torch.Tensor, overrides: dict | None = None) -> ActivationCache:
    """The query position's recorded activations, as the project's metrics read them: per layer
    ``hook_attn_out`` [batch, d_model] and the query's score / pattern on its own key [batch, n_heads, 1]
    (its "query part"; the context keys exist only in context)."""
    names = ("hook_attn_out", "attn.hook_attn_scores", "attn.hook_pattern")
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens, query_in_keys=True, overrides=overrides, names_filter=lambda n: n.endswith(names)
        )
    recorded = {}
    for layer in range(model.cfg.n_layers):
        recorded[f"blocks.{layer}.hook_attn_out"] = cache[f"blocks.{layer}.hook_attn_out"][:, -1]
        for name in ("attn_scores", "pattern"):
            recorded[f"blocks.{layer}.attn.hook_{name}"] = cache[f"blocks.{layer}.attn.hook_{name}"][:, :, -1, -1:]
    return ActivationCache(recorded, model)


def _random_direction(model: ControlTransformer, tuned: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Each task's W_K/W_V moved by a seeded Gaussian direction with the norm of its own FT update
    (per tensor and task), as :func:`icl_lens.cell.nulls.random_direction_model` does for real models."""
    generator = torch.Generator().manual_seed(seed)
    original = model.kv_parameters()
    out = {}
    for name, weights in tuned.items():
        update = weights - original[name][None]
        direction = torch.randn(update.shape, generator=generator, dtype=update.dtype)
        dims = tuple(range(1, update.ndim))
        scale = update.flatten(1).norm(dim=1) / direction.flatten(1).norm(dim=1).clamp_min(1e-30)
        out[name] = original[name][None] + direction * scale.view(-1, *[1] * len(dims))
    return out


def ft_comparator(model: ControlTransformer, task: RegressionConfig, cfg: ComparatorConfig) -> dict[str, Any]:
    """Dai et al.'s metrics of ``model`` with the FT comparator, the nulls and the findings' verdicts."""
    lr = tune_ft_rate(model, task, cfg)
    batch = sample_tasks(task, cfg.n_ft_tasks, cfg.seed + EVAL_SEED_OFFSET, dtype=next(model.parameters()).dtype)
    tuned = finetune_kv(model, batch, lr, cfg.ft_steps)
    wrong = batch.with_targets(batch.y[:, torch.as_tensor(derangement(task.n_context, cfg.seed))])
    zsl = recorded_cache(model, batch.query_tokens())
    icl = recorded_cache(model, batch.tokens())
    ft = recorded_cache(model, batch.query_tokens(), tuned)
    nulls = {
        "wrong_label": recorded_cache(model, batch.query_tokens(), finetune_kv(model, wrong, lr, cfg.ft_steps)),
        "random_direction": recorded_cache(model, batch.query_tokens(), _random_direction(model, tuned, cfg.seed)),
    }
    with torch.no_grad():
        predictions = {
            "zsl": model.predict(batch.query_tokens(), True),
            "icl": model.predict(batch.tokens(), True),
            "ft": model.predict(batch.query_tokens(), True, tuned),
        }
    losses = {k: 0.5 * float(((p - batch.y_query) ** 2).mean()) for k, p in predictions.items()}
    per_example = {
        "simaou": metrics.simaou_per_example(zsl, icl, ft),
        "simaou_random": metrics.simaou_random_per_example(zsl, icl, cfg.seed),
        "simam": metrics.simam_per_example(icl, ft),
        "zsl_simam": metrics.simam_per_example(icl, zsl),
        "simam_delta": metrics.simam_delta_per_example(
            zsl.stack_activation("attn_scores"), icl.stack_activation("attn_scores"), ft.stack_activation("attn_scores")
        ),
        "null_shuffled_pair": metrics.simaou_per_example(
            zsl, icl, ft, ft_index=torch.as_tensor(derangement(len(batch), cfg.seed))
        ),
        **{f"null_{kind}": metrics.simaou_per_example(zsl, icl, cache) for kind, cache in nulls.items()},
    }
    indices = resample_indices(len(batch), cfg.n_resamples, cfg.seed)
    summaries = {
        name: _summary(bootstrap_interval(values.numpy(), indices=indices, confidence=cfg.confidence))
        for name, values in per_example.items()
    }
    claims = {}
    for baseline in ("simaou_random", "null_shuffled_pair", "null_wrong_label", "null_random_direction"):
        difference = per_example["simaou"] - per_example[baseline]
        interval = bootstrap_interval(difference.numpy(), indices=indices, confidence=cfg.confidence)
        claim = "simaou_above_random" if baseline == "simaou_random" else f"simaou_above_{baseline[5:]}"
        claims[claim] = {**_summary(interval), "verdict": verdict(interval.ci, 0.0, ">")}
    icl_gain = (predictions["zsl"] - batch.y_query) ** 2 - (predictions["icl"] - batch.y_query) ** 2
    interval = bootstrap_interval(0.5 * icl_gain.double().numpy(), indices=indices, confidence=cfg.confidence)
    claims["icl_beats_zsl"] = {**_summary(interval), "verdict": verdict(interval.ci, 0.0, ">")}
    return {
        "comparator": "ft",
        "ft_rate": lr,
        "ft_steps": cfg.ft_steps,
        "n_tasks": len(batch),
        "losses": losses,
        "metrics": summaries,
        "claims": claims,
    }
