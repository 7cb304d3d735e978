"""GD and LCGD refuse demonstrations they cannot train on with a PromptError/ConfigError naming the
problem, before any copy of the model is made (not an IndexError from inside torch)."""

from __future__ import annotations

import pytest

from icl_lens.errors import ConfigError, PromptError
from icl_lens.training.finetune import FinetuneConfig, finetune
from icl_lens.training.lcgd import layer_causal_finetune

TRAINERS = [finetune, layer_causal_finetune]


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize(
    ("sequences", "answer_lengths", "error", "message"),
    [
        ([], [], ConfigError, "no demonstrations"),
        ([[5, 6, 7]], [1, 1], PromptError, "1 demonstrations but 2 answer lengths"),
        ([[5]], [1], PromptError, "at least 2 are needed"),
        ([[5, 10**6, 7]], [1], PromptError, "token id 1000000 at position 1 is outside the vocabulary"),
        ([[5, -1, 7]], [1], PromptError, "token id -1"),
        ([[5, 6, 7]], [3], PromptError, "answer length 3 must be an integer in 1..2"),
        ([[5, 6, 7]], [0], PromptError, "answer length 0"),
        ([[5, 6.5, 7]], [1], PromptError, "not an integer id"),
    ],
)
def test_bad_demonstrations_are_clear_errors(tiny_gpt, trainer, sequences, answer_lengths, error, message):
    with pytest.raises(error, match=message):
        trainer(tiny_gpt, sequences, answer_lengths, FinetuneConfig(lr=1e-3), progress=False)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_demonstration_longer_than_the_context_is_refused(trainer):
    from helpers import tiny_model

    model = tiny_model(n_ctx=8)
    with pytest.raises(PromptError, match="more than the context"):
        trainer(model, [list(range(5, 15))], [1], FinetuneConfig(lr=1e-3), progress=False)
