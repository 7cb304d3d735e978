"""Activation-based metrics (docs/concepts/metrics.md): SimAOU and its random baseline, SimAM, ZSL SimAM,
SimAM_Δ, and the attention mass α on demonstrations.

Inputs are the *recorded* activations of one setting (ZSL, ICL, FT or LCGD): one position per
example (docs/concepts/metrics.md), given EITHER as a :class:`~transformer_lens.ActivationCache` OR as the tensor
already stacked layer-first. A recorded cache holds, for every layer ``l``:

- ``blocks.{l}.hook_attn_out``: [batch, d_model], the attention output at the recorded position;
- ``blocks.{l}.attn.hook_attn_scores``: [batch, n_heads, query_len], the pre-softmax score row of
  the recorded position over the keys of the query part only, zero-padded after each example's
  own query length (the padding is the same in every setting, so it adds 0 to every dot product
  and norm: the cosines are exact);
- ``blocks.{l}.attn.hook_pattern``: the same, post-softmax (optional).

Stacked, these are [n_layers, batch, d_model] (``cache.stack_activation("attn_out")``) and
[n_layers, batch, n_heads, query_len] (``cache.stack_activation("attn_scores")`` /
``("pattern")``). Every metric returns one value per layer, ``Float[Tensor, " n_layers"]``
(float64); the overall value of the papers is the mean over layers, :func:`layer_mean`.

Cosine convention: cos(a, b) = a·b / (max(‖a‖, ε) · max(‖b‖, ε)), ε = 1e-12, so a zero vector
(e.g. an attention output that finetuning did not change) has cosine 0 with anything.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from jaxtyping import Float
from transformer_lens import ActivationCache

from icl_lens._shapes import shape_checked
from icl_lens.errors import MetricInputError
from icl_lens.metrics._common import COSINE_EPS, cosine, require_finite, require_nonempty, require_same_shape

logger = logging.getLogger(__name__)

MapKind = Literal["scores", "pattern"]
#: TransformerLens short names (``utils.get_act_name``) of the recorded hook points.
_ATTN_OUT = "attn_out"
_MAP_NAMES: dict[str, str] = {"scores": "attn_scores", "pattern": "pattern"}
_MAP_HOOKS: dict[str, str] = {
    "scores": "blocks.{layer}.attn.hook_attn_scores",
    "pattern": "blocks.{layer}.attn.hook_pattern",
}

AttnOutInput = ActivationCache | Float[torch.Tensor, "n_layers batch d_model"]
AttnMapInput = ActivationCache | Float[torch.Tensor, "n_layers batch n_heads query_len"]


@shape_checked
def _stacked_activation(
    activations: ActivationCache | torch.Tensor, short_name: str, hook_template: str, expected_ndim: int, what: str
) -> Float[torch.Tensor, "n_layers batch *rest"]:
    """The activation ``short_name`` stacked layer-first, from a cache or a ready tensor."""
    if isinstance(activations, ActivationCache):
        try:
            if activations.model is not None:
                stacked = activations.stack_activation(short_name)
            else:  # the cache was detached from its model to free memory: stack the layers it holds
                n_layers = 0
                while hook_template.format(layer=n_layers) in activations.cache_dict:
                    n_layers += 1
                layers = [activations.cache_dict[hook_template.format(layer=l)] for l in range(n_layers)]
                stacked = torch.stack(layers)
        except (KeyError, RuntimeError) as error:
            raise MetricInputError(
                f"{what}: the cache lacks {hook_template.format(layer='{l}')} for some layer"
                f" (it holds {sorted(activations.cache_dict)[:6]}...)"
            ) from error
    elif isinstance(activations, torch.Tensor):
        stacked = activations
    else:
        raise MetricInputError(f"{what}: expected an ActivationCache or a tensor, got {type(activations).__name__}")
    if stacked.ndim != expected_ndim:
        raise MetricInputError(f"{what}: expected {expected_ndim} dims layer-first, got shape {tuple(stacked.shape)}")
    require_nonempty(stacked, what)
    require_finite(stacked, what)
    return stacked.detach().cpu()


@shape_checked
def _attn_out(activations: AttnOutInput, what: str) -> Float[torch.Tensor, "n_layers batch d_model"]:
    return _stacked_activation(activations, _ATTN_OUT, "blocks.{layer}.hook_attn_out", 3, f"{what} attention output")


@shape_checked
def _attn_map(
    activations: AttnMapInput, kind: MapKind, what: str
) -> Float[torch.Tensor, "n_layers batch n_heads query_len"]:
    if kind not in _MAP_NAMES:
        raise MetricInputError(f"kind must be 'scores' or 'pattern', got {kind!r}")
    return _stacked_activation(activations, _MAP_NAMES[kind], _MAP_HOOKS[kind], 4, f"{what} attention {kind}")


@shape_checked
def _unit(vectors: Float[torch.Tensor, "... d"]) -> Float[torch.Tensor, "... d"]:
    vectors = vectors.to(torch.float64)
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)


@shape_checked
def layer_mean(per_layer: Float[torch.Tensor, " n_layers"]) -> float:
    """The overall value of a per-layer metric: the mean over layers, (1/L) Σ_l m_l."""
    if per_layer.ndim != 1 or per_layer.numel() == 0:
        raise MetricInputError(
            f"layer_mean expects a non-empty 1-d per-layer tensor, got shape {tuple(per_layer.shape)}"
        )
    return per_layer.to(torch.float64).mean().item()


@shape_checked
def simaou(zsl: AttnOutInput, icl: AttnOutInput, ft: AttnOutInput) -> Float[torch.Tensor, " n_layers"]:
    """SimAOU: similarity of the attention-output updates of ICL and FT, per layer.

        h = o / ‖o‖ (o = attention output at the recorded position),
        Δ_ICL = h_ICL − h_ZSL,  Δ_FT = h_FT − h_ZSL,
        SimAOU_l = (1/N) Σ_i cos(Δ_ICL[l, i], Δ_FT[l, i])

    Args:
        zsl, icl, ft: recorded caches or stacked [n_layers, batch, d_model] tensors of the three
            settings on the same examples (pass LCGD in the ``ft`` slot).
    """
    return simaou_per_example(zsl, icl, ft).mean(dim=0)


@shape_checked
def simaou_per_example(
    zsl: AttnOutInput, icl: AttnOutInput, ft: AttnOutInput, ft_index: torch.Tensor | None = None
) -> Float[torch.Tensor, "batch n_layers"]:
    """The per-example terms of :func:`simaou`, cos(Δ_ICL[l, i], Δ_FT[l, π(i)]), examples first.

    Args:
        ft_index: π, one example index per example (default: the identity). A derangement gives
            the shuffled-pair null: each ICL update against another query's FT update, where
            Δ_FT(π(i)) = h_FT(π(i)) − h_ZSL(π(i)) is that query's own update.
    """
    zsl_out, icl_out, ft_out = _attn_out(zsl, "ZSL"), _attn_out(icl, "ICL"), _attn_out(ft, "FT")
    require_same_shape({"zsl": zsl_out, "icl": icl_out, "ft": ft_out}, "simaou")
    zsl_unit = _unit(zsl_out)
    icl_update, ft_update = _unit(icl_out) - zsl_unit, _unit(ft_out) - zsl_unit
    _log_zero_updates(icl_update, "SimAOU ICL")
    _log_zero_updates(ft_update, "SimAOU FT")
    if ft_index is not None:
        ft_update = ft_update[:, _pair_index(ft_index, ft_update.shape[1])]
    return cosine(icl_update, ft_update).T  # [batch, n_layers]


def _pair_index(index: torch.Tensor, batch: int) -> torch.Tensor:
    index = torch.as_tensor(index, dtype=torch.long)
    if index.shape != (batch,) or (batch and (int(index.min()) < 0 or int(index.max()) >= batch)):
        raise MetricInputError(
            f"ft_index must hold {batch} example indices in [0, {batch}), got shape {tuple(index.shape)}"
        )
    return index


@shape_checked
def simaou_random_baseline(zsl: AttnOutInput, icl: AttnOutInput, seed: int) -> Float[torch.Tensor, " n_layers"]:
    """Random baseline of SimAOU: the ICL update against a random direction, per layer.

        SimAOU_rand,l = (1/N) Σ_i cos(Δ_ICL[l, i], u[l, i]),  u[l, i] ~ Uniform[0, 1)^d_model

    As in the reference, u is *not* centred (it lies in the positive orthant). One u per example
    and layer, drawn in float64 from a ``torch.Generator`` seeded with ``seed`` (deterministic).
    """
    return simaou_random_per_example(zsl, icl, seed).mean(dim=0)


@shape_checked
def simaou_random_per_example(zsl: AttnOutInput, icl: AttnOutInput, seed: int) -> Float[torch.Tensor, "batch n_layers"]:
    """The per-example terms of :func:`simaou_random_baseline`, examples first."""
    zsl_out, icl_out = _attn_out(zsl, "ZSL"), _attn_out(icl, "ICL")
    require_same_shape({"zsl": zsl_out, "icl": icl_out}, "simaou_random_baseline")
    icl_update = _unit(icl_out) - _unit(zsl_out)
    generator = torch.Generator().manual_seed(int(seed))
    random_directions = torch.rand(icl_update.shape, generator=generator, dtype=torch.float64)
    return cosine(icl_update, random_directions).T


def _log_zero_updates(update: torch.Tensor, what: str) -> None:
    n_zero = int((update.norm(dim=-1) < COSINE_EPS).sum())
    if n_zero:
        logger.debug("%s: %d of %d update vectors are zero and score cosine 0", what, n_zero, update.shape[:-1].numel())


@shape_checked
def _head_cosine_mean(map_a: torch.Tensor, map_b: torch.Tensor) -> Float[torch.Tensor, "batch n_layers"]:
    per_head = cosine(map_a, map_b)  # [n_layers, batch, n_heads]
    return per_head.mean(dim=2).T


@shape_checked
def simam(map_a: AttnMapInput, map_b: AttnMapInput, kind: MapKind = "scores") -> Float[torch.Tensor, " n_layers"]:
    """SimAM: similarity of two settings' attention maps at the recorded position, per layer.

        SimAM_l = (1/N) Σ_i (1/H) Σ_h cos(map_a[l, i, h, :], map_b[l, i, h, :])

    (cosine over the query part's keys). SimAM proper is ``simam(icl, ft)``; "ZSL SimAM" is
    ``simam(icl, zsl)``.

    Args:
        map_a, map_b: recorded caches or stacked [n_layers, batch, n_heads, query_len] tensors.
        kind: which cache entry to read: ``"scores"`` (pre-softmax ``hook_attn_scores``, the
            reference) or ``"pattern"`` (post-softmax ``hook_pattern``). Ignored for tensors.
    """
    return simam_per_example(map_a, map_b, kind).mean(dim=0)


@shape_checked
def simam_per_example(
    map_a: AttnMapInput, map_b: AttnMapInput, kind: MapKind = "scores"
) -> Float[torch.Tensor, "batch n_layers"]:
    """The per-example terms of :func:`simam` (mean over heads), examples first."""
    a, b = _attn_map(map_a, kind, "first"), _attn_map(map_b, kind, "second")
    require_same_shape({"map_a": a, "map_b": b}, "simam")
    return _head_cosine_mean(a, b)


@shape_checked
def simam_delta(
    zsl: AttnMapInput, icl: AttnMapInput, ft: AttnMapInput, kind: MapKind = "scores"
) -> Float[torch.Tensor, " n_layers"]:
    """SimAM_Δ: similarity of the attention-map updates of ICL and FT, per layer.

        SimAM_Δ,l = (1/N) Σ_i (1/H) Σ_h cos(map_ICL − map_ZSL, map_FT − map_ZSL)[l, i, h]

    Maps are the raw recorded rows (not normalised before the difference). ``kind`` as in
    :func:`simam`.
    """
    return simam_delta_per_example(zsl, icl, ft, kind).mean(dim=0)


@shape_checked
def simam_delta_per_example(
    zsl: AttnMapInput,
    icl: AttnMapInput,
    ft: AttnMapInput,
    kind: MapKind = "scores",
    ft_index: torch.Tensor | None = None,
) -> Float[torch.Tensor, "batch n_layers"]:
    """The per-example terms of :func:`simam_delta` (mean over heads), examples first.

    ``ft_index`` = π pairs example i's ICL update with example π(i)'s FT update (the
    shuffled-pair null). Different queries have different key lengths; the recorded maps are
    zero-padded after each query's own keys, so the cosine's dot product runs over the keys the
    two queries share (the leading min(len_i, len_π(i)) positions) and each norm over its own
    query's keys.
    """
    zsl_map, icl_map, ft_map = _attn_map(zsl, kind, "ZSL"), _attn_map(icl, kind, "ICL"), _attn_map(ft, kind, "FT")
    require_same_shape({"zsl": zsl_map, "icl": icl_map, "ft": ft_map}, "simam_delta")
    zsl_map = zsl_map.to(torch.float64)
    icl_update, ft_update = icl_map.to(torch.float64) - zsl_map, ft_map.to(torch.float64) - zsl_map
    _log_zero_updates(icl_update, "SimAM_Δ ICL")
    _log_zero_updates(ft_update, "SimAM_Δ FT")
    if ft_index is not None:
        ft_update = ft_update[:, _pair_index(ft_index, ft_update.shape[1])]
    return _head_cosine_mean(icl_update, ft_update)


@shape_checked
def alpha(
    demo_mass: Float[torch.Tensor, "batch n_layers n_heads"],
    sink_mass: Float[torch.Tensor, "batch n_layers n_heads"] | None = None,
    include_sink: bool = False,
) -> Float[torch.Tensor, " n_layers"]:
    """α (Deutch et al. 2024, Fig. 2; *unverified* definition): the post-softmax attention mass
    the recorded position puts on demonstration tokens, per layer.

        α_l = (1/N) Σ_i (1/H) Σ_h ( Σ_{j ∈ demo} A[l, i, h, j]  [+ A[l, i, h, sink] if include_sink] )

    Report the mean over layers per task (:func:`layer_mean`).

    Args:
        demo_mass: attention mass on demonstration tokens, excluding the first (BOS / sink) token.
        sink_mass: attention mass on the first token; needed only with ``include_sink``.
        include_sink: count the sink token as part of the demonstrations (default False).
    """
    return alpha_per_example(demo_mass, sink_mass, include_sink).mean(dim=0)


@shape_checked
def alpha_per_example(
    demo_mass: Float[torch.Tensor, "batch n_layers n_heads"],
    sink_mass: Float[torch.Tensor, "batch n_layers n_heads"] | None = None,
    include_sink: bool = False,
) -> Float[torch.Tensor, "batch n_layers"]:
    """The per-example terms of :func:`alpha` (mean over heads), [batch, n_layers]."""
    if demo_mass.ndim != 3:
        raise MetricInputError(f"demo_mass must be [batch, n_layers, n_heads], got shape {tuple(demo_mass.shape)}")
    require_nonempty(demo_mass, "demo_mass")
    mass = demo_mass.to(torch.float64)
    if include_sink:
        if sink_mass is None:
            raise MetricInputError("alpha(include_sink=True) needs sink_mass")
        require_same_shape({"demo_mass": demo_mass, "sink_mass": sink_mass}, "alpha")
        mass = mass + sink_mass.to(torch.float64)
    require_finite(mass, "attention mass")
    if (mass < -1e-6).any() or (mass > 1 + 1e-4).any():
        raise MetricInputError("attention mass must lie in [0, 1]: pass post-softmax masses, not scores")
    return mass.mean(dim=2)
