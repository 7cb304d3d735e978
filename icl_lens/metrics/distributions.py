"""Metrics on next-token output distributions (after Shen et al. 2023): top-k token
overlap, overlap cosine, order sensitivity across demonstration permutations, and the std of
accuracy across permutations.

Full-vocabulary distributions are not stored over datasets, so every function also takes the
sparse form a run keeps, :class:`TopKDistribution` (the k most likely token ids and their
probabilities). A dense [batch, d_vocab] tensor is reduced to its top k first, so both forms give
identical answers whenever the top k is unique (no ties at the k-th probability).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

from icl_lens._shapes import shape_checked
from icl_lens.errors import MetricInputError
from icl_lens.metrics._common import cosine, require_finite, require_nonempty

logger = logging.getLogger(__name__)

#: Reference k of the token-overlap metrics (Top10, Shen et al., *unverified*).
DEFAULT_TOP_K = 10


@dataclass(frozen=True)
class TopKDistribution:
    """The k most likely next tokens of each example and their probabilities.

    Args:
        ids: token ids, [batch, k], distinct within a row.
        probs: their probabilities under the full distribution (not renormalised), [batch, k].
    """

    ids: Int[torch.Tensor, "batch k"]
    probs: Float[torch.Tensor, "batch k"]

    def __post_init__(self) -> None:
        if self.ids.ndim != 2 or self.ids.shape != self.probs.shape:
            raise MetricInputError(
                f"TopKDistribution needs ids and probs of the same [batch, k] shape, got "
                f"{tuple(self.ids.shape)} and {tuple(self.probs.shape)}"
            )
        require_nonempty(self.ids, "TopKDistribution")
        require_finite(self.probs, "TopKDistribution probabilities")

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def from_probs(cls, probs: Float[torch.Tensor, "batch d_vocab"], k: int) -> TopKDistribution:
        """The top ``k`` of full distributions, sorted by decreasing probability."""
        if probs.ndim != 2:
            raise MetricInputError(f"expected probabilities [batch, d_vocab], got shape {tuple(probs.shape)}")
        require_nonempty(probs, "probabilities")
        if not 1 <= k <= probs.shape[1]:
            raise MetricInputError(f"k must be in [1, d_vocab={probs.shape[1]}], got {k}")
        top = probs.detach().topk(k, dim=-1)
        return cls(ids=top.indices, probs=top.values)

    def top(self, k: int) -> TopKDistribution:
        """The ``k`` most likely of the stored tokens (k ≤ the stored k)."""
        if not 1 <= k <= self.k:
            raise MetricInputError(f"asked for the top {k} tokens but only {self.k} are stored")
        if k == self.k:
            return self
        order = self.probs.argsort(dim=-1, descending=True, stable=True)[:, :k]
        return TopKDistribution(ids=self.ids.gather(1, order), probs=self.probs.gather(1, order))


DistributionInput = Float[torch.Tensor, "batch d_vocab"] | TopKDistribution


def _as_top_k(distribution: DistributionInput, k: int, what: str) -> TopKDistribution:
    if isinstance(distribution, TopKDistribution):
        return distribution.top(k)
    if isinstance(distribution, torch.Tensor):
        return TopKDistribution.from_probs(distribution, k)
    raise MetricInputError(
        f"{what}: expected a [batch, d_vocab] tensor or a TopKDistribution, got {type(distribution).__name__}"
    )


@shape_checked
def _overlap(
    p_a: DistributionInput, p_b: DistributionInput, k: int
) -> tuple[TopKDistribution, TopKDistribution, Bool[torch.Tensor, "batch k k"]]:
    """Both top-k's and ``match[i, s, t]`` = (slot s of a and slot t of b hold the same token)."""
    top_a, top_b = _as_top_k(p_a, k, "p_a"), _as_top_k(p_b, k, "p_b")
    if top_a.batch_size != top_b.batch_size:
        raise MetricInputError(f"p_a and p_b cover different examples: {top_a.batch_size} vs {top_b.batch_size}")
    match = top_a.ids[:, :, None] == top_b.ids[:, None, :]
    return top_a, top_b, match


@shape_checked
def token_overlap(
    p_a: DistributionInput, p_b: DistributionInput, k: int = DEFAULT_TOP_K
) -> Float[torch.Tensor, " batch"]:
    """Top-k token overlap (Shen et al., *unverified*), per example:

        overlap_i = |TopK(p_a,i) ∩ TopK(p_b,i)| / k

    Average over examples for the reported value.
    """
    _, _, match = _overlap(p_a, p_b, k)
    return match.any(dim=2).sum(dim=1).to(torch.float64) / k


