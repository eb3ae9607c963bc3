"""Range and choice checks of configuration values, one line of error each (a :class:`ConfigError`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

from deepclust.errors import ConfigError


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """A :class:`ConfigError` naming ``name`` and the ``choices`` when ``value`` is not one of them."""
    if str(value) not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_ranges(
    section: Any,
    prefix: str = "",
    *,
    positive: Sequence[str] = (),
    at_least_one: Sequence[str] = (),
    non_negative: Sequence[str] = (),
    fraction: Sequence[str] = (),
) -> None:
    """A :class:`ConfigError` naming the first key of ``section`` (a config tree or a method's ``params``
    dataclass; dotted keys, shown with ``prefix``) whose value is out of its range: ``positive`` (> 0: rates,
    temperatures), ``at_least_one`` (sizes, counts, intervals), ``non_negative`` (weights, delays) or
    ``fraction`` ([0, 1]: momentums). ``None``, where a key allows it, means "the default" and passes. Methods
    check their ``params`` with it (``prefix="params."``)."""
    rules = (
        (positive, lambda v: v > 0, "must be positive"),
        (at_least_one, lambda v: v >= 1, "must be at least 1"),
        (non_negative, lambda v: v >= 0, "must not be negative"),
        (fraction, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    )
    for keys, in_range, requirement in rules:
        for key in keys:
            value = functools.reduce(getattr, key.split("."), section)
            if value is None:
                continue
            if isinstance(value, float) and math.isinf(value):  # inf > 0 holds, but one step at lr=inf is NaN
                raise ConfigError(f"{prefix}{key} must be finite, got {value}")
            if not in_range(value):
                raise ConfigError(f"{prefix}{key} {requirement}, got {value}")
