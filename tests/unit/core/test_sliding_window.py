"""Sliding-window (local) attention, as in Gemma-3's 512-token local layers, shrunk to 4 tokens.

A query part longer than the window has keys the local layers mask out (-inf scores); both attention
recorders must treat them like causally masked keys (0), identically.
"""

import pytest
import torch
from helpers import tiny_model

from icl_lens import metrics
from icl_lens.evaluation import RecordSpec, attention_windows, evaluate
from icl_lens.viz.maps import record_attention_maps

WINDOW = 4


@pytest.fixture(scope="module")
def gemma():
    return tiny_model(family="gemma", n_layers=3, window=WINDOW, seed=3)


def _ids(model, text):
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def _setup(model):
    bos = [model.tokenizer.bos_token_id]
    demos = _ids(model, "great film. Label: good\n")
    queries = [_ids(model, "a long, slow and tedious film. Label:"), _ids(model, "fun!! Label:")]
    labels = [_ids(model, " good"), _ids(model, " bad")]
    return bos, bos + demos, queries, labels


def test_gemma_like_model_has_local_and_global_layers_and_real_norm_scales(gemma):
    assert attention_windows(gemma) == [WINDOW, None, WINDOW]
    assert hasattr(gemma.blocks[0], "ln1_post") and gemma.blocks[0].attn.q_norm is not None
    assert not torch.allclose(gemma.blocks[0].ln1.w, torch.ones_like(gemma.blocks[0].ln1.w))


def _direct_row(model, ids, n_prefix, layer):
    """The last row's scores over the query part's keys, computed from a full cache by hand:
    keys after the row or at least WINDOW back (local layers) set to 0."""
    _, cache = model.run_with_cache(torch.tensor([ids]))
    scores = cache[f"blocks.{layer}.attn.hook_attn_scores"][0, :, -1, n_prefix:].clone()  # [head, q]
    row = len(ids) - 1
    for j in range(scores.shape[-1]):
        key = n_prefix + j
        local = layer % 2 == 0
        if key > row or (local and key <= row - WINDOW):
            scores[:, j] = 0.0
    return scores


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_query_longer_than_window_gives_finite_simam_and_the_direct_rows(gemma, reuse_prefix):
    zsl_prefix, icl_prefix, queries, labels = _setup(gemma)
    assert len(queries[0]) + len(labels[0]) > 2 * WINDOW
    runs = {name: evaluate(gemma, prefix, queries, labels, setting=name, reuse_prefix=reuse_prefix,
                           record=RecordSpec(position="answer"), progress=False, batch_size=2)
            for name, prefix in (("zsl", zsl_prefix), ("icl", icl_prefix))}
    for name, prefix in (("zsl", zsl_prefix), ("icl", icl_prefix)):
        acts = runs[name].activations
        for layer in range(3):
            recorded = acts[f"blocks.{layer}.attn.hook_attn_scores"]
            assert torch.isfinite(recorded).all()
            for i, query in enumerate(queries):
                direct = _direct_row(gemma, prefix + query + labels[0], len(prefix), layer)
                n_keys = int(runs[name].key_lengths[i])
                assert n_keys == direct.shape[-1]
                torch.testing.assert_close(recorded[i, :, :n_keys], direct, rtol=1e-4, atol=1e-5)
                assert (recorded[i, :, n_keys:] == 0).all()
            if layer % 2 == 0:  # local layer: the long query's earliest keys are outside the window
                assert (recorded[0, :, 0] == 0).all()
    for kind in ("attn_scores", "pattern"):
        sim = metrics.simam(runs["icl"].activations.stack_activation(kind),
                            runs["zsl"].activations.stack_activation(kind))
        assert torch.isfinite(sim).all() and sim.shape == (3,)


def test_evaluation_and_maps_record_the_same_rows(gemma):
    _, icl_prefix, queries, labels = _setup(gemma)
    run = evaluate(gemma, icl_prefix, queries, labels, progress=False, batch_size=2)
    maps = record_attention_maps(gemma, icl_prefix, queries, labels[0], n_start=1)
    for i, entry in enumerate(maps):
        n_keys = int(run.key_lengths[i])
        for layer in range(3):
            for key, hook in (("scores", "attn_scores"), ("pattern", "pattern")):
                recorded = run.activations[f"blocks.{layer}.attn.hook_{hook}"][i, :, :n_keys]
                torch.testing.assert_close(entry[key][layer, :, -1, :], recorded, rtol=1e-4, atol=1e-5)
        # full maps: every local-layer entry at least WINDOW keys back is 0, the diagonal is not
        q = entry["scores"].shape[-1]
        rows, keys = torch.meshgrid(torch.arange(q), torch.arange(q), indexing="ij")
        outside = (keys > rows) | (keys <= rows - WINDOW)
        assert (entry["scores"][0][:, outside] == 0).all() and (entry["pattern"][0][:, outside] == 0).all()
        assert torch.isfinite(entry["scores"]).all()
        assert (entry["scores"][1][:, keys > rows] == 0).all()
        assert (entry["scores"][1][:, (keys <= rows - WINDOW)] != 0).any()  # global layer sees far keys
