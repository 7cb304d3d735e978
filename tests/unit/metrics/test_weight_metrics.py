"""Weight sparsity, finetuning update norms and the dual-form ICL / FT updates."""

import copy
import math

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from icl_lens.errors import MetricInputError
from icl_lens.metrics import (
    HANDBUILT_ICL_GD_SPARSITY,
    attention_parameter,
    dual_form_cosine,
    dual_form_ft_update,
    dual_form_icl_update,
    model_weight_sparsity,
    weight_sparsity,
    weight_update_norms,
)


@pytest.fixture(scope="module")
def tiny_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=8, n_ctx=16, d_head=4, n_heads=2, d_vocab=20, act_fn="relu",
        normalization_type="LN", seed=0,
    )
    return HookedTransformer(cfg)


@pytest.fixture(scope="module")
def tiny_gqa_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=8, n_ctx=16, d_head=4, n_heads=4, n_key_value_heads=2, d_vocab=20, act_fn="relu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4, seed=0,
    )
    model = HookedTransformer(cfg)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-zero biases, so the bias path is exercised
        for block in model.blocks:
            block.attn._b_K.normal_()
            block.attn._b_V.normal_()
            # norm scales far from 1, as in trained models (Gemma's RMS weights are not 1)
            for norm in (block.ln1, block.ln2):
                norm.w.copy_(0.3 + 1.4 * torch.rand(norm.w.shape, generator=generator))
    return model


# --- Sparsity --------------------------------------------------------------------------------


def test_weight_sparsity_hand_example():
    weight = torch.tensor([[0.0, 0.05, -0.2], [0.5, -0.01, 1.0]])
    # |w| < .02: {0, -.01}; < .1: + .05; < 1: all but 1.0; < 0: none (strict).
    assert weight_sparsity(weight, [0.0, 0.02, 0.1, 1.0]) == {0.0: 0.0, 0.02: 2 / 6, 0.1: 3 / 6, 1.0: 5 / 6}
    assert HANDBUILT_ICL_GD_SPARSITY == 0.75


def test_model_weight_sparsity(tiny_model):
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.blocks[0].attn.W_Q.zero_()
    sparsity = model_weight_sparsity(model, [1e-6, 10.0])
    assert set(sparsity) == {0, 1} and set(sparsity[0]) == {"W_Q", "W_K", "W_V"}
    assert sparsity[0]["W_Q"] == {1e-6: 1.0, 10.0: 1.0}
    w_k = model.blocks[1].attn.W_K.detach()
    # by hand: the fraction of entries strictly below each threshold (random init: none below 1e-6)
    assert sparsity[1]["W_K"] == pytest.approx({t: (w_k.abs() < t).sum().item() / w_k.numel() for t in (1e-6, 10.0)})
    assert sparsity[1]["W_K"][10.0] == 1.0
    with pytest.raises(MetricInputError):
        model_weight_sparsity(model, [])
    with pytest.raises(MetricInputError):
        weight_sparsity(torch.ones(2), [-1.0])


def test_model_weight_sparsity_gqa_uses_stored_kv_weights(tiny_gqa_model):
    thresholds = [0.01, 0.1]
    sparsity = model_weight_sparsity(tiny_gqa_model, thresholds)
    attn = tiny_gqa_model.blocks[0].attn
    assert attention_parameter(tiny_gqa_model, 0, "W_K").shape == (2, 8, 4)  # unexpanded _W_K
    stored = attn._W_K.detach()
    assert sparsity[0]["W_K"] == pytest.approx({t: (stored.abs() < t).sum().item() / stored.numel() for t in thresholds})
    # Expanding by repeat_interleave repeats every entry equally: same fraction.
    for t in thresholds:
        assert sparsity[0]["W_V"][t] == pytest.approx(weight_sparsity(attn.W_V, thresholds)[t])


# --- Update norms ----------------------------------------------------------------------------


def test_weight_update_norms_hand_example(tiny_model):
    after = copy.deepcopy(tiny_model)
    with torch.no_grad():
        after.blocks[1].attn.W_K.add_(0.1)  # 2 heads · 8 · 4 = 64 entries: ‖ΔW‖ = 0.1 · 8
        after.blocks[0].attn.W_V[0, 0, 0] += 3.0
        after.blocks[0].attn.W_V[1, 2, 3] -= 4.0  # ‖ΔW‖ = 5
    norms = weight_update_norms(tiny_model, after)
    torch.testing.assert_close(norms["W_K"], torch.tensor([0.0, 0.8], dtype=torch.float64))
    torch.testing.assert_close(norms["W_V"], torch.tensor([5.0, 0.0], dtype=torch.float64))
    from_state_dicts = weight_update_norms(tiny_model.state_dict(), after.state_dict())
    for name in ("W_K", "W_V"):
        torch.testing.assert_close(from_state_dicts[name], norms[name])
    assert weight_update_norms(tiny_model, after, parameters=("b_K",))["b_K"].tolist() == [0.0, 0.0]


