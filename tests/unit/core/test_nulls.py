"""The nulls: shuffled pair, wrong labels, random-direction update, Jaccard independence."""

import math

import numpy as np
import pytest
import torch
from transformer_lens import ActivationCache

from icl_lens.training.finetune import FinetuneConfig, finetune
from icl_lens.errors import ConfigError
from icl_lens.cell.nulls import (
    gradient_span_model,
    jaccard_independence,
    random_direction_model,
    shuffled_pair,
    trained_parameter_names,
    update_norms,
    wrong_labels,
)
from icl_lens.stats import derangement


def _cache(model, outs, maps):
    entries = {}
    for layer in range(outs.shape[0]):
        entries[f"blocks.{layer}.hook_attn_out"] = outs[layer]
        entries[f"blocks.{layer}.attn.hook_attn_scores"] = maps[layer]
    return ActivationCache(entries, model)


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_shuffled_pair_equals_the_hand_computed_cosines(tiny_gpt):
    n_layers, n, d, heads = tiny_gpt.cfg.n_layers, 5, tiny_gpt.cfg.d_model, tiny_gpt.cfg.n_heads
    rng = np.random.default_rng(0)
    key_lengths = [3, 5, 2, 4, 5]
    outs = [rng.normal(size=(n_layers, n, d)) for _ in range(3)]
    maps = []
    for _ in range(3):
        m = rng.normal(size=(n_layers, n, heads, 5))
        for i, length in enumerate(key_lengths):
            m[:, i, :, length:] = 0.0  # zero-padded after each query's own keys, as recorded
        maps.append(m)
    caches = [_cache(tiny_gpt, torch.tensor(o), torch.tensor(m)) for o, m in zip(outs, maps)]
    got = shuffled_pair(*caches, map_name="attn_scores", seed=3)
    pi = derangement(n, 3)
    unit = [o / np.linalg.norm(o, axis=-1, keepdims=True) for o in outs]
    for layer in range(n_layers):
        for i in range(n):
            j = pi[i]
            icl_update, ft_update = unit[1][layer, i] - unit[0][layer, i], unit[2][layer, j] - unit[0][layer, j]
            assert float(got["simaou"][i, layer]) == pytest.approx(_cos(icl_update, ft_update), abs=1e-10)
            expected_map = np.mean([
                _cos(np.pad(maps[1][layer, i, h, :key_lengths[i]] - maps[0][layer, i, h, :key_lengths[i]], (0, 5 - key_lengths[i])),
                     np.pad(maps[2][layer, j, h, :key_lengths[j]] - maps[0][layer, j, h, :key_lengths[j]], (0, 5 - key_lengths[j])))
                for h in range(heads)])
            assert float(got["simam_delta"][i, layer]) == pytest.approx(expected_map, abs=1e-10)


def test_wrong_labels_differ_from_the_true_ones():
    for seed in range(20):
        balanced = [0, 1, 0, 1, 2, 2]
        wrong = wrong_labels(balanced, 3, seed)
        assert all(w != t for w, t in zip(wrong, balanced))
        assert sorted(wrong) == sorted(balanced)  # a permutation when one exists
        skewed = [1, 1, 1, 0]  # no permutation makes every label wrong: the rest get another class
        assert all(w != t for w, t in zip(wrong_labels(skewed, 2, seed), skewed))
    assert wrong_labels([2, 2, 2], 3, 0) != [2, 2, 2] and 2 not in wrong_labels([2, 2, 2], 3, 0)
    assert wrong_labels([0, 1, 1, 0], 2, 5) == wrong_labels([0, 1, 1, 0], 2, 5)


def test_random_direction_matches_gd_norm_per_layer_and_touches_only_trained_parameters(tiny_gpt):
    sequences = [[0, 5, 9, 12, 7], [0, 8, 3, 4], [0, 11, 6, 2, 9, 1]]
    tuned, _ = finetune(tiny_gpt, sequences, [1, 1, 1], FinetuneConfig(lr=1e-1), progress=False)
    perturbed = random_direction_model(tiny_gpt, tuned, "kv", seed=0)
    gd_norms = update_norms(tiny_gpt, tuned, "kv")
    assert all(norm > 0 for norm in gd_norms)
    assert update_norms(tiny_gpt, perturbed, "kv") == pytest.approx(gd_norms, abs=1e-5)
    trained = set(trained_parameter_names(tiny_gpt, "kv"))
    assert trained and all(".W_K" in n or ".W_V" in n or ".b_K" in n or ".b_V" in n for n in trained)
    original = {name: param.detach() for name, param in tiny_gpt.named_parameters()}
    gd_flat, random_flat = [], []
    for name, param in perturbed.named_parameters():
        if name not in trained:
            assert torch.equal(param, original[name]), name
        else:
            random_flat.append((param.detach() - original[name]).flatten())
            gd_flat.append((dict(tuned.named_parameters())[name].detach() - original[name]).flatten())
    cosine = torch.nn.functional.cosine_similarity(torch.cat(gd_flat), torch.cat(random_flat), dim=0)
    assert abs(float(cosine)) < 0.5  # a different direction, not GD's
    again = random_direction_model(tiny_gpt, tuned, "kv", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), perturbed.parameters()))


