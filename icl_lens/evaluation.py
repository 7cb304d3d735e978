"""Scoring queries and recording activations, for every setting (ZSL, ICL, FT, LCGD).

One function, :func:`evaluate`, serves all settings: a setting is a model plus a shared token
prefix (``[start]`` for zero-shot and finetuned models, ``[start] + demonstrations`` for in-context
learning). The prefix is encoded once; its key/value cache is reused for every batch of queries.
Queries are right-padded (causal attention makes padding after a token invisible to it), sorted by
length to waste little compute on padding, and run with hooks that keep only the recorded position
of the few hook points the metrics need (docs/concepts/settings.md) — never a full activation cache.
The answer positions of all queries are unembedded together after the forward passes (the unembedding
matrix is read once per few hundred rows, not once per batch), and on a CPU a long prefix runs fewer
queries per batch (:func:`rows_per_batch`).

Prediction (Dai et al. 2023; Deutch et al. 2024): the score of class j is the mean log-softmax (over the
full vocabulary) of label j's tokens after the prompt; the prediction is the argmax.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm
from transformer_lens import ActivationCache

from icl_lens._validation import AT_LEAST_ONE, check_token_ids, validate_fields
from icl_lens.errors import ConfigError, NonFiniteError, PromptError
from icl_lens.lens import logit_lens
from icl_lens.models.backends import Model, Prefix, backend_of, final_residual
from icl_lens.models.cpu_matmul import uses_cpu_matmul

logger = logging.getLogger(__name__)

RecordPosition = Literal["answer", "prompt_end"]
ATTN_OUT = "blocks.{layer}.hook_attn_out"
ATTN_SCORES = "blocks.{layer}.attn.hook_attn_scores"
ATTN_PATTERN = "blocks.{layer}.attn.hook_pattern"


@dataclass(frozen=True)
class RecordSpec:
    """What to record at one position per example (docs/concepts/settings.md).

    Args:
        position: ``"answer"`` (reference): the last token of prompt + class-0 answer, one
            position after the one that predicts the label; ``"prompt_end"``: the prompt's last token.
        top_k: how many of the most likely next tokens (at the prediction position) to keep,
            for the output-distribution metrics.
    """

    position: RecordPosition = "answer"
    top_k: int = 10

    def __post_init__(self) -> None:
        validate_fields(self, {"top_k": AT_LEAST_ONE})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SettingRun:
    """Everything one setting produced on the queries (tensors on CPU, float32).

    ``activations`` is an :class:`~transformer_lens.ActivationCache` with, per layer,
    ``blocks.{l}.hook_attn_out`` [n_examples, d_model] and ``blocks.{l}.attn.hook_attn_scores`` /
    ``hook_pattern`` [n_examples, n_heads, max_keys]: the recorded position's attention row over
    the keys of the query part only (zero-padded beyond ``key_lengths``).
    """

    setting: str
    class_scores: Float[torch.Tensor, "n_examples n_classes"]
    activations: ActivationCache
    key_lengths: Int[torch.Tensor, " n_examples"]
    demo_attention_mass: Float[torch.Tensor, "n_examples n_layers n_heads"]
    sink_attention_mass: Float[torch.Tensor, "n_examples n_layers n_heads"]
    next_token_ids: Int[torch.Tensor, "n_examples top_k"]
    next_token_probs: Float[torch.Tensor, "n_examples top_k"]

    @property
    def predictions(self) -> Int[torch.Tensor, " n_examples"]:
        return self.class_scores.argmax(dim=-1)

    @property
    def n_examples(self) -> int:
        return self.class_scores.shape[0]


@torch.no_grad()
def encode_prefix(model: Model, prefix: Sequence[int]) -> Prefix | None:
    """Run the shared prefix once and return its key/value cache (None if the prefix is empty, or
    if the model's backend cannot reuse one: the prefix is then re-encoded in every sequence)."""
    prefix = check_token_ids(prefix, model.cfg.d_vocab, "prefix", allow_empty=True)
    if not prefix:
        return None
    tokens = torch.tensor([list(prefix)], device=model.cfg.device)
    return backend_of(model).encode_prefix(model, tokens)


PAD_ID = 0
"""Token id written into padding (masked out of attention and never scored)."""


def pad_right(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows right-padded to one width, and their attention mask (1 on real tokens)."""
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return tokens.to(device), mask.to(device)


def attention_windows(model: Model) -> list[int | None]:
    """Per layer, the sliding-window size of a local-attention layer, or None for a global one
    (Gemma-3's alternating local/global layers and plain models alike; read by the backend)."""
    return backend_of(model).attention_windows(model)


def attended_keys(
    query_pos: Int[torch.Tensor, "*rows"], key_pos: Int[torch.Tensor, " keys"], window: int | None
) -> torch.Tensor:
    """Which keys each query attends to (absolute positions): causal, and within ``window`` for a
    local layer — the mask TransformerLens applies (``key <= query`` and ``key > query - window``).

    Returns a boolean tensor of shape ``[*rows, keys]``. Both attention recorders (this module's and
    :mod:`icl_lens.viz.maps`) zero every other entry with :func:`zero_unattended`, so the ``-inf``
    scores of causally *and* window-masked keys never reach a metric.
    """
    query = query_pos[..., None]
    keys = key_pos.to(query.device)
    mask = keys <= query
    if window is not None:
        mask = mask & (keys > query - window)
    return mask


def zero_unattended(values: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """``values`` (scores or pattern, ``[..., rows?, keys]``) with keys outside ``attended`` set to 0.

    ``attended`` broadcasts against ``values`` from the right after a head axis is inserted where
    needed by the caller.
    """
    return torch.where(attended.to(values.device), values, torch.zeros_like(values))


class _PositionRecorder:
    """Forward hooks that keep one row per example of the hook points the metrics need."""

    def __init__(
        self, windows: Sequence[int | None], rows: torch.Tensor, key_start: int, key_lengths: torch.Tensor, n_start: int
    ):
        self.rows = rows  # [batch] position of the recorded token in the sequences run
        self.key_start = key_start  # absolute key index where the query part begins (= prefix length)
        self.key_lengths = key_lengths  # [batch] keys of the query part up to the recorded token
        self.n_start = n_start
        self.windows = list(windows)  # per layer: local-attention window or None
        self.n_layers = len(self.windows)
        self.store: dict[str, torch.Tensor] = {}
        self.demo_mass: list[torch.Tensor] = [torch.empty(0)] * self.n_layers
        self.sink_mass: list[torch.Tensor] = [torch.empty(0)] * self.n_layers

    def _row(self, act: torch.Tensor) -> torch.Tensor:  # [batch, head, q, k] -> [batch, head, k]
        batch_index = torch.arange(act.shape[0], device=act.device)
        return act.transpose(1, 2)[batch_index, self.rows.to(act.device)]

    def _query_keys(self, row: torch.Tensor, layer: int) -> torch.Tensor:
        """The query part's keys of the recorded rows, with every key the layer does not attend to
        (after the recorded token, padding, or outside a local layer's window) set to 0."""
        width = int(self.key_lengths.max())
        keys = row[..., self.key_start : self.key_start + width].float()
        # absolute positions: the recorded token is the query part's (key_lengths - 1)-th token
        query_pos = self.key_start + self.key_lengths.to(row.device) - 1
        key_pos = self.key_start + torch.arange(width, device=row.device)
        attended = attended_keys(query_pos, key_pos, self.windows[layer])  # [batch, width]
        return zero_unattended(keys, attended[:, None, :]).cpu()

    def hooks(self) -> list[tuple[str, Callable]]:
        hooks = []
        for layer in range(self.n_layers):
            hooks.append((ATTN_OUT.format(layer=layer), self._attn_out_hook))
            hooks.append((ATTN_SCORES.format(layer=layer), self._make_scores_hook(layer)))
            hooks.append((ATTN_PATTERN.format(layer=layer), self._make_pattern_hook(layer)))
        return hooks

    def _attn_out_hook(self, act, hook):
        batch_index = torch.arange(act.shape[0], device=act.device)
        self.store[hook.name] = act[batch_index, self.rows.to(act.device)].float().cpu()

    def _make_scores_hook(self, layer: int):
        def hook_fn(act, hook):
            self.store[hook.name] = self._query_keys(self._row(act), layer)

        return hook_fn

    def _make_pattern_hook(self, layer: int):
        def hook_fn(act, hook):
            row = self._row(act)  # [batch, head, keys]
            self.store[hook.name] = self._query_keys(row, layer)
            self.demo_mass[layer] = row[..., self.n_start : self.key_start].sum(-1).float().cpu()
            sink = row[..., 0] if self.n_start else torch.zeros_like(row[..., 0])
            self.sink_mass[layer] = sink.float().cpu()

        return hook_fn


UNEMBED_ROWS = 512
"""Rows per unembedding product in :func:`evaluate` (its fp32 log-probabilities: 512 MiB at a 262k
vocabulary). A product of few rows (one batch's answers) re-reads the whole unembedding for little
work, so the answers of all batches are unembedded together, in products this tall (rates measured:
docs/performance.md)."""


def _label_residuals(
    final_resid: Float[torch.Tensor, "batch pos d_model"], first_pred_pos: torch.Tensor, n_label_tokens: int
) -> Float[torch.Tensor, "batch n_label_tokens d_model"]:
    """The residual stream at the positions predicting each token of a label."""
    offsets = torch.arange(n_label_tokens, device=final_resid.device)
    positions = first_pred_pos.to(final_resid.device)[:, None] + offsets[None, :]
    batch_index = torch.arange(final_resid.shape[0], device=final_resid.device)[:, None]
    return final_resid[batch_index, positions]


def label_log_probs(
    model: Model,
    final_resid: Float[torch.Tensor, "batch pos d_model"],
    first_pred_pos: torch.Tensor,
    label: Sequence[int],
) -> Float[torch.Tensor, "batch n_label_tokens vocab"]:
    """Log-softmax over the vocabulary at the positions predicting each label token."""
    picked = _label_residuals(final_resid, first_pred_pos, len(label))  # [batch, n_label_tokens, d_model]
    return logit_lens(model, picked).float().log_softmax(dim=-1)


def mean_token_log_prob(log_probs: torch.Tensor, label: Sequence[int]) -> torch.Tensor:
    """The mean log-probability of a label's tokens, per row (the class score of Dai et al. 2023)."""
    index = torch.tensor(label, device=log_probs.device)[None, :, None].expand(log_probs.shape[0], -1, 1)
    return log_probs.gather(-1, index).squeeze(-1).mean(-1)


CPU_KEY_ROWS = 4800
"""On a CPU, the most ``queries × keys`` one evaluation batch holds. Every query of a batch carries its
own copy of the shared prefix's keys and values through TransformerLens's attention (concatenated with
its own, repeated over the query heads of a grouped-query layer, transposed for the products): beyond
a few thousand key rows those copies leave the caches, so an in-context batch with a long prefix holds
fewer queries than a zero-shot one (timings by batch size: docs/performance.md)."""


def rows_per_batch(batch_size: int, keys: int, device: str) -> int:
    """How many queries :func:`evaluate` runs together: ``batch_size``, and on a CPU at most
    :data:`CPU_KEY_ROWS` ``// keys`` (``keys``: the longest sequence with its prefix). Batching
    changes no number beyond float rounding."""
    if torch.device(device).type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_KEY_ROWS // max(1, keys)))


def check_record_fits(record: RecordSpec, model: Model) -> None:
    """A :class:`ConfigError` if ``record.top_k`` exceeds the model's vocabulary."""
    if record.top_k > model.cfg.d_vocab:
        raise ConfigError(
            f"record top_k={record.top_k} is larger than the model's vocabulary of {model.cfg.d_vocab} tokens"
        )


def check_evaluation_inputs(
    model: Model,
    prefix: Sequence[int],
    queries: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    n_start: int = 0,
    record: RecordSpec | None = None,
) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """The token inputs of :func:`evaluate` as lists of ints, checked against the model.

    An empty query would make the prefix's last token the prediction position (a silently wrong
    score), an empty label has nothing to score, and an id outside ``[0, d_vocab)`` would index past
    the embedding: each is a :class:`PromptError` naming the query/label and the id. A ``top_k``
    beyond the vocabulary or a sequence longer than the context is an error before any forward pass.
    """
    d_vocab = model.cfg.d_vocab
    if record is not None:
        check_record_fits(record, model)
    prefix_ids = check_token_ids(prefix, d_vocab, "prefix", allow_empty=True)
    if isinstance(n_start, bool) or not isinstance(n_start, int) or not 0 <= n_start <= len(prefix_ids):
        raise ConfigError(f"n_start must be an integer in 0..{len(prefix_ids)} (the prefix length), got {n_start!r}")
    if isinstance(queries, (str, bytes)) or not len(queries):
        raise PromptError("no queries to evaluate")
    if isinstance(labels, (str, bytes)) or not len(labels):
        raise PromptError("no labels to score: give the token ids of at least one class's answer")
    query_ids = [check_token_ids(q, d_vocab, f"query {i}") for i, q in enumerate(queries)]
    label_ids = [check_token_ids(l, d_vocab, f"label {i}") for i, l in enumerate(labels)]
    longest = len(prefix_ids) + max(map(len, query_ids)) + max(map(len, label_ids))
    if longest > model.cfg.n_ctx:
        raise PromptError(
            f"prefix + longest query + longest label = {longest} tokens, longer than the model's "
            f"context of {model.cfg.n_ctx}"
        )
    return prefix_ids, query_ids, label_ids


@torch.no_grad()
@uses_cpu_matmul
def evaluate(
    model: Model,
    prefix: Sequence[int],
    queries: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    setting: str = "",
    n_start: int = 1,
    record: RecordSpec = RecordSpec(),
    batch_size: int = 16,
    reuse_prefix: bool = True,
    progress: bool = True,
    encoded_prefix: Prefix | None = None,
) -> SettingRun:
    """Score every query after ``prefix`` and record its activations at one position.

    Args:
        model: the model of this setting (base model for ZSL/ICL, a finetuned copy for FT).
        prefix: token ids shared by every prompt (start token, then demonstrations for ICL).
        queries: token ids of each query's prompt (template filled, no answer).
        labels: token ids of each class's answer; class 0's answer is appended to every query
            so the recorded ``"answer"`` position exists (docs/concepts/settings.md).
        n_start: how many leading prefix tokens are the start/sink token (0 or 1): they are
            excluded from the demonstration attention mass (α) and reported as sink mass.
        reuse_prefix: encode the prefix once and reuse its key/value cache (fast path); False
            re-encodes it inside every sequence (the straightforward path, kept for checking).
        encoded_prefix: ``prefix`` already encoded by :func:`encode_prefix` on this ``model``, to
            share one encoding between calls (the content-free query of calibration reuses the
            queries' prefix); None encodes it here.

    Raises:
        PromptError: an empty query or label, a token id outside the vocabulary, or a sequence
            longer than the context (see :func:`check_evaluation_inputs`).
        ConfigError: ``record.top_k`` beyond the vocabulary, a bad ``n_start`` or ``batch_size``.

    ``batch_size`` is the most queries run together; on a CPU a long prefix runs fewer
    (:func:`rows_per_batch`).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    prefix, queries, labels = check_evaluation_inputs(model, prefix, queries, labels, n_start=n_start, record=record)
    cfg = model.cfg
    n_classes = len(labels)
    answer = list(labels[0])
    prefix = list(prefix)
    key_start = len(prefix)
    if encoded_prefix is not None and (not reuse_prefix or encoded_prefix.length != len(prefix)):
        raise ConfigError(
            f"encoded_prefix holds {encoded_prefix.length} tokens for a prefix of {len(prefix)}"
            + ("" if reuse_prefix else " and reuse_prefix=False re-encodes the prefix anyway")
        )
    prefix_cache = (encoded_prefix or encode_prefix(model, prefix)) if reuse_prefix else None
    windows = attention_windows(model)
    n = len(queries)
    order = sorted(range(n), key=lambda i: -len(queries[i]))
    scores = torch.zeros(n, n_classes)
    key_lengths = torch.zeros(n, dtype=torch.long)
    demo_mass = torch.zeros(n, cfg.n_layers, cfg.n_heads)
    sink_mass = torch.zeros(n, cfg.n_layers, cfg.n_heads)
    top_ids = torch.zeros(n, record.top_k, dtype=torch.long)
    top_probs = torch.zeros(n, record.top_k)
    store_chunks: dict[str, list[tuple[list[int], torch.Tensor]]] = {}
    answer_resid = torch.zeros(n, len(answer), cfg.d_model, dtype=cfg.dtype, device=cfg.device)

    # Multi-token answers of classes 1.. : each costs a full pass of its own, unless two or more of
    # them continue from one cached pass of the query (exact only where continuation_unsupported allows).
    multi = [j for j in range(1, n_classes) if len(labels[j]) > 1]
    can_continue = len(multi) > 1 and (prefix_cache is not None or not prefix)
    continued = multi if can_continue and continuation_unsupported(model) is None else []
    separate = [j for j in multi if j not in continued]
    longest = key_start + max(len(q) for q in queries) + max(len(answer), 1)
    rows = rows_per_batch(batch_size, longest, str(cfg.device))
    batches = [order[i : i + rows] for i in range(0, n, rows)]
    for batch in tqdm(batches, desc=f"eval {setting}".strip(), disable=not progress, leave=False):
        batch_queries = [queries[i] for i in batch]
        query_len = torch.tensor([len(q) for q in batch_queries])
        pred_pos = (key_start if prefix_cache is None else 0) + query_len - 1  # predicts the answer's first token
        if record.position == "answer":
            rec_pos = pred_pos + len(answer)
            n_keys = query_len + len(answer)
        else:
            rec_pos = pred_pos
            n_keys = query_len
        recorder = _PositionRecorder(windows, rec_pos, key_start, n_keys, n_start)
        final_resid, _ = _final_residual(model, prefix, prefix_cache, batch_queries, answer, recorder.hooks())

        index = torch.tensor(batch)
        answer_resid[index.to(answer_resid.device)] = _label_residuals(final_resid, pred_pos, len(answer))
        if continued:
            prefix_kv = None if prefix_cache is None else prefix_cache.cache
            other = continued_scores(model, prefix_kv, batch_queries, [labels[j] for j in continued])
            scores[index[:, None], torch.tensor(continued)] = other.float().cpu()
        for class_id in separate:
            other = _score_other_answer(model, prefix, prefix_cache, batch_queries, list(labels[class_id]))
            scores[index, class_id] = other.float().cpu()
        key_lengths[index] = n_keys
        demo_mass[index] = torch.stack(recorder.demo_mass, dim=1)
        sink_mass[index] = torch.stack(recorder.sink_mass, dim=1)
        for name, value in recorder.store.items():
            store_chunks.setdefault(name, []).append((batch, value))

    # The answer's positions of every query are unembedded together, in products of about
    # UNEMBED_ROWS rows: one batch's few rows would each re-read the whole unembedding matrix.
    step = max(1, UNEMBED_ROWS // len(answer))
    for start in range(0, n, step):
        chunk = slice(start, start + step)
        log_probs = logit_lens(model, answer_resid[chunk]).float().log_softmax(dim=-1)  # [rows, answer, vocab]
        scores[chunk, 0] = mean_token_log_prob(log_probs, answer).cpu()
        first = log_probs[:, 0]  # [rows, vocab]: next-token distribution after the prompt
        for class_id in range(1, n_classes):
            if len(labels[class_id]) == 1:
                scores[chunk, class_id] = first[:, labels[class_id][0]].cpu()
        top = first.exp().topk(record.top_k, dim=-1)
        top_ids[chunk] = top.indices.cpu()
        top_probs[chunk] = top.values.float().cpu()
        del log_probs, first

    if not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).any(-1).sum())
        raise NonFiniteError(
            f"setting {setting or '?'}: the model produced NaN/inf class scores for {bad} of {n} queries"
        )
    activations = {}
    max_keys = int(key_lengths.max())
    for name, chunks in store_chunks.items():
        first_value = chunks[0][1]
        if first_value.ndim == 2:  # attn_out [batch, d_model]
            full = torch.zeros(n, first_value.shape[-1])
        else:  # attention rows [batch, head, keys]
            full = torch.zeros(n, first_value.shape[1], max_keys)
        for batch, value in chunks:
            if value.ndim == 2:
                full[torch.tensor(batch)] = value
            else:
                full[torch.tensor(batch), :, : value.shape[-1]] = value
        activations[name] = full
    return SettingRun(
        setting=setting,
        class_scores=scores,
        activations=ActivationCache(activations, model, has_batch_dim=True),
        key_lengths=key_lengths,
        demo_attention_mass=demo_mass,
        sink_attention_mass=sink_mass,
        next_token_ids=top_ids,
        next_token_probs=top_probs,
    )


def _final_residual(
    model: Model,
    prefix: list[int],
    prefix_cache: Prefix | None,
    queries: Sequence[Sequence[int]],
    answer: Sequence[int],
    hooks: Sequence = (),
) -> tuple[Float[torch.Tensor, "batch pos d_model"], Int[torch.Tensor, " batch"]]:
    """One right-padded batch of ``[prefix +] query + answer`` through every block.

    With a prefix cache the sequences hold only query + answer and attend to the cached prefix;
    without one the prefix is re-encoded inside every sequence. Returns the final residual stream
    and, per row, the position that predicts the answer's first token.
    """
    inline_prefix = [] if prefix_cache is not None else list(prefix)
    rows = [inline_prefix + list(q) + list(answer) for q in queries]
    tokens, mask = pad_right(rows, PAD_ID, model.cfg.device)
    resid = final_residual(model, tokens, mask, prefix=prefix_cache, hooks=hooks)
    pred_pos = len(inline_prefix) + torch.tensor([len(q) for q in queries]) - 1
    return resid, pred_pos


def _score_other_answer(model, prefix, prefix_cache, queries, label) -> torch.Tensor:
    """Mean log-prob of a multi-token answer that is not class 0 (an extra, unhooked pass)."""
    resid, pred_pos = _final_residual(model, prefix, prefix_cache, queries, label)
    return mean_token_log_prob(label_log_probs(model, resid, pred_pos, label), label)


def continuation_unsupported(model: Model) -> str | None:
    """Why a label cannot be scored exactly as a continuation of its query's cached keys and values
    (None: it can). Only a HookedTransformer's cache is continued; the continuation's keys sit after
    the query's right padding, and positions are counted over the attention mask (absolute and rotary
    embeddings), but a sliding window, ALiBi or dynamic NTK rotary scaling count the padding too."""
    backend = backend_of(model)
    if backend.name != "hooked":
        return f"the {backend.name} backend"
    c = model.cfg
    if c.positional_embedding_type not in ("standard", "rotary"):
        return f"positional embedding {c.positional_embedding_type!r}"
    if getattr(c, "use_dynamic_ntk_rope", False):
        return "dynamic NTK rotary scaling"
    if any(window is not None for window in backend.attention_windows(model)):
        return "sliding-window attention layers"
    return None


@uses_cpu_matmul
def continued_scores(
    model: Model,
    prefix_kv,
    queries: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    copies: int = 1,
    run: Callable[[Callable[[], torch.Tensor]], torch.Tensor] = lambda forward: forward(),
) -> Float[torch.Tensor, "rows n_labels"]:
    """Mean log-prob of each label after each query, the query run once: its keys and values are
    cached after the prefix's, and every multi-token label's tokens but the last continue from that
    cache, so no label re-runs the query (exact only where :func:`continuation_unsupported` is None).

    ``prefix_kv``: a TransformerLens key/value cache of the prefix with ``copies`` rows (None: no
    prefix); every copy runs all ``queries`` (rows copy-major: ``c * len(queries) + i``). ``run``
    wraps each forward pass (the batched sweep swaps in each copy's trained weights there).
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    n_queries, device, n_layers = len(queries), model.cfg.device, model.cfg.n_layers
    rows = copies * n_queries
    if prefix_kv is None:
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, batch_size=rows)
    else:

        def per_row(t: torch.Tensor) -> torch.Tensor:  # each copy's prefix for each of its queries
            return t.expand(rows, *t.shape[1:]) if copies == 1 else t.repeat_interleave(n_queries, 0)

        entries = [
            TransformerLensKeyValueCacheEntry(past_keys=per_row(e.past_keys), past_values=per_row(e.past_values))
            for e in prefix_kv.entries
        ]
        cache = TransformerLensKeyValueCache(
            entries=entries, previous_attention_mask=per_row(prefix_kv.previous_attention_mask)
        )
    tokens, mask = pad_right(queries, PAD_ID, device)
    tokens, mask = tokens.repeat(copies, 1), mask.repeat(copies, 1)
    resid = run(lambda: model(tokens, past_kv_cache=cache, attention_mask=mask, stop_at_layer=n_layers))
    cache.freeze()  # the continuations read it without appending to it
    pred_pos = (torch.tensor([len(q) for q in queries]) - 1).repeat(copies)
    first = label_log_probs(model, resid, pred_pos, [PAD_ID])[:, 0]  # [rows, vocab]: the distribution after each query
    scores = torch.zeros(rows, len(labels), device=first.device)
    for j, label in enumerate(labels):
        if len(label) == 1:
            scores[:, j] = first[:, label[0]]
            continue
        continuation = torch.tensor([list(label[:-1])], device=device).expand(rows, -1)
        ones = torch.ones_like(continuation)
        resid = run(
            functools.partial(model, continuation, past_kv_cache=cache, attention_mask=ones, stop_at_layer=n_layers)
        )
        later = logit_lens(model, resid).float().log_softmax(dim=-1)  # predicts label[1:]
        scores[:, j] = mean_token_log_prob(torch.cat([first[:, None], later], dim=1), label)
    return scores