def test_weight_update_norms_gqa_state_dict(tiny_gqa_model):
    after = copy.deepcopy(tiny_gqa_model)
    with torch.no_grad():
        after.blocks[0].attn._W_K[1, 0, 0] += 2.0
    norms = weight_update_norms(tiny_gqa_model.state_dict(), after)
    torch.testing.assert_close(norms["W_K"], torch.tensor([2.0, 0.0], dtype=torch.float64))


def test_weight_update_norms_input_checks(tiny_model):
    wrong_shapes = {f"blocks.{l}.attn.{name}": torch.zeros(3, 8, 4) for l in range(2) for name in ("W_K", "W_V")}
    with pytest.raises(MetricInputError, match="shapes differ"):
        weight_update_norms(tiny_model, wrong_shapes)  # 2 vs 3 heads
    with pytest.raises(MetricInputError, match="layers"):
        weight_update_norms(tiny_model, {"blocks.0.attn.W_K": torch.zeros(2, 8, 4)})
    with pytest.raises(MetricInputError, match="no blocks"):
        weight_update_norms(tiny_model, {"embed.W_E": torch.zeros(1)})


# --- Dual form -------------------------------------------------------------------------------


def _loop_update(inputs, W_K, W_V, b_K, b_V):
    """Σ_i (x_i W_V[h] + b_V[h]) ⊗ (x_i W_K[h] + b_K[h]) by explicit loops."""
    n_heads, _, d_head = W_K.shape
    update = torch.zeros(n_heads, d_head, d_head, dtype=torch.float64)
    for h in range(n_heads):
        for x in inputs.double():
            key = x @ W_K[h].double() + b_K[h].double()
            value = x @ W_V[h].double() + b_V[h].double()
            update[h] += torch.outer(value, key)
    return update


