"""Dherin et al. 2025's context patch on real offline models (Gemma-3-270M, SmolLM2-135M): the
context-free block with the rank-1 MLP patch and the residual bias patch gives the with-context block
output at the query to float64 rounding, and the patch's direction is compared with FT's update."""

from __future__ import annotations

import math

import pytest
import torch

import icl_lens
from icl_lens.controls.dherin import context_patch, dherin_study

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module", params=["gemma3-270m", "smollm2-135m"])
def real_model(request):
    return icl_lens.load_model(request.param)


def test_context_patch_is_exact_on_a_real_block(real_model):
    tokens = real_model.to_tokens("The movie was wonderful.\nThe plot was dull and slow.\nI loved it")
    layer = real_model.cfg.n_layers // 2
    _, cache = real_model.run_with_cache(
        tokens, names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_resid_post"))
    )
    patch = context_patch(real_model.blocks[layer], cache[f"blocks.{layer}.hook_resid_pre"][0], layer)
    effect = float((patch.with_context - patch.unpatched).norm())
    assert effect > 1e-2  # the context changes the block's output at the query
    assert patch.relative_error < 1e-10
    assert patch.max_abs_error < 1e-8 * max(1.0, float(patch.with_context.abs().max()))
    # the float64 copy reproduces the model's own float32 block output
    recorded = cache[f"blocks.{layer}.hook_resid_post"][0, -1].double()
    assert torch.allclose(patch.with_context, recorded, rtol=1e-3, atol=1e-3 * float(recorded.abs().max()))
    for delta in patch.delta_w.values():
        assert torch.linalg.matrix_rank(delta).item() == 1


def test_patch_against_the_ft_update(real_model):
    study = dherin_study(real_model, "sst2", k=4, n_queries=3, n_resamples=100)
    (layer_result,) = study["layers"].values()
    comparison = layer_result["ft_comparison"]
    assert layer_result["identity_max_relative_error"] < 1e-10
    assert all(-1 <= c <= 1 for c in comparison["cos_ft"]["per_query"])
    assert math.isfinite(comparison["ft_update_norm"]) and comparison["ft_update_norm"] > 0
    assert set(comparison["claims"]) == {"patch_aligned_with_ft_above_random", "patch_aligned_with_ft_above_null"}
