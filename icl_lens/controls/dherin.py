"""Dherin et al. 2025: a context acts on a transformer block like a rank-1 update of its first MLP weight.

For a block T_W(C, x) = f(W·A(C, x) + b), whose MLP reads A(C, x) (the query's input to the MLP with
the context C) through a first linear map W, the same block without context but with

    W' = W + ΔW,   ΔW = (W·δA)·A(x)ᵀ / ‖A(x)‖²,   δA = A(C, x) − A(x)

gives W'·A(x) = W·A(x) + W·δA = W·A(C, x): exactly the with-context MLP output at the query. ΔW is
rank 1.

**Residual, pre-norm blocks** (TransformerLens's ``blocks.{l}``: resid_mid = resid_pre + attn_out,
resid_post = resid_mid + mlp(LN2(resid_mid)), Gemma-3 adding norms after attention and MLP). Let x
be the query's block input and C the context's. With context, resid_mid(C, x) = x + attn(C, x); the
MLP sees A(C, x) = LN2(resid_mid(C, x)). Without context (x alone, a one-token sequence: it attends
to itself only), resid_mid(x) = x + attn(x) and A(x) = LN2(resid_mid(x)). Then

1. the rank-1 patch is taken on the MLP's *post-norm* inputs A, so LN2 needs no patch of its own:
   every first-layer map of the MLP that reads A (``W_in``, and ``W_gate`` in a gated MLP) gets its
   own ΔW = (W·δA)·A(x)ᵀ/‖A(x)‖² (in TransformerLens's [d_model, d_mlp] layout:
   ΔW_in = A(x) ⊗ (δA·W_in) / ‖A(x)‖²); whatever follows inside the MLP (activation, W_out, a
   post-MLP norm) then sees exactly its with-context input;
2. the residual stream carries resid_mid itself past the MLP, so the block output still differs by
   δr = resid_mid(C, x) − resid_mid(x) = attn(C, x) − attn(x): a bias patch δr added to the block
   output (to ``b_out`` where no norm follows the MLP; after Gemma's post-MLP norm it must be added
   to the output itself, which is how it is applied here).

With both, T_{W+ΔW}(x) + δr = T_W(C, x) to float rounding. :func:`context_patch` computes it in
float64 on a copy of the block and reports the error; :func:`compare_with_finetuning` compares ΔW
with the finetuning update of the same weight (Dai et al. 2023's FT comparator, group ``mlp``).
"""

from __future__ import annotations

import copy
import logging
import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from icl_lens.cell.nulls import wrong_labels
from icl_lens.errors import ConfigError
from icl_lens.prompts import PromptFormat, encode_prompts, sample_prompts
from icl_lens.reporting.findings import verdict
from icl_lens.stats import bootstrap_interval, resample_indices
from icl_lens.tasks import get_task
from icl_lens.training.finetune import FinetuneConfig, finetune

logger = logging.getLogger(__name__)

FIRST_LAYER_WEIGHTS = ("W_in", "W_gate")
"""The MLP weights that read the MLP input A (TransformerLens names; ``W_gate`` only in gated MLPs)."""


@dataclass
class ContextPatch:
    """Dherin et al.'s patch of one block at one query, and how exactly it reproduces the context.

    Attributes:
        layer: the block.
        delta_w: ΔW per first-layer MLP weight, TransformerLens layout [d_model, d_mlp] (rank 1).
        bias: δr, added to the block output [d_model].
        with_context: the block output at the query with its context [d_model].
        patched: the context-free patched block's output plus δr [d_model].
        unpatched: the context-free block's output without any patch [d_model].
    """

    layer: int
    delta_w: dict[str, torch.Tensor]
    bias: torch.Tensor
    with_context: torch.Tensor
    patched: torch.Tensor
    unpatched: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def max_abs_error(self) -> float:
        return float((self.patched - self.with_context).abs().max())

    @property
    def relative_error(self) -> float:
        """‖patched − with context‖ / ‖with context − unpatched‖: the error against the context's effect."""
        effect = float((self.with_context - self.unpatched).norm())
        return float((self.patched - self.with_context).norm()) / max(effect, 1e-300)


