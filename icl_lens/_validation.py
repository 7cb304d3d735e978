"""One field validator for the config dataclasses (and :class:`~icl_lens.tasks.Task`).

Every field is checked against its type hint — ``int``, ``float`` (finite), ``bool``, ``str``,
``Literal[...]``, ``X | None``, ``tuple[X, ...]``, ``dict[str, str]`` and nested dataclasses — and
against a bound declared once per class in a ``{field name: Range(...)}`` dict (a bound on a tuple
field applies to every item). A bad value raises the given :class:`~icl_lens.errors.IclLensError`
subclass naming the class, the field and the value, so ``--ft-momentum nan`` or ``lr_dev_size=-5``
fail on creation instead of late, or silently.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from icl_lens.errors import ConfigError, IclLensError, PromptError


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric field: ``gt``/``ge`` below, ``lt``/``le`` above (None: open)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def violation(self, value: float) -> str | None:
        """Why ``value`` is outside the range, or None."""
        if self.gt is not None and not value > self.gt:
            return f"must be > {self.gt:g}"
        if self.ge is not None and not value >= self.ge:
            return f"must be >= {self.ge:g}"
        if self.lt is not None and not value < self.lt:
            return f"must be < {self.lt:g}"
        if self.le is not None and not value <= self.le:
            return f"must be <= {self.le:g}"
        return None


POSITIVE = Range(gt=0)
NON_NEGATIVE = Range(ge=0)
AT_LEAST_ONE = Range(ge=1)
SEED = Range(ge=0, lt=2**63)
"""Seeds go to ``random.Random`` and ``torch.manual_seed``; negative or huge ones are refused."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list, each item {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        key, value = typing.get_args(tp)
        return f"a mapping of {_type_name(key)} to {_type_name(value)}"
    if tp is type(None):
        return "None"
    if tp is float:
        return "a finite number"
    if tp is int:
        return "an integer"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true/false"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` has type ``tp`` (numbers: finite; tuples also accept lists)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        return isinstance(value, Mapping) and all(
            _matches(k, key_tp) and _matches(v, value_tp) for k, v in value.items()
        )
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this validator does not understand: left to the class


def validate_fields(
    obj: Any,
    bounds: Mapping[str, Range] | None = None,
    error: type[IclLensError] = ConfigError,
    skip: Sequence[str] = (),
) -> None:
    """Check every dataclass field of ``obj`` against its type hint and its bound in ``bounds``.

    Raises ``error`` naming the class, the field and the offending value.
    """
    bounds = dict(bounds or {})
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(bounds) - names)
    if unknown:  # a programming error: a bound on a field that does not exist
        raise ValueError(f"{cls.__name__}: bounds for unknown fields {unknown}")
    owner = cls.__name__
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        tp = hints[f.name]
        if not _matches(value, tp):
            raise error(f"{owner}.{f.name} must be {_type_name(tp)}, got {value!r}")
        bound = bounds.get(f.name)
        if bound is None or value is None:
            continue
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            why = bound.violation(item)
            if why is not None:
                shown = f"{item!r} in {list(value)!r}" if items is value else repr(item)
                raise error(f"{owner}.{f.name} {why}, got {shown}")


def check_token_ids(ids: Any, d_vocab: int, what: str, allow_empty: bool = False) -> list[int]:
    """``ids`` as a list of ints, each in ``[0, d_vocab)``; a :class:`PromptError` naming ``what``
    (e.g. "query 3") and the bad id otherwise."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) and not hasattr(ids, "tolist"):
        raise PromptError(f"{what} must be a sequence of token ids, got {type(ids).__name__}")
    values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if not values and not allow_empty:
        raise PromptError(f"{what} is empty: it has no token to score")
    for position, token in enumerate(values):
        if isinstance(token, bool) or not isinstance(token, numbers.Integral):
            raise PromptError(f"{what}: token {position} is {token!r}, not an integer id")
        if not 0 <= int(token) < d_vocab:
            raise PromptError(
                f"{what}: token id {token} at position {position} is outside the vocabulary (0..{d_vocab - 1})"
            )
    return [int(t) for t in values]
