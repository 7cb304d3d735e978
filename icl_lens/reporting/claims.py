"""The claims of Dai et al. 2023, Deutch et al. 2024 and Shen et al. 2023 that ``icl-lens findings``
tests, each in the paper's own direction, with its source, its null and, for "comparable" claims,
the equivalence margin declared here (before any data).

A claim is a per-seed quantity (:class:`icl_lens.reporting.aggregate.Quantity`: its per-query inputs,
or the cell's value) and a side: ``>`` / ``<`` (above / below ``null``), ``≠`` (differs from
``null``, two-sided) or ``≈`` (within ±``margin`` of ``null``, two one-sided tests). Claims the
cells alone cannot decide (order sensitivity, sparsity, the demonstration-count sweep, clipping)
are listed in :data:`ANALYSIS_CLAIMS` with the run that produces their input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from icl_lens.cell.nulls import seed_name
from icl_lens.cell.results import (
    accuracy,
    dig,
    jaccard_independence,
    metric_path,
    metric_summary,
    null_per_example,
    null_summary,
    paired_test,
    per_example,
    prediction_changes,
)
from icl_lens.reporting.aggregate import (
    Quantity,
    correct_flags,
    jaccard_statistic,
    layer_mean_per_example,
    layer_means,
    prediction_quantity,
    predictions,
    rec2ftp_statistic,
)

REC2FTP_THRESHOLD = 50.0
"""Dai et al. 2023 (Table 1): ICL covers *most* of what finetuning fixes: Rec2FTP above 50 %."""
JACCARD_THRESHOLD = 0.5
"""Deutch et al. 2024 (Table 1): most prediction changes are unique to ICL or to FT: J below 0.5."""
LOW_OVERLAP = 0.5
"""Shen et al. 2023 (output agreement): ICL's and GD's next-token distributions agree little; read
here as the top-10 overlap (and the cosine over the overlap) below 0.5."""
SPARSITY_THRESHOLD = 1e-3
SPARSITY_RMS_THRESHOLD = 0.05
EQUIVALENCE_MARGINS = {"simaou": 0.05, "simam": 0.05, "accuracy": 0.05}
"""Margins of the "comparable" claims (Deutch et al. 2024, untrained model), fixed before the data:
±0.05 on the cosine scale of SimAOU and SimAM (a quarter to a half of the trained model's SimAOU in
Dai et al. 2023's Table 2, and ten times the random baseline's), ±0.05 accuracy for "its ICL does not
beat ZSL"."""
NULLS = ("shuffled_pair", "wrong_label", "wrong_label_answer_loss", "random_direction", "gradient_span")
"""The nulls of :mod:`icl_lens.cell.nulls` SimAOU is held against (results format 4 adds the last ones)."""
NULL_LABELS = {
    "shuffled_pair": "shuffled-pair (query i's ICL update against query π(i)'s FT update)",
    "wrong_label": "wrong-label FT (FT's own loss)",
    "wrong_label_answer_loss": "wrong-label FT with the loss on the label tokens only",
    "random_direction": "isotropic random direction of GD's per-layer norm",
    "gradient_span": "random direction in the span of the demonstrations' gradients, GD's per-layer norm",
}
RERUN = "a run of results format 4 (icl-lens run, experiments/reproduce_tables.py)"


@dataclass(frozen=True)
class Claim:
    """A claim tested on each task's seed cells: ``quantity`` against ``null`` on ``side``.

    Args:
        setting: ``trained``, ``untrained`` or ``untrained-trained`` (the untrained cell minus the
            trained cell of the same seed, paired on the same queries).
        counts: (successes, trials) of a proportion per cell, for the exact interval.
        scale: the proportion's scale (100 for a percentage).
        run: the run that would test the claim when the cells lack its input.
    """

    id: str
    statement: str
    source: str
    quantity: Quantity
    null: float = 0.0
    side: str = ">"
    margin: float | None = None
    setting: str = "trained"
    counts: Callable[[dict[str, Any]], tuple[int, int] | None] | None = None
    scale: float = 1.0
    cell_test: Callable[[dict[str, Any]], str | None] = lambda r: None
    run: str = ""
    seeded_null: str | None = None  # the null whose randomness should differ between seeds (``null_seeds``)
    layers: tuple[Layered, Layered] | None = None  # a − b per layer, for the per-layer family