def _block_parts(block: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    mlp = getattr(block, "mlp", None)
    if mlp is None or not hasattr(block, "ln2") or not hasattr(block, "hook_resid_mid"):
        raise ConfigError(
            "Dherin's patch needs a TransformerLens block with an MLP after attention (blocks.{l}.ln2, .mlp, "
            ".hook_resid_mid); attention-only or parallel blocks have no such MLP input"
        )
    names = [name for name in FIRST_LAYER_WEIGHTS if isinstance(getattr(mlp, name, None), torch.Tensor)]
    if "W_in" not in names:
        raise ConfigError("the block's MLP has no W_in (a mixture-of-experts MLP is not supported)")
    return mlp, names


def _run_block(
    block: torch.nn.Module, resid: Float[torch.Tensor, "1 pos d_model"]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The block's output, resid_mid and MLP input A, at the last position."""
    seen: dict[str, torch.Tensor] = {}
    mid_hook, ln2 = typing.cast(torch.nn.Module, block.hook_resid_mid), typing.cast(torch.nn.Module, block.ln2)
    handles = [
        mid_hook.register_forward_hook(lambda m, i, o: seen.__setitem__("mid", o)),
        ln2.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o)),
    ]
    try:
        out = block(resid)
    finally:
        for handle in handles:
            handle.remove()
    return out[0, -1], seen["mid"][0, -1], seen["a"][0, -1]


@torch.no_grad()
def context_patch(
    block: torch.nn.Module,
    resid_pre: Float[torch.Tensor, "pos d_model"],
    layer: int = -1,
    dtype: torch.dtype = torch.float64,
) -> ContextPatch:
    """The rank-1 (plus bias) patch that makes ``block`` without context give its with-context output.

    Args:
        block: a TransformerLens block (``model.blocks[l]``); a copy in ``dtype`` is used.
        resid_pre: the block's input at every position of the prompt (``blocks.{l}.hook_resid_pre``
            of one prompt); the last position is the query x, the others the context C.
        layer: recorded in the result.
        dtype: the precision of the check (float64: the identity to ~1e-12).
    """
    if resid_pre.ndim != 2 or resid_pre.shape[0] < 2:
        raise ConfigError(f"resid_pre must be [pos >= 2, d_model] (context and query), got {tuple(resid_pre.shape)}")
    work = copy.deepcopy(block).to(dtype)
    mlp, names = _block_parts(work)
    resid = resid_pre.to(dtype)[None]
    with_context, mid_context, a_context = _run_block(work, resid)
    unpatched, mid_alone, a_alone = _run_block(work, resid[:, -1:])
    delta_a = a_context - a_alone
    delta_w = {}
    for name in names:
        weight = getattr(mlp, name)
        delta_w[name] = torch.outer(a_alone, delta_a @ weight) / a_alone.pow(2).sum()
        weight.add_(delta_w[name])
    bias = mid_context - mid_alone
    patched_out, _, _ = _run_block(work, resid[:, -1:])
    return ContextPatch(
        layer,
        delta_w,
        bias,
        with_context,
        patched_out + bias,
        unpatched,
        {"delta_a_norm": float(delta_a.norm()), "a_norm": float(a_alone.norm())},
    )


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm().clamp_min(1e-300) * b.norm().clamp_min(1e-300)))


