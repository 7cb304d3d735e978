"""The weight-space view: how big the finetuning update is, and whether it points where the
dual-form in-context update points (Dai et al. 2023's dual form).

Per layer l:

* ‖ΔW_FT‖_F for W_K and W_V (finetuned copy vs original, :func:`icl_lens.metrics.weight_update_norms`),
  also relative to ‖W‖_F;
* the dual-form updates of the per-head meta-weight [d_head, d_head] (linear attention, see
  :mod:`icl_lens.metrics.weights`), with W x = x W[h] + b[h]:

      ΔW_ICL = Σ_{i ∈ demo tokens} (W_V x'_i) ⊗ (W_K x'_i)
      ΔW_FT  = Σ_{j ∈ query tokens} (W_V' x_j) ⊗ (W_K' x_j) − (W_V x_j) ⊗ (W_K x_j)
      cos_l  = mean_queries mean_heads ⟨ΔW_FT[h], ΔW_ICL[h]⟩ / (‖ΔW_FT[h]‖ ‖ΔW_ICL[h]‖)

  x' are the base model's attention inputs at the demonstration tokens of the ICL prefix, x the
  base (zero-shot) model's attention inputs at the tokens of ``[start] + query``.

The attention input is the first norm's *output*, ``ln1(resid_pre)``. It equals
``blocks.{l}.ln1.hook_normalized`` only when the norm's scale (and bias) are folded into the
weights; on the unprocessed weights used here ``hook_normalized`` is taken before the scale, so
the norm module is applied to ``blocks.{l}.hook_resid_pre`` instead.

References beside cos_l: cos(ΔW_ICL, W_ZSL) and cos(ΔW_FT, W_ZSL) with the zero-shot
meta-weight W_ZSL = Σ_j (W_V x_j) ⊗ (W_K x_j). All three are sums of value ⊗ key products over
natural text and share a common direction; a dual cosine no higher than these says little.

Limits: the dual form drops the softmax, rotary position rotations and query/key norms (Gemma-3);
if W_Q is trained the query itself moves and ΔW_FT misses that.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypedDict

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from icl_lens import metrics
from icl_lens.errors import ConfigError, MetricInputError
from icl_lens.metrics.weights import attention_parameter
from icl_lens.models.backends import Model, final_residual
from icl_lens.prompts import (
    EncodedPrompts,
    PromptFormat,
    sample_prompts,
)
from icl_lens.tasks import (
    Task,
    get_task,
)
from icl_lens.training.finetune import FinetuneConfig, finetune

logger = logging.getLogger(__name__)

DemoPositions = Literal["prefix", "spans"]


@dataclass(frozen=True)
class WeightSpaceConfig:
    """What the weight-space analysis runs.

    Args:
        k: demonstrations (ICL prefix and finetuning set).
        seed: demonstration sampling seed.
        n_queries: queries the dual-form cosine is averaged over.
        eval_seed: seed of the evaluation-set shuffle.
        finetune: GD configuration (default: W_K, W_V with SGD, lr 1e-3, batch 1).
        prompt: prompt layout.
        parameters: attention parameters whose update norms are reported.
        include_bias: use b_K, b_V in the dual forms (when the model has them).
        demo_positions: ``prefix``: every ICL-prefix token after the start token (demonstrations
            and separators); ``spans``: the demonstration tokens only.
    """

    k: int = 16
    seed: int = 0
    n_queries: int = 8
    eval_seed: int = 1
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    prompt: PromptFormat = field(default_factory=PromptFormat)
    parameters: tuple[str, ...] = ("W_K", "W_V")
    include_bias: bool = True
    demo_positions: DemoPositions = "prefix"

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", tuple(self.parameters))
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.n_queries < 1:
            raise ConfigError(f"n_queries must be >= 1, got {self.n_queries}")
        if not self.parameters:
            raise ConfigError("parameters is empty")
        if self.demo_positions not in ("prefix", "spans"):
            raise ConfigError(f"demo_positions must be 'prefix' or 'spans', got {self.demo_positions!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["parameters"] = list(self.parameters)
        return out


@dataclass
class WeightSpaceResult:
    """Per-layer update sizes and dual-form cosines (lists indexed by layer).

    ``dual_cosine[l]``: mean over queries of the head-mean cos(ΔW_FT, ΔW_ICL);
    ``dual_cosine_std[l]``: its std over queries; ``dual_cosine_per_head[l][h]``: mean over queries.
    """

    task: str
    model: str
    k: int
    n_queries: int
    n_demo_tokens: int
    lr: float
    update_norms: dict[str, list[float]]
    relative_update_norms: dict[str, list[float]]
    dual_cosine: list[float]
    dual_cosine_std: list[float]
    dual_cosine_per_head: list[list[float]]
    icl_vs_zsl_cosine: list[float]
    ft_vs_zsl_cosine: list[float]
    icl_update_norm: list[float]
    ft_update_norm: list[float]
    config: dict[str, Any]

    @property
    def mean_dual_cosine(self) -> float:
        return float(sum(self.dual_cosine) / len(self.dual_cosine))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["analysis"] = "weight_space"
        out["mean_dual_cosine"] = self.mean_dual_cosine
        return out


@torch.no_grad()
def attention_inputs(model: Model, tokens: Sequence[int]) -> list[Float[torch.Tensor, "pos d_model"]]:
    """Every layer's attention input ``ln1(resid_pre)`` for one token sequence (float64, CPU)."""
    resid: dict[int, torch.Tensor] = {}

    def capture(act, hook):
        resid[hook.layer()] = act[0]

    hooks = [(f"blocks.{l}.hook_resid_pre", capture) for l in range(model.cfg.n_layers)]
    batch = torch.tensor([list(tokens)], device=model.cfg.device)
    final_residual(model, batch, torch.ones_like(batch), hooks=hooks)
    return [model.blocks[l].ln1(resid[l][None])[0].detach().to("cpu", torch.float64) for l in range(model.cfg.n_layers)]


