"""Prompts: demonstrations, queries and label words as token ids (Dai et al. 2023; Deutch et al. 2024).

Every prompt is built from token-id pieces so that positions are exact and shared across settings:

    ICL sequence  = [start] + demo_1 + sep + ... + demo_k + sep + query + answer
    ZSL/FT        = [start] + query + answer
    FT training   = [start] + demo_i          (one demonstration per sequence)

where ``demo_i = input_i + answer_prefix + label_word_i`` and ``answer`` is the scored label's
tokens. The shared part before the query (the *prefix*) is identical for every query of a run, which
is what lets :mod:`icl_lens.runs` encode it once and reuse its key/value cache.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from icl_lens._validation import validate_fields
from icl_lens.errors import ConfigError, PromptError
from icl_lens.tasks import Task, load_split, sample_demonstrations, sample_queries

logger = logging.getLogger(__name__)

START_CHOICES = ("bos", "eos", "none")


@dataclass(frozen=True)
class PromptFormat:
    """How demonstrations and answers are laid out.

    Args:
        separator: text between demonstrations and before the query (reference: newline).
            ``"<eos>"`` means the tokenizer's EOS token.
        answer_prefix: text between an input and its label word (reference: one space).
        start: token opening every sequence: ``"bos"`` (the tokenizer's BOS), ``"eos"`` (its EOS,
            the document separator of models trained on packed text), ``"none"``, or a literal
            token string. The first position is an attention sink; a fixed start token keeps it
            outside the query part so ZSL, ICL and FT maps align.
    """

    separator: str = "\n"
    answer_prefix: str = " "
    start: str = "bos"

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.separator == "":
            raise ConfigError("separator must not be empty (use '\\n', ' ' or '<eos>')")
        if not self.start:
            raise ConfigError(f"start must be one of {START_CHOICES} or a token string")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _special_token_id(tokenizer, which: str) -> int:
    token_id = getattr(tokenizer, f"{which}_token_id")
    if token_id is None:
        raise PromptError(f"the tokenizer has no {which.upper()} token; choose another start/separator")
    return int(token_id)


def start_token_ids(tokenizer, fmt: PromptFormat) -> list[int]:
    """The ids that open every sequence (empty for ``start="none"``)."""
    if fmt.start == "none":
        return []
    if fmt.start in ("bos", "eos"):
        return [_special_token_id(tokenizer, fmt.start)]
    token_id = tokenizer.convert_tokens_to_ids(fmt.start)
    unknown = token_id == getattr(tokenizer, "unk_token_id", None) and fmt.start != getattr(
        tokenizer, "unk_token", None
    )
    if token_id is None or unknown:
        raise PromptError(f"start token {fmt.start!r} is not a single token of this tokenizer")
    return [int(token_id)]


def separator_ids(tokenizer, fmt: PromptFormat) -> list[int]:
    if fmt.separator == "<eos>":
        return [_special_token_id(tokenizer, "eos")]
    return encode_text(tokenizer, fmt.separator)


def label_token_ids(tokenizer, task: Task, fmt: PromptFormat) -> list[list[int]]:
    """Token ids of each label's answer (``answer_prefix + word``).

    Scoring takes the mean log-prob over these tokens, so two labels with the same token
    sequence could never be told apart: that, and a label with no tokens, is an error.
    """
    ids = []
    for class_id, word in enumerate(task.label_words):
        if not word.strip():
            raise PromptError(f"task {task.name!r}: label word {class_id} is empty")
        tokens = encode_text(tokenizer, fmt.answer_prefix + word)
        if not tokens:
            raise PromptError(f"task {task.name!r}: label word {word!r} encodes to no tokens")
        ids.append(tokens)
    seen: dict[tuple[int, ...], str] = {}
    for word, tokens in zip(task.label_words, ids):
        key = tuple(tokens)
        if key in seen:
            raise PromptError(
                f"task {task.name!r}: label words {seen[key]!r} and {word!r} collide on the scored tokens {list(key)}"
            )
        seen[key] = word
    return ids


@dataclass
class EncodedPrompts:
    """Token ids for one run: the shared prefixes, every query, every label and demonstration.

    ``icl_prefix`` = start + demonstrations (each followed by the separator); ``zsl_prefix`` =
    start only. ``demo_sequences[i]`` = start + demonstration i (the FT training sequence) and
    ``demo_answer_lengths[i]`` how many of its final tokens are the answer.
    """

    zsl_prefix: list[int]
    icl_prefix: list[int]
    queries: list[list[int]]
    labels: list[list[int]]
    demo_sequences: list[list[int]]
    demo_answer_lengths: list[int]
    demo_labels: list[int]
    k_requested: int
    n_ctx: int
    demo_spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def k(self) -> int:
        """Demonstrations actually in the ICL prompt (may be < requested after truncation)."""
        return len(self.demo_sequences)

    @property
    def n_start(self) -> int:
        return len(self.zsl_prefix)

    def summary(self) -> dict[str, Any]:
        lengths = [len(q) for q in self.queries]
        return {
            "k_requested": self.k_requested,
            "k_used": self.k,
            "icl_prefix_tokens": len(self.icl_prefix),
            "query_tokens_max": max(lengths) if lengths else 0,
            "query_tokens_mean": sum(lengths) / len(lengths) if lengths else 0.0,
            "label_tokens": [len(l) for l in self.labels],
            "n_ctx": self.n_ctx,
        }


def encode_prompts(
    tokenizer,
    task: Task,
    demonstrations: Sequence[dict[str, Any]],
    queries: Sequence[dict[str, Any]],
    fmt: PromptFormat,
    n_ctx: int,
) -> EncodedPrompts:
    """Encode a run's prompts, keeping as many demonstrations as fit in ``n_ctx``.

    Demonstrations are dropped from the end until prefix + longest query + longest answer fits;
    the true k is recorded. A query that does not fit even zero-shot is an error naming it.
    """
    start = start_token_ids(tokenizer, fmt)
    sep = separator_ids(tokenizer, fmt)
    labels = label_token_ids(tokenizer, task, fmt)
    query_ids = [encode_text(tokenizer, task.format_input(row)) for row in queries]
    longest_answer = max(len(l) for l in labels)
    for row, ids in zip(queries, query_ids):
        if not ids:
            raise PromptError(f"task {task.name!r}: query row {row.get('row_index')} encodes to no tokens")
        if len(start) + len(ids) + longest_answer > n_ctx:
            raise PromptError(
                f"task {task.name!r}: query row {row.get('row_index')} needs {len(start) + len(ids) + longest_answer} "
                f"tokens, longer than the model's context of {n_ctx}"
            )
    longest_query = max((len(q) for q in query_ids), default=0)

    demo_bodies: list[list[int]] = []
    answer_lengths: list[int] = []
    for row in demonstrations:
        answer = labels[row["label"]]
        demo_bodies.append(encode_text(tokenizer, task.format_input(row)) + answer)
        answer_lengths.append(len(answer))

    budget = n_ctx - longest_query - longest_answer - len(start)
    kept, used = 0, 0
    for body in demo_bodies:
        if used + len(body) + len(sep) > budget:
            break
        used += len(body) + len(sep)
        kept += 1
    if kept < len(demo_bodies):
        logger.warning(
            "task %s: only %d of %d demonstrations fit in the context of %d tokens; recording k=%d",
            task.name,
            kept,
            len(demo_bodies),
            n_ctx,
            kept,
        )

    icl_prefix = list(start)
    spans = []
    for body in demo_bodies[:kept]:
        spans.append((len(icl_prefix), len(icl_prefix) + len(body)))
        icl_prefix += body + sep
    return EncodedPrompts(
        zsl_prefix=list(start),
        icl_prefix=icl_prefix,
        queries=query_ids,
        labels=labels,
        demo_sequences=[list(start) + body for body in demo_bodies[:kept]],
        demo_answer_lengths=answer_lengths[:kept],
        demo_labels=[row["label"] for row in demonstrations[:kept]],
        k_requested=len(demonstrations),
        n_ctx=n_ctx,
        demo_spans=spans,
    )


def sample_prompts(
    tokenizer,
    task: Task,
    fmt: PromptFormat,
    n_ctx: int,
    k: int,
    seed: int,
    limit: int | None,
    eval_seed: int = 1,
    sampling: str = "random",
    require_demos: bool = True,
    train=None,
) -> tuple[EncodedPrompts, list[dict[str, Any]], list[dict[str, Any]]]:
    """Sample k demonstrations and the queries of a task and encode them (Dai et al. 2023; Deutch et al. 2024).

    Returns the prompts, the sampled demonstrations and the queries. With ``require_demos``, a
    request for k > 0 demonstrations of which none fits the context is an error.
    """
    train = load_split(task, task.train_split) if train is None else train
    demos = sample_demonstrations(task, k, seed, train=train, sampling=sampling)
    queries = sample_queries(task, limit, eval_seed)
    prompts = encode_prompts(tokenizer, task, demos, queries, fmt, n_ctx)
    if require_demos and k > 0 and prompts.k == 0:
        raise PromptError(
            f"task {task.name!r}: no demonstration fits in the model's context of {n_ctx} tokens "
            f"beside the longest query; lower limit/choose shorter queries or run settings=('zsl',)"
        )
    return prompts, demos, queries
