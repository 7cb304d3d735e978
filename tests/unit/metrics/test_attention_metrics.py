"""SimAOU, its random baseline, SimAM, SimAM_Δ and α on hand-computed examples, plus the
ActivationCache path, padding, determinism and input checks."""

import math

import pytest
import torch
from transformer_lens import ActivationCache, HookedTransformer, HookedTransformerConfig

from icl_lens.errors import MetricInputError
from icl_lens.metrics import alpha, layer_mean, simam, simam_delta, simaou, simaou_random_baseline

N_LAYERS, D_MODEL, N_HEADS = 2, 8, 2


@pytest.fixture(scope="module")
def tiny_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS, d_model=D_MODEL, n_ctx=16, d_head=4, n_heads=N_HEADS, d_vocab=20,
        act_fn="relu", normalization_type="LN", seed=0,
    )
    return HookedTransformer(cfg)


def recorded_cache(model, attn_out, scores=None, pattern=None) -> ActivationCache:
    """A cache of recorded activations from layer-first stacked tensors."""
    entries = {}
    for layer in range(attn_out.shape[0]):
        entries[f"blocks.{layer}.hook_attn_out"] = attn_out[layer]
        if scores is not None:
            entries[f"blocks.{layer}.attn.hook_attn_scores"] = scores[layer]
        if pattern is not None:
            entries[f"blocks.{layer}.attn.hook_pattern"] = pattern[layer]
    return ActivationCache(entries, model, has_batch_dim=True)


# --- SimAOU -----------------------------------------------------------------------------------

# [n_layers=2, batch=2, d_model=3]
SIMAOU_ZSL = torch.tensor([[[1.0, 0, 0], [0, 3, 0]], [[1, 0, 0], [0, 0, 1]]])
SIMAOU_ICL = torch.tensor([[[0.0, 1, 0], [0, 0, 5]], [[3, 4, 0], [0, 0, 1]]])
SIMAOU_FT = torch.tensor([[[0.0, 0, 2], [0, 0, 1]], [[3, -4, 0], [1, 0, 0]]])


def test_simaou_hand_example():
    # Layer 0, ex 0: Δ_ICL = (-1, 1, 0), Δ_FT = (-1, 0, 1): cos = 1 / (√2 √2) = 0.5.
    #          ex 1: h_ZSL = (0,1,0), h_ICL = h_FT = (0,0,1): identical deltas, cos = 1.
    # Layer 1, ex 0: h_ICL = (.6,.8,0), h_FT = (.6,-.8,0): Δ = (-.4,.8,0), (-.4,-.8,0):
    #              cos = (.16 - .64) / .8 = -0.6.
    #          ex 1: ICL did not change the output (Δ_ICL = 0): cosine 0 by convention.
    per_layer = simaou(SIMAOU_ZSL, SIMAOU_ICL, SIMAOU_FT)
    torch.testing.assert_close(per_layer, torch.tensor([0.75, -0.3], dtype=torch.float64))
    assert layer_mean(per_layer) == pytest.approx(0.225)


def test_simaou_identical_updates_give_one_and_scale_is_ignored():
    generator = torch.Generator().manual_seed(1)
    zsl = torch.randn(N_LAYERS, 5, D_MODEL, generator=generator)
    icl = torch.randn(N_LAYERS, 5, D_MODEL, generator=generator)
    torch.testing.assert_close(simaou(zsl, icl, 3.0 * icl), torch.ones(N_LAYERS, dtype=torch.float64))


def test_simaou_cache_path_equals_tensor_path(tiny_model):
    generator = torch.Generator().manual_seed(2)
    zsl, icl, ft = (torch.randn(N_LAYERS, 4, D_MODEL, generator=generator) for _ in range(3))
    from_caches = simaou(*(recorded_cache(tiny_model, x) for x in (zsl, icl, ft)))
    torch.testing.assert_close(from_caches, simaou(zsl, icl, ft))
    mixed = simaou(recorded_cache(tiny_model, zsl), icl, recorded_cache(tiny_model, ft))
    torch.testing.assert_close(mixed, simaou(zsl, icl, ft))


def test_cache_detached_from_its_model_still_works(tiny_model):
    generator = torch.Generator().manual_seed(3)
    zsl, icl, ft = (torch.randn(N_LAYERS, 4, D_MODEL, generator=generator) for _ in range(3))
    caches = [recorded_cache(tiny_model, x) for x in (zsl, icl, ft)]
    for cache in caches:
        cache.model = None
    torch.testing.assert_close(simaou(*caches), simaou(zsl, icl, ft))


