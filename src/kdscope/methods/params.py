"""Declared hyperparameter ranges (after scikit-learn's ``_parameter_constraints``).

A method declares, beside its defaults, what each hyperparameter accepts::

    constraints = {"temperature": Interval(0, None, closed="neither"), "alpha": Interval(0, 1)}

:func:`check_params` refuses a value outside its range before anything trains, naming the method,
the parameter, the value and what is accepted.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


class InvalidParameterError(ValueError):
    """A method hyperparameter outside its declared range."""


class Constraint:
    """What a hyperparameter accepts: ``accepts(value)`` and a phrase for error messages."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Constraint):
    """A real (or, with ``integer=True``, an integer) number in [low, high]; ``None`` bounds are
    open-ended, ``closed`` says which ends are included."""

    low: float | None
    high: float | None
    closed: Literal["both", "left", "right", "neither"] = "both"
    integer: bool = False

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        if not math.isfinite(value):
            return False
        low_open = self.closed in ("right", "neither")
        high_open = self.closed in ("left", "neither")
        too_low = self.low is not None and (value < self.low or (low_open and value == self.low))
        too_high = self.high is not None and (
            value > self.high or (high_open and value == self.high)
        )
        return not (too_low or too_high)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a real number"
        low_in = self.closed in ("both", "left")
        high_in = self.closed in ("both", "right")
        if self.low is not None and self.high is not None:
            left, right = "[" if low_in else "(", "]" if high_in else ")"
            return f"{kind} in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{kind} {'>=' if low_in else '>'} {self.low}"
        if self.high is not None:
            return f"{kind} {'<=' if high_in else '<'} {self.high}"
        return f"{kind}"


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class LayerNames(Constraint):
    """``None`` or an empty list (the method's default layers), or a list of layer names."""

    def accepts(self, value: Any) -> bool:
        if value is None:
            return True
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value)

    def describe(self) -> str:
        return "None (the default layers) or a list of layer names"


@dataclass(frozen=True)
class Either(Constraint):
    """Any of several constraints (e.g. a count or a list of model names)."""

    options: tuple[Constraint, ...]

    def accepts(self, value: Any) -> bool:
        return any(c.accepts(value) for c in self.options)

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.options)


@dataclass(frozen=True)
class NameList(Constraint):
    """A non-empty list of names (strings)."""

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, (list, tuple))
            and len(value) > 0
            and all(isinstance(v, str) for v in value)
        )

    def describe(self) -> str:
        return "a non-empty list of names"


LAYERS = LayerNames()
POSITIVE = Interval(0, None, closed="neither")
NON_NEGATIVE = Interval(0, None, closed="left")
UNIT = Interval(0, 1)


def check_params(method: str, constraints: Mapping[str, Constraint], params: Mapping) -> None:
    """Raise :class:`InvalidParameterError` for the first value of ``params`` its constraint
    refuses."""
    for name, value in params.items():
        constraint = constraints.get(name)
        if constraint is not None and not constraint.accepts(value):
            raise InvalidParameterError(
                f"Method {method!r}: parameter {name}={value!r} is out of range; accepted: "
                f"{constraint.describe()}."
            )
