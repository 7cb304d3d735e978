"""Accuracy, Rec2FTP and the Jaccard index of prediction changes on hand-computed examples."""

import math

import pytest
import torch

from icl_lens.errors import MetricInputError
from icl_lens.metrics import PredictionChangeOverlap, accuracy, prediction_change_overlap, rec2ftp

# One row per example: label, ZSL, ICL, FT prediction, and what happened.
#   0: 1 0 1 1  both change, same, right         5: 0 0 0 2  FT only, wrong
#   1: 1 0 0 1  FT only, right                   6: 0 1 2 2  both change, same, wrong
#   2: 0 0 1 0  ICL only, wrong                  7: 2 2 2 2  unchanged
#   3: 0 1 0 1  ICL only, right                  8: 1 0 2 2  both change, same, wrong
#   4: 2 0 1 2  both change, to different predictions
LABELS = [1, 1, 0, 0, 2, 0, 0, 2, 1]
ZSL = [0, 0, 0, 1, 0, 0, 1, 2, 0]
ICL = [1, 0, 1, 0, 1, 0, 2, 2, 2]
FT = [1, 1, 0, 1, 2, 2, 2, 2, 2]


def test_accuracy_hand_example():
    assert accuracy(ZSL, LABELS) == pytest.approx(3 / 9)  # examples 2, 5, 7
    assert accuracy(torch.tensor(ICL), torch.tensor(LABELS)) == pytest.approx(4 / 9)  # 0, 3, 5, 7
    assert accuracy(FT, LABELS) == pytest.approx(5 / 9)  # 0, 1, 2, 4, 7


def test_rec2ftp_hand_example():
    # ZSL wrong and FT right: {0, 1, 4}; ICL right among them: {0}.
    assert rec2ftp(ZSL, ICL, FT, LABELS) == pytest.approx(100 / 3)


def test_rec2ftp_is_nan_when_finetuning_fixes_nothing():
    assert math.isnan(rec2ftp([0, 1], [1, 1], [0, 1], [1, 1]))


def test_jaccard_and_partition_hand_example():
    overlap = prediction_change_overlap(ZSL, ICL, FT, LABELS)
    # C_ICL = {0,2,3,4,6,8}, C_FT = {0,1,4,5,6,8}, S = {0,6,8}: J = 3 / (6 + 6 - 3).
    assert overlap.jaccard == pytest.approx(3 / 9)
    # Right new prediction: C_ICL = {0,3}, C_FT = {0,1,4}, S = {0}: 1 / (2 + 3 - 1).
    assert overlap.jaccard_correct == pytest.approx(1 / 4)
    # Wrong new prediction: C_ICL = {2,4,6,8}, C_FT = {5,6,8}, S = {6,8}: 2 / (4 + 3 - 2).
    assert overlap.jaccard_incorrect == pytest.approx(2 / 5)
    assert overlap.to_dict() == {
        "jaccard": pytest.approx(1 / 3),
        "jaccard_correct": pytest.approx(0.25),
        "jaccard_incorrect": pytest.approx(0.4),
        "icl_only_correct": 1,
        "icl_only_incorrect": 1,
        "ft_only_correct": 1,
        "ft_only_incorrect": 1,
        "both_same_correct": 1,
        "both_same_incorrect": 2,
        "both_different": 1,
        "n_icl_changed": 6,
        "n_ft_changed": 6,
        "n_examples": 9,
    }
    assert overlap.n_unchanged == 1


def test_partition_counts_add_up_on_random_predictions():
    generator = torch.Generator().manual_seed(0)
    labels, zsl, icl, ft = (torch.randint(0, 4, (200,), generator=generator) for _ in range(4))
    overlap = prediction_change_overlap(zsl, icl, ft, labels)
    both_same = overlap.both_same_correct + overlap.both_same_incorrect
    assert overlap.n_icl_changed == (
        overlap.icl_only_correct + overlap.icl_only_incorrect + both_same + overlap.both_different
    )
    assert overlap.n_ft_changed == (
        overlap.ft_only_correct + overlap.ft_only_incorrect + both_same + overlap.both_different
    )
    assert overlap.jaccard == pytest.approx(both_same / (overlap.n_icl_changed + overlap.n_ft_changed - both_same))


def test_identical_changes_give_jaccard_one():
    overlap = prediction_change_overlap([0, 0, 1], [1, 0, 0], [1, 0, 0], [1, 1, 1])
    assert overlap.jaccard == 1.0
    assert overlap.jaccard_correct == 1.0  # example 0
    assert overlap.jaccard_incorrect == 1.0  # example 2


def test_no_change_gives_nan_jaccards():
    overlap = prediction_change_overlap([0, 1], [0, 1], [0, 1], [0, 0])
    assert all(math.isnan(j) for j in (overlap.jaccard, overlap.jaccard_correct, overlap.jaccard_incorrect))
    assert isinstance(overlap, PredictionChangeOverlap) and overlap.n_unchanged == 2


@pytest.mark.parametrize(
    "call",
    [
        lambda: accuracy([0, 1], [0, 1, 1]),
        lambda: accuracy([], []),
        lambda: accuracy([0.5, 1.0], [0, 1]),
        lambda: rec2ftp([0], [0, 1], [0], [0]),
        lambda: prediction_change_overlap([[0, 1]], [[0, 1]], [[0, 1]], [[0, 1]]),
    ],
)
def test_bad_inputs_raise_metric_input_error(call):
    with pytest.raises(MetricInputError):
        call()