@shape_checked
def overlap_cosine(
    p_a: DistributionInput, p_b: DistributionInput, k: int = DEFAULT_TOP_K
) -> Float[torch.Tensor, " batch"]:
    """Cosine of two distributions restricted to their shared top-k tokens, per example:

        O_i = TopK(p_a,i) ∩ TopK(p_b,i),  overlap_cosine_i = cos(p_a,i[O_i], p_b,i[O_i])

    Empty overlap (O_i = ∅): defined as 0 (no shared support, and the zero-vector cosine
    convention of this package). Since probabilities are positive, the value otherwise lies in (0, 1].
    """
    top_a, top_b, match = _overlap(p_a, p_b, k)
    shared_a = match.any(dim=2)  # [batch, k]: slot of a whose token is also in b's top k
    probs_a = torch.where(shared_a, top_a.probs.to(torch.float64), 0.0)
    probs_b_aligned = (match.to(torch.float64) * top_b.probs.to(torch.float64)[:, None, :]).sum(dim=2)
    return cosine(probs_a, probs_b_aligned)


def _std(values: torch.Tensor, dim: int, unbiased: bool) -> torch.Tensor:
    if unbiased and values.shape[dim] < 2:
        raise MetricInputError("the unbiased std needs at least 2 permutations")
    return values.std(dim=dim, correction=1 if unbiased else 0)


@shape_checked
def _dense_over_permutations(
    distributions: Sequence[TopKDistribution],
) -> list[Float[torch.Tensor, "n_perm _n_tokens"]]:
    """Per example, the permutations' probabilities over the union of their stored tokens
    (a token missing from a permutation's top k counts as probability 0); the union's size
    ``n_tokens`` differs from example to example."""
    batch_sizes = {d.batch_size for d in distributions}
    if len(batch_sizes) != 1:
        raise MetricInputError(f"every permutation must cover the same examples, got batch sizes {sorted(batch_sizes)}")
    ids = torch.stack([d.ids for d in distributions], dim=1)  # [batch, n_perm, k]
    probs = torch.stack([d.probs for d in distributions], dim=1).to(torch.float64)
    per_example = []
    for example_ids, example_probs in zip(ids, probs):
        union, slot = torch.unique(example_ids, return_inverse=True)  # slot: [n_perm, k]
        dense = torch.zeros(len(distributions), union.numel(), dtype=torch.float64)
        dense.scatter_(1, slot, example_probs)
        per_example.append(dense)
    return per_example


@shape_checked
def order_sensitivity(
    distributions: Float[torch.Tensor, "n_perm batch d_vocab"] | Sequence[TopKDistribution],
    unbiased: bool = False,
) -> float:
    """Order sensitivity (Shen et al.): how much the output distribution moves when the same
    demonstrations are permuted.

        OS = (1/N) Σ_i Σ_v std_p( p_p,i(v) )

    std over the P permutations p, summed over the vocabulary v, averaged over examples i.

    Args:
        distributions: dense [n_perm, batch, d_vocab] probabilities, or one
            :class:`TopKDistribution` per permutation. The sparse form is an approximation: a
            token outside a permutation's stored top k counts as probability 0 there, and tokens
            outside every permutation's top k contribute nothing. Exact when each distribution's
            support lies within its stored tokens; otherwise the tails are dropped.
        unbiased: population std (divide by P, the default, as ``numpy.std``) if False; sample
            std (divide by P − 1) if True. Which one Shen et al. use is *unverified*.
    """
    if isinstance(distributions, torch.Tensor):
        if distributions.ndim != 3:
            raise MetricInputError(f"expected [n_perm, batch, d_vocab], got shape {tuple(distributions.shape)}")
        require_nonempty(distributions, "distributions")
        require_finite(distributions, "distributions")
        per_example = _std(distributions.to(torch.float64), 0, unbiased).sum(dim=-1)
        return per_example.mean().item()
    permutations = list(distributions)
    if not permutations or not all(isinstance(d, TopKDistribution) for d in permutations):
        raise MetricInputError("order_sensitivity needs a dense tensor or a non-empty sequence of TopKDistribution")
    per_query = [_std(dense, 0, unbiased).sum() for dense in _dense_over_permutations(permutations)]
    return torch.stack(per_query).mean().item()


@shape_checked
def accuracy_std(accuracies: Float[torch.Tensor, " n_perm"] | Sequence[float], unbiased: bool = False) -> float:
    """Std of accuracy across demonstration permutations: std_p(acc_p).

    ``unbiased`` as in :func:`order_sensitivity` (default: population std, divide by P).
    """
    values = torch.as_tensor(accuracies, dtype=torch.float64)
    if values.ndim != 1 or values.numel() == 0:
        raise MetricInputError(f"accuracies must be a non-empty 1-d sequence, got shape {tuple(values.shape)}")
    require_finite(values, "accuracies")
    return _std(values, 0, unbiased).item()
