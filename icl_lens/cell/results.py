"""Results files: JSON written atomically, with a checksum, so a damaged or partial file is detected.

Each finished cell is one ``results.json``: the payload plus ``"checksum"`` (sha256 of the payload's
canonical JSON). It is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the target — a reader sees the old file or the whole new one, never half of one. On
load, a file that does not parse, lacks the checksum or fails it raises :class:`ResultsError`;
sweeps treat that as "not done" and recompute the cell.

Timestamps live under ``"meta"``, which the checksum and determinism checks leave out.

The layout of a results dict is defined once, by :data:`LAYOUT`, checked by :func:`validate_results`
and read through the accessors at the end of this module (:func:`metric_value`, :func:`metric_summary`,
:func:`per_layer`, :func:`metric_interval`, :func:`null_summary`, :func:`accuracy`, …). The table below
is :func:`layout_markdown` (a test keeps the two equal). ``<setting>`` is one of the settings that
ran; a *per-layer summary* is ``{"per_layer": [mean per layer], "mean": mean over layers, "ci": [low,
high], "per_layer_ci": [[low, high] per layer]}``; a number may be null where it is undefined (NaN).

| key | type | meaning |
|---|---|---|
| `icl_lens_version` | string | version that wrote the cell |
| `config` | record (open) | the filled-in ExperimentConfig (its to_dict) |
| `config.task` | string | task name |
| `config.model` | string | model name |
| `config.k` | integer | demonstrations asked for |
| `config.seed` | integer | demonstration seed |
| `config.settings` | list | settings run |
| `config.untrained` | boolean | re-initialised model (the untrained baseline) |
| `task` | record | the task as run |
| `task.name` | string | task name |
| `task.template` | string | prompt template |
| `task.label_words` | list | one word per class |
| `task.eval_split` | string | split the queries come from |
| `task.n_classes` | integer | classes |
| `model` | record (open) | facts of the model |
| `model.name` | string | model name |
| `model.n_layers` | integer | layers |
| `model.d_model` | integer | residual stream width |
| `model.n_heads` | integer | attention heads per layer |
| `model.n_key_value_heads` | integer | key/value heads per layer (grouped-query attention) |
| `model.d_vocab` | integer | vocabulary size |
| `model.n_ctx` | integer | context length |
| `model.dtype` | string | parameter dtype |
| `model.device` | string | device |
| `model.untrained_init` | string | init of the untrained baseline |
| `model.backend` | string, optional | TransformerLens model class: hooked or bridge |
| `prompts` | record | prompt facts |
| `prompts.k_requested` | integer | demonstrations asked for |
| `prompts.k_used` | integer | demonstrations that fit the context |
| `prompts.icl_prefix_tokens` | integer | tokens of the ICL prefix |
| `prompts.query_tokens_max` | integer | longest query |
| `prompts.query_tokens_mean` | number | mean query length |
| `prompts.label_tokens` | numbers | tokens per label word |
| `prompts.n_ctx` | integer | context length |
| `demonstrations` | list | the demonstrations |
| `demonstrations[i].row_index` | integer | row in its split |
| `demonstrations[i].label` | integer | class |
| `n_examples` | integer | queries |
| `query_ids` | record, optional | the rows behind the numbers, as row indices in their split (format 4) |
| `query_ids.eval_split` | string | split of the evaluation queries |
| `query_ids.eval` | numbers | the evaluation queries, in the order of every per-query value |
| `query_ids.dev_split` | string | split of the dev slice (the train split) |
| `query_ids.dev` | numbers | the dev slice: disjoint from the demonstrations and the evaluation queries |
| `query_ids.dev_used_for` | list | what the cell chose on the dev slice (lr, lcgd_lr) |
| `accuracy` | map of zsl/icl/ft/lcgd | accuracy per setting |
| `accuracy.<setting>` | number | accuracy |
| `accuracy_ci` | map of zsl/icl/ft/lcgd | its interval per setting |
| `accuracy_ci.<setting>` | interval | interval |
| `uncertainty` | record | how every interval of the cell was made |
| `uncertainty.method` | string | bootstrap method |
| `uncertainty.n_resamples` | integer | resamples |
| `uncertainty.confidence` | number | coverage |
| `uncertainty.seed` | integer | resampling seed |
| `lr` | record (open) | the learning rate chosen (lr, mode, sweep details); empty without finetuning |
| `lcgd_lr` | record (open), optional | LCGD's own learning rate when chosen apart |
| `calibration` | record | contextual calibration |
| `calibration.method` | string | calibration method |
| `calibration.content_free_scores` | map | the content-free query's class scores per run |
| `calibration.content_free_scores.<run>` | numbers | class scores |
| `metrics` | record | the cell's metrics |
| `metrics.alpha` | per-layer summary, optional | α: ICL's attention mass on the demonstrations |
| `metrics.simam_zsl` | per-layer summary, optional | SimAM of ZSL with ICL (baseline of SimAM) |
| `metrics.simaou_random` | per-layer summary, optional | SimAOU of a uniform-random update (Dai et al. 2023) |
| `metrics.{ft,lcgd}` | record, optional | ICL against this finetuned setting |
| `metrics.{ft,lcgd}.rec2ftp` | number | Rec2FTP %: share of the tuned fixes ICL also fixes (Dai et al. 2023) |
| `metrics.{ft,lcgd}.rec2ftp_ci` | interval | its interval |
| `metrics.{ft,lcgd}.prediction_changes` | record | which predictions ICL and FT change from ZSL (Deutch et al. 2024) |
| `metrics.{ft,lcgd}.prediction_changes.jaccard` | number | Jaccard index of the two sets of changes |
| `metrics.{ft,lcgd}.prediction_changes.jaccard_correct` | number | the same over changes to the right class |
| `metrics.{ft,lcgd}.prediction_changes.jaccard_incorrect` | number | the same over changes to a wrong class |
| `metrics.{ft,lcgd}.prediction_changes.icl_only_correct` | integer | queries: icl only correct |
| `metrics.{ft,lcgd}.prediction_changes.icl_only_incorrect` | integer | queries: icl only incorrect |
| `metrics.{ft,lcgd}.prediction_changes.ft_only_correct` | integer | queries: ft only correct |
| `metrics.{ft,lcgd}.prediction_changes.ft_only_incorrect` | integer | queries: ft only incorrect |
| `metrics.{ft,lcgd}.prediction_changes.both_same_correct` | integer | queries: both same correct |
| `metrics.{ft,lcgd}.prediction_changes.both_same_incorrect` | integer | queries: both same incorrect |
| `metrics.{ft,lcgd}.prediction_changes.both_different` | integer | queries: both different |
| `metrics.{ft,lcgd}.prediction_changes.n_icl_changed` | integer | queries: icl changed |
| `metrics.{ft,lcgd}.prediction_changes.n_ft_changed` | integer | queries: ft changed |
| `metrics.{ft,lcgd}.prediction_changes.n_examples` | integer | queries: examples |
| `metrics.{ft,lcgd}.prediction_changes.jaccard_ci` | interval | interval of the Jaccard index |
| `metrics.{ft,lcgd}.simaou` | per-layer summary | SimAOU: cosine of the attention-output updates |
| `metrics.{ft,lcgd}.simam` | per-layer summary | SimAM: similarity of the attention maps |
| `metrics.{ft,lcgd}.simam_delta` | per-layer summary | SimAM_Δ: SimAM relative to ZSL's |
| `metrics.{ft,lcgd}.token_overlap` | record | agreement of next-token distributions (Shen et al. 2023) |
| `metrics.{ft,lcgd}.token_overlap.token_overlap` | number | top-10 token overlap |
| `metrics.{ft,lcgd}.token_overlap.token_overlap_ci` | interval | its interval |
| `metrics.{ft,lcgd}.token_overlap.overlap_cosine` | number | cosine over the overlapping tokens |
| `metrics.{ft,lcgd}.token_overlap.overlap_cosine_ci` | interval | its interval |
| `tests` | map | paired tests on the same queries |
| `tests.<test>` | record | <a>_vs_<b>: accuracy, exact McNemar; lcgd_vs_ft_<metric>: paired bootstrap |
| `tests.<test>.test` | string | mcnemar_exact or paired_bootstrap |
| `tests.<test>.b` | integer, optional | queries a gets right and b wrong |
| `tests.<test>.c` | integer, optional | queries b gets right and a wrong |
| `tests.<test>.p_value` | number | p-value |
| `tests.<test>.difference` | number | a − b |
| `tests.<test>.ci` | interval | interval of the difference |
| `nulls` | map of ft/lcgd | the nulls per finetuned setting |
| `nulls.<setting>` | record | the nulls of one finetuned setting |
| `nulls.<setting>.shuffled_pair` | record, optional | ICL's update of one query against FT's of another |
| `nulls.<setting>.shuffled_pair.simaou` | per-layer summary | SimAOU under the null |
| `nulls.<setting>.shuffled_pair.simam_delta` | per-layer summary | SimAM_Δ under the null |
| `nulls.<setting>.random_direction` | record, optional | a random-direction update of the tuned one's size |
| `nulls.<setting>.random_direction.simaou` | per-layer summary | SimAOU under the null |
| `nulls.<setting>.random_direction.simam_delta` | per-layer summary | SimAM_Δ under the null |
| `nulls.<setting>.wrong_label` | record, optional | finetuning on the demonstrations with wrong labels, FT's own loss |
| `nulls.<setting>.wrong_label.accuracy` | number | accuracy after it |
| `nulls.<setting>.wrong_label.accuracy_ci` | interval | its interval |
| `nulls.<setting>.wrong_label.simaou` | per-layer summary | SimAOU under the null |
| `nulls.<setting>.wrong_label.simam_delta` | per-layer summary | SimAM_Δ under the null |
| `nulls.<setting>.wrong_label.labels` | numbers | the wrong labels trained on |
| `nulls.<setting>.wrong_label.n_relabelled` | integer | demonstrations whose label changed |
| `nulls.<setting>.wrong_label.loss_on` | string, optional | tokens the loss covered: all or answer |
| `nulls.<setting>.wrong_label_answer_loss` | record, optional | wrong labels, loss on the answer tokens only (FT) |
| `nulls.<setting>.wrong_label_answer_loss.accuracy` | number | accuracy after it |
| `nulls.<setting>.wrong_label_answer_loss.accuracy_ci` | interval | its interval |
| `nulls.<setting>.wrong_label_answer_loss.simaou` | per-layer summary | SimAOU under the null |
| `nulls.<setting>.wrong_label_answer_loss.simam_delta` | per-layer summary | SimAM_Δ under the null |
| `nulls.<setting>.wrong_label_answer_loss.labels` | numbers | the wrong labels trained on |
| `nulls.<setting>.wrong_label_answer_loss.n_relabelled` | integer | demonstrations whose label changed |
| `nulls.<setting>.wrong_label_answer_loss.loss_on` | string, optional | tokens the loss covered: all or answer |
| `nulls.<setting>.gradient_span` | record, optional | random update in the demos' gradient span, GD's norm per layer |
| `nulls.<setting>.gradient_span.simaou` | per-layer summary | SimAOU under the null |
| `nulls.<setting>.gradient_span.simam_delta` | per-layer summary | SimAM_Δ under the null |
| `nulls.<setting>.jaccard_independence` | record | the Jaccard index beside its value under independence |
| `nulls.<setting>.jaccard_independence.expected` | number | expected Jaccard index |
| `nulls.<setting>.jaccard_independence.observed` | number | observed Jaccard index |
| `nulls.<setting>.jaccard_independence.observed_ci` | interval | its interval |
| `null_seeds` | map of 5 nulls, optional | each null's seed, derived from config.random_seed and config.seed |
| `null_seeds.<null>` | integer | seed |
| `per_example` | record | per-query values every mean and interval is computed from |
| `per_example.correct` | map of zsl/icl/ft/lcgd | 0/1 per query |
| `per_example.correct.<setting>` | numbers | 0/1 per query |
| `per_example.alpha` | matrix, optional | [query][layer] alpha |
| `per_example.simam_zsl` | matrix, optional | [query][layer] simam_zsl |
| `per_example.simaou_random` | matrix, optional | [query][layer] simaou_random |
| `per_example.{ft,lcgd}` | record, optional | per-query comparison terms of a finetuned setting |
| `per_example.{ft,lcgd}.simaou` | matrix | [query][layer] simaou |
| `per_example.{ft,lcgd}.simam` | matrix | [query][layer] simam |
| `per_example.{ft,lcgd}.simam_delta` | matrix | [query][layer] simam_delta |
| `per_example.{ft,lcgd}.token_overlap` | numbers | per query |
| `per_example.{ft,lcgd}.overlap_cosine` | numbers | per query |
| `per_example.nulls` | map of ft/lcgd | per-query terms of the nulls |
| `per_example.nulls.<setting>` | map of 5 nulls | per null (results.ALL_NULL_KINDS) |
| `per_example.nulls.<setting>.<null>` | record, optional | per-query terms of one null |
| `per_example.nulls.<setting>.<null>.simaou` | matrix | [query][layer] SimAOU |
| `per_example.nulls.<setting>.<null>.simam_delta` | matrix | [query][layer] SimAM_Δ |
| `per_example.nulls.<setting>.<null>.correct` | numbers, optional | 0/1 per query |
| `training` | map of ft/lcgd | the finetuning traces |
| `training.<setting>` | record (open) | one trace |
| `training.<setting>.losses` | numbers | loss per step |
| `training.<setting>.grad_norms` | matrix | [step][layer] gradient ℓ2 norm |
| `training.<setting>.layer_losses` | matrix | [step][layer] LCGD's per-layer losses |
| `examples` | list | one entry per query |
| `examples[i].row_index` | integer | row in its split |
| `examples[i].label` | integer | class |
| `examples[i].prediction` | map of zsl/icl/ft/lcgd | predicted class per setting |
| `examples[i].prediction.<setting>` | integer | class |
| `examples[i].class_scores` | map of zsl/icl/ft/lcgd | class scores per setting |
| `examples[i].class_scores.<setting>` | numbers | scores |
| `timing_seconds` | map, optional | seconds per stage |
| `timing_seconds.<stage>` | number | seconds |
| `identity` | record (open), optional | what makes the cell this cell (written by sweeps) |
| `meta` | record (open), optional | when and where it ran (written by sweeps) |
| `checksum` | string, optional | sha256 of the payload (results files) |
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers as numbers_module
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_lens.errors import ResultsError

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
VOLATILE_KEYS = ("meta", "timing_seconds", "checksum")

RESULTS_FORMAT_VERSION = 4
"""Version of what a cell's results file holds; part of every cell's identity (``"identity"``).

