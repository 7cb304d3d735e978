"""The learning-rate sweep marks every kind of divergence as diverged and goes on (issue: a rate whose
weights or scores went non-finite used to abort the whole cell)."""

import copy

import pytest
import torch

from icl_lens.errors import ConfigError, TrainingDivergedError
from icl_lens.training.finetune import FinetuneConfig, finetune
from icl_lens.training.lr_sweep import sweep_learning_rate
from icl_lens.prompts import PromptFormat, encode_prompts
from icl_lens.tasks import get_task, sample_demonstrations, sample_queries


def _inputs(model):
    task = get_task("sst2")
    queries = sample_queries(task, 6)
    p = encode_prompts(model.tokenizer, task, sample_demonstrations(task, 2, 0), queries, PromptFormat(), model.cfg.n_ctx)
    return dict(demo_sequences=p.demo_sequences, answer_lengths=p.demo_answer_lengths, score_prefix=p.zsl_prefix,
                score_queries=p.queries, score_labels=[q["label"] for q in queries], label_tokens=p.labels,
                n_start=p.n_start)


def _poisoned_trainer(bad_lr, poison):
    """GD, except that at ``bad_lr`` the returned copy's W_K holds ``poison`` (as a trainer with no NaN
    guard of its own would return it)."""

    def trainer(model, seqs, answers, cfg, progress=True):
        tuned, trace = finetune(model, seqs, answers, cfg, progress=progress)
        if cfg.lr == bad_lr:
            with torch.no_grad():
                tuned.blocks[0].attn.W_K.fill_(poison)
        return tuned, trace

    return trainer


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
@pytest.mark.parametrize("calibrated", [False, True])
def test_a_rate_with_non_finite_weights_is_marked_diverged(tiny_gpt, poison, calibrated):
    inputs = _inputs(tiny_gpt)
    content_free = tiny_gpt.tokenizer.encode(" N/A", add_special_tokens=False) if calibrated else None
    choice = sweep_learning_rate(tiny_gpt, base=FinetuneConfig(), grid=(1e-3, 1e-2, 3e-2), progress=False,
                                 trainer=_poisoned_trainer(1e-2, poison), content_free_query=content_free, **inputs)
    assert choice.scores[1e-2] is None
    assert choice.scores[1e-3] is not None and choice.scores[3e-2] is not None
    assert choice.lr in (1e-3, 3e-2)
    assert choice.scores[choice.lr] == max(choice.scores[1e-3], choice.scores[3e-2])


def test_non_finite_scores_from_finite_weights_are_marked_diverged(tiny_gpt, monkeypatch):
    """Scores can go non-finite with finite weights (an overflow in the forward pass): same verdict.
    (The sequential sweep, which scores through evaluate; the batched one: test_lr_sweep_batched.py.)"""
    import icl_lens.training.batched as batched  # where the sweep's scoring calls evaluate

    real_evaluate = batched.evaluate
    calls = []

    def evaluate(model, *args, **kwargs):
        run = real_evaluate(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the second rate of the grid
            run = copy.copy(run)
            run.class_scores = torch.full_like(run.class_scores, float("nan"))
        return run

    monkeypatch.setattr(batched, "evaluate", evaluate)
    choice = sweep_learning_rate(tiny_gpt, base=FinetuneConfig(), grid=(1e-3, 1e-2, 3e-2), progress=False,
                                 batched=False, **_inputs(tiny_gpt))
    assert choice.scores[1e-2] is None and len(calls) == 3
    assert choice.scores[1e-3] is not None and choice.scores[3e-2] is not None


def test_every_rate_diverging_is_one_clear_error(tiny_gpt):
    with pytest.raises(TrainingDivergedError, match="every learning rate"):
        sweep_learning_rate(tiny_gpt, base=FinetuneConfig(), grid=(1e-3, 1e-2), progress=False,
                            trainer=_always_nan, **_inputs(tiny_gpt))
    with pytest.raises(ConfigError, match="no query"):
        sweep_learning_rate(tiny_gpt, base=FinetuneConfig(), grid=(1e-3,), progress=False,
                            **{**_inputs(tiny_gpt), "score_queries": [], "score_labels": []})


def _always_nan(model, seqs, answers, cfg, progress=True):
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        tuned.blocks[0].attn.W_V.fill_(float("nan"))
    return tuned, None