def _parameter(model: Model, layer: int, name: str) -> torch.Tensor | None:
    try:
        return attention_parameter(model, layer, name).detach().to("cpu", torch.float64)
    except MetricInputError:
        return None


class _KeyValue(TypedDict):
    W_K: torch.Tensor
    W_V: torch.Tensor
    b_K: torch.Tensor | None
    b_V: torch.Tensor | None


def _kv(model: Model, layer: int, include_bias: bool) -> _KeyValue:
    W_K, W_V = _parameter(model, layer, "W_K"), _parameter(model, layer, "W_V")
    assert W_K is not None and W_V is not None, "every attention layer has key and value weights"
    return {
        "W_K": W_K,
        "W_V": W_V,
        "b_K": _parameter(model, layer, "b_K") if include_bias else None,
        "b_V": _parameter(model, layer, "b_V") if include_bias else None,
    }


def demo_token_positions(prompts: EncodedPrompts, which: DemoPositions) -> list[int]:
    """Positions of the ICL prefix whose attention inputs form ΔW_ICL."""
    if which == "spans":
        return [p for start, end in prompts.demo_spans for p in range(start, end)]
    return list(range(prompts.n_start, len(prompts.icl_prefix)))


def _sample(model: Model, task: Task, cfg: WeightSpaceConfig) -> EncodedPrompts:
    prompts, _, _ = sample_prompts(
        model.tokenizer, task, cfg.prompt, model.cfg.n_ctx, cfg.k, cfg.seed, cfg.n_queries, cfg.eval_seed
    )
    return prompts