def test_simaou_rejects_mismatched_settings():
    zsl = torch.randn(N_LAYERS, 4, D_MODEL)
    with pytest.raises(MetricInputError, match="shapes must match"):
        simaou(zsl, torch.randn(N_LAYERS, 3, D_MODEL), zsl)  # batch sizes differ
    with pytest.raises(MetricInputError, match="shapes must match"):
        simaou(zsl, torch.randn(3, 4, D_MODEL), zsl)  # layer counts differ
    with pytest.raises(MetricInputError, match="dims"):
        simaou(zsl[0], zsl[0], zsl[0])
    with pytest.raises(MetricInputError, match="empty"):
        simaou(zsl[:, :0], zsl[:, :0], zsl[:, :0])


def test_missing_cache_entry_is_a_clear_error(tiny_model):
    zsl = torch.randn(N_LAYERS, 4, D_MODEL)
    cache = recorded_cache(tiny_model, zsl)
    with pytest.raises(MetricInputError, match="hook_attn_scores"):
        simam(cache, cache)


# --- Random baseline -------------------------------------------------------------------------


def test_random_baseline_is_deterministic_by_seed():
    generator = torch.Generator().manual_seed(4)
    zsl, icl = (torch.randn(N_LAYERS, 6, D_MODEL, generator=generator) for _ in range(2))
    first, again = simaou_random_baseline(zsl, icl, seed=7), simaou_random_baseline(zsl, icl, seed=7)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, simaou_random_baseline(zsl, icl, seed=8))


