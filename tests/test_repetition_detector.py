"""Loop detector and onset filter on constructed token sequences (as in Hiraoka & Inui 2025)."""
from __future__ import annotations

import random

import pytest

from toybigram.repetition.detector import Loop, find_loop, onset_usable


def distinct(n: int, start: int = 1000) -> list[int]:
    """n tokens that never repeat (no accidental loops)."""
    return list(range(start, start + n))


def test_clean_loop_found_with_onset_at_second_copy():
    cycle = list(range(20))  # period 20
    ids = distinct(60) + cycle * 4
    loop = find_loop(ids)
    assert loop == Loop(first=60, period=20, onset=80)


def test_no_loop_in_distinct_tokens():
    assert find_loop(distinct(300)) is None


def test_short_period_overlapping_ngrams():
    # period 3 < n = 10: the three 10-gram occurrences overlap each other
    ids = distinct(55) + [7, 8, 9] * 12
    loop = find_loop(ids)
    assert loop is not None and loop.period == 3 and loop.first == 55 and loop.onset == 58


def test_period_one_loop():
    ids = distinct(70) + [5] * 12
    assert find_loop(ids) == Loop(first=70, period=1, onset=71)
    assert find_loop(distinct(70) + [5] * 11) is None  # 10-gram thrice at spacing 1 needs 12 tokens


def test_unequal_spacing_is_not_a_loop():
    gram = list(range(10))
    ids = distinct(30) + gram + distinct(5, 2000) + gram + distinct(9, 3000) + gram + distinct(30, 4000)
    assert find_loop(ids) is None  # three copies at spacings 15 and 19


def test_two_copies_only_is_not_a_loop():
    gram = list(range(10))
    ids = distinct(30) + gram + distinct(10, 2000) + gram + distinct(60, 3000)
    assert find_loop(ids) is None


def test_near_miss_one_token_differs():
    gram = list(range(10))
    broken = gram[:-1] + [99]
    ids = distinct(30) + gram + gram + broken + distinct(40, 2000)
    assert find_loop(ids) is None
    fixed = distinct(30) + gram + gram + gram + distinct(40, 2000)
    assert find_loop(fixed) == Loop(first=30, period=10, onset=40)


def test_window_bounds_the_period():
    # (k-1) p + n <= r: with r=100, n=10, k=3 the longest period is 45
    for period, expected in ((45, True), (46, False)):
        cycle = list(range(period))
        ids = distinct(10) + cycle * 3 + cycle[:10]
        found = find_loop(ids)
        assert (found is not None) == expected
        if expected:
            assert found.period == 45


def test_leftmost_window_wins_over_later_shorter_period():
    ids = distinct(20) + list(range(30)) * 3 + [1, 2] * 20
    loop = find_loop(ids)
    assert loop.first == 20 and loop.period == 30


def test_integer_matching_not_string_matching():
    # Joined as strings, [1, 23, ...] and [12, 3, ...] both read "123123...": a string
    # matcher sees three equally spaced copies here; on integers there are only two.
    a, b = [1, 23] * 5, [12, 3] * 5
    assert "".join(map(str, a)) == "".join(map(str, b))
    ids = distinct(20) + a + b + a + distinct(40, 5000)
    assert find_loop(ids) is None
    assert find_loop(distinct(20) + a + a + a + distinct(40, 5000)) == Loop(first=20, period=2, onset=22)


def test_parameters_are_configurable():
    ids = distinct(20) + [4, 5, 6, 7] * 2 + distinct(20, 3000)
    assert find_loop(ids) is None
    assert find_loop(ids, ngram=4, window=20, repeats=2) == Loop(first=20, period=4, onset=24)
    with pytest.raises(ValueError):
        find_loop(ids, ngram=0)


def test_onset_filter_both_sides():
    assert not onset_usable(50, 211)  # s must exceed 50
    assert onset_usable(51, 211)
    assert onset_usable(181, 211)  # 30 tokens follow s - 1 ... exactly s..210
    assert not onset_usable(182, 211)


def test_loop_too_late_in_the_text_is_rejected_by_onset():
    cycle = list(range(12))
    ids = distinct(175) + cycle * 3
    loop = find_loop(ids)
    assert loop is not None and loop.onset == 187
    assert not onset_usable(loop.onset, len(ids))


def test_random_sequences_agree_with_brute_force():
    rng = random.Random(0)

    def brute(ids, n=4, r=30, k=3):
        for first in range(len(ids)):
            for p in range(1, r):
                if first + (k - 1) * p + n > len(ids) or (k - 1) * p + n > r:
                    continue
                grams = [tuple(ids[first + j * p : first + j * p + n]) for j in range(k)]
                if len(set(grams)) == 1:
                    return first, p
        return None

    for _ in range(300):
        ids = [rng.randrange(3) for _ in range(rng.randrange(5, 60))]
        loop = find_loop(ids, ngram=4, window=30, repeats=3)
        assert (None if loop is None else (loop.first, loop.period)) == brute(ids)
