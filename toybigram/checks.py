"""Range checks for settings: each raises ConfigError naming the setting and the range it must be in."""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Iterable

from toybigram.errors import require

SEED_LIMIT = 2**63  # seeds are integers in [0, 2**63): numpy's SeedSequence refuses negatives, torch's seeds are 64-bit


def choice(value: Any, setting: str, choices: Iterable[str]) -> str:
    """``value`` must be one of ``choices``; the message lists them."""
    choices = tuple(choices)
    require(value in choices, setting, f"unknown value {value!r} (choose {', '.join(choices)})")
    return value


def boolean(value: Any, setting: str) -> bool:
    require(isinstance(value, bool), setting, f"must be true or false, got {value!r}")
    return value


def integer(value: Any, setting: str, low: int | None = None, high: int | None = None, why: str = "") -> int:
    """An integer in [low, high]; ``why`` explains the upper bound."""
    require(_is_integer(value), setting, f"must be an integer, got {value!r}")
    if low is not None:
        wanted = {0: "non-negative", 1: "positive"}.get(low, f"at least {low}")
        require(value >= low, setting, f"must be {wanted}, got {value}")
    if high is not None:
        require(value <= high, setting, f"must be at most {high}{why}, got {value}")
    return value


def seed(value: Any, setting: str) -> int:
    """A seed: an integer in [0, 2**63)."""
    require(_is_integer(value), setting, f"must be an integer, got {value!r}")
    require(0 <= value < SEED_LIMIT, setting, f"must be in [0, 2**63), got {value}")
    return value


def number(value: Any, setting: str, *, above: float | None = None, at_least: float | None = None,
           below: float | None = None, at_most: float | None = None) -> float:
    """A finite number with the given bounds (``above``/``below`` exclusive, ``at_least``/``at_most`` inclusive)."""
    bounds = [f"{sign} {limit}" for sign, limit in ((">", above), (">=", at_least), ("<", below), ("<=", at_most))
              if limit is not None]
    wanted = f"a finite number {' and '.join(bounds)}".strip()
    is_number = isinstance(value, Real) and not isinstance(value, bool)
    require(is_number and math.isfinite(value), setting, f"must be {wanted}, got {value!r}")
    fits = ((above is None or value > above) and (at_least is None or value >= at_least)
            and (below is None or value < below) and (at_most is None or value <= at_most))
    require(fits, setting, f"must be {wanted}, got {value!r}")
    return float(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)
