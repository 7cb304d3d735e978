"""The prefix-cached, batched evaluation against straightforward full forward passes."""

import pytest
import torch

from icl_lens.evaluation import RecordSpec, evaluate
from icl_lens.lens import logit_lens
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.tasks import get_task, sample_demonstrations, sample_queries


def _prompts(model, k=3, n=6, task="sst2", fmt=PromptFormat()):
    t = get_task(task)
    return encode_prompts(model.tokenizer, t, sample_demonstrations(t, k, 0), sample_queries(t, n), fmt,
                          model.cfg.n_ctx)


def _full_pass_score(model, prefix, query, label):
    """Mean log-prob of ``label`` after ``prefix + query`` from one full forward pass, and the
    next-token log-probs after the query."""
    log_probs = model(torch.tensor([prefix + query + label])).log_softmax(-1)[0]
    first = len(prefix) + len(query) - 1
    return torch.stack([log_probs[first + j, t] for j, t in enumerate(label)]).mean(), log_probs[first]


@pytest.mark.parametrize("position", ["answer", "prompt_end"])
def test_fast_path_equals_straightforward_path(any_tiny, position):
    p = _prompts(any_tiny)
    spec = RecordSpec(position=position)
    fast = evaluate(any_tiny, p.icl_prefix, p.queries, p.labels, record=spec, batch_size=4, progress=False)
    slow = evaluate(any_tiny, p.icl_prefix, p.queries, p.labels, record=spec, batch_size=1,
                    reuse_prefix=False, progress=False)
    assert (fast.class_scores - slow.class_scores).abs().max() <= 1e-4
    for name in fast.activations.keys():
        assert (fast.activations[name] - slow.activations[name]).abs().max() <= 1e-4, name
    assert (fast.demo_attention_mass - slow.demo_attention_mass).abs().max() <= 1e-5
    assert torch.equal(fast.next_token_ids, slow.next_token_ids)


def test_scores_and_recordings_match_a_full_forward_pass(any_tiny):
    """Class scores = mean log-softmax of label tokens; recorded rows = run_with_cache values."""
    model = any_tiny
    p = _prompts(model, k=2, n=3)
    run = evaluate(model, p.icl_prefix, p.queries, p.labels, batch_size=2, progress=False)
    P = len(p.icl_prefix)
    for i, query in enumerate(p.queries):
        for c, label in enumerate(p.labels):
            seq = torch.tensor([p.icl_prefix + query + label])
            log_probs = model(seq).log_softmax(-1)[0]
            first = P + len(query) - 1
            expected = torch.stack([log_probs[first + j, t] for j, t in enumerate(label)]).mean()
            assert abs(float(expected) - float(run.class_scores[i, c])) < 1e-4
        seq = torch.tensor([p.icl_prefix + query + p.labels[0]])
        _, cache = model.run_with_cache(seq)
        rec = seq.shape[1] - 1  # reference position: last token of prompt + class-0 answer
        for layer in range(model.cfg.n_layers):
            assert torch.allclose(run.activations[f"blocks.{layer}.hook_attn_out"][i],
                                  cache[f"blocks.{layer}.hook_attn_out"][0, rec], atol=1e-5)
            scores = cache[f"blocks.{layer}.attn.hook_attn_scores"][0, :, rec, P:]
            n_keys = scores.shape[-1]
            assert run.key_lengths[i] == n_keys
            assert torch.allclose(run.activations[f"blocks.{layer}.attn.hook_attn_scores"][i, :, :n_keys],
                                  scores, atol=1e-4)
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, rec]
            assert torch.allclose(run.sink_attention_mass[i, layer], pattern[:, 0], atol=1e-5)
            assert torch.allclose(run.demo_attention_mass[i, layer], pattern[:, 1:P].sum(-1), atol=1e-5)
            # the three parts of the row sum to one
            total = run.sink_attention_mass[i, layer] + run.demo_attention_mass[i, layer] + \
                run.activations[f"blocks.{layer}.attn.hook_pattern"][i].sum(-1)
            assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


