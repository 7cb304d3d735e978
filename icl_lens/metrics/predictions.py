"""Metrics on class predictions of the three settings (docs/concepts/metrics.md): accuracy, Rec2FTP and the
Jaccard index of prediction changes, with the partition counts behind it.

Every function takes one class id per example (a 1-d integer tensor or a sequence of ints), the
same examples in the same order for every setting: ZSL (zero-shot), ICL (in-context) and FT
(the zero-shot prompt on the finetuned model; LCGD is passed in the same slot).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Int

from icl_lens._shapes import shape_checked
from icl_lens.errors import MetricInputError
from icl_lens.metrics._common import as_label_tensor

logger = logging.getLogger(__name__)

ClassIds = Int[torch.Tensor, " batch"] | Sequence[int]


@shape_checked
def _aligned(named: dict[str, ClassIds]) -> dict[str, Int[torch.Tensor, " batch"]]:
    tensors = {name: as_label_tensor(values, name) for name, values in named.items()}
    sizes = {name: int(t.shape[0]) for name, t in tensors.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name}={size}" for name, size in sizes.items())
        raise MetricInputError(f"predictions and labels must cover the same examples, got sizes {listed}")
    return tensors


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


@shape_checked
def accuracy(predictions: ClassIds, labels: ClassIds) -> float:
    """Fraction of examples predicted right, in [0, 1] (not a percentage).

    accuracy = #{i : pred_i = label_i} / N
    """
    tensors = _aligned({"predictions": predictions, "labels": labels})
    return (tensors["predictions"] == tensors["labels"]).double().mean().item()


@shape_checked
def rec2ftp(zsl_pred: ClassIds, icl_pred: ClassIds, ft_pred: ClassIds, labels: ClassIds) -> float:
    """Recall to finetuning predictions: of the examples that finetuning fixes, the percentage ICL
    fixes too (a percentage in [0, 100]).

    Rec2FTP = 100 · #{ZSL wrong ∧ FT right ∧ ICL right} / #{ZSL wrong ∧ FT right}

    Returns ``float('nan')`` when the denominator is 0 (finetuning fixed no example), so that an
    undefined value is never mistaken for 0 %; average over seeds with ``nanmean`` or report it.
    """
    t = _aligned({"zsl_pred": zsl_pred, "icl_pred": icl_pred, "ft_pred": ft_pred, "labels": labels})
    ft_fixes = (t["zsl_pred"] != t["labels"]) & (t["ft_pred"] == t["labels"])
    both_fix = ft_fixes & (t["icl_pred"] == t["labels"])
    n_ft_fixes = int(ft_fixes.sum())
    if n_ft_fixes == 0:
        logger.info("Rec2FTP undefined: finetuning fixes no zero-shot error; returning NaN")
        return float("nan")
    return 100.0 * int(both_fix.sum()) / n_ft_fixes


@dataclass(frozen=True)
class PredictionChangeOverlap:
    """How the prediction changes (w.r.t. zero-shot) of ICL and FT overlap.

    With C_ICL = {i : pred_ICL ≠ pred_ZSL}, C_FT = {i : pred_FT ≠ pred_ZSL} and
    S = {i ∈ C_FT : pred_FT = pred_ICL} (so S ⊆ C_ICL ∩ C_FT):

        J = |S| / (|C_ICL| + |C_FT| − |S|)

    Args:
        jaccard: J as a fraction in [0, 1] (multiply by 100 for the papers' %); NaN when no
            setting changed any prediction (empty union).
        jaccard_correct: J with C_ICL, C_FT and S restricted to changes whose new prediction is
            right (ICL's for C_ICL, FT's for C_FT and S); *unverified* split rule. NaN on empty union.
        jaccard_incorrect: the same, restricted to changes whose new prediction is wrong.
        icl_only_correct: changed by ICL only, ICL's new prediction right.
        icl_only_incorrect: changed by ICL only, ICL's new prediction wrong.
        ft_only_correct: changed by FT only, FT's new prediction right.
        ft_only_incorrect: changed by FT only, FT's new prediction wrong.
        both_same_correct: changed by both to the same prediction (= S), which is right.
        both_same_incorrect: changed by both to the same prediction, which is wrong.
        both_different: changed by both, to different predictions.
        n_icl_changed: |C_ICL|.
        n_ft_changed: |C_FT|.
        n_examples: N.

    The seven partition counts add up to |C_ICL ∪ C_FT|; the remaining N − |C_ICL ∪ C_FT| examples
    kept their zero-shot prediction in both settings.
    """

    jaccard: float
    jaccard_correct: float
    jaccard_incorrect: float
    icl_only_correct: int
    icl_only_incorrect: int
    ft_only_correct: int
    ft_only_incorrect: int
    both_same_correct: int
    both_same_incorrect: int
    both_different: int
    n_icl_changed: int
    n_ft_changed: int
    n_examples: int

    @property
    def n_unchanged(self) -> int:
        """Examples whose prediction neither ICL nor FT changed."""
        changed = (
            self.icl_only_correct
            + self.icl_only_incorrect
            + self.ft_only_correct
            + self.ft_only_incorrect
            + self.both_same_correct
            + self.both_same_incorrect
            + self.both_different
        )
        return self.n_examples - changed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _jaccard(icl_changed: torch.Tensor, ft_changed: torch.Tensor, same_change: torch.Tensor) -> float:
    n_same = int(same_change.sum())
    return _ratio(n_same, int(icl_changed.sum()) + int(ft_changed.sum()) - n_same)


@shape_checked
def prediction_change_overlap(
    zsl_pred: ClassIds, icl_pred: ClassIds, ft_pred: ClassIds, labels: ClassIds
) -> PredictionChangeOverlap:
    """Jaccard index of the prediction changes of ICL and FT, its correct / incorrect variants and
    the partition counts for a stacked-bar figure (see :class:`PredictionChangeOverlap`).

        J = |S| / (|C_ICL| + |C_FT| − |S|),  C_X = {i : pred_X ≠ pred_ZSL},  S = {i ∈ C_FT : pred_FT = pred_ICL}

    Correct (incorrect) variant, *unverified* rule: C_ICL → {i ∈ C_ICL : pred_ICL right (wrong)},
    C_FT → {i ∈ C_FT : pred_FT right (wrong)}, S → {i ∈ S : pred_FT right (wrong)}.
    """
    t = _aligned({"zsl_pred": zsl_pred, "icl_pred": icl_pred, "ft_pred": ft_pred, "labels": labels})
    zsl, icl, ft, gold = t["zsl_pred"], t["icl_pred"], t["ft_pred"], t["labels"]
    icl_changed = icl != zsl
    ft_changed = ft != zsl
    same_change = ft_changed & (ft == icl)
    icl_right = icl == gold
    ft_right = ft == gold
    icl_only = icl_changed & ~ft_changed
    ft_only = ft_changed & ~icl_changed
    both_different = icl_changed & ft_changed & (ft != icl)
    return PredictionChangeOverlap(
        jaccard=_jaccard(icl_changed, ft_changed, same_change),
        jaccard_correct=_jaccard(icl_changed & icl_right, ft_changed & ft_right, same_change & ft_right),
        jaccard_incorrect=_jaccard(icl_changed & ~icl_right, ft_changed & ~ft_right, same_change & ~ft_right),
        icl_only_correct=int((icl_only & icl_right).sum()),
        icl_only_incorrect=int((icl_only & ~icl_right).sum()),
        ft_only_correct=int((ft_only & ft_right).sum()),
        ft_only_incorrect=int((ft_only & ~ft_right).sum()),
        both_same_correct=int((same_change & ft_right).sum()),
        both_same_incorrect=int((same_change & ~ft_right).sum()),
        both_different=int(both_different.sum()),
        n_icl_changed=int(icl_changed.sum()),
        n_ft_changed=int(ft_changed.sum()),
        n_examples=int(zsl.shape[0]),
    )
