import pytest

from helpers import byte_tokenizer
from icl_lens.errors import ConfigError, PromptError
from icl_lens.prompts import PromptFormat, encode_prompts, encode_text, label_token_ids
from icl_lens.tasks import Task

TASK = Task(name="toy", template="Q: {text} A:", label_words=("no", "yes"), data_files={"train": "x", "test": "x"})
DEMOS = [{"text": "aa", "label": 1, "row_index": 0}, {"text": "bbb", "label": 0, "row_index": 1}]
QUERIES = [{"text": "c", "label": 0, "row_index": 5}, {"text": "dddd", "label": 1, "row_index": 6}]


def test_icl_prefix_is_start_then_demos_each_followed_by_separator():
    tok = byte_tokenizer()
    p = encode_prompts(tok, TASK, DEMOS, QUERIES, PromptFormat(), n_ctx=512)
    text = tok.decode(p.icl_prefix[1:])
    assert p.icl_prefix[0] == tok.bos_token_id
    assert text == "Q: aa A: yes\nQ: bbb A: no\n"
    assert tok.decode(p.queries[1]) == "Q: dddd A:"
    assert [tok.decode(l) for l in p.labels] == [" no", " yes"]
    # FT training sequences: start + one demonstration, answer last.
    assert tok.decode(p.demo_sequences[0][1:]) == "Q: aa A: yes" and p.demo_answer_lengths == [4, 3]
    assert p.k == 2 and p.zsl_prefix == [tok.bos_token_id]
    # spans point at each demonstration inside the prefix
    start, end = p.demo_spans[1]
    assert tok.decode(p.icl_prefix[start:end]) == "Q: bbb A: no"


def test_start_and_separator_options():
    tok = byte_tokenizer()
    p = encode_prompts(tok, TASK, DEMOS, QUERIES, PromptFormat(start="none", separator="<eos>"), n_ctx=512)
    assert p.zsl_prefix == [] and p.icl_prefix.count(tok.eos_token_id) == 2
    with pytest.raises(ConfigError):
        PromptFormat(separator="")


def test_truncation_keeps_demos_that_fit_and_records_true_k():
    tok = byte_tokenizer()
    # 1 start + longest query 10 + longest answer 4 = 15; first demo needs 12 + 1 separator.
    p = encode_prompts(tok, TASK, DEMOS, QUERIES, PromptFormat(), n_ctx=30)
    assert p.k_requested == 2 and p.k == 1
    assert len(p.icl_prefix) + max(map(len, p.queries)) + 4 <= 30


def test_query_longer_than_context_is_an_error():
    with pytest.raises(PromptError, match="longer than the model's context of 8"):
        encode_prompts(byte_tokenizer(), TASK, DEMOS, QUERIES, PromptFormat(), n_ctx=8)


def test_label_words_colliding_on_scored_tokens_are_an_error():
    task = Task(name="t", template="{text}", label_words=("yes", " yes"), data_files={"train": "x", "test": "x"})
    with pytest.raises(PromptError, match="'yes' and ' yes' collide"):
        label_token_ids(_CollidingTokenizer(), task, PromptFormat())
    assert len(label_token_ids(byte_tokenizer(), task, PromptFormat())) == 2  # distinct bytes: fine


class _CollidingTokenizer:
    """A tokenizer that drops whitespace, so 'yes' and ' yes' encode alike."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text if not c.isspace()]}


def test_encode_text_adds_no_special_tokens():
    tok = byte_tokenizer()
    assert tok.bos_token_id not in encode_text(tok, "hello")


def test_literal_start_token():
    tok = byte_tokenizer()
    p = encode_prompts(tok, TASK, DEMOS, QUERIES, PromptFormat(start="<|eos|>"), n_ctx=512)
    assert p.zsl_prefix == [tok.eos_token_id]
    with pytest.raises(PromptError, match="not a single token"):
        encode_prompts(tok, TASK, DEMOS, QUERIES, PromptFormat(start="<|nope|>"), n_ctx=512)
