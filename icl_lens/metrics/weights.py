"""Weight-space metrics (docs/concepts/metrics.md): sparsity of the attention projections, the size of the
finetuning update, and the dual-form comparison of the ICL and FT updates.

**Sparsity** (Shen et al. 2024): the hand-built constructions in which ICL implements gradient
descent need attention projections that are mostly exact zeros (about 75 % of the entries of
W_Q, W_K, W_V, :data:`HANDBUILT_ICL_GD_SPARSITY`); real models' weights are dense. Compute it on
unprocessed weights (``HookedTransformer.from_pretrained_no_processing``): LayerNorm folding and
centering rewrite W_Q, W_K and W_V.

**Dual form** (Dai et al. 2023). Drop the softmax (linear attention). In TransformerLens
notation, head h maps a token's attention input x (the layer's normalised residual stream,
``blocks[l].ln1(hook_resid_pre)``, the output of the norm with its scale, a row vector) to the key
k = x W_K[h] + b_K[h] and value v = x W_V[h] + b_V[h], and the query q = x_q W_Q[h] + b_Q[h] reads

    F(q) = Σ_j v_j (k_j · q) = (Σ_j v_j ⊗ k_j) q.

With demonstrations in the prompt the sum runs over demonstration tokens x'_i and query tokens
x_j, so

    F_ICL(q) = (W_ZSL + ΔW_ICL) q,  W_ZSL = Σ_j (W_V x_j) ⊗ (W_K x_j),  ΔW_ICL = Σ_i (W_V x'_i) ⊗ (W_K x'_i)

(writing W x for the affine map x W[h] + b[h]): ICL acts as an update ΔW_ICL of a "meta-weight"
of shape [d_head, d_head] per head that multiplies the query. Finetuning W_K, W_V (the reference
trainable set, W_Q frozen) changes the same meta-weight through the same query tokens:

    F_FT(q) = (W_ZSL + ΔW_FT) q,  ΔW_FT = Σ_j (W_V' x_j) ⊗ (W_K' x_j) − Σ_j (W_V x_j) ⊗ (W_K x_j).

ΔW_ICL and ΔW_FT are therefore two updates of one matrix acting on one query vector: that is the
like-for-like comparison (:func:`dual_form_cosine`). Comparing ΔW_ICL with the raw parameter
change ΔW_K, ΔW_V (shape [d_model, d_head]) would compare objects in different spaces.

Limits of the comparison, worth stating with any result: it ignores the softmax; under rotary
embeddings the keys are rotated by position after W_K, which the dual form leaves out; if W_Q is
trained too, the query q itself moves and ΔW_FT misses that part. Use the *zero-shot* model's
attention inputs x_j for both terms of ΔW_FT, so that it isolates the change of the weights
(the finetuned model's earlier layers also change x_j; that is a separate effect).

Grouped-query attention: W_K, W_V (and b_K, b_V) may hold fewer key/value heads than query heads
([n_kv_heads, d_model, d_head], TransformerLens' ``_W_K`` / ``_W_V``); they are expanded to
``n_heads`` with ``repeat_interleave`` along the head dimension, exactly as TransformerLens does.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from icl_lens._shapes import shape_checked
from icl_lens.errors import MetricInputError
from icl_lens.metrics._common import cosine, require_finite, require_nonempty
from icl_lens.models.backends import Model, backend_of
from icl_lens.papers import HANDBUILT_ICL_GD_SPARSITY  # noqa: F401 (icl_lens.metrics re-exports it)

logger = logging.getLogger(__name__)


#: The attention projections whose sparsity :func:`model_weight_sparsity` reports.
SPARSITY_PARAMETERS: tuple[str, ...] = ("W_Q", "W_K", "W_V")

WeightSource = Model | Mapping[str, torch.Tensor]
_LAYER_KEY = re.compile(r"^blocks\.(\d+)\.attn\.")


# --------------------------------------------------------------------------------------------
# Sparsity


def _checked_thresholds(thresholds: Sequence[float]) -> list[float]:
    values = [float(t) for t in thresholds]
    if not values:
        raise MetricInputError("weight sparsity needs at least one threshold")
    if any(not math.isfinite(t) or t < 0 for t in values):
        raise MetricInputError(f"sparsity thresholds must be finite and >= 0, got {values}")
    return values


@shape_checked
def weight_sparsity(weight: Float[torch.Tensor, "..."], thresholds: Sequence[float]) -> dict[float, float]:
    """Fraction of near-zero entries of a weight, for each threshold t:

        sparsity(W, t) = #{entries w of W : |w| < t} / #entries(W)

    (strict inequality, so t = 0 gives 0).
    """
    values = _checked_thresholds(thresholds)
    require_nonempty(weight, "weight")
    magnitudes = weight.detach().abs().flatten()
    return {t: (magnitudes < t).double().mean().item() for t in values}


def _attention_module_parameter(model: Model, layer: int, name: str) -> torch.Tensor:
    value = backend_of(model).attention_parameter(model, layer, name)
    if not isinstance(value, torch.Tensor):
        raise MetricInputError(f"layer {layer}'s attention has no parameter {name}")
    return value


def _state_dict_parameter(state_dict: Mapping[str, torch.Tensor], layer: int, name: str) -> torch.Tensor:
    for key in (f"blocks.{layer}.attn._{name}", f"blocks.{layer}.attn.{name}"):
        if key in state_dict:
            return state_dict[key]
    raise MetricInputError(f"the state dict has no blocks.{layer}.attn.{name} (nor _{name})")


def _n_layers(source: WeightSource) -> int:
    if isinstance(source, torch.nn.Module):
        return source.cfg.n_layers
    layers = {int(m.group(1)) for key in source if (m := _LAYER_KEY.match(key))}
    if not layers:
        raise MetricInputError("the state dict holds no blocks.{l}.attn.* entries")
    return max(layers) + 1


def attention_parameter(source: WeightSource, layer: int, name: str) -> torch.Tensor:
    """Layer ``layer``'s attention parameter ``name`` (``"W_K"``, ``"b_V"``, …) as stored, from a
    model or a TransformerLens state dict; for grouped-query attention the unexpanded
    ``_W_K`` / ``_W_V`` / ``_b_K`` / ``_b_V`` [n_kv_heads, ...]."""
    if isinstance(source, torch.nn.Module):
        return _attention_module_parameter(source, layer, name)
    if isinstance(source, Mapping):
        return _state_dict_parameter(source, layer, name)
    raise MetricInputError(f"expected a TransformerLens model or a state dict, got {type(source).__name__}")


@shape_checked
def model_weight_sparsity(
    model: Model, thresholds: Sequence[float], parameters: Sequence[str] = SPARSITY_PARAMETERS
) -> dict[int, dict[str, dict[float, float]]]:
    """:func:`weight_sparsity` of each attention projection of every layer:
    ``result[layer][name][t]`` = #{|w| < t} / #entries, name in W_Q, W_K, W_V (all heads of the
    layer together; GQA's unexpanded K/V weights, which give the same fraction as the expanded
    ones). Compare with :data:`HANDBUILT_ICL_GD_SPARSITY`.
    """
    values = _checked_thresholds(thresholds)
    return {
        layer: {name: weight_sparsity(attention_parameter(model, layer, name), values) for name in parameters}
        for layer in range(model.cfg.n_layers)
    }


# --------------------------------------------------------------------------------------------
# Size of the finetuning update


@shape_checked
def weight_update_norms(
    before: WeightSource, after: WeightSource, parameters: Sequence[str] = ("W_K", "W_V")
) -> dict[str, Float[torch.Tensor, " n_layers"]]:
    """Frobenius norm of the finetuning update of each attention parameter, per layer:

        ‖ΔW‖_F = sqrt(Σ (W_after − W_before)²)   over all heads of the layer

    Args:
        before, after: the models (or TransformerLens state dicts) before and after finetuning.
        parameters: which attention parameters (reference trainable set: W_K, W_V; add
            ``"b_K"``, ``"b_V"`` for the biases). GQA: the unexpanded weights are compared.

    Returns:
        ``{name: tensor [n_layers]}`` (float64).
    """
    n_layers = _n_layers(before)
    if _n_layers(after) != n_layers:
        raise MetricInputError(f"before has {n_layers} layers but after has {_n_layers(after)}")
    norms: dict[str, Float[torch.Tensor, " n_layers"]] = {}
    for name in parameters:
        per_layer = []
        for layer in range(n_layers):
            old = attention_parameter(before, layer, name).detach().to("cpu", torch.float64)
            new = attention_parameter(after, layer, name).detach().to("cpu", torch.float64)
            if old.shape != new.shape:
                raise MetricInputError(
                    f"layer {layer} {name}: shapes differ before {tuple(old.shape)} / after {tuple(new.shape)}"
                )
            per_layer.append((new - old).norm())
        norms[name] = torch.stack(per_layer)
    return norms


# --------------------------------------------------------------------------------------------
# Dual form


def _expand_heads(tensor: torch.Tensor, n_heads: int, what: str) -> torch.Tensor:
    n_stored = tensor.shape[0]
    if n_stored == n_heads:
        return tensor
    if n_stored == 0 or n_heads % n_stored:
        raise MetricInputError(f"{what} has {n_stored} heads, which does not divide n_heads={n_heads}")
    return torch.repeat_interleave(tensor, n_heads // n_stored, dim=0)


@shape_checked
def _projected(
    inputs: Float[torch.Tensor, "pos d_model"],
    weight: Float[torch.Tensor, "kv_heads d_model d_head"],
    bias: Float[torch.Tensor, "kv_heads d_head"] | None,
    n_heads: int,
    what: str,
) -> Float[torch.Tensor, "pos n_heads d_head"]:
    """x W[h] + b[h] for every token and (expanded) head, in float64."""
    if weight.ndim != 3 or weight.shape[1] != inputs.shape[1]:
        raise MetricInputError(f"{what} must be [heads, d_model={inputs.shape[1]}, d_head], got {tuple(weight.shape)}")
    weight = _expand_heads(weight.detach().to(torch.float64), n_heads, what)
    projected = torch.einsum("pd,hde->phe", inputs, weight.to(inputs.device))
    if bias is not None:
        if tuple(bias.shape[1:]) != (weight.shape[2],) or bias.ndim != 2:
            raise MetricInputError(f"bias of {what} must be [heads, d_head={weight.shape[2]}], got {tuple(bias.shape)}")
        bias = _expand_heads(bias.detach().to(torch.float64), n_heads, f"bias of {what}")
        projected = projected + bias.to(inputs.device)
    return projected


def _checked_inputs(inputs: torch.Tensor, what: str) -> torch.Tensor:
    if inputs.ndim != 2:
        raise MetricInputError(f"{what} must be [n_tokens, d_model], got shape {tuple(inputs.shape)}")
    require_nonempty(inputs, what)
    require_finite(inputs, what)
    return inputs.detach().to(torch.float64)


def _n_heads(n_heads: int | None, W_K: torch.Tensor, W_V: torch.Tensor) -> int:
    return int(n_heads) if n_heads is not None else max(int(W_K.shape[0]), int(W_V.shape[0]))


@shape_checked
def dual_form_icl_update(
    demo_inputs: Float[torch.Tensor, "n_demo_tokens d_model"],
    W_K: Float[torch.Tensor, "kv_heads d_model d_head"],
    W_V: Float[torch.Tensor, "kv_heads d_model d_head"],
    b_K: Float[torch.Tensor, "kv_heads d_head"] | None = None,
    b_V: Float[torch.Tensor, "kv_heads d_head"] | None = None,
    n_heads: int | None = None,
) -> Float[torch.Tensor, "n_heads d_head d_head"]:
    """Dual-form ICL update of one layer (Dai et al. 2023), per head:

        ΔW_ICL[h] = Σ_i (x'_i W_V[h] + b_V[h]) ⊗ (x'_i W_K[h] + b_K[h])   ([d_head(value), d_head(key)])

    Args:
        demo_inputs: the layer's attention inputs x'_i (``blocks[l].ln1`` applied to ``hook_resid_pre``;
            not ``ln1.hook_normalized``, which is taken before the scale on unprocessed weights) at the
            demonstration tokens of the ICL prompt.
        W_K, W_V: the layer's key/value weights [heads, d_model, d_head]; GQA: the unexpanded
            [n_kv_heads, ...] weights, expanded to ``n_heads`` by ``repeat_interleave``.
        b_K, b_V: optional biases [heads, d_head].
        n_heads: number of query heads (default: the number of heads W_K / W_V hold).

    Returns:
        float64 tensor [n_heads, d_head, d_head].
    """
    inputs = _checked_inputs(demo_inputs, "demo_inputs")
    heads = _n_heads(n_heads, W_K, W_V)
    keys = _projected(inputs, W_K, b_K, heads, "W_K")
    values = _projected(inputs, W_V, b_V, heads, "W_V")
    return torch.einsum("phv,phk->hvk", values, keys)


@shape_checked
def dual_form_ft_update(
    query_inputs: Float[torch.Tensor, "n_query_tokens d_model"],
    W_K_before: Float[torch.Tensor, "kv_heads d_model d_head"],
    W_V_before: Float[torch.Tensor, "kv_heads d_model d_head"],
    W_K_after: Float[torch.Tensor, "kv_heads d_model d_head"],
    W_V_after: Float[torch.Tensor, "kv_heads d_model d_head"],
    b_K_before: Float[torch.Tensor, "kv_heads d_head"] | None = None,
    b_V_before: Float[torch.Tensor, "kv_heads d_head"] | None = None,
    b_K_after: Float[torch.Tensor, "kv_heads d_head"] | None = None,
    b_V_after: Float[torch.Tensor, "kv_heads d_head"] | None = None,
    n_heads: int | None = None,
) -> Float[torch.Tensor, "n_heads d_head d_head"]:
    """Dual-form FT update of one layer: the change finetuning makes to the zero-shot meta-weight
    W_ZSL = Σ_j (W_V x_j) ⊗ (W_K x_j) over the query's tokens x_j, per head:

        ΔW_FT[h] = Σ_j (W_V' x_j) ⊗ (W_K' x_j) − Σ_j (W_V x_j) ⊗ (W_K x_j)

    (W x = x W[h] + b[h]; primes = after finetuning). Computed in float64 as the algebraically
    equal Σ_j ΔV_j ⊗ K'_j + V_j ⊗ ΔK_j, which avoids cancelling two large sums.

    Args:
        query_inputs: the layer's attention inputs x_j at the query's tokens, from the
            *zero-shot* (pre-finetuning) model, so that only the weights differ.
        W_K_before, W_V_before, W_K_after, W_V_after: key/value weights before / after
            finetuning (GQA: unexpanded, see :func:`dual_form_icl_update`).
        b_K_before, b_V_before, b_K_after, b_V_after: optional biases; give both or neither of
            each before/after pair.
        n_heads: number of query heads (default: the number of heads the weights hold).
    """
    inputs = _checked_inputs(query_inputs, "query_inputs")
    for before, after, name in ((b_K_before, b_K_after, "b_K"), (b_V_before, b_V_after, "b_V")):
        if (before is None) != (after is None):
            raise MetricInputError(f"give both {name}_before and {name}_after, or neither")
    for before, after, name in ((W_K_before, W_K_after, "W_K"), (W_V_before, W_V_after, "W_V")):
        if before.shape != after.shape:
            raise MetricInputError(f"{name} shapes differ before {tuple(before.shape)} / after {tuple(after.shape)}")
    heads = _n_heads(n_heads, W_K_before, W_V_before)
    keys_before = _projected(inputs, W_K_before, b_K_before, heads, "W_K_before")
    keys_after = _projected(inputs, W_K_after, b_K_after, heads, "W_K_after")
    values_before = _projected(inputs, W_V_before, b_V_before, heads, "W_V_before")
    values_after = _projected(inputs, W_V_after, b_V_after, heads, "W_V_after")
    value_change = torch.einsum("phv,phk->hvk", values_after - values_before, keys_after)
    key_change = torch.einsum("phv,phk->hvk", values_before, keys_after - keys_before)
    return value_change + key_change


@dataclass(frozen=True)
class DualFormCosine:
    """Cosine of two dual-form updates.

    Args:
        per_head: cos(a[h], b[h]) over the flattened [d_head, d_head] matrices, [n_heads].
        mean: the mean over heads.
    """

    per_head: Float[torch.Tensor, " n_heads"]
    mean: float

    def to_dict(self) -> dict[str, Any]:
        return {"per_head": self.per_head.tolist(), "mean": self.mean}


@shape_checked
def dual_form_cosine(
    update_a: Float[torch.Tensor, "n_heads d_head d_head"], update_b: Float[torch.Tensor, "n_heads d_head d_head"]
) -> DualFormCosine:
    """Cosine of two dual-form updates (typically ΔW_ICL and ΔW_FT of one layer), per head:

        cos_h = ⟨a[h], b[h]⟩_F / (‖a[h]‖_F ‖b[h]‖_F),   mean = (1/H) Σ_h cos_h

    A zero update (‖·‖ below 1e-12) has cosine 0.
    """
    if update_a.ndim != 3 or update_a.shape != update_b.shape:
        raise MetricInputError(
            f"dual-form updates must share one [n_heads, d_head, d_head] shape, got "
            f"{tuple(update_a.shape)} and {tuple(update_b.shape)}"
        )
    require_nonempty(update_a, "dual-form update")
    per_head = cosine(update_a.flatten(1).cpu(), update_b.flatten(1).cpu())
    return DualFormCosine(per_head=per_head, mean=per_head.mean().item())
