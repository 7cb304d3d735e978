"""Run-time jaxtyping shape checks (icl_lens._shapes): on in the test suite, a function's own
validation still answers bad input first, and a shape violation inside a checked function is
a ShapeError (an IclLensError) naming the function, the argument and the annotation."""

from __future__ import annotations

import os

import pytest
import torch
from jaxtyping import Float

from icl_lens import metrics
from icl_lens._shapes import ShapeError, enable_shape_checks, shape_checked, shape_checks_enabled
from icl_lens.calibration import calibrate
from icl_lens.errors import IclLensError, MetricInputError

pytestmark = pytest.mark.skipif(
    os.environ.get("ICL_LENS_CHECK_SHAPES", "1").strip() == "0", reason="shape checks turned off for this run"
)


@shape_checked
def _transpose_wrongly(x: Float[torch.Tensor, "rows cols"]) -> Float[torch.Tensor, "cols rows"]:
    return x  # a bug: the declared result is the transpose


@shape_checked
def _first_column(x: Float[torch.Tensor, "rows cols"]) -> Float[torch.Tensor, " rows"]:
    return x[:, 0]


def test_checks_are_on_in_the_test_session():
    assert shape_checks_enabled()


def test_a_result_of_the_wrong_shape_is_caught():
    with pytest.raises(ShapeError, match=r"_transpose_wrongly: the result .* shape \(2, 3\), expected .*'cols rows'"):
        _transpose_wrongly(torch.zeros(2, 3))
    assert _transpose_wrongly(torch.zeros(3, 3)).shape == (3, 3)  # square: the declared shape holds


def test_an_argument_of_the_wrong_rank_or_dtype_is_caught():
    assert _first_column(torch.arange(6.0).reshape(3, 2)).tolist() == [0.0, 2.0, 4.0]
    with pytest.raises(ShapeError, match=r"argument 'x' is a Tensor of dtype torch.float32 and shape \(3,\)"):
        _first_column(torch.zeros(3))
    with pytest.raises(ShapeError, match=r"argument 'x' is a Tensor of dtype torch.int64"):
        _first_column(torch.zeros(3, 2, dtype=torch.long))


def test_calibrate_refuses_content_free_scores_that_would_broadcast():
    """calibrate's content-free scores are [1, n_classes]: three rows would broadcast silently against
    three queries (a wrong number, no error); calibrate says so itself, shape checks on or off."""
    scores = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    with pytest.raises(MetricInputError, match=r"one content-free row \[1, n_classes\], got \(3, 2\) and \(3, 2\)"):
        calibrate(scores, scores)
    with pytest.raises(MetricInputError, match=r"got \(3, 2\) and \(1, 3\)"):
        calibrate(scores, torch.zeros(1, 3))
    expected = scores.log_softmax(-1) - torch.tensor([[0.0, 0.0]]).log_softmax(-1)
    assert torch.allclose(calibrate(scores, torch.zeros(1, 2)), expected)


def test_the_functions_own_validation_answers_first():
    """Bad input the metric checks itself keeps its own message, not a shape error."""
    zsl = torch.randn(2, 3, 4)
    with pytest.raises(MetricInputError, match="expected 3 dims layer-first, got shape") as info:
        metrics.simaou(zsl, torch.randn(3, 4), zsl)
    assert not isinstance(info.value, ShapeError)
    with pytest.raises(MetricInputError, match="shapes must match") as info:
        metrics.simam(torch.randn(2, 3, 2, 5), torch.randn(2, 3, 2, 4))
    assert not isinstance(info.value, ShapeError)


def test_checks_can_be_turned_off():
    enable_shape_checks(False)
    try:
        assert _transpose_wrongly(torch.zeros(2, 3)).shape == (2, 3)
    finally:
        enable_shape_checks(True)
