"""Loop detector and onset on token ids (as in Hiraoka & Inui 2025), matching integer lists.

A text repeats when some n-gram occurs k times inside an r-token window at equal
spacing. Scanning from the left, the first such window wins; the onset is the start of
the second occurrence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Loop:
    first: int  # start of the first occurrence of the repeated n-gram
    period: int  # p = second - first = third - second
    onset: int  # s = start of the second occurrence

    def as_dict(self) -> dict:
        return {"first": self.first, "period": self.period, "onset": self.onset}


def find_loop(ids: Sequence[int], ngram: int = 10, window: int = 100, repeats: int = 3) -> Optional[Loop]:
    """The leftmost equally spaced ``repeats``-fold n-gram whose occurrences fit in ``window`` tokens.

    Occurrences may overlap (period < ngram), as in a loop whose cycle is shorter than
    the n-gram. "Within the window" means the last occurrence ends at most ``window``
    tokens after the first begins: (repeats - 1) * p + ngram <= window.
    """
    ids = [int(t) for t in ids]
    if ngram < 1 or repeats < 2 or window < ngram:
        raise ValueError("need ngram >= 1, repeats >= 2 and window >= ngram")
    max_period = (window - ngram) // (repeats - 1)
    for first in range(len(ids) - ngram + 1):
        gram = ids[first : first + ngram]
        for period in range(1, max_period + 1):
            last = first + (repeats - 1) * period
            if last + ngram > len(ids):
                break
            if all(ids[first + j * period : first + j * period + ngram] == gram for j in range(1, repeats)):
                return Loop(first=first, period=period, onset=first + period)
    return None


def onset_usable(onset: int, length: int, min_onset: int = 50, min_after: int = 30) -> bool:
    """Keep a text only if s > min_onset and at least ``min_after`` tokens follow s - 1."""
    return onset > min_onset and length - (onset - 1) >= min_after + 1
