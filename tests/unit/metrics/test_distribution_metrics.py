"""Token overlap, overlap cosine, order sensitivity and accuracy std on hand-computed examples;
the sparse TopKDistribution path against the dense one."""

import math

import pytest
import torch

from icl_lens.errors import MetricInputError
from icl_lens.metrics import TopKDistribution, accuracy_std, order_sensitivity, overlap_cosine, token_overlap

# [batch=2, d_vocab=6]
P_A = torch.tensor([[0.40, 0.30, 0.20, 0.05, 0.03, 0.02], [0.02, 0.03, 0.05, 0.20, 0.30, 0.40]])
P_B = torch.tensor([[0.10, 0.50, 0.02, 0.30, 0.05, 0.03], [0.40, 0.30, 0.20, 0.05, 0.03, 0.02]])


def test_token_overlap_hand_example():
    # Example 0: Top3(a) = {0, 1, 2}, Top3(b) = {1, 3, 0}: overlap {0, 1}.  Example 1: disjoint.
    torch.testing.assert_close(token_overlap(P_A, P_B, k=3), torch.tensor([2 / 3, 0.0], dtype=torch.float64))


def test_overlap_cosine_hand_example():
    # Example 0 on {0, 1}: a = (.4, .3), b = (.1, .5): .19 / (.5 · √.26).  Example 1: empty -> 0.
    expected = torch.tensor([0.19 / (0.5 * math.sqrt(0.26)), 0.0], dtype=torch.float64)
    torch.testing.assert_close(overlap_cosine(P_A, P_B, k=3), expected)


def test_identical_distributions_overlap_fully():
    torch.testing.assert_close(token_overlap(P_A, P_A, k=3), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(overlap_cosine(P_A, P_A, k=3), torch.ones(2, dtype=torch.float64))


def _random_distributions(seed: int, batch: int = 4, d_vocab: int = 50) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(batch, d_vocab, generator=generator), dim=-1)


def _shuffled_top(probs: torch.Tensor, k: int, seed: int) -> TopKDistribution:
    """A stored top k in scrambled slot order, as a sparse record need not be sorted."""
    top = probs.topk(k, dim=-1)
    order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    return TopKDistribution(ids=top.indices[:, order], probs=top.values[:, order])


def test_sparse_path_equals_dense_path():
    p_a, p_b = _random_distributions(0), _random_distributions(1)
    for k in (1, 5, 10):
        sparse_a, sparse_b = _shuffled_top(p_a, 15, seed=2), _shuffled_top(p_b, 15, seed=3)
        torch.testing.assert_close(token_overlap(sparse_a, sparse_b, k=k), token_overlap(p_a, p_b, k=k))
        torch.testing.assert_close(overlap_cosine(sparse_a, sparse_b, k=k), overlap_cosine(p_a, p_b, k=k))
        torch.testing.assert_close(overlap_cosine(sparse_a, p_b, k=k), overlap_cosine(p_a, p_b, k=k))


def test_dense_overlap_against_a_direct_set_computation():
    p_a, p_b = _random_distributions(4), _random_distributions(5)
    overlap, cosines = token_overlap(p_a, p_b), overlap_cosine(p_a, p_b)
    for i in range(p_a.shape[0]):
        shared = sorted(set(p_a[i].topk(10).indices.tolist()) & set(p_b[i].topk(10).indices.tolist()))
        assert overlap[i].item() == pytest.approx(len(shared) / 10)
        if shared:
            a, b = p_a[i, shared].double(), p_b[i, shared].double()
            assert cosines[i].item() == pytest.approx((a @ b / (a.norm() * b.norm())).item())
        else:
            assert cosines[i].item() == 0.0


def test_overlap_input_checks():
    with pytest.raises(MetricInputError, match="only 3 are stored"):
        token_overlap(TopKDistribution.from_probs(P_A, 3), P_B, k=4)
    with pytest.raises(MetricInputError, match="different examples"):
        token_overlap(P_A, P_B[:1], k=3)
    with pytest.raises(MetricInputError, match="k must be"):
        token_overlap(P_A, P_B, k=7)
    with pytest.raises(MetricInputError, match="same"):
        TopKDistribution(ids=torch.zeros(2, 3, dtype=torch.long), probs=torch.zeros(2, 4))


# Order sensitivity: [n_perm=2, batch=2, d_vocab=3]
PERMUTED = torch.tensor([[[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]], [[0.3, 0.3, 0.4], [0.0, 1.0, 0.0]]])


def test_order_sensitivity_hand_example():
    # Population std of two values = |a - b| / 2.  Example 0: .1 + 0 + .1 = .2; example 1: .5 + .5 + 0 = 1.
    assert order_sensitivity(PERMUTED) == pytest.approx(0.6)
    # Sample std of two values = |a - b| / √2: example 0: .4 / √2, example 1: 2 / √2.
    assert order_sensitivity(PERMUTED, unbiased=True) == pytest.approx((0.4 + 2.0) / math.sqrt(2) / 2)


def test_order_sensitivity_sparse_path_equals_dense_when_support_is_stored():
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(5, 3, 40, generator=generator)
    logits[..., 8:] = -torch.inf  # every distribution lives on tokens 0..7
    dense = torch.softmax(logits, dim=-1)
    sparse = [TopKDistribution.from_probs(dense[p], 8) for p in range(5)]
    assert order_sensitivity(sparse) == pytest.approx(order_sensitivity(dense))
    assert order_sensitivity(sparse, unbiased=True) == pytest.approx(order_sensitivity(dense, unbiased=True))


def test_order_sensitivity_sparse_path_drops_tails_by_hand():
    # Two permutations of one example over 4 tokens, stored as top 2: p0 keeps tokens {0: .4, 1: .3},
    # p1 keeps {3: .4, 2: .3}; each counts the other's tokens as 0. Population std of two values is
    # |a - b| / 2: sparse .2 + .15 + .15 + .2 = .7; exact (dense) (.3 + .1 + .1 + .3) / 2 = .4.
    dense = torch.tensor([[[0.4, 0.3, 0.2, 0.1]], [[0.1, 0.2, 0.3, 0.4]]])
    sparse = [TopKDistribution.from_probs(dense[p], 2) for p in range(2)]
    assert order_sensitivity(sparse) == pytest.approx(0.7)
    assert order_sensitivity(dense) == pytest.approx(0.4)


def test_order_sensitivity_is_zero_without_order_effect():
    same = _random_distributions(7).expand(4, -1, -1)
    assert order_sensitivity(same) == pytest.approx(0.0, abs=1e-12)


def test_order_sensitivity_input_checks():
    with pytest.raises(MetricInputError):
        order_sensitivity(PERMUTED[0])
    with pytest.raises(MetricInputError):
        order_sensitivity([])
    with pytest.raises(MetricInputError, match="same examples"):
        order_sensitivity([TopKDistribution.from_probs(P_A, 2), TopKDistribution.from_probs(P_A[:1], 2)])
    with pytest.raises(MetricInputError, match="at least 2"):
        order_sensitivity(PERMUTED[:1], unbiased=True)


def test_accuracy_std_hand_example():
    assert accuracy_std([0.5, 0.7, 0.6]) == pytest.approx(math.sqrt(0.02 / 3))
    assert accuracy_std(torch.tensor([0.5, 0.7, 0.6]), unbiased=True) == pytest.approx(0.1)
    with pytest.raises(MetricInputError):
        accuracy_std([])