def test_dual_form_icl_update_hand_example():
    # One head, W_K = identity, W_V = swap: x = (1, 2) gives k = (1, 2), v = (2, 1);
    # x = (3, 0) gives k = (3, 0), v = (0, 3).  Σ v kᵀ = [[2, 4], [1, 2]] + [[0, 0], [9, 0]].
    inputs = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    W_K = torch.eye(2)[None]
    W_V = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    expected = torch.tensor([[[2.0, 4.0], [10.0, 2.0]]], dtype=torch.float64)
    torch.testing.assert_close(dual_form_icl_update(inputs, W_K, W_V), expected)
    # A bias b_K = (1, 0) adds Σ v_i ⊗ (1, 0) = [[2, 0], [4, 0]].
    with_bias = dual_form_icl_update(inputs, W_K, W_V, b_K=torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(with_bias, expected + torch.tensor([[[2.0, 0.0], [4.0, 0.0]]], dtype=torch.float64))


def test_dual_form_icl_update_equals_loop(tiny_model):
    attn = tiny_model.blocks[1].attn
    inputs = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    b_K, b_V = torch.randn(2, 4), torch.randn(2, 4)
    torch.testing.assert_close(
        dual_form_icl_update(inputs, attn.W_K, attn.W_V, b_K, b_V), _loop_update(inputs, attn.W_K, attn.W_V, b_K, b_V)
    )


def test_dual_form_gqa_expansion(tiny_gqa_model):
    attn = tiny_gqa_model.blocks[0].attn
    inputs = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    from_stored = dual_form_icl_update(inputs, attn._W_K, attn._W_V, attn._b_K, attn._b_V, n_heads=4)
    from_expanded = dual_form_icl_update(inputs, attn.W_K, attn.W_V, attn.b_K, attn.b_V)
    assert from_stored.shape == (4, 4, 4)
    torch.testing.assert_close(from_stored, from_expanded)
    torch.testing.assert_close(from_stored[0], from_stored[1])  # heads 0, 1 share kv head 0
    torch.testing.assert_close(from_stored[2], from_stored[3])
    with pytest.raises(MetricInputError, match="does not divide"):
        dual_form_icl_update(inputs, attn._W_K, attn._W_V, n_heads=3)


def test_dual_form_matches_the_model_keys_and_values(tiny_gqa_model):
    """Σ v ⊗ k from the model's own hook_k / hook_v (pre-rotary) equals the dual form of its
    attention input, the norm's *output* ``ln1(resid_pre)`` (what
    :func:`icl_lens.analyses.attention_inputs` returns) — not ``ln1.hook_normalized``, which is
    taken before the (here non-unit) scale."""
    from icl_lens.analyses import attention_inputs

    tokens = [1, 5, 7, 2, 9]
    _, cache = tiny_gqa_model.run_with_cache(torch.tensor([tokens]))
    attn_inputs = attention_inputs(tiny_gqa_model, tokens)
    for layer in range(2):
        keys = torch.repeat_interleave(cache["k", layer][0], 2, dim=1).double()  # [pos, n_heads, d_head]
        values = torch.repeat_interleave(cache["v", layer][0], 2, dim=1).double()
        expected = torch.einsum("phv,phk->hvk", values, keys)
        attn = tiny_gqa_model.blocks[layer].attn
        update = dual_form_icl_update(attn_inputs[layer], attn._W_K, attn._W_V, attn._b_K, attn._b_V, n_heads=4)
        torch.testing.assert_close(update, expected, rtol=1e-5, atol=1e-5)
        # the pre-scale hook gives another update: the fixture's scales are not 1, so this test can fail
        pre_scale = cache[f"blocks.{layer}.ln1.hook_normalized"][0]
        wrong = dual_form_icl_update(pre_scale, attn._W_K, attn._W_V, attn._b_K, attn._b_V, n_heads=4)
        assert (wrong - expected).abs().max() > 0.1


def test_dual_form_ft_update_equals_difference_of_zero_shot_weights(tiny_gqa_model):
    attn = tiny_gqa_model.blocks[0].attn
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(7, 8, generator=generator)
    W_K_after = attn._W_K + 0.1 * torch.randn(attn._W_K.shape, generator=generator)
    W_V_after = attn._W_V + 0.1 * torch.randn(attn._W_V.shape, generator=generator)
    b_K_after = attn._b_K + 0.1 * torch.randn(attn._b_K.shape, generator=generator)
    b_V_after = attn._b_V + 0.1 * torch.randn(attn._b_V.shape, generator=generator)
    update = dual_form_ft_update(
        inputs, attn._W_K, attn._W_V, W_K_after, W_V_after, attn._b_K, attn._b_V, b_K_after, b_V_after, n_heads=4
    )
    before = dual_form_icl_update(inputs, attn._W_K, attn._W_V, attn._b_K, attn._b_V, n_heads=4)
    after = dual_form_icl_update(inputs, W_K_after, W_V_after, b_K_after, b_V_after, n_heads=4)
    torch.testing.assert_close(update, after - before)
    unchanged = dual_form_ft_update(inputs, attn._W_K, attn._W_V, attn._W_K, attn._W_V, n_heads=4)
    torch.testing.assert_close(unchanged, torch.zeros(4, 4, 4, dtype=torch.float64))
    with pytest.raises(MetricInputError, match="both b_K"):
        dual_form_ft_update(inputs, attn._W_K, attn._W_V, W_K_after, W_V_after, b_K_before=attn._b_K)


def test_dual_form_cosine():
    a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]]])
    b = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[-1.0, -2.0], [-3.0, -4.0]]])
    result = dual_form_cosine(a, b)
    torch.testing.assert_close(result.per_head, torch.tensor([1 / math.sqrt(2), -1.0], dtype=torch.float64))
    assert result.mean == pytest.approx((1 / math.sqrt(2) - 1) / 2)
    assert dual_form_cosine(a, a).mean == pytest.approx(1.0)
    assert result.to_dict()["per_head"] == pytest.approx([1 / math.sqrt(2), -1.0])
    assert dual_form_cosine(a, torch.zeros_like(a)).mean == 0.0  # zero update: cosine 0
    with pytest.raises(MetricInputError):
        dual_form_cosine(a, b[:1])


def test_dual_form_input_checks():
    with pytest.raises(MetricInputError, match="d_model"):
        dual_form_icl_update(torch.randn(3, 8), torch.randn(2, 6, 4), torch.randn(2, 6, 4))
    with pytest.raises(MetricInputError, match="empty"):
        dual_form_icl_update(torch.randn(0, 8), torch.randn(2, 8, 4), torch.randn(2, 8, 4))
    with pytest.raises(MetricInputError, match="bias"):
        dual_form_icl_update(torch.randn(3, 8), torch.randn(2, 8, 4), torch.randn(2, 8, 4), b_K=torch.randn(4))
