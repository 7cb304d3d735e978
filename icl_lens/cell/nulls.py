"""Nulls for the ICL-vs-finetuning similarities: is the similarity specific to GD's update?

Beside the reference's uniform-random vector (:func:`icl_lens.metrics.simaou_random_baseline`):

- **shuffled pair** (:func:`shuffled_pair`): cos(Δ_ICL(i), Δ_FT(π(i))) with π a seeded
  derangement of the queries: is the similarity specific to the example, or one shared direction?
- **wrong-label finetuning** (:func:`wrong_labels`): finetune on the same demonstrations with their
  labels permuted so that they are wrong: how much comes from the text rather than from the
  input→label mapping? Run twice: with FT's own loss (every token by default, so it differs from
  FT only at the label tokens, and part of "wrong-label ≈ FT" is built in) and with the loss on the
  answer (label) tokens only, which isolates what the labels teach.
- **random-direction update** (:func:`random_direction_model`): perturb exactly the parameters GD
  trained by a seeded Gaussian direction with the same norm as GD's update: is it GD's direction
  that matches ICL, or any update of that size?
- **gradient-span update** (:func:`gradient_span_model`): a seeded random combination of the
  demonstrations' own gradients, each layer scaled to GD's update of that layer: is it GD's
  combination of the demonstrations' gradients that matches ICL, or any update built from them?
- **Jaccard independence** (:func:`jaccard_independence`): the Jaccard index expected if ICL and
  FT changed predictions independently, given how many each changed.

Each cell draws its own null randomness: :func:`null_seed` derives every null's seed from the
run's ``random_seed`` and the cell's demonstration seed, so seeds are independent draws of the null
(and the trained and untrained cells of one demonstration seed share them, so their difference is
paired).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from jaxtyping import Float
from scipy.stats import binom, hypergeom
from transformer_lens import ActivationCache

from icl_lens import metrics
from icl_lens.errors import ConfigError, MetricInputError
from icl_lens.models.backends import Model, backend_of, final_residual
from icl_lens.models.cpu_matmul import uses_cpu_matmul
from icl_lens.stats import derangement
from icl_lens.training.finetune import (
    FinetuneConfig,
    check_demonstrations,
    demo_batches,
    layer_of,
    masked_next_token_loss,
    trainable_copy,
    trained_parameters,
)

logger = logging.getLogger(__name__)

NULLS = ("shuffled_pair", "wrong_label", "random_direction", "wrong_label_answer_loss", "gradient_span")
"""The nulls that cost a forward pass or a training run (``ExperimentConfig.nulls``); the Jaccard
independence expectation is always computed. ``wrong_label_answer_loss`` is wrong-label finetuning
with the loss on the answer tokens only; it and ``gradient_span`` run for FT only."""

SEEDED = ("simaou_random", "shuffled_pair", "wrong_label", "random_direction", "gradient_span")
"""Everything random in a cell's nulls, by the name its seed is derived under (:func:`null_seed`):
the uniform-random SimAOU baseline and the nulls. Both wrong-label runs use ``wrong_label``'s seed
(the same wrong labels; only the loss differs)."""

SEED_NAME = {"wrong_label_answer_loss": "wrong_label"}
"""Nulls whose randomness is drawn under another null's seed name (both wrong-label runs share one
relabelling); every other null's seed name is its own."""


def seed_name(null: str) -> str:
    """The :data:`SEEDED` name ``null``'s randomness is derived under (its key in ``null_seeds``)."""
    return SEED_NAME.get(null, null)