def _pair(a: Callable[[dict], Any], b: Callable[[dict], Any]) -> Callable[[dict], np.ndarray | None]:
    def rows(r: dict) -> np.ndarray | None:
        x, y = a(r), b(r)
        if x is None or y is None or len(x) != len(y):
            return None
        return np.stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)], axis=1)

    return rows


def _value_diff(a: Callable[[dict], Any], b: Callable[[dict], Any]) -> Callable[[dict], float | None]:
    def value(r: dict) -> float | None:
        x, y = a(r), b(r)
        return None if x is None or y is None else float(x) - float(y)

    return value


def _ci_diff(a: Callable[[dict], Any], b: Callable[[dict], Any]) -> Callable[[dict], list[float] | None]:
    """Interval of a − b from the two intervals (half-widths added in quadrature: independence)."""

    def interval(r: dict) -> list[float] | None:
        x, y = a(r), b(r)
        if not x or not y:
            return None
        mid = (x[0] + x[1]) / 2 - (y[0] + y[1]) / 2
        half = math.hypot((x[1] - x[0]) / 2, (y[1] - y[0]) / 2)
        return [mid - half, mid + half]

    return interval


def _test_of(name: str, label: str) -> Callable[[dict[str, Any]], str | None]:
    def describe(r: dict) -> str | None:
        p = dig(paired_test(r, name), "p_value")
        return None if p is None else f"{label} p={float(p):.3g}"

    return describe


def accuracy_difference(a: str, b: str) -> Quantity:
    """Accuracy of setting ``a`` minus ``b``, paired per query."""
    return Quantity(
        per_example=_pair(lambda r: correct_flags(r, a), lambda r: correct_flags(r, b)),
        value=_value_diff(lambda r: accuracy(r, a), lambda r: accuracy(r, b)),
        interval=lambda r: dig(paired_test(r, f"{a}_vs_{b}"), "ci"),
        needs=f"accuracy.{a} and accuracy.{b}",
    )


@dataclass(frozen=True)
class Layered:
    """A per-layer metric: its per-query rows (mean over layers), its summary, and where it lives."""

    rows: Callable[[dict[str, Any]], np.ndarray | None]
    summary: Callable[[dict[str, Any]], dict[str, Any] | None]
    where: str


def metric(setting: str | None, name: str) -> Layered:
    return Layered(
        lambda r: layer_mean_per_example(r, setting, name),
        lambda r: metric_summary(r, setting, name),
        ".".join(metric_path(setting, name)),
    )


def null_metric(setting: str, kind: str, name: str) -> Layered:
    return Layered(
        lambda r: layer_means(null_per_example(r, setting, kind, name)),
        lambda r: null_summary(r, setting, kind, name),
        f"nulls.{setting}.{kind}.{name}",
    )


def layer_difference(a: Layered, b: Layered, test: str | None = None) -> Quantity:
    """a − b of two per-layer metrics, per query (means over layers) or of their summaries."""
    cell_interval = (
        (lambda r: dig(paired_test(r, test), "ci"))
        if test
        else _ci_diff(lambda r: dig(a.summary(r), "ci"), lambda r: dig(b.summary(r), "ci"))
    )
    return Quantity(
        per_example=_pair(a.rows, b.rows),
        value=_value_diff(lambda r: dig(a.summary(r), "mean"), lambda r: dig(b.summary(r), "mean")),
        interval=cell_interval,
        needs=f"{a.where} and {b.where}",
    )


