"""The ``reference`` untrained init: the reference code's module-default initialisation per projection.

Checked at Gemma-3-270M's real shapes (TransformerLens' own config table for
``google/gemma-3-270m``, one layer, a small vocabulary; no weights are loaded): each projection's
sample std matches the closed-form std of its recipe within sampling error, every draw lies within
the uniform bound, and norms, embeddings and unembedding are untouched.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from icl_lens.errors import ConfigError, IclLensError
from icl_lens.cell.experiment import ExperimentConfig
from icl_lens.models import reinitialize_untrained
from icl_lens.models.untrained import projection_fans, reference_bound

# The recipe's stds at Gemma-3-270M's shapes, computed by hand from d_model 640, 4 query heads and
# 1 key/value head of d_head 256, d_mlp 2048:
#   W_Q  xavier, gain 1/√2: (1/√2)·√(2/(640+1024))  = 0.02451
#   W_K/W_V            :    (1/√2)·√(2/(640+256))   = 0.03341
#   W_O  xavier, gain 1:    √(2/(1024+640))          = 0.03467
#   W_in/W_gate kaiming a=√5: 1/√(3·640)             = 0.02282
#   W_out                 :  1/√(3·2048)             = 0.01276
GEMMA_270M_STDS = {"W_Q": 0.02451, "_W_K": 0.03341, "_W_V": 0.03341, "W_O": 0.03467,
                   "W_in": 0.02282, "W_gate": 0.02282, "W_out": 0.01276}


def _gemma_270m_one_layer(seed: int = 0) -> HookedTransformer:
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    raw = convert_hf_model_config("google/gemma-3-270m")
    raw.update(n_layers=1, d_vocab=64, d_vocab_out=64, n_ctx=32, seed=seed, tokenizer_name=None)
    raw["attn_types"] = raw["attn_types"][:1]
    known = set(HookedTransformerConfig.__dataclass_fields__)
    cfg = HookedTransformerConfig(**{k: v for k, v in raw.items() if k in known})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    with torch.no_grad():  # non-default norms, so "kept" is a real check
        for name, p in model.named_parameters():
            if not name.split(".")[-1].lstrip("_").startswith(("W", "b")):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def gemma_pair():
    model = _gemma_270m_one_layer()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reinitialize_untrained(model, seed=5)  # the default recipe is "reference"
    return before, {n: p.detach().clone() for n, p in model.named_parameters()}, model


def test_gemma_shapes_are_the_real_ones(gemma_pair):
    _, after, _ = gemma_pair
    assert after["blocks.0.attn.W_Q"].shape == (4, 640, 256)
    assert after["blocks.0.attn._W_K"].shape == (1, 640, 256)
    assert after["blocks.0.attn.W_O"].shape == (4, 256, 640)
    assert after["blocks.0.mlp.W_in"].shape == (640, 2048) and after["blocks.0.mlp.W_out"].shape == (2048, 640)


@pytest.mark.parametrize("name", list(GEMMA_270M_STDS))
def test_reference_std_per_projection_matches_the_recipe(gemma_pair, name):
    _, after, model = gemma_pair
    weight = after[f"blocks.0.{'attn' if name.lstrip('_') in ('W_Q', 'W_K', 'W_V', 'W_O') else 'mlp'}.{name}"]
    expected = GEMMA_270M_STDS[name]
    n = weight.numel()
    # sampling error of a uniform's sample std: std·√((κ−1)/(4n)) with kurtosis κ = 9/5
    tolerance = 6 * expected * math.sqrt(0.8 / (4 * n))
    assert abs(weight.std().item() - expected) < tolerance + 5e-5  # + the 4-digit rounding above
    bound = expected * math.sqrt(3)  # a uniform U(±b) has std b/√3
    assert weight.abs().max().item() <= bound * (1 + 1e-3)
    assert weight.abs().max().item() > 0.99 * bound  # uniform, not normal: fills its bound, no tail
    assert abs(weight.mean().item()) < 6 * expected / math.sqrt(n)


def test_reference_keeps_norms_embeddings_unembedding_and_zero_biases(gemma_pair):
    before, after, model = gemma_pair
    kept = [n for n in before if n.startswith(("embed.", "unembed.", "ln_final.")) or ".ln" in n
            or "q_norm" in n or "k_norm" in n]
    assert "blocks.0.attn.q_norm.w" in kept and "blocks.0.ln2_post.w" in kept
    for n in kept:
        assert torch.equal(before[n], after[n]), n
    # Gemma has no biases (TransformerLens fills zeros): none is added
    for n in before:
        if n.startswith("blocks.") and n.split(".")[-1].lstrip("_").startswith("b"):
            assert torch.count_nonzero(after[n]) == 0, n
    assert model.cfg.untrained_init == "reference"


def test_reference_biases_of_a_model_with_biases():
    """GPT-2-like: q/k/v and MLP biases U(±1/√fan_in) of their projection, attention output bias 0."""
    cfg = HookedTransformerConfig(n_layers=1, d_model=64, n_ctx=16, d_head=16, n_heads=4, d_mlp=256,
                                  d_vocab=50, act_fn="gelu", normalization_type="LN", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b"):
                p.fill_(0.5)  # a trained bias: nonzero
    reinitialize_untrained(model, seed=0, init="reference")
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert torch.count_nonzero(attn.b_O) == 0
    for bias, fan_in in ((attn.b_Q, 64), (attn.b_K, 64), (attn.b_V, 64), (mlp.b_in, 64), (mlp.b_out, 256)):
        bound = 1 / math.sqrt(fan_in)
        assert bias.abs().max().item() <= bound and bias.abs().max().item() > 0.5 * bound
        assert not torch.any(bias == 0.5)


def test_fans_and_bounds_by_hand():
    assert projection_fans("attn", "W_Q", (4, 640, 256)) == (640, 1024)
    assert projection_fans("attn", "_W_K", (1, 640, 256)) == (640, 256)
    assert projection_fans("attn", "W_O", (4, 256, 640)) == (1024, 640)
    assert projection_fans("mlp", "W_out", (2048, 640)) == (2048, 640)
    assert reference_bound("attn", "W_Q", 640, 1024) == pytest.approx(math.sqrt(6 / 1664) / math.sqrt(2))
    assert reference_bound("attn", "W_O", 1024, 640) == pytest.approx(math.sqrt(6 / 1664))
    assert reference_bound("mlp", "W_in", 640, 2048) == pytest.approx(1 / math.sqrt(640))
    assert reference_bound("attn", "b_O", 1024, 640) == 0.0
    with pytest.raises(IclLensError, match="W_weird"):
        projection_fans("attn", "W_weird", (2, 2))


def test_reference_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (_small() for _ in range(3))
    torch.manual_seed(1)  # the global RNG must not matter
    reinitialize_untrained(a, seed=3)
    torch.manual_seed(2)
    reinitialize_untrained(b, seed=3)
    reinitialize_untrained(c, seed=4)
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    for n in pa:
        if n.split(".")[-1].lstrip("_").startswith("W") and n.startswith("blocks."):
            assert not torch.equal(pa[n], pc[n]), n


def _small() -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_vocab=30, act_fn="gelu",
                                  n_key_value_heads=2, normalization_type="RMS", positional_embedding_type="rotary",
                                  gated_mlp=True, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg)


def test_unknown_init_is_a_config_error():
    with pytest.raises(ConfigError, match="'uniform'"):
        reinitialize_untrained(_small(), seed=0, init="uniform")


# ----------------------------------------------------------------------------- the config field


def test_untrained_init_is_part_of_an_untrained_cell_identity_only():
    trained = ExperimentConfig(task="sst2")
    assert "untrained_init" not in trained.to_dict()  # trained cells keep their digests
    assert ExperimentConfig(task="sst2", untrained_init="normal").cell_name() == trained.cell_name()
    ref = ExperimentConfig(task="sst2", untrained=True)
    normal = ExperimentConfig(task="sst2", untrained=True, untrained_init="normal")
    assert ref.untrained_init == "reference" and ref.to_dict()["untrained_init"] == "reference"
    assert ref.cell_name() != normal.cell_name()
    # an untrained cell written before the field existed was the normal init: same digest, read back as normal
    old = normal.to_dict()
    assert "untrained_init" not in old
    assert ExperimentConfig.from_dict(old).untrained_init == "normal"
    assert ExperimentConfig.from_dict(ref.to_dict()) == ref


def test_run_records_the_init_in_results(tiny_llama):
    import copy

    from icl_lens.cell.experiment import run_experiment
    from icl_lens.tasks import get_task

    model = reinitialize_untrained(copy.deepcopy(tiny_llama), seed=0)
    cfg = ExperimentConfig(task="sst2", k=2, limit=2, settings=("zsl",), untrained=True, calibration="none")
    out = run_experiment(model, get_task("sst2"), cfg, progress=False)
    assert out.results["model"]["untrained_init"] == "reference"
    assert out.results["config"]["untrained_init"] == "reference"
    trained = run_experiment(tiny_llama, get_task("sst2"), ExperimentConfig(task="sst2", k=2, limit=2,
                             settings=("zsl",), calibration="none"), progress=False)
    assert trained.results["model"]["untrained_init"] is None