def test_padding_beyond_each_query_is_zero(tiny_gpt):
    p = _prompts(tiny_gpt, k=0, n=6)
    run = evaluate(tiny_gpt, p.zsl_prefix, p.queries, p.labels, batch_size=6, progress=False)
    scores = run.activations["blocks.0.attn.hook_attn_scores"]
    for i, n in enumerate(run.key_lengths):
        assert torch.all(scores[i, :, n:] == 0)
        assert torch.all(scores[i, :, :n] != 0)
    assert torch.all(run.demo_attention_mass == 0)  # zero-shot: no demonstrations


def test_multi_token_labels_are_scored_per_class(tiny_llama):
    """Byte tokens make every label multi-token: scores must match separate full passes (class 1)."""
    p = _prompts(tiny_llama, k=1, n=2, task="sst5")
    run = evaluate(tiny_llama, p.icl_prefix, p.queries, p.labels, batch_size=2, progress=False)
    assert run.class_scores.shape == (2, 5)
    expected, _ = _full_pass_score(tiny_llama, p.icl_prefix, p.queries[1], p.labels[3])
    assert abs(float(expected) - float(run.class_scores[1, 3])) < 1e-4


@pytest.mark.parametrize("rows", [1, 5, 512])
def test_unembedding_in_chunks_of_queries_changes_no_score(tiny_llama, monkeypatch, rows):
    """The answers of all queries are unembedded together after the forward passes, in chunks of
    UNEMBED_ROWS rows across batch boundaries: every score, top token and probability is the one a
    full forward pass gives (multi-token labels: the byte tokenizer makes every label several tokens)."""
    import icl_lens.evaluation as evaluation

    monkeypatch.setattr(evaluation, "UNEMBED_ROWS", rows)
    p = _prompts(tiny_llama, k=1, n=7, task="sst5")
    run = evaluate(tiny_llama, p.icl_prefix, p.queries, p.labels, batch_size=3, progress=False)
    for i, query in enumerate(p.queries):
        for c, label in enumerate(p.labels):
            expected, after_query = _full_pass_score(tiny_llama, p.icl_prefix, query, label)
            assert abs(float(expected) - float(run.class_scores[i, c])) < 1e-4, (i, c)
        top = after_query.exp().topk(run.next_token_ids.shape[1])
        assert torch.equal(run.next_token_ids[i], top.indices)
        assert torch.allclose(run.next_token_probs[i], top.values, atol=1e-5)


def test_rows_per_batch_caps_long_prefixes_on_cpu_only():
    from icl_lens.evaluation import CPU_KEY_ROWS, rows_per_batch

    assert rows_per_batch(16, 30, "cpu") == 16  # zero-shot: the batch size as given
    assert rows_per_batch(16, 600, "cpu") == CPU_KEY_ROWS // 600 == 8  # a k = 16 prefix on Gemma-3
    assert rows_per_batch(16, 10 * CPU_KEY_ROWS, "cpu") == 1
    assert rows_per_batch(16, 600, "cuda") == 16  # accelerators gain from wide batches


def test_capped_batches_change_no_score(tiny_llama, monkeypatch):
    import icl_lens.evaluation as evaluation

    p = _prompts(tiny_llama, k=3, n=6)
    wide = evaluate(tiny_llama, p.icl_prefix, p.queries, p.labels, batch_size=6, progress=False)
    monkeypatch.setattr(evaluation, "CPU_KEY_ROWS", 1)  # one query per batch
    assert evaluation.rows_per_batch(6, len(p.icl_prefix) + 10, "cpu") == 1
    narrow = evaluate(tiny_llama, p.icl_prefix, p.queries, p.labels, batch_size=6, progress=False)
    assert (wide.class_scores - narrow.class_scores).abs().max() <= 1e-5
    for name in wide.activations.keys():
        assert (wide.activations[name] - narrow.activations[name]).abs().max() <= 1e-5, name
    assert torch.equal(wide.next_token_ids, narrow.next_token_ids)