def compare_with_finetuning(
    patches: list[ContextPatch],
    ft_update: torch.Tensor,
    null_update: torch.Tensor | None = None,
    seed: int = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """cos(ΔW_patch, ΔW_FT) of ``W_in`` over queries, against the nulls, with intervals and verdicts.

    Nulls: a seeded Gaussian direction of ``W_in``'s shape (is any direction this aligned?), and
    ``null_update`` (e.g. finetuning on wrong labels: is it the demonstrations' input→label mapping
    that FT and the context share?). The claim "the patch aligns with FT" holds when the interval of
    the per-query paired difference to a null lies above 0 (the findings' rule).
    """
    if not patches:
        raise ConfigError("compare_with_finetuning needs at least one patch")
    generator = torch.Generator().manual_seed(seed)
    random_direction = torch.randn(ft_update.shape, generator=generator, dtype=torch.float64)
    rows: dict[str, list[float]] = {"cos_ft": [], "cos_random": [], "rank1_norm": [], "norm_ratio": []}
    if null_update is not None:
        rows["cos_null"] = []
    ft_norm = float(ft_update.double().norm())
    for patch in patches:
        delta = patch.delta_w["W_in"]
        rows["cos_ft"].append(_cosine(delta, ft_update))
        rows["cos_random"].append(_cosine(delta, random_direction))
        rows["rank1_norm"].append(float(delta.norm()))
        rows["norm_ratio"].append(float(delta.norm()) / max(ft_norm, 1e-300))
        if null_update is not None:
            rows["cos_null"].append(_cosine(delta, null_update))
    indices = resample_indices(len(patches), n_resamples, seed)
    summary: dict[str, Any] = {"n_queries": len(patches), "ft_update_norm": ft_norm}
    for name, values in rows.items():
        interval = bootstrap_interval(np.asarray(values), indices=indices, confidence=confidence)
        summary[name] = {"mean": interval.value, "ci": interval.ci, "per_query": values}
    claims = {}
    for null in ("cos_random", "cos_null"):
        if null in rows:
            difference = np.asarray(rows["cos_ft"]) - np.asarray(rows[null])
            interval = bootstrap_interval(difference, indices=indices, confidence=confidence)
            claims[f"patch_aligned_with_ft_above_{null[4:]}"] = {
                "mean": interval.value,
                "ci": interval.ci,
                "verdict": verdict(interval.ci, 0.0, ">"),
            }
    summary["claims"] = claims
    return summary


def _ft_update(model: Any, prompts: Any, layer: int) -> torch.Tensor:
    """ΔW_FT of ``blocks.{layer}.mlp.W_in``: one plain GD step on all k demonstrations together
    (the project's finetuning loss, group ``mlp``); one step's direction does not depend on the rate."""

    cfg = FinetuneConfig(params="mlp", lr=1e-3, epochs=1, batch_size=max(1, len(prompts.demo_sequences)))
    tuned, _ = finetune(model, prompts.demo_sequences, prompts.demo_answer_lengths, cfg, progress=False)
    update = tuned.blocks[layer].mlp.W_in.detach().double() - model.blocks[layer].mlp.W_in.detach().double()
    del tuned
    return update


def dherin_study(
    model: Any,
    task_name: str = "sst2",
    layers: tuple[int, ...] | None = None,
    k: int = 8,
    n_queries: int = 16,
    seed: int = 0,
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """Dherin et al.'s identity and the FT comparison on a TransformerLens model and a task.

    For each query of the task (ICL prompt: k demonstrations then the query), each chosen layer
    (default: the middle one) gets its :func:`context_patch` at the query's last token; the result
    holds the identity's errors and :func:`compare_with_finetuning` of the patches against one GD
    step of the layer's W_in on the demonstrations, and against the same step on wrong labels
    (:func:`icl_lens.cell.nulls.wrong_labels`).
    """

    if not hasattr(model, "blocks") or not hasattr(model, "run_with_cache"):
        raise ConfigError("dherin_study needs a TransformerLens HookedTransformer (blocks, run_with_cache)")
    task = get_task(task_name)
    fmt = PromptFormat()
    prompts, demos, queries = sample_prompts(model.tokenizer, task, fmt, model.cfg.n_ctx, k, seed, n_queries)
    layers = layers if layers is not None else (model.cfg.n_layers // 2,)
    for layer in layers:
        if not 0 <= layer < model.cfg.n_layers:
            raise ConfigError(f"layer {layer} is outside the model's {model.cfg.n_layers} layers")
    names = {f"blocks.{layer}.hook_resid_pre" for layer in layers}
    patches: dict[int, list[ContextPatch]] = {layer: [] for layer in layers}
    with torch.no_grad():
        for query in prompts.queries:
            tokens = torch.tensor([prompts.icl_prefix + query], device=model.cfg.device)
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            for layer in layers:
                resid = cache[f"blocks.{layer}.hook_resid_pre"][0].detach().cpu()
                patches[layer].append(context_patch(model.blocks[layer], resid.to(model.cfg.device), layer))
    wrong = wrong_labels(prompts.demo_labels, len(task.label_words), seed)
    wrong_demos = [dict(row, label=label) for row, label in zip(demos[: prompts.k], wrong)]
    wrong_prompts = encode_prompts(model.tokenizer, task, wrong_demos, queries[:1], fmt, model.cfg.n_ctx)
    out: dict[str, Any] = {"task": task.name, "k": prompts.k, "n_queries": len(prompts.queries), "layers": {}}
    for layer in layers:
        errors = [p.max_abs_error for p in patches[layer]]
        relative = [p.relative_error for p in patches[layer]]
        comparison = compare_with_finetuning(
            patches[layer],
            _ft_update(model, prompts, layer),
            _ft_update(model, wrong_prompts, layer),
            seed=seed,
            n_resamples=n_resamples,
        )
        out["layers"][str(layer)] = {
            "identity_max_abs_error": max(errors),
            "identity_max_relative_error": max(relative),
            "context_effect_norm_mean": float(
                np.mean([float((p.with_context - p.unpatched).norm()) for p in patches[layer]])
            ),
            "bias_patch_norm_mean": float(np.mean([float(p.bias.norm()) for p in patches[layer]])),
            "ft_comparison": comparison,
        }
    return out