def layer_metric(a: Layered) -> Quantity:
    return Quantity(
        per_example=a.rows,
        value=lambda r: dig(a.summary(r), "mean"),
        interval=lambda r: dig(a.summary(r), "ci"),
        needs=a.where,
    )


# -- prediction changes (Deutch et al. 2024)


def _changed_minus(samples: np.ndarray) -> np.ndarray:
    """Share of queries ICL changes from ZSL minus the share FT changes, of ``[..., n, 4]`` rows."""
    zsl, icl, ft = samples[..., 0], samples[..., 1], samples[..., 2]
    return (icl != zsl).mean(axis=-1) - (ft != zsl).mean(axis=-1)


def _changed_value(r: dict) -> float | None:
    changes = prediction_changes(r, "ft")
    n = dig(changes, "n_examples")
    if not changes or not n:
        return None
    return (float(changes["n_icl_changed"]) - float(changes["n_ft_changed"])) / float(n)


def _jaccard_split(samples: np.ndarray) -> np.ndarray:
    """J over changes to the right class minus J over changes to a wrong class (Deutch et al. 2024's
    split, :func:`icl_lens.metrics.prediction_change_overlap`), of ``[..., n, 4]`` rows."""
    zsl, icl, ft, gold = (samples[..., i] for i in range(4))
    icl_changed, ft_changed = icl != zsl, ft != zsl
    same = ft_changed & (ft == icl)

    def jaccard(a: np.ndarray, b: np.ndarray, s: np.ndarray) -> np.ndarray:
        union = a.sum(axis=-1) + b.sum(axis=-1) - s.sum(axis=-1)
        with np.errstate(all="ignore"):
            return s.sum(axis=-1) / np.where(union > 0, union, np.nan)

    right_icl, right_ft = icl == gold, ft == gold
    correct = jaccard(icl_changed & right_icl, ft_changed & right_ft, same & right_ft)
    incorrect = jaccard(icl_changed & ~right_icl, ft_changed & ~right_ft, same & ~right_ft)
    return correct - incorrect


def rec2ftp_counts(r: dict) -> tuple[int, int] | None:
    """(FT's fixes ICL also fixes, FT's fixes): the counts behind Rec2FTP."""
    rows = predictions(r, ("zsl", "icl", "ft"))
    if rows is None:
        return None
    zsl, icl, ft, gold = rows.T
    fixes = (zsl != gold) & (ft == gold)
    return int((fixes & (icl == gold)).sum()), int(fixes.sum())


def jaccard_counts(r: dict) -> tuple[int, int] | None:
    """(same changes, union of changes): the counts behind the Jaccard index."""
    rows = predictions(r, ("zsl", "icl", "ft"))
    if rows is not None:
        zsl, icl, ft, _ = rows.T
        same = int(((ft != zsl) & (ft == icl)).sum())
        return same, int((icl != zsl).sum() + (ft != zsl).sum()) - same
    changes = prediction_changes(r, "ft")
    if not changes or changes.get("n_icl_changed") is None:
        return None
    same = int(changes["both_same_correct"]) + int(changes["both_same_incorrect"])
    return same, int(changes["n_icl_changed"]) + int(changes["n_ft_changed"]) - same


def _jaccard_minus_expected() -> Quantity:
    """Jaccard (FT) minus the cell's independence expectation (held fixed while queries resample)."""

    def expected(r: dict) -> float | None:
        value = dig(jaccard_independence(r, "ft"), "expected")
        return None if value is None else float(value)

    def rows(r: dict) -> np.ndarray | None:
        e = expected(r)
        base = predictions(r, ("zsl", "icl", "ft"))
        if e is None or base is None:
            return None
        return np.concatenate([base, np.full((len(base), 1), e)], axis=1)

    return Quantity(
        per_example=rows,
        statistic=lambda s: jaccard_statistic(s[..., :4]) - s[..., 0, 4],
        value=_value_diff(lambda r: dig(jaccard_independence(r, "ft"), "observed"), expected),
        needs="nulls.ft.jaccard_independence",
    )