def test_a_shared_prefix_encoding_gives_the_same_numbers(tiny_llama):
    """Calibration's content-free query reuses the queries' prefix encoding (encoded_prefix)."""
    from icl_lens.calibration import content_free_scores
    from icl_lens.errors import ConfigError
    from icl_lens.evaluation import encode_prefix

    p = _prompts(tiny_llama, k=3, n=4)
    encoded = encode_prefix(tiny_llama, p.icl_prefix)
    own = evaluate(tiny_llama, p.icl_prefix, p.queries, p.labels, progress=False)
    shared = evaluate(tiny_llama, p.icl_prefix, p.queries, p.labels, progress=False, encoded_prefix=encoded)
    assert torch.equal(own.class_scores, shared.class_scores)
    cf = p.queries[0][:3]
    assert torch.equal(
        content_free_scores(tiny_llama, p.icl_prefix, cf, p.labels, encoded_prefix=encoded),
        content_free_scores(tiny_llama, p.icl_prefix, cf, p.labels),
    )
    with pytest.raises(ConfigError, match="holds"):  # an encoding of another prefix is refused
        evaluate(tiny_llama, p.icl_prefix[:-1], p.queries, p.labels, progress=False, encoded_prefix=encoded)


@pytest.mark.parametrize("family", ["gpt", "llama", "gemma"])
def test_multi_token_classes_continue_from_the_cached_query_where_exact(family, monkeypatch):
    """Two or more multi-token answers besides class 0 are scored by continuing the query's cached
    keys/values (absolute and rotary positions: exact) instead of a full pass each; a sliding-window
    model keeps the full passes. Either way every score is that of a full forward pass."""
    import icl_lens.evaluation as evaluation
    from helpers import tiny_model

    model = tiny_model(family=family, n_layers=2, window=3)
    p = _prompts(model, k=2, n=5, task="sst5")  # byte tokens: five multi-token answers
    assert sum(len(label) > 1 for label in p.labels[1:]) == 4
    full_passes = []
    original = evaluation._score_other_answer
    monkeypatch.setattr(evaluation, "_score_other_answer", lambda *a: full_passes.append(1) or original(*a))
    run = evaluate(model, p.icl_prefix, p.queries, p.labels, batch_size=2, progress=False)
    windowed = family == "gemma"
    assert (evaluation.continuation_unsupported(model) is not None) == windowed
    assert len(full_passes) == (4 * 3 if windowed else 0)  # 3 batches of the 5 queries
    for i, query in enumerate(p.queries):
        for c, label in enumerate(p.labels):
            expected, _ = _full_pass_score(model, p.icl_prefix, query, label)
            assert abs(float(expected) - float(run.class_scores[i, c])) < 1e-4, (i, c)


def test_final_layer_logit_lens_equals_model_logits(any_tiny):
    tokens = torch.tensor([[1, 5, 9, 30, 2]])
    logits, cache = any_tiny.run_with_cache(tokens)
    last = cache[f"blocks.{any_tiny.cfg.n_layers - 1}.hook_resid_post"]
    assert torch.allclose(logit_lens(any_tiny, last), logits, atol=1e-5)


def test_non_finite_scores_are_an_error_not_a_number(tiny_gpt):
    import copy

    from icl_lens.errors import NonFiniteError

    broken = copy.deepcopy(tiny_gpt)
    with torch.no_grad():
        broken.blocks[0].attn.W_V.fill_(float("nan"))
    p = _prompts(broken, k=1, n=2)
    with pytest.raises(NonFiniteError, match="NaN/inf class scores for 2 of 2 queries"):
        evaluate(broken, p.icl_prefix, p.queries, p.labels, setting="ft", progress=False)