def test_jaccard_independence_is_the_hypergeometric_expectation():
    zsl = [0] * 10
    icl = [1] * 5 + [0] * 5  # a = 5 changed
    ft = [1] * 2 + [0] * 8  # f = 2 changed; overlap m ~ Hypergeometric(10, 5, 2), J = m / (7 - m)
    p = [math.comb(5, m) * math.comb(5, 2 - m) / math.comb(10, 2) for m in range(3)]
    assert jaccard_independence(zsl, icl, ft) == pytest.approx(p[1] / 6 + p[2] * 2 / 5)
    assert jaccard_independence(zsl, [1] * 10, [1] * 10) == pytest.approx(1.0)
    assert math.isnan(jaccard_independence(zsl, zsl, zsl))


def test_null_seeds_are_drawn_per_demonstration_seed_and_per_null():
    from icl_lens.cell.nulls import SEEDED, null_seed, null_seeds
    from icl_lens.cell.results import NULL_SEED_NAMES

    assert SEEDED == NULL_SEED_NAMES
    by_seed = [null_seeds(0, seed) for seed in range(5)]
    assert by_seed[0] == null_seeds(0, 0)  # deterministic
    for name in SEEDED:
        assert len({seeds[name] for seeds in by_seed}) == 5, name  # every demonstration seed its own draw
        assert all(0 <= seeds[name] < 2**32 for seeds in by_seed)
    assert len(set(by_seed[0].values())) == len(SEEDED)  # and every null its own
    assert null_seeds(1, 0) != null_seeds(0, 0)  # the base seed still moves them all
    assert null_seed(0, 3, "shuffled_pair") == by_seed[3]["shuffled_pair"]
    with pytest.raises(ConfigError, match="no null seed named 'bogus'"):
        null_seed(0, 0, "bogus")


def _flat_layer_update(model, original, names, layer):
    params = dict(model.named_parameters())
    return torch.cat([(params[n].detach().double() - original[n].double()).flatten()
                      for n in names if n.startswith(f"blocks.{layer}.")])


def test_gradient_span_update_is_a_combination_of_the_demonstrations_gradients_of_gd_norm(tiny_gpt):
    """Each layer's move lies in the span of the per-demonstration gradients at the model's weights
    (each gradient read off an independent one-step SGD run at lr 1 on that demonstration alone), has
    the Frobenius norm of GD's update of that layer, and touches nothing but the trained parameters."""
    sequences = [[0, 5, 9, 12, 7], [0, 8, 3, 4], [0, 11, 6, 2, 9, 1], [0, 4, 4, 10, 3]]
    answers = [1, 1, 2, 1]
    cfg = FinetuneConfig(lr=1e-1)
    tuned, _ = finetune(tiny_gpt, sequences, answers, cfg, progress=False)
    moved = gradient_span_model(tiny_gpt, tuned, sequences, answers, cfg, seed=7)
    assert update_norms(tiny_gpt, moved, "kv") == pytest.approx(update_norms(tiny_gpt, tuned, "kv"), rel=1e-5)
    original = {name: p.detach().clone() for name, p in tiny_gpt.named_parameters()}
    trained = sorted(trained_parameter_names(tiny_gpt, "kv"))
    for name, param in moved.named_parameters():
        if name not in trained:
            assert torch.equal(param, original[name]), name
    one_step = [finetune(tiny_gpt, [s], [a], FinetuneConfig(lr=1.0), progress=False)[0]
                for s, a in zip(sequences, answers)]
    for layer in range(tiny_gpt.cfg.n_layers):
        gradients = torch.stack([-_flat_layer_update(m, original, trained, layer) for m in one_step], dim=1)
        update = _flat_layer_update(moved, original, trained, layer)
        coefficients = torch.linalg.lstsq(gradients, update.unsqueeze(1)).solution
        residual = update - (gradients @ coefficients).squeeze(1)
        assert float(residual.norm()) <= 1e-4 * float(update.norm())  # inside the span
        gd = _flat_layer_update(tuned, original, trained, layer)
        assert abs(float(torch.nn.functional.cosine_similarity(update, gd, dim=0))) < 0.99  # not GD's own
    again = gradient_span_model(tiny_gpt, tuned, sequences, answers, cfg, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), moved.parameters()))
    other = gradient_span_model(tiny_gpt, tuned, sequences, answers, cfg, seed=8)
    assert not all(torch.equal(a, b) for a, b in zip(other.parameters(), moved.parameters()))