def test_random_baseline_matches_its_formula():
    generator = torch.Generator().manual_seed(5)
    zsl, icl = (torch.randn(N_LAYERS, 3, D_MODEL, generator=generator).double() for _ in range(2))
    delta = icl / icl.norm(dim=-1, keepdim=True) - zsl / zsl.norm(dim=-1, keepdim=True)
    u = torch.rand(delta.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    expected = torch.nn.functional.cosine_similarity(delta, u, dim=-1).mean(dim=1)
    torch.testing.assert_close(simaou_random_baseline(zsl, icl, seed=11), expected)


def test_random_baseline_magnitudes():
    d_model = 512
    # A positive-orthant update against positive-orthant u: E[cos] -> E[u] / sqrt(E[u²]) = √3/2.
    zsl = torch.zeros(1, 50, d_model)  # zero output: unit vector 0, so Δ_ICL = h_ICL
    positive = simaou_random_baseline(zsl, torch.ones(1, 50, d_model), seed=0)
    assert positive.item() == pytest.approx(math.sqrt(3) / 2, abs=0.02)
    # A symmetric (centred) update: cosines average out near 0, like the reference's .001-.004.
    generator = torch.Generator().manual_seed(6)
    centred = simaou_random_baseline(
        torch.randn(1, 400, d_model, generator=generator), torch.randn(1, 400, d_model, generator=generator), seed=0
    )
    assert abs(centred.item()) < 0.02


# --- SimAM -----------------------------------------------------------------------------------

# [n_layers=2, batch=1, n_heads=2, query_len=3]
MAP_A = torch.tensor([[[[1.0, 2, 2], [1, 0, 0]]], [[[1, 1, 0], [0, 3, 4]]]])
MAP_B = torch.tensor([[[[2.0, 1, 2], [0, 1, 0]]], [[[-1, -1, 0], [0, 6, 8]]]])


def test_simam_hand_example():
    # Layer 0: heads 8/9 and 0 -> 4/9.  Layer 1: heads -1 and 1 -> 0.
    torch.testing.assert_close(simam(MAP_A, MAP_B), torch.tensor([4 / 9, 0.0], dtype=torch.float64))


def test_simam_identical_maps_give_one_and_flipped_give_minus_one():
    generator = torch.Generator().manual_seed(7)
    maps = torch.randn(N_LAYERS, 3, N_HEADS, 5, generator=generator)
    torch.testing.assert_close(simam(maps, maps), torch.ones(N_LAYERS, dtype=torch.float64))
    torch.testing.assert_close(simam(maps, -maps), -torch.ones(N_LAYERS, dtype=torch.float64))


def test_padding_zeros_do_not_change_simam():
    generator = torch.Generator().manual_seed(8)
    a, b, zsl = (torch.randn(N_LAYERS, 2, N_HEADS, 4, generator=generator) for _ in range(3))
    # Example 0 has a query of 3 keys, example 1 of 4: zero the padding, then pad 2 more zeros.
    for maps in (a, b, zsl):
        maps[:, 0, :, 3] = 0.0
    pad = lambda x: torch.cat([x, torch.zeros(N_LAYERS, 2, N_HEADS, 2)], dim=-1)  # noqa: E731
    torch.testing.assert_close(simam(pad(a), pad(b)), simam(a, b))
    torch.testing.assert_close(simam_delta(pad(zsl), pad(a), pad(b)), simam_delta(zsl, a, b))
    unpadded_example_0 = simam(a[:, :1, :, :3], b[:, :1, :, :3])
    torch.testing.assert_close(simam(pad(a)[:, :1], pad(b)[:, :1]), unpadded_example_0)


def test_simam_cache_path_equals_tensor_path_for_scores_and_pattern(tiny_model):
    generator = torch.Generator().manual_seed(9)
    out = torch.randn(N_LAYERS, 3, D_MODEL, generator=generator)
    scores_a, scores_b, scores_z = (torch.randn(N_LAYERS, 3, N_HEADS, 5, generator=generator) for _ in range(3))
    pattern_a, pattern_b, pattern_z = (torch.rand(N_LAYERS, 3, N_HEADS, 5, generator=generator) for _ in range(3))
    cache_a = recorded_cache(tiny_model, out, scores_a, pattern_a)
    cache_b = recorded_cache(tiny_model, out, scores_b, pattern_b)
    cache_z = recorded_cache(tiny_model, out, scores_z, pattern_z)
    torch.testing.assert_close(simam(cache_a, cache_b), simam(scores_a, scores_b))
    torch.testing.assert_close(simam(cache_a, cache_b, kind="pattern"), simam(pattern_a, pattern_b))
    torch.testing.assert_close(simam_delta(cache_z, cache_a, cache_b), simam_delta(scores_z, scores_a, scores_b))
    torch.testing.assert_close(
        simam_delta(cache_z, cache_a, cache_b, kind="pattern"), simam_delta(pattern_z, pattern_a, pattern_b)
    )
    with pytest.raises(MetricInputError, match="kind"):
        simam(cache_a, cache_b, kind="probs")


def test_simam_rejects_infinite_scores_and_mismatched_widths():
    maps = torch.randn(N_LAYERS, 2, N_HEADS, 3)
    masked = maps.clone()
    masked[0, 0, 0, 2] = -torch.inf
    with pytest.raises(MetricInputError, match="infinite"):
        simam(masked, maps)
    with pytest.raises(MetricInputError, match="shapes must match"):
        simam(maps, torch.randn(N_LAYERS, 2, N_HEADS, 4))


def test_simam_delta_hand_example():
    # [n_layers=2, batch=1, n_heads=1, query_len=2]
    zsl = torch.tensor([[[[1.0, 1]]], [[[0.0, 0]]]])
    icl = torch.tensor([[[[2.0, 2]]], [[[1.0, 2]]]])
    ft = torch.tensor([[[[3.0, 1]]], [[[2.0, 4]]]])
    # Layer 0: Δ_ICL = (1, 1), Δ_FT = (2, 0): cos = 2 / (√2 · 2).  Layer 1: (1, 2) vs (2, 4): 1.
    torch.testing.assert_close(simam_delta(zsl, icl, ft), torch.tensor([1 / math.sqrt(2), 1.0], dtype=torch.float64))


def test_simam_delta_sign_flip_gives_minus_one():
    generator = torch.Generator().manual_seed(10)
    zsl, update = (torch.randn(N_LAYERS, 3, N_HEADS, 4, generator=generator) for _ in range(2))
    minus_one = -torch.ones(N_LAYERS, dtype=torch.float64)
    torch.testing.assert_close(simam_delta(zsl, zsl + update, zsl - 2 * update), minus_one)


# --- α -----------------------------------------------------------------------------------------


def test_alpha_hand_example():
    # [batch=2, n_layers=2, n_heads=2]
    demo_mass = torch.tensor([[[0.2, 0.4], [0.5, 0.5]], [[0.6, 0.0], [0.1, 0.3]]])
    sink_mass = torch.full_like(demo_mass, 0.1)
    # Layer 0: heads mean 0.3 and 0.3 -> 0.3.  Layer 1: 0.5 and 0.2 -> 0.35.
    torch.testing.assert_close(alpha(demo_mass, sink_mass), torch.tensor([0.3, 0.35], dtype=torch.float64))
    torch.testing.assert_close(alpha(demo_mass), torch.tensor([0.3, 0.35], dtype=torch.float64))
    with_sink = alpha(demo_mass, sink_mass, include_sink=True)
    torch.testing.assert_close(with_sink, torch.tensor([0.4, 0.45], dtype=torch.float64))


def test_alpha_input_checks():
    demo_mass = torch.full((2, N_LAYERS, N_HEADS), 0.5)
    with pytest.raises(MetricInputError, match="sink_mass"):
        alpha(demo_mass, include_sink=True)
    with pytest.raises(MetricInputError, match=r"\[0, 1\]"):
        alpha(demo_mass * 3)
    with pytest.raises(MetricInputError, match="shapes must match"):
        alpha(demo_mass, torch.zeros(3, N_LAYERS, N_HEADS), include_sink=True)
    with pytest.raises(MetricInputError):
        layer_mean(torch.tensor([]))