def null_seed(random_seed: int, seed: int, name: str) -> int:
    """The seed of null ``name``'s randomness in the cell of demonstration seed ``seed``.

    A sha256 of the three values (< 2**32): each demonstration seed draws its own derangement,
    wrong labels and random directions, where one ``random_seed`` for every seed would repeat the
    same null draw in every seed and leave the null's own variance out of any interval over seeds.
    """
    if name not in SEEDED:
        raise ConfigError(f"no null seed named {name!r}; choose from {list(SEEDED)}")
    digest = hashlib.sha256(f"icl_lens-null/{int(random_seed)}/{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def null_seeds(random_seed: int, seed: int) -> dict[str, int]:
    """:func:`null_seed` of every name in :data:`SEEDED` (what a cell records as ``null_seeds``)."""
    return {name: null_seed(random_seed, seed, name) for name in SEEDED}


def shuffled_pair(
    zsl: ActivationCache, icl: ActivationCache, tuned: ActivationCache, map_name: str, seed: int
) -> dict[str, Float[torch.Tensor, "batch n_layers"]]:
    """Per-example SimAOU and SimAM_Δ of each query's ICL update against the finetuned update of
    the query π(i), π a derangement seeded with ``seed``.

    ``map_name`` is ``attn_scores`` or ``pattern``. SimAM_Δ compares maps of queries of different
    lengths as recorded (zero-padded after each query's keys): the dot product covers the common
    leading keys, each norm its own query's keys (:func:`icl_lens.metrics.simam_delta_per_example`).
    """
    n = int(icl.stack_activation("attn_out").shape[1])
    permutation = torch.as_tensor(derangement(n, seed))
    zsl_map, icl_map, tuned_map = (run.stack_activation(map_name) for run in (zsl, icl, tuned))
    return {
        "simaou": metrics.simaou_per_example(zsl, icl, tuned, ft_index=permutation),
        "simam_delta": metrics.simam_delta_per_example(zsl_map, icl_map, tuned_map, ft_index=permutation),
    }


def wrong_labels(labels: Sequence[int], n_classes: int, seed: int) -> list[int]:
    """The demonstrations' labels permuted (seeded) so that as many as possible are wrong.

    The permutation keeps the label counts: demonstrations are ordered by label (seeded random
    order within a label) and each takes the label m places further on, m = the largest label
    count; that makes every label wrong whenever no label holds more than half of the
    demonstrations. Where it cannot (e.g. every demonstration has the same label), each
    demonstration still holding its true label gets a seeded uniformly random other class, so
    every returned label differs from the true one (the label counts then change).
    """
    labels = [int(label) for label in labels]
    if n_classes < 2:
        raise ConfigError(f"wrong-label finetuning needs at least 2 classes, got {n_classes}")
    if not labels:
        return []
    rng = np.random.default_rng(int(seed))
    order = sorted(range(len(labels)), key=lambda i: (labels[i], rng.random()))
    shift = max(labels.count(label) for label in set(labels)) % len(labels)
    permuted = list(labels)
    for position, index in enumerate(order):
        permuted[index] = labels[order[(position + shift) % len(labels)]]
    for i, (true, new) in enumerate(zip(labels, permuted)):
        if true == new:
            others = [c for c in range(n_classes) if c != true]
            permuted[i] = int(others[rng.integers(len(others))])
    return permuted


def trained_parameter_names(model: Model, params: str) -> list[str]:
    """Names of the parameters the finetuning group ``params`` trains (e.g. ``kv``: W_K, W_V, b_K, b_V)."""
    return list(trained_parameters(model, params))


def update_norms(original: Model, tuned: Model, params: str) -> list[float]:
    """Per-layer Frobenius norm of tuned − original over the parameters of group ``params``."""
    before = trained_parameters(original, params)
    squared = [0.0] * original.cfg.n_layers
    for name, param in trained_parameters(tuned, params).items():
        squared[layer_of(name)] += float((param.detach().double() - before[name].detach().double()).pow(2).sum())
    return [math.sqrt(s) for s in squared]


def random_direction_model(original: Model, tuned: Model, params: str, seed: int) -> Model:
    """A copy of ``original`` whose trained parameters (group ``params``) moved by a seeded random
    Gaussian direction of GD's size, every other parameter untouched.

    Each trained tensor W gets r · ‖ΔW‖_F / ‖r‖_F, r ~ N(0, 1) elementwise (a ``torch.Generator``
    seeded with ``seed``, drawn in parameter order), ΔW = W_tuned − W_original: every tensor's,
    and so every layer's, update has the same Frobenius norm as GD's.
    """
    copy, trainable = trainable_copy(original, params)
    tuned_params = trained_parameters(tuned, params)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        # drawn in HookedTransformer's layout and parameter order: the same numbers on either backend
        for name, shape, back in backend_of(copy).in_hooked_layout(copy, trainable):
            param = trainable[name]
            gd_update = tuned_params[name].detach().double() - param.detach().double()
            direction = back(torch.randn(shape, generator=generator, dtype=torch.float64))
            scaled = direction * (gd_update.norm() / direction.norm().clamp_min(1e-300))
            param.add_(scaled.to(device=param.device, dtype=param.dtype))
    for param in copy.parameters():
        param.requires_grad_(False)
    copy.eval()
    return copy


@uses_cpu_matmul
def gradient_span_model(
    original: Model,
    tuned: Model,
    demo_sequences: Sequence[Sequence[int]],
    answer_lengths: Sequence[int],
    cfg: FinetuneConfig,
    seed: int,
) -> Model:
    """A copy of ``original`` whose trained parameters (group ``cfg.params``) moved by a seeded random
    direction in the span of the demonstrations' own gradients, each layer's move of the Frobenius
    norm of GD's update of that layer (``tuned`` − ``original``); every other parameter untouched.

    The gradients are those of each demonstration's loss (``cfg.loss_on``, one demonstration at a
    time) at ``original``'s weights; layer l moves by Σ_i c_li g_li, c_li ~ N(0, 1) drawn per layer and
    demonstration from a ``torch.Generator`` seeded with ``seed`` (an [n_layers, k] draw, the same on
    either backend). Plain SGD's update is −lr Σ_i g_i along its own path, close to the all-equal
    combination of these gradients for a small step: this null keeps what the update is built from
    and draws how it is combined, where :func:`random_direction_model` draws any direction.
    """
    check_demonstrations(original, demo_sequences, answer_lengths)
    copy, trainable = trainable_copy(original, cfg.params)
    n_layers = copy.cfg.n_layers
    one_at_a_time = replace(cfg, batch_size=1, epochs=1)
    batches = list(demo_batches(demo_sequences, answer_lengths, one_at_a_time, copy.cfg.device))
    generator = torch.Generator().manual_seed(int(seed))
    coefficients = torch.randn(n_layers, len(batches), generator=generator, dtype=torch.float64)
    direction = {
        name: torch.zeros(param.shape, dtype=torch.float64, device=param.device) for name, param in trainable.items()
    }
    for i, (tokens, attention_mask, loss_mask) in enumerate(batches):
        for param in trainable.values():
            param.grad = None
        loss = masked_next_token_loss(copy, final_residual(copy, tokens, attention_mask), tokens, loss_mask)
        loss.backward()
        for name, param in trainable.items():
            if param.grad is not None:
                direction[name].add_(param.grad.detach().double(), alpha=float(coefficients[layer_of(name), i]))
    gd_norms = update_norms(original, tuned, cfg.params)
    squared = [0.0] * n_layers
    for name, values in direction.items():
        squared[layer_of(name)] += float(values.pow(2).sum())
    with torch.no_grad():
        for name, param in trainable.items():
            param.grad = None
            layer = layer_of(name)
            if squared[layer] == 0 and gd_norms[layer] > 0:
                logger.warning("gradient-span null: layer %d has no gradient to move along; left unmoved", layer)
            scale = gd_norms[layer] / math.sqrt(squared[layer]) if squared[layer] > 0 else 0.0
            param.add_((direction[name] * scale).to(dtype=param.dtype))
    for param in copy.parameters():
        param.requires_grad_(False)
    copy.eval()
    return copy


def jaccard_independence(zsl_pred, icl_pred, ft_pred) -> float:
    """Expected Jaccard index of prediction changes if ICL and FT changed predictions
    independently, given how many each changed (exact, no sampling).

    With n examples, a = |C_ICL| and f = |C_FT| fixed and the changed sets placed independently
    at random, the overlap m = |C_ICL ∩ C_FT| is hypergeometric(n, a, f). S (both changed to the
    same prediction) is all of the overlap with two classes; with more classes each overlapping
    example agrees with probability q = the observed agreement rate among the examples both
    changed (1 when none was), so |S| ~ Binomial(m, q). Then

        E[J] = Σ_m P(m) Σ_s P(s | m) · s / (a + f − s)

    NaN when neither setting changed a prediction (J undefined).
    """
    zsl, icl, ft = (np.asarray(torch.as_tensor(p).cpu()) for p in (zsl_pred, icl_pred, ft_pred))
    if not (zsl.ndim == 1 and zsl.shape == icl.shape == ft.shape and zsl.size):
        raise MetricInputError(
            f"predictions must be non-empty, 1-d and of one length, got {zsl.shape}, {icl.shape}, {ft.shape}"
        )
    icl_changed, ft_changed = icl != zsl, ft != zsl
    n, a, f = int(zsl.size), int(icl_changed.sum()), int(ft_changed.sum())
    if a + f == 0:
        return math.nan
    both = icl_changed & ft_changed
    q = float((ft[both] == icl[both]).mean()) if both.any() else 1.0
    overlaps = np.arange(max(0, a + f - n), min(a, f) + 1)
    p_overlap = hypergeom.pmf(overlaps, n, a, f)
    expected = 0.0
    for m, p_m in zip(overlaps, p_overlap):
        same = np.arange(m + 1)
        p_same = binom.pmf(same, m, q) if m else np.ones(1)
        expected += p_m * float((p_same * same / (a + f - same)).sum())
    return float(expected)