Bump it whenever a file written before the change would be wrong to reuse: a metric added, removed
or computed differently, a change in what runs (prompts, sampling, training, scoring), in the
payload's layout, or in the identity's own fields. A sweep recomputes every cell whose file carries
another version. History: 1 = files without an identity; 2 = identity recorded (task, data hashes,
dtype, device kind); 3 = finetuning on a HookedTransformer trains only the biases the architecture has
(no longer the zero b_K / b_V TransformerLens adds to Llama, Gemma, SmolLM2), bridge backend; 4 = each
demonstration seed draws its own null randomness (``null_seeds``), the wrong-label null also with the
loss on the answer tokens only, the gradient-span null, the rows behind the numbers (``query_ids``)."""

TEMP_SUFFIX = ".tmp"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def stable_payload(results: dict[str, Any]) -> dict[str, Any]:
    """The results without volatile keys (timestamps, timings, checksum)."""
    return {k: v for k, v in results.items() if k not in VOLATILE_KEYS}


def checksum(results: dict[str, Any]) -> str:
    canonical = json.dumps(_clean(stable_payload(results)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that readers never see a partial file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stray_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_write_bytes` leaves when a process is killed between
    creating and renaming one (``.<name>.<random>.tmp``); returns what was removed.

    Only for a folder no other process is writing into (one sweep per output folder at a time).
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for stray in folder.glob(f".*{TEMP_SUFFIX}"):
        if stray.is_file():
            stray.unlink(missing_ok=True)
            removed.append(stray)
            logger.info("removed %s, left by an interrupted write", stray)
    return removed


def write_results(path: str | Path, results: dict[str, Any]) -> Path:
    """Write a results dict (adds its checksum) atomically; returns the path."""
    payload = _clean(dict(results))
    payload["checksum"] = checksum(payload)
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return Path(path)


def read_results(path: str | Path) -> dict[str, Any]:
    """Load and verify a results file; any damage is a :class:`ResultsError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultsError(f"cannot read results file {path}: {exc}") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"results file {path} is damaged or partial (invalid JSON at line {exc.lineno})") from None
    if not isinstance(results, dict) or "checksum" not in results:
        raise ResultsError(f"results file {path} has no checksum: partial or not written by icl_lens")
    if results["checksum"] != checksum(results):
        raise ResultsError(f"results file {path} fails its checksum: it was modified or damaged")
    return results


def is_complete(path: str | Path) -> bool:
    """True when ``path`` holds a verified results file; a damaged one is logged and reported False."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        read_results(path)
    except ResultsError as exc:
        logger.warning("%s; it will be recomputed", exc)
        return False
    return True


def dig(mapping: Any, *path: str) -> Any:
    """``mapping[path[0]][path[1]]...`` of a results dict, or None where a key is missing."""
    for key in path:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def precision_of(results: dict[str, Any]) -> str:
    """``dtype/device kind`` a cell ran in (its identity, else its metadata; float32/cpu when neither)."""
    where = results.get("identity") or results.get("meta") or {}
    return f"{where.get('dtype', 'float32')}/{str(where.get('device', 'cpu')).split(':')[0]}"


# ---------------------------------------------------------------------------------------------
# The layout of a results dict: defined once, read through the accessors below


@dataclass(frozen=True)
class Spec:
    """One key of the results layout: what it holds (``kind``), what it means, and its parts.

    Kinds: ``number`` (int or float; None where the value is undefined, e.g. NaN written as JSON
    null), ``integer``, ``string``, ``boolean``, ``interval`` ([low, high]), ``numbers`` (a list of
    numbers), ``matrix`` (a list of lists of numbers), ``record`` (a dict with the keys in ``fields``;
    ``open`` ones may hold others), ``map`` (a dict whose keys are ``keys``, any of them — e.g. the
    settings that ran — each value a ``values``) and ``list`` (each item a ``values``).
    """

    kind: str
    meaning: str
    fields: Mapping[str, Spec] = field(default_factory=dict)
    values: Spec | None = None
    keys: tuple[str, ...] | None = None
    key_name: str = "key"
    optional: bool = False
    nullable: bool = False
    open: bool = False


def _leaf(kind: str) -> Callable[..., Spec]:
    return lambda meaning, **kw: Spec(kind, meaning, **kw)


number, integer, string, boolean, interval = map(_leaf, ("number", "integer", "string", "boolean", "interval"))
numbers, matrix = _leaf("numbers"), _leaf("matrix")


def record(meaning: str, fields: Mapping[str, Spec], **kw: Any) -> Spec:
    return Spec("record", meaning, fields=fields, **kw)


def mapping(meaning: str, keys: tuple[str, ...] | None, key_name: str, values: Spec, **kw: Any) -> Spec:
    return Spec("map", meaning, values=values, keys=keys, key_name=key_name, **kw)


def listing(meaning: str, values: Spec, **kw: Any) -> Spec:
    return Spec("list", meaning, values=values, **kw)


SETTINGS = ("zsl", "icl", "ft", "lcgd")
"""The settings of a cell: zero-shot, in context, finetuned (GD) and layer-causal GD."""
FINETUNED = ("ft", "lcgd")
LAYER_METRICS = ("simaou", "simam", "simam_delta")
"""Per-layer metrics of a finetuned setting against ICL (Dai et al. 2023; Deutch et al. 2024)."""
CELL_LAYER_METRICS = ("alpha", "simam_zsl", "simaou_random")
"""Per-layer metrics of the cell itself: α, ZSL's SimAM with ICL, and SimAOU of a random update."""
NULL_KINDS = ("shuffled_pair", "wrong_label", "random_direction")
"""The nulls every results format records (tables and findings have a column or claim for each)."""
ALL_NULL_KINDS = (*NULL_KINDS, "wrong_label_answer_loss", "gradient_span")
"""Every null a cell may record: format 4 added wrong-label finetuning with the loss on the answer
tokens only and the random update in the span of the demonstrations' gradients (FT only)."""
NULL_SEED_NAMES = ("simaou_random", "shuffled_pair", "wrong_label", "random_direction", "gradient_span")
"""Names of a cell's ``null_seeds`` (:data:`icl_lens.cell.nulls.SEEDED`)."""
SCALAR_METRICS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "rec2ftp": (("rec2ftp",), ("rec2ftp_ci",)),
    "jaccard": (("prediction_changes", "jaccard"), ("prediction_changes", "jaccard_ci")),
    "jaccard_correct": (("prediction_changes", "jaccard_correct"), None),
    "jaccard_incorrect": (("prediction_changes", "jaccard_incorrect"), None),
    "token_overlap": (("token_overlap", "token_overlap"), ("token_overlap", "token_overlap_ci")),
    "overlap_cosine": (("token_overlap", "overlap_cosine"), ("token_overlap", "overlap_cosine_ci")),
}
"""Where a finetuned setting's one-number metrics live under ``metrics.<setting>``: (value, interval)."""

_SUMMARY_FIELDS = {
    "per_layer": numbers("each layer's mean over queries"),
    "mean": number("mean over layers (and queries)"),
    "ci": interval("bootstrap interval of the mean"),
    "per_layer_ci": matrix("each layer's interval"),
}


def _layer_summary(meaning: str, **kw: Any) -> Spec:
    """A per-layer metric's summary: ``per_layer``, ``mean``, ``ci``, ``per_layer_ci``."""
    return record(meaning, _SUMMARY_FIELDS, **kw)


_PARTITION = (
    "icl_only_correct",
    "icl_only_incorrect",
    "ft_only_correct",
    "ft_only_incorrect",
    "both_same_correct",
    "both_same_incorrect",
    "both_different",
    "n_icl_changed",
    "n_ft_changed",
    "n_examples",
)

_COMPARISON = record(
    "ICL against this finetuned setting",
    {
        "rec2ftp": number("Rec2FTP %: share of the tuned fixes ICL also fixes (Dai et al. 2023)"),
        "rec2ftp_ci": interval("its interval"),
        "prediction_changes": record(
            "which predictions ICL and FT change from ZSL (Deutch et al. 2024)",
            {
                "jaccard": number("Jaccard index of the two sets of changes"),
                "jaccard_correct": number("the same over changes to the right class"),
                "jaccard_incorrect": number("the same over changes to a wrong class"),
                **{key: integer("queries: " + key.removeprefix("n_").replace("_", " ")) for key in _PARTITION},
                "jaccard_ci": interval("interval of the Jaccard index"),
            },
        ),
        **{
            name: _layer_summary(meaning)
            for name, meaning in (
                ("simaou", "SimAOU: cosine of the attention-output updates"),
                ("simam", "SimAM: similarity of the attention maps"),
                ("simam_delta", "SimAM_Δ: SimAM relative to ZSL's"),
            )
        },
        "token_overlap": record(
            "agreement of next-token distributions (Shen et al. 2023)",
            {
                "token_overlap": number("top-10 token overlap"),
                "token_overlap_ci": interval("its interval"),
                "overlap_cosine": number("cosine over the overlapping tokens"),
                "overlap_cosine_ci": interval("its interval"),
            },
        ),
    },
    optional=True,
)

_NULL_METRICS = {
    "simaou": _layer_summary("SimAOU under the null"),
    "simam_delta": _layer_summary("SimAM_Δ under the null"),
}


def _wrong_label_null(meaning: str) -> Spec:
    return record(
        meaning,
        {
            "accuracy": number("accuracy after it"),
            "accuracy_ci": interval("its interval"),
            **_NULL_METRICS,
            "labels": numbers("the wrong labels trained on"),
            "n_relabelled": integer("demonstrations whose label changed"),
            "loss_on": string("tokens the loss covered: all or answer", optional=True),
        },
        optional=True,
    )


_NULLS_OF_SETTING = record(
    "the nulls of one finetuned setting",
    {
        "shuffled_pair": record("ICL's update of one query against FT's of another", _NULL_METRICS, optional=True),
        "random_direction": record("a random-direction update of the tuned one's size", _NULL_METRICS, optional=True),
        "wrong_label": _wrong_label_null("finetuning on the demonstrations with wrong labels, FT's own loss"),
        "wrong_label_answer_loss": _wrong_label_null("wrong labels, loss on the answer tokens only (FT)"),
        "gradient_span": record(
            "random update in the demos' gradient span, GD's norm per layer",
            _NULL_METRICS,
            optional=True,
        ),
        "jaccard_independence": record(
            "the Jaccard index beside its value under independence",
            {
                "expected": number("expected Jaccard index"),
                "observed": number("observed Jaccard index"),
                "observed_ci": interval("its interval"),
            },
        ),
    },
)

_PER_EXAMPLE_NULL = record(
    "per-query terms of one null",
    {
        "simaou": matrix("[query][layer] SimAOU"),
        "simam_delta": matrix("[query][layer] SimAM_Δ"),
        "correct": numbers("0/1 per query", optional=True),
    },
    optional=True,
)

_PER_EXAMPLE_COMPARISON = record(
    "per-query comparison terms of a finetuned setting",
    {
        **{name: matrix(f"[query][layer] {name}") for name in LAYER_METRICS},
        "token_overlap": numbers("per query"),
        "overlap_cosine": numbers("per query"),
    },
    optional=True,
)

LAYOUT = record(
    "one cell's results",
    {
        "icl_lens_version": string("version that wrote the cell"),
        "config": record(
            "the filled-in ExperimentConfig (its to_dict)",
            {
                "task": string("task name"),
                "model": string("model name"),
                "k": integer("demonstrations asked for"),
                "seed": integer("demonstration seed"),
                "settings": listing("settings run", string("setting")),
                "untrained": boolean("re-initialised model (the untrained baseline)"),
            },
            open=True,
        ),
        "task": record(
            "the task as run",
            {
                "name": string("task name"),
                "template": string("prompt template"),
                "label_words": listing("one word per class", string("label word")),
                "eval_split": string("split the queries come from"),
                "n_classes": integer("classes"),
            },
        ),
        "model": record(
            "facts of the model",
            {
                "name": string("model name"),
                "n_layers": integer("layers"),
                "d_model": integer("residual stream width"),
                "n_heads": integer("attention heads per layer"),
                "n_key_value_heads": integer("key/value heads per layer (grouped-query attention)", nullable=True),
                "d_vocab": integer("vocabulary size"),
                "n_ctx": integer("context length"),
                "dtype": string("parameter dtype"),
                "device": string("device"),
                "untrained_init": string("init of the untrained baseline", nullable=True),
                "backend": string("TransformerLens model class: hooked or bridge", optional=True),
            },
            open=True,
        ),
        "prompts": record(
            "prompt facts",
            {
                "k_requested": integer("demonstrations asked for"),
                "k_used": integer("demonstrations that fit the context"),
                "icl_prefix_tokens": integer("tokens of the ICL prefix"),
                "query_tokens_max": integer("longest query"),
                "query_tokens_mean": number("mean query length"),
                "label_tokens": numbers("tokens per label word"),
                "n_ctx": integer("context length"),
            },
        ),
        "demonstrations": listing(
            "the demonstrations",
            record("one demonstration", {"row_index": integer("row in its split"), "label": integer("class")}),
        ),
        "n_examples": integer("queries"),
        "query_ids": record(
            "the rows behind the numbers, as row indices in their split (format 4)",
            {
                "eval_split": string("split of the evaluation queries"),
                "eval": numbers("the evaluation queries, in the order of every per-query value"),
                "dev_split": string("split of the dev slice (the train split)"),
                "dev": numbers("the dev slice: disjoint from the demonstrations and the evaluation queries"),
                "dev_used_for": listing("what the cell chose on the dev slice (lr, lcgd_lr)", string("choice")),
            },
            optional=True,
        ),
        "accuracy": mapping("accuracy per setting", SETTINGS, "setting", number("accuracy")),
        "accuracy_ci": mapping("its interval per setting", SETTINGS, "setting", interval("interval")),
        "uncertainty": record(
            "how every interval of the cell was made",
            {
                "method": string("bootstrap method"),
                "n_resamples": integer("resamples"),
                "confidence": number("coverage"),
                "seed": integer("resampling seed"),
            },
        ),
        "lr": record("the learning rate chosen (lr, mode, sweep details); empty without finetuning", {}, open=True),
        "lcgd_lr": record("LCGD's own learning rate when chosen apart", {}, open=True, optional=True),
        "calibration": record(
            "contextual calibration",
            {
                "method": string("calibration method"),
                "content_free_scores": mapping(
                    "the content-free query's class scores per run", None, "run", numbers("class scores")
                ),
            },
        ),
        "metrics": record(
            "the cell's metrics",
            {
                "alpha": _layer_summary("α: ICL's attention mass on the demonstrations", optional=True),
                "simam_zsl": _layer_summary("SimAM of ZSL with ICL (baseline of SimAM)", optional=True),
                "simaou_random": _layer_summary("SimAOU of a uniform-random update (Dai et al. 2023)", optional=True),
                "ft": _COMPARISON,
                "lcgd": _COMPARISON,
            },
        ),
        "tests": mapping(
            "paired tests on the same queries",
            None,
            "test",
            record(
                "<a>_vs_<b>: accuracy, exact McNemar; lcgd_vs_ft_<metric>: paired bootstrap",
                {
                    "test": string("mcnemar_exact or paired_bootstrap"),
                    "b": integer("queries a gets right and b wrong", optional=True),
                    "c": integer("queries b gets right and a wrong", optional=True),
                    "p_value": number("p-value"),
                    "difference": number("a − b"),
                    "ci": interval("interval of the difference"),
                },
            ),
        ),
        "nulls": mapping("the nulls per finetuned setting", FINETUNED, "setting", _NULLS_OF_SETTING),
        "null_seeds": mapping(
            "each null's seed, derived from config.random_seed and config.seed",
            NULL_SEED_NAMES,
            "null",
            integer("seed"),
            optional=True,
        ),
        "per_example": record(
            "per-query values every mean and interval is computed from",
            {
                "correct": mapping("0/1 per query", SETTINGS, "setting", numbers("0/1 per query")),
                **{name: matrix(f"[query][layer] {name}", optional=True) for name in CELL_LAYER_METRICS},
                **{setting: _PER_EXAMPLE_COMPARISON for setting in FINETUNED},
                "nulls": mapping(
                    "per-query terms of the nulls",
                    FINETUNED,
                    "setting",
                    mapping("per null (results.ALL_NULL_KINDS)", ALL_NULL_KINDS, "null", _PER_EXAMPLE_NULL),
                ),
            },
        ),
        "training": mapping(
            "the finetuning traces",
            FINETUNED,
            "setting",
            record(
                "one trace",
                {
                    "losses": numbers("loss per step"),
                    "grad_norms": matrix("[step][layer] gradient ℓ2 norm"),
                    "layer_losses": matrix("[step][layer] LCGD's per-layer losses"),
                },
                open=True,
            ),
        ),
        "examples": listing(
            "one entry per query",
            record(
                "a query",
                {
                    "row_index": integer("row in its split"),
                    "label": integer("class"),
                    "prediction": mapping("predicted class per setting", SETTINGS, "setting", integer("class")),
                    "class_scores": mapping("class scores per setting", SETTINGS, "setting", numbers("scores")),
                },
            ),
        ),
        "timing_seconds": mapping("seconds per stage", None, "stage", number("seconds"), optional=True),
        "identity": record("what makes the cell this cell (written by sweeps)", {}, open=True, optional=True),
        "meta": record("when and where it ran (written by sweeps)", {}, open=True, optional=True),
        "checksum": string("sha256 of the payload (results files)", optional=True),
    },
)
"""The layout of a results dict, as :func:`icl_lens.cell.experiment.run_experiment` writes it."""


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers_module.Real) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers_module.Integral) and not isinstance(value, bool)


def _number_or_none(value: Any) -> bool:
    return value is None or _is_number(value)


_LEAF_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "number": (_is_number, "a number"),
    "integer": (_is_integer, "an integer"),
    "string": (lambda v: isinstance(v, str), "a string"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "interval": (
        lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_number_or_none, v)),
        "an interval [low, high]",
    ),
    "numbers": (lambda v: isinstance(v, (list, tuple)) and all(map(_number_or_none, v)), "a list of numbers"),
    "matrix": (
        lambda v: (
            isinstance(v, (list, tuple))
            and all(isinstance(row, (list, tuple)) and all(map(_number_or_none, row)) for row in v)
        ),
        "a list of lists of numbers",
    ),
}


def _problems(value: Any, spec: Spec, where: str) -> list[str]:
    if value is None and (spec.nullable or spec.kind == "number"):
        return []
    if spec.kind in _LEAF_CHECKS:
        check, expected = _LEAF_CHECKS[spec.kind]
        return [] if check(value) else [f"{where}: expected {expected}, got {type(value).__name__} {value!r:.60}"]
    if spec.kind == "list":
        assert spec.values is not None, "listing() gives every list spec its values"
        if not isinstance(value, (list, tuple)):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in _problems(item, spec.values, f"{where}[{i}]")]
    if not isinstance(value, dict):
        return [f"{where}: expected a dict ({spec.meaning}), got {type(value).__name__} {value!r:.60}"]
    out = []
    if spec.kind == "map":
        assert spec.values is not None, "mapping() gives every map spec its values"
        for key, item in value.items():
            if spec.keys is not None and key not in spec.keys:
                out.append(f"{where}: unknown {spec.key_name} {key!r} (known: {', '.join(spec.keys)})")
            else:
                out += _problems(item, spec.values, f"{where}.{key}")
        return out
    for key, item in value.items():
        if key in spec.fields:
            out += _problems(item, spec.fields[key], f"{where}.{key}")
        elif not spec.open:
            out.append(f"{where}: unknown key {key!r} (not in the results layout, icl_lens.cell.results.LAYOUT)")
    out += [
        f"{where}: missing key {key!r} ({sub.meaning})"
        for key, sub in spec.fields.items()
        if key not in value and not sub.optional
    ]
    return out


def validate_results(results: Any) -> None:
    """Check a results dict against :data:`LAYOUT`: every required key present, every value of its
    documented type, no key the layout does not document. Raises :class:`ResultsError` listing
    every problem (``results.metrics.ft.simaou: missing key 'ci'``)."""
    problems = _problems(results, LAYOUT, "results")
    if problems:
        shown = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ResultsError(f"results dict does not follow the results layout: {shown}")


def _kind_text(spec: Spec) -> str:
    kind = "per-layer summary" if spec.fields is _SUMMARY_FIELDS else spec.kind + (" (open)" if spec.open else "")
    if spec.kind == "map" and spec.keys:
        listed = "/".join(spec.keys)
        kind += f" of {listed}" if len(listed) <= 40 else f" of {len(spec.keys)} {spec.key_name}s"
    return kind + (", optional" if spec.optional else "")


def layout_rows(spec: Spec = LAYOUT, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, type, meaning) of every key of the layout: ``<setting>``-style placeholders for map
    keys, ``{ft,lcgd}`` for keys that hold the same thing, ``[i]`` for list items; a per-layer summary
    is one row (its four keys are the same everywhere)."""
    items: list[tuple[str, Spec]] = []
    if spec.kind == "record" and spec.fields is not _SUMMARY_FIELDS:
        grouped: dict[int, list[str]] = {}
        for key, sub in spec.fields.items():
            grouped.setdefault(id(sub), []).append(key)
        items = [
            (keys[0] if len(keys) == 1 else "{" + ",".join(keys) + "}", spec.fields[keys[0]])
            for keys in grouped.values()
        ]
    elif spec.kind == "map" and spec.values is not None:
        items = [(f"<{spec.key_name}>", spec.values)]
    elif spec.kind == "list" and spec.values is not None and spec.values.kind == "record":
        return layout_rows(spec.values, f"{prefix}[i]")
    rows = []
    for key, sub in items:
        path = f"{prefix}.{key}" if prefix else key
        rows.append((path, _kind_text(sub), sub.meaning))
        rows += layout_rows(sub, path)
    return rows


def layout_markdown() -> str:
    """:func:`layout_rows` as a markdown table (the one in this module's docstring)."""
    lines = ["| key | type | meaning |", "|---|---|---|"]
    return "\n".join(lines + [f"| `{path}` | {kind} | {meaning} |" for path, kind, meaning in layout_rows()])


# ---------------------------------------------------------------------------------------------
# Accessors: the paths readers use, named


def accuracy(results: dict[str, Any], setting: str) -> float | None:
    """Accuracy of ``setting`` (zsl / icl / ft / lcgd); None when it did not run."""
    return dig(results, "accuracy", setting)


def accuracy_interval(results: dict[str, Any], setting: str) -> list[float] | None:
    return dig(results, "accuracy_ci", setting)


def metric_path(setting: str | None, metric: str) -> tuple[str, ...]:
    """Where ``metric`` of ``setting`` lives under ``metrics``: a per-layer summary for
    :data:`LAYER_METRICS` of a finetuned setting and :data:`CELL_LAYER_METRICS` (setting None), a
    number for :data:`SCALAR_METRICS`."""
    if setting is None:
        return ("metrics", metric)
    if metric in SCALAR_METRICS:
        return ("metrics", setting, *SCALAR_METRICS[metric][0])
    return ("metrics", setting, metric)


def metric_summary(results: dict[str, Any], setting: str | None, metric: str) -> dict[str, Any] | None:
    """The per-layer summary (``per_layer``, ``mean``, ``ci``, ``per_layer_ci``) of a per-layer metric."""
    return dig(results, *metric_path(setting, metric))


def metric_value(results: dict[str, Any], setting: str | None, metric: str) -> float | None:
    """One number of a metric: the mean over layers of a per-layer one, the value of a scalar one."""
    if setting is not None and metric in SCALAR_METRICS:
        return dig(results, *metric_path(setting, metric))
    return dig(metric_summary(results, setting, metric), "mean")


def metric_interval(results: dict[str, Any], setting: str | None, metric: str) -> list[float] | None:
    """The interval of :func:`metric_value` (None when the results record none)."""
    if setting is not None and metric in SCALAR_METRICS:
        where = SCALAR_METRICS[metric][1]
        return None if where is None else dig(results, "metrics", setting, *where)
    return dig(metric_summary(results, setting, metric), "ci")


def per_layer(results: dict[str, Any], setting: str | None, metric: str) -> list[float] | None:
    """Each layer's mean of a per-layer metric."""
    return dig(metric_summary(results, setting, metric), "per_layer")


def null_summary(results: dict[str, Any], setting: str, null: str, metric: str) -> dict[str, Any] | None:
    """The per-layer summary of ``metric`` (simaou / simam_delta) under a null of a finetuned setting."""
    return dig(results, "nulls", setting, null, metric)


def per_example(results: dict[str, Any], setting: str | None, metric: str) -> list[Any] | None:
    """Per-query values of a metric (``[query][layer]`` for per-layer ones); ``metric="correct"``
    gives the 0/1 correctness of ``setting``."""
    if metric == "correct":
        return None if setting is None else dig(results, "per_example", "correct", setting)
    return dig(results, "per_example", metric) if setting is None else dig(results, "per_example", setting, metric)


def null_per_example(results: dict[str, Any], setting: str, null: str, metric: str) -> list[Any] | None:
    """Per-query values (``[query][layer]``; ``correct``: 0/1) of ``metric`` under a null of a finetuned setting."""
    return dig(results, "per_example", "nulls", setting, null, metric)


def jaccard_independence(results: dict[str, Any], setting: str) -> dict[str, Any] | None:
    """The Jaccard index of ``setting`` beside its independence expectation (``expected``,
    ``observed``, ``observed_ci``)."""
    return dig(results, "nulls", setting, "jaccard_independence")


def paired_test(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A paired test (``icl_vs_zsl``, ``lcgd_vs_ft_simaou``, …): ``test``, ``difference``, ``ci``, ``p_value``."""
    return dig(results, "tests", name)


def prediction_changes(results: dict[str, Any], setting: str) -> dict[str, Any] | None:
    """Which predictions ICL and ``setting`` changed from ZSL: the Jaccard indices and the partition counts."""
    return dig(results, "metrics", setting, "prediction_changes")
