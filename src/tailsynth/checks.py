"""Checks of user-given values (params): a wrong type or range is a one-line error naming the param."""

from __future__ import annotations

from tailsynth.errors import TailsynthError


def whole_number(value, param: str, minimum: int = 0) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``; else an error naming ``param``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TailsynthError(f"{param} must be a whole number >= {minimum}, got {value!r}")
    return value


def real_number(value, param: str, *, positive: bool = False, minimum: float | None = None) -> float:
    """``value`` as a float if it is an int or float (not a bool), > 0 when ``positive``, >= ``minimum``
    when given; else an error naming ``param``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TailsynthError(f"{param} must be a number, got {value!r}")
    if positive and not value > 0:
        raise TailsynthError(f"{param} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise TailsynthError(f"{param} must be >= {minimum}, got {value!r}")
    return float(value)