def _token(name: str) -> Quantity:
    """ICL/FT next-token agreement (Shen et al. 2023) per query, else the cell's value."""
    return Quantity(
        per_example=lambda r: per_example(r, "ft", name),
        value=lambda r: dig(r, "metrics", "ft", "token_overlap", name),
        interval=lambda r: dig(r, "metrics", "ft", "token_overlap", f"{name}_ci"),
        needs=f"metrics.ft.token_overlap.{name}",
    )


def _grad_norm_contrast(r: dict) -> float | None:
    """log(mean LCGD gradient norm of the lower half of the layers) − log(that of the upper half),
    over every step (``training.lcgd.grad_norms``)."""
    norms = dig(r, "training", "lcgd", "grad_norms")
    if not norms:
        return None
    array = np.asarray([[np.nan if v is None else v for v in step] for step in norms], dtype=float)
    if array.ndim != 2 or array.shape[1] < 2:
        return None
    half = array.shape[1] // 2
    lower, upper = np.nanmean(array[:, :half]), np.nanmean(array[:, -half:])
    if not (lower > 0 and upper > 0):
        return None
    return float(math.log(lower) - math.log(upper))


DAI, DEUTCH, SHEN, OURS = (
    "Dai et al. 2023",
    "Deutch et al. 2024",
    "Shen et al. 2023",
    "icl_lens nulls (beyond the papers)",
)


def _null_claim(kind: str) -> Claim:
    return Claim(
        f"simaou_above_{kind}",
        f"SimAOU (FT) above the {kind.replace('_', '-')} null",
        f"{OURS}: {NULL_LABELS[kind]}",
        layer_difference(metric("ft", "simaou"), null_metric("ft", kind, "simaou")),
        run=RERUN if kind in ("wrong_label_answer_loss", "gradient_span") else "",
        seeded_null=seed_name(kind),
        layers=(metric("ft", "simaou"), null_metric("ft", kind, "simaou")),
    )


