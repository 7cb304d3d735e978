"""Run-time checks of the jaxtyping shape annotations of the metrics, the logit lens and calibration.

Off by default (the functions validate their own inputs and raise :class:`MetricInputError`); the
test suite turns them on (``tests/conftest.py``), as does ``ICL_LENS_CHECK_SHAPES=1``. A checked
function first runs as usual, so its own validation answers bad input with its own message; then
its arguments and result are checked against the annotations, with each named dimension bound
once across all of them (``Float[Tensor, "n_layers batch d_model"]`` for two arguments means the
same sizes for both). A mismatch is a :class:`ShapeError` naming the function, the argument and the
annotation. If the function fails with an error that is not the package's own, the arguments are
checked too, so a wrong-shaped input reported by torch deep inside becomes a :class:`ShapeError`.
"""

from __future__ import annotations

import functools
import inspect
import os
import typing
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from beartype.door import is_bearable
from jaxtyping import jaxtyped

from icl_lens.errors import IclLensError, MetricInputError

P = ParamSpec("P")
R = TypeVar("R")

_enabled = os.environ.get("ICL_LENS_CHECK_SHAPES", "0").strip().lower() not in ("", "0", "false", "no")


class ShapeError(MetricInputError):
    """A tensor whose shape or dtype disagrees with a checked function's annotation."""


def enable_shape_checks(enabled: bool = True) -> None:
    """Turn the run-time shape checks of :func:`shape_checked` functions on (or off)."""
    global _enabled
    _enabled = bool(enabled)


def shape_checks_enabled() -> bool:
    return _enabled


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"{type(value).__name__} of dtype {value.dtype} and shape {tuple(shape)}"
    return type(value).__name__


def _hint_text(hint: Any) -> str:
    text = str(hint).replace("jaxtyping.", "").replace("torch.", "")
    return text.removeprefix("<class '").removesuffix("'>")


def shape_checked(fn: Callable[P, R]) -> Callable[P, R]:
    """Check ``fn``'s annotated arguments and result at run time while checks are enabled."""
    signature = inspect.signature(fn)
    hints: dict[str, Any] | None = None

    def problem(args: tuple, kwargs: dict[str, Any], result: Any, check_result: bool) -> str | None:
        nonlocal hints
        if hints is None:  # resolved on first use, when every name the annotations use exists
            hints = typing.get_type_hints(fn, include_extras=True)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:  # the call itself is wrong: Python's own error says how
            return None
        bound.apply_defaults()
        shapes = ", ".join(f"{n}={tuple(v.shape)}" for n, v in bound.arguments.items() if hasattr(v, "shape"))
        with jaxtyped("context"):  # one binding of each named dimension across the whole call
            for name, value in bound.arguments.items():
                hint = hints.get(name)
                if hint is not None and not is_bearable(value, hint):
                    return f"argument {name!r} is a {_describe(value)}, expected {_hint_text(hint)} (shapes: {shapes})"
            if check_result and "return" in hints and not is_bearable(result, hints["return"]):
                return f"the result is a {_describe(result)}, expected {_hint_text(hints['return'])} (shapes: {shapes})"
        return None

    def fail(message: str) -> ShapeError:
        return ShapeError(f"{fn.__module__}.{fn.__qualname__}: {message}")

    @functools.wraps(fn)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        if not _enabled:
            return fn(*args, **kwargs)
        try:
            result = fn(*args, **kwargs)
        except IclLensError:
            raise
        except Exception as exc:
            message = problem(args, kwargs, None, check_result=False)
            if message is not None:
                raise fail(message) from exc
            raise
        message = problem(args, kwargs, result, check_result=True)
        if message is not None:
            raise fail(message)
        return result

    return checked