def _std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def run_weight_space(
    model: Model,
    task: Task | str,
    cfg: WeightSpaceConfig = WeightSpaceConfig(),
    tuned: Model | None = None,
    progress: bool = True,
) -> WeightSpaceResult:
    """‖ΔW_FT‖ per layer and cos(ΔW_FT, ΔW_ICL) of the dual form, averaged over queries.

    Args:
        model: the base model (unprocessed weights).
        task: task or its name.
        cfg: configuration.
        tuned: an already finetuned copy of ``model`` (e.g. from LCGD, or a run's
            ``ExperimentOutput.models["ft"]``) on the same demonstrations; None: finetune here.
    """
    task = get_task(task) if isinstance(task, str) else task
    if any(g in ("q", "all") for g in cfg.finetune.params.split("+")):
        logger.warning("W_Q is trained too: the dual-form ΔW_FT ignores the query's own change")
    prompts = _sample(model, task, cfg)
    if tuned is None:
        tuned, _ = finetune(model, prompts.demo_sequences, prompts.demo_answer_lengths, cfg.finetune, progress=progress)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads

    norms = metrics.weight_update_norms(model, tuned, cfg.parameters)
    relative = {}
    for name, per_layer in norms.items():
        base = [float(attention_parameter(model, l, name).detach().double().norm()) for l in range(n_layers)]
        relative[name] = [float(d) / max(b, 1e-30) for d, b in zip(per_layer, base)]

    before = [_kv(model, l, cfg.include_bias) for l in range(n_layers)]
    after = [_kv(tuned, l, cfg.include_bias) for l in range(n_layers)]
    positions = demo_token_positions(prompts, cfg.demo_positions)
    demo_inputs = attention_inputs(model, prompts.icl_prefix)
    icl_updates = [
        metrics.dual_form_icl_update(
            demo_inputs[l][positions],
            before[l]["W_K"],
            before[l]["W_V"],
            before[l]["b_K"],
            before[l]["b_V"],
            n_heads=n_heads,
        )
        for l in range(n_layers)
    ]

    per_query_cos: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]  # [layer][query] -> per-head tensor
    icl_zsl: list[list[float]] = [[] for _ in range(n_layers)]
    ft_zsl: list[list[float]] = [[] for _ in range(n_layers)]
    ft_norm: list[list[float]] = [[] for _ in range(n_layers)]
    for query in tqdm(prompts.queries, desc="dual form", disable=not progress, leave=False):
        inputs = attention_inputs(model, prompts.zsl_prefix + query)
        for l in range(n_layers):
            b, a = before[l], after[l]
            ft_update = metrics.dual_form_ft_update(
                inputs[l],
                b["W_K"],
                b["W_V"],
                a["W_K"],
                a["W_V"],
                b["b_K"],
                b["b_V"],
                a["b_K"],
                a["b_V"],
                n_heads=n_heads,
            )
            zsl = metrics.dual_form_icl_update(inputs[l], b["W_K"], b["W_V"], b["b_K"], b["b_V"], n_heads=n_heads)
            per_query_cos[l].append(metrics.dual_form_cosine(ft_update, icl_updates[l]).per_head)
            icl_zsl[l].append(metrics.dual_form_cosine(icl_updates[l], zsl).mean)
            ft_zsl[l].append(metrics.dual_form_cosine(ft_update, zsl).mean)
            ft_norm[l].append(float(ft_update.norm()))

    head_means = [[float(c.mean()) for c in per_query_cos[l]] for l in range(n_layers)]
    result = WeightSpaceResult(
        task=task.name,
        model=model.cfg.model_name,
        k=prompts.k,
        n_queries=len(prompts.queries),
        n_demo_tokens=len(positions),
        lr=cfg.finetune.lr,
        update_norms={name: [float(v) for v in t] for name, t in norms.items()},
        relative_update_norms=relative,
        dual_cosine=[sum(h) / len(h) for h in head_means],
        dual_cosine_std=[_std(h) for h in head_means],
        dual_cosine_per_head=[torch.stack(per_query_cos[l]).mean(0).tolist() for l in range(n_layers)],
        icl_vs_zsl_cosine=[sum(v) / len(v) for v in icl_zsl],
        ft_vs_zsl_cosine=[sum(v) / len(v) for v in ft_zsl],
        icl_update_norm=[float(u.norm()) for u in icl_updates],
        ft_update_norm=[sum(v) / len(v) for v in ft_norm],
        config=cfg.to_dict(),
    )
    logger.info("%s: mean dual-form cos(ΔW_FT, ΔW_ICL) over layers = %.4f", task.name, result.mean_dual_cosine)
    return result