CELL_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "icl_beats_zsl", "ICL beats ZSL (accuracy)", f"{DAI}, Table 1; {DEUTCH}, Table 1",
        accuracy_difference("icl", "zsl"), cell_test=_test_of("icl_vs_zsl", "exact McNemar"),
    ),
    Claim(
        "ft_beats_zsl", "FT beats ZSL (accuracy)", f"{DAI}, Table 1; {DEUTCH}, Table 1",
        accuracy_difference("ft", "zsl"), cell_test=_test_of("ft_vs_zsl", "exact McNemar"),
    ),
    Claim(
        "icl_beats_ft", "ICL beats FT (accuracy)", f"{DAI}, Table 1; {DEUTCH}, Table 1",
        accuracy_difference("icl", "ft"), cell_test=_test_of("icl_vs_ft", "exact McNemar"),
    ),
    Claim(
        "rec2ftp_majority", f"Rec2FTP above {REC2FTP_THRESHOLD:g} % (ICL covers most of what FT fixes)",
        f"{DAI}, Table 1", prediction_quantity("ft", rec2ftp_statistic, "rec2ftp"), null=REC2FTP_THRESHOLD,
        counts=rec2ftp_counts, scale=100.0,
    ),
    Claim(
        "simaou_above_random", "SimAOU (FT) ≫ the uniform-random baseline", f"{DAI}, Table 2",
        layer_difference(metric("ft", "simaou"), metric(None, "simaou_random")), seeded_null="simaou_random",
        layers=(metric("ft", "simaou"), metric(None, "simaou_random")),
    ),
    Claim(
        "simam_ft_above_zsl", "SimAM (FT) above SimAM (ZSL): ICL attends more like FT than like ZSL",
        f"{DAI}, Table 2 (SimAM)", layer_difference(metric("ft", "simam"), metric(None, "simam_zsl")),
        layers=(metric("ft", "simam"), metric(None, "simam_zsl")),
    ),
    *(_null_claim(kind) for kind in NULLS),
    Claim(
        "icl_changes_more", "ICL changes more predictions (from ZSL) than FT", f"{DEUTCH}, prediction changes",
        Quantity(
            per_example=lambda r: predictions(r, ("zsl", "icl", "ft")), statistic=_changed_minus,
            value=_changed_value, needs="examples (predictions) or metrics.ft.prediction_changes",
        ),
    ),
    Claim(
        "jaccard_below_half", f"Jaccard (ICL, FT changes) below {JACCARD_THRESHOLD:g}: most changes unique to one",
        f"{DEUTCH}, Table 1", prediction_quantity("ft", jaccard_statistic, "jaccard"), null=JACCARD_THRESHOLD,
        side="<", counts=jaccard_counts,
    ),
    Claim(
        "jaccard_correct_above_incorrect", "Jaccard higher over changes to the right class than to a wrong one",
        f"{DEUTCH}, Table 1 (correct / incorrect split)",
        Quantity(
            per_example=lambda r: predictions(r, ("zsl", "icl", "ft")), statistic=_jaccard_split,
            value=_value_diff(lambda r: dig(prediction_changes(r, "ft"), "jaccard_correct"),
                              lambda r: dig(prediction_changes(r, "ft"), "jaccard_incorrect")),
            needs="metrics.ft.prediction_changes.jaccard_correct / jaccard_incorrect",
        ),
    ),
    Claim(
        "jaccard_below_independence", "Jaccard (ICL, FT changes) below the independence expectation",
        f"{OURS}: ICL and FT changing predictions independently", _jaccard_minus_expected(), side="<",
    ),
    Claim(
        "lcgd_simaou_above_gd", "LCGD SimAOU above GD's", f"{DEUTCH}, LCGD (Table 2)",
        layer_difference(metric("lcgd", "simaou"), metric("ft", "simaou"), test="lcgd_vs_ft_simaou"),
        layers=(metric("lcgd", "simaou"), metric("ft", "simaou")),
        cell_test=_test_of("lcgd_vs_ft_simaou", "paired bootstrap"),
    ),
    Claim(
        "lcgd_simam_delta_above_gd", "LCGD SimAM_Δ above GD's", f"{DEUTCH}, LCGD (Table 2)",
        layer_difference(metric("lcgd", "simam_delta"), metric("ft", "simam_delta"), test="lcgd_vs_ft_simam_delta"),
        layers=(metric("lcgd", "simam_delta"), metric("ft", "simam_delta")),
        cell_test=_test_of("lcgd_vs_ft_simam_delta", "paired bootstrap"),
    ),
    Claim(
        "lcgd_simam_below_gd", "LCGD raw SimAM below GD's", f"{DEUTCH}, LCGD (raw SimAM)",
        layer_difference(metric("lcgd", "simam"), metric("ft", "simam")), side="<",
        layers=(metric("lcgd", "simam"), metric("ft", "simam")),
    ),
    Claim(
        "lcgd_lower_layer_gradients_larger", "LCGD gradient norms larger in the lower layers than the upper",
        f"{DEUTCH}, LCGD (gradient norms; why it clips)",
        Quantity(per_example=lambda r: None, value=_grad_norm_contrast, needs="training.lcgd.grad_norms"),
        run="cells with LCGD (training.lcgd.grad_norms is written by every LCGD run)",
    ),
    Claim(
        "untrained_simaou_comparable",
        f"untrained model's SimAOU (FT) comparable to the trained model's (±{EQUIVALENCE_MARGINS['simaou']:g})",
        f"{DEUTCH}, untrained baseline", layer_metric(metric("ft", "simaou")), side="≈",
        margin=EQUIVALENCE_MARGINS["simaou"], setting="untrained-trained",
        run="untrained cells of the same seeds (icl-lens run --untrained, or the preset's untrained cells)",
    ),
    Claim(
        "untrained_simam_comparable",
        f"untrained model's SimAM (FT) comparable to the trained model's (±{EQUIVALENCE_MARGINS['simam']:g})",
        f"{DEUTCH}, untrained baseline", layer_metric(metric("ft", "simam")), side="≈",
        margin=EQUIVALENCE_MARGINS["simam"], setting="untrained-trained",
        run="untrained cells of the same seeds (icl-lens run --untrained, or the preset's untrained cells)",
    ),
    Claim(
        "untrained_icl_no_gain",
        f"untrained model: ICL accuracy equivalent to ZSL's (±{EQUIVALENCE_MARGINS['accuracy']:g})",
        f"{DEUTCH}, untrained baseline", accuracy_difference("icl", "zsl"), side="≈",
        margin=EQUIVALENCE_MARGINS["accuracy"], setting="untrained",
        run="untrained cells (icl-lens run --untrained, or the preset's untrained cells)",
    ),
    Claim(
        "low_token_overlap", f"ICL/FT top-10 token overlap below {LOW_OVERLAP:g}", f"{SHEN}, output agreement",
        _token("token_overlap"), null=LOW_OVERLAP, side="<",
    ),
    Claim(
        "low_overlap_cosine", f"ICL/FT cosine over the overlapping tokens below {LOW_OVERLAP:g}",
        f"{SHEN}, output agreement", _token("overlap_cosine"), null=LOW_OVERLAP, side="<",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class AnalysisClaim:
    """A claim read from an analysis output rather than the cells: where it comes from and what runs it."""

    id: str
    statement: str
    source: str
    run: str


ORDER_DIFFERS = AnalysisClaim(
    "order_sensitivity_differs",
    "ICL's and SGD's order sensitivity differ",
    f"{SHEN}, order sensitivity",
    "experiments/shen_analyses.py order (one file per task and seed)",
)
ADAM_VS_SGD = AnalysisClaim(
    "order_sensitivity_adam_vs_sgd",
    "Adam's and SGD's order sensitivity differ (same batch size)",
    f"{SHEN}, order sensitivity (optimizer)",
    "experiments/shen_analyses.py order with both optimizers",
)
BATCH_EFFECT = AnalysisClaim(
    "order_sensitivity_batch",
    "order sensitivity differs between the largest and the smallest batch",
    f"{SHEN}, order sensitivity (batch size)",
    "experiments/shen_analyses.py order with two batch sizes or more",
)
GAP_VS_K = AnalysisClaim(
    "gap_varies_with_k",
    "the ICL − GD accuracy gap changes with the number of demonstrations (slope over log₂ k)",
    f"{SHEN}, demonstration-count sweep",
    "experiments/shen_analyses.py sweep (two k or more)",
)
GAP_VS_MODEL = AnalysisClaim(
    "gap_varies_with_model",
    "the ICL − GD accuracy gap differs between models",
    f"{SHEN}, model size",
    "experiments/shen_analyses.py sweep --models with two models or more",
)
CLIPPING = AnalysisClaim(
    "clipping_restores_lcgd_simam",
    "clipping LCGD's gradient (global ℓ2 12) raises its SimAM",
    f"{DEUTCH}, LCGD on Subj (clipped)",
    "experiments/lcgd_clipping.py --task subj (the reference clip, global 12, beside no clip, same seeds)",
)
SPARSITY = AnalysisClaim(
    "attention_not_sparse",
    "attention weights not sparse like the hand-built constructions (75 %)",
    f"{SHEN}, weight sparsity",
    "experiments/shen_analyses.py sparsity",
)
ANALYSIS_CLAIMS = (ORDER_DIFFERS, ADAM_VS_SGD, BATCH_EFFECT, GAP_VS_K, GAP_VS_MODEL, CLIPPING, SPARSITY)
ALL_CLAIMS: tuple[Claim | AnalysisClaim, ...] = (*CELL_CLAIMS, *ANALYSIS_CLAIMS)
CLAIMS_BY_ID = {c.id: c for c in ALL_CLAIMS}
#: The order of the findings table.
CLAIM_IDS = tuple(CLAIMS_BY_ID)
