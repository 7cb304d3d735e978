"""Full attention maps of a few queries, per setting, aligned on the query tokens.

The metrics (docs/concepts/metrics.md) keep one attention row per example; to *look* at what changed between
zero-shot, in-context learning and the finetuned models, this module records whole maps for a
handful of queries: every layer, every head, every row and key of the query part (query tokens,
then the class-0 answer tokens, as in :func:`icl_lens.evaluation.evaluate`).

Keys of the prefix (start token, demonstrations) are left out so that the ZSL, ICL, FT and LCGD
maps of one query have the same shape and line up cell by cell. Their attention mass is kept
separately per row: ``start_mass`` (the start/sink token) and ``demo_mass`` (the demonstrations;
always 0 for ZSL/FT/LCGD, whose prefix is the start token alone). For every row,
``pattern.sum(-1) + demo_mass + start_mass == 1``.

Files (see :func:`save_attention_maps`): ``attention_maps.safetensors`` holds float16 tensors named
``"{setting}/{i}/{pattern|scores|demo_mass|start_mass}"``; ``attention_tokens.json`` the settings,
and per example its row index, label and readable token strings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Float

from icl_lens.cell.results import atomic_write_bytes
from icl_lens.errors import ResultsError
from icl_lens.evaluation import attended_keys, attention_windows, zero_unattended
from icl_lens.models.backends import Model

if TYPE_CHECKING:  # pragma: no cover
    from icl_lens.cell.experiment import ExperimentOutput

logger = logging.getLogger(__name__)

MAPS_FILE = "attention_maps.safetensors"
TOKENS_FILE = "attention_tokens.json"
MAP_KEYS = ("pattern", "scores", "demo_mass", "start_mass")
SETTING_ORDER = ("zsl", "icl", "ft", "lcgd")
_FLOAT16_MAX = float(torch.finfo(torch.float16).max)

AttentionMap = dict[str, torch.Tensor]


class SavedAttentionMaps(NamedTuple):
    """What :func:`load_attention_maps` returns (unpacks like the arguments of :func:`save_attention_maps`)."""

    maps_by_setting: dict[str, list[AttentionMap]]
    tokens: list[list[str]]
    examples: list[dict[str, Any]]


class _Recorder:
    """Forward hooks keeping, per layer, the rows of the query part (prefix rows dropped at once)."""

    def __init__(self, n_prefix: int):
        self.n_prefix = n_prefix
        self.pattern: dict[int, torch.Tensor] = {}
        self.scores: dict[int, torch.Tensor] = {}

    def __call__(self, act: torch.Tensor, hook) -> None:
        layer = int(hook.name.split(".")[1])
        rows = act[0, :, self.n_prefix :, :].float().cpu()  # [head, q, n_prefix + q]
        if hook.name.endswith("hook_pattern"):
            self.pattern[layer] = rows
        else:
            self.scores[layer] = rows


def _is_attention_hook(name: str) -> bool:
    return name.endswith("attn.hook_pattern") or name.endswith("attn.hook_attn_scores")


@torch.no_grad()
def record_attention_maps(
    model: Model,
    prefix: Sequence[int],
    queries: Sequence[Sequence[int]],
    answer: Sequence[int],
    *,
    n_start: int = 1,
) -> list[AttentionMap]:
    """Attention maps of the query part of ``prefix + query + answer``, for each query.

    One forward pass per query (no padding, so nothing to mask). Hooks on ``hook_pattern`` and
    ``hook_attn_scores`` keep only the rows of the query part as they are produced, so a long ICL
    prefix never puts a full ``[n_heads, seq, seq]`` map per layer in memory.

    Args:
        model: the setting's model (base model for ZSL/ICL, a finetuned copy for FT/LCGD).
        prefix: the setting's shared prefix (``[start]``, or ``[start] + demonstrations`` for ICL).
        queries: token ids of each query's prompt.
        answer: token ids appended to every query (class 0's answer, as in the evaluation).
        n_start: how many leading prefix tokens are the start/sink token (``prompts.n_start``);
            their mass is ``start_mass``, the rest of the prefix's is ``demo_mass``.

    Returns:
        One dict per query, float32 CPU tensors, with ``q = len(query) + len(answer)``:

        * ``pattern`` [n_layers, n_heads, q, q]: post-softmax attention from each query-part token
          (rows) to each query-part token (keys). Prefix keys are excluded, so rows do **not** sum
          to 1: ICL rows miss the mass that went to the demonstrations (``demo_mass``), every
          setting's rows miss the start-token mass (``start_mass``).
        * ``scores`` [n_layers, n_heads, q, q]: pre-softmax scores on the same rows and keys; every
          key the layer does not attend to (after the row, or outside a local layer's sliding
          window) is 0 instead of -inf — the same mask as :func:`icl_lens.evaluation.evaluate`
          records (:func:`icl_lens.evaluation.attended_keys`).
        * ``demo_mass`` [n_layers, n_heads, q]: attention of each row on the demonstration tokens.
        * ``start_mass`` [n_layers, n_heads, q]: attention of each row on the start token(s).
    """
    prefix = [int(t) for t in prefix]
    answer = [int(t) for t in answer]
    n_prefix = len(prefix)
    n_start = max(0, min(int(n_start), n_prefix))
    n_layers = model.cfg.n_layers
    windows = attention_windows(model)
    device = model.cfg.device
    out: list[AttentionMap] = []
    for query in queries:
        ids = prefix + [int(t) for t in query] + answer
        if len(ids) > model.cfg.n_ctx:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the model's context of {model.cfg.n_ctx}")
        recorder = _Recorder(n_prefix)
        model.run_with_hooks(
            torch.tensor([ids], device=device), return_type=None, fwd_hooks=[(_is_attention_hook, recorder)]
        )
        pattern = torch.stack([recorder.pattern[layer] for layer in range(n_layers)])  # [L, H, q, P+q]
        scores = torch.stack([recorder.scores[layer] for layer in range(n_layers)])
        q = pattern.shape[-2]
        positions = torch.arange(n_prefix, n_prefix + q)  # absolute positions of the query part
        attended = torch.stack([attended_keys(positions, positions, window) for window in windows])  # [L, q, q]
        out.append(
            {
                "pattern": pattern[..., n_prefix:].contiguous(),
                "scores": zero_unattended(scores[..., n_prefix:], attended[:, None]).contiguous(),
                "demo_mass": pattern[..., n_start:n_prefix].sum(-1),
                "start_mass": pattern[..., :n_start].sum(-1),
            }
        )
    return out


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """One readable string per token id (``tokenizer.decode([id])``: 'Ġgood' → ' good').

    A token holding part of a multi-byte character decodes to U+FFFD; it keeps its raw vocabulary
    string instead (e.g. 'Ã©'), so that distinct tokens stay distinguishable.
    """
    out = []
    for i in ids:
        text = tokenizer.decode([int(i)])
        if "\ufffd" in text:
            text = str(tokenizer.convert_ids_to_tokens(int(i)))
        out.append(text)
    return out


def _ordered_settings(settings) -> list[str]:
    known = [s for s in SETTING_ORDER if s in settings]
    return known + sorted(s for s in settings if s not in SETTING_ORDER)


def save_attention_maps(
    cell_dir: str | Path,
    maps_by_setting: Mapping[str, Sequence[AttentionMap]],
    tokens: Sequence[Sequence[str]],
    examples: Sequence[Mapping[str, Any]],
) -> Path:
    """Write ``attention_maps.safetensors`` (float16) and ``attention_tokens.json`` into ``cell_dir``.

    Args:
        maps_by_setting: setting name → one map dict per example (as :func:`record_attention_maps`
            returns), every setting with the same examples in the same order.
        tokens: per example, the token strings of its query part (query + answer).
        examples: per example, at least ``row_index`` and ``label``; other JSON-serialisable keys
            (e.g. ``text``, the decoded query + answer) are kept.

    Both files are written atomically (temporary file, then ``os.replace``). Values beyond the
    float16 range are clamped to it. Returns the path of the safetensors file.
    """
    from safetensors.torch import save as save_safetensors

    cell_dir = Path(cell_dir)
    settings = _ordered_settings(maps_by_setting)
    n = len(tokens)
    if len(examples) != n:
        raise ValueError(f"{len(examples)} examples but {n} token lists")
    tensors: dict[str, torch.Tensor] = {}
    for setting in settings:
        maps = maps_by_setting[setting]
        if len(maps) != n:
            raise ValueError(f"setting {setting!r} has {len(maps)} maps for {n} examples")
        for i, entry in enumerate(maps):
            q = len(tokens[i])
            for key in MAP_KEYS:
                if key not in entry:
                    continue
                value = entry[key].detach().float().cpu()
                if value.shape[-1] != q:
                    raise ValueError(f"{setting}/{i}/{key} has {value.shape[-1]} positions, tokens have {q}")
                tensors[f"{setting}/{i}/{key}"] = value.clamp(-_FLOAT16_MAX, _FLOAT16_MAX).half().contiguous()
    index = {
        "settings": settings,
        "examples": [
            {
                **{k: v for k, v in ex.items() if k not in ("row_index", "label", "tokens")},
                "row_index": int(ex["row_index"]),
                "label": int(ex["label"]),
                "tokens": [str(t) for t in toks],
            }
            for ex, toks in zip(examples, tokens)
        ],
    }
    path = cell_dir / MAPS_FILE
    atomic_write_bytes(path, save_safetensors(tensors, metadata={"format": "icl_lens.attention_maps/1"}))
    atomic_write_bytes(cell_dir / TOKENS_FILE, (json.dumps(index, ensure_ascii=False, indent=1) + "\n").encode())
    logger.info("wrote attention maps of %d examples × %d settings to %s", n, len(settings), path)
    return path


def has_attention_maps(cell_dir: str | Path) -> bool:
    cell_dir = Path(cell_dir)
    return (cell_dir / MAPS_FILE).exists() and (cell_dir / TOKENS_FILE).exists()


def load_attention_maps(cell_dir: str | Path) -> SavedAttentionMaps:
    """Inverse of :func:`save_attention_maps` (tensors come back as float32).

    Raises :class:`~icl_lens.errors.ResultsError` when a file is missing, damaged or the two
    files disagree.
    """
    from safetensors.torch import load as load_safetensors

    cell_dir = Path(cell_dir)
    try:
        index = json.loads((cell_dir / TOKENS_FILE).read_text(encoding="utf-8"))
        tensors = load_safetensors((cell_dir / MAPS_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"cannot read attention maps in {cell_dir}: {exc}") from None
    except Exception as exc:  # safetensors raises its own error type on damaged files
        raise ResultsError(f"attention maps in {cell_dir} are damaged: {exc}") from None
    examples = index.get("examples", [])
    tokens = [list(ex["tokens"]) for ex in examples]
    maps_by_setting: dict[str, list[AttentionMap]] = {}
    for setting in index.get("settings", []):
        maps = []
        for i in range(len(examples)):
            entry = {
                key: tensors[f"{setting}/{i}/{key}"].float() for key in MAP_KEYS if f"{setting}/{i}/{key}" in tensors
            }
            if "pattern" not in entry:
                raise ResultsError(f"attention maps in {cell_dir} lack {setting}/{i}/pattern")
            maps.append(entry)
        maps_by_setting[setting] = maps
    meta = [{k: v for k, v in ex.items() if k != "tokens"} for ex in examples]
    return SavedAttentionMaps(maps_by_setting, tokens, meta)


def record_experiment_maps(
    output: ExperimentOutput,
    model: Model,
    n_examples: int = 4,
    indices: Sequence[int] | None = None,
) -> SavedAttentionMaps:
    """Record the maps of a few of an experiment's queries in every setting it ran.

    Args:
        output: :func:`~icl_lens.cell.experiment.run_experiment`'s output; FT/LCGD maps need it to have
            been run with ``keep_models=True`` (settings whose model is missing are skipped, with a
            warning).
        model: the base model (ZSL and ICL).
        n_examples: how many queries (the first ones) when ``indices`` is not given.
        indices: positions of the queries in ``output.prompts.queries``.
    """
    prompts = output.prompts
    if indices is None:
        indices = list(range(min(n_examples, len(prompts.queries))))
    queries = [prompts.queries[i] for i in indices]
    answer = prompts.labels[0]
    setups: dict[str, tuple[Model, list[int]]] = {}
    for setting in _ordered_settings(output.runs):
        if setting == "zsl":
            setups[setting] = (model, prompts.zsl_prefix)
        elif setting == "icl":
            setups[setting] = (model, prompts.icl_prefix)
        elif setting in output.models:
            setups[setting] = (output.models[setting], prompts.zsl_prefix)
        else:
            logger.warning(
                "no %s model kept (run_experiment(keep_models=True)); its attention maps are skipped", setting
            )
    maps_by_setting = {
        setting: record_attention_maps(m, prefix, queries, answer, n_start=prompts.n_start)
        for setting, (m, prefix) in setups.items()
    }
    if model.tokenizer is None:
        raise ResultsError("the model has no tokenizer: the attention maps' tokens cannot be shown")
    tokens = [token_strings(model.tokenizer, list(q) + list(answer)) for q in queries]
    rows = output.results.get("examples", [])
    examples = []
    for i, query in zip(indices, queries):
        row = rows[i] if i < len(rows) else {"row_index": i, "label": -1}
        text = model.tokenizer.decode(list(query) + list(answer))
        examples.append({"row_index": row["row_index"], "label": row["label"], "text": text})
    return SavedAttentionMaps(maps_by_setting, tokens, examples)


def save_experiment_attention_maps(
    cell_dir: str | Path,
    output: ExperimentOutput,
    model: Model,
    n_examples: int = 4,
    indices: Sequence[int] | None = None,
) -> Path:
    """:func:`record_experiment_maps` then :func:`save_attention_maps` into ``cell_dir``."""
    saved = record_experiment_maps(output, model, n_examples=n_examples, indices=indices)
    return save_attention_maps(cell_dir, saved.maps_by_setting, saved.tokens, saved.examples)


def difference(a: AttentionMap, b: AttentionMap, key: str = "pattern") -> Float[torch.Tensor, "..."]:
    """``a[key] - b[key]`` after checking the two maps align."""
    if a[key].shape != b[key].shape:
        raise ValueError(f"maps do not align: {tuple(a[key].shape)} vs {tuple(b[key].shape)}")
    return a[key].float() - b[key].float()
