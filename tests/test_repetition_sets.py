"""Neuron selections (top, bottom, uniform and layer-matched random), condition order, bootstrap intervals."""
from __future__ import annotations

import numpy as np
import pytest

from toybigram.errors import UserError
from toybigram.repetition import interventions, perplexity, stats
from toybigram.repetition.selections import NeuronSets, check_selections

SIZES = [10, 20, 30]  # three layers, 60 neurons


def sets(seed: int = 0) -> NeuronSets:
    delta = np.random.default_rng(5).normal(size=sum(SIZES))
    delta[40:50] += 10  # the ten strongest neurons all sit in the last layer
    return NeuronSets.build(np.argsort(-delta, kind="stable"), SIZES, draws=3, seed=seed)


def test_layer_matched_sets_copy_the_top_sets_layer_counts_and_are_nested():
    s = sets()
    for k in (1, 5, 10, 25, 60):
        top, matched = s.select("top", k), s.select("layer", k, draw=1)
        assert len(set(matched)) == k
        assert s.counts_per_site(matched).tolist() == s.counts_per_site(top).tolist()
    assert set(s.select("layer", 10, 2)) <= set(range(30, 60))  # top-10 is all in the last layer (30..59)
    assert set(s.select("layer", 10, 0)) != set(s.select("top", 10))
    for selection in ("top", "bottom", "random", "layer"):
        assert set(s.select(selection, 7, 1)) <= set(s.select(selection, 19, 1)), selection
    assert s.select("layer", 10, 0).tolist() != s.select("layer", 10, 1).tolist()  # draws differ


def test_bottom_is_the_most_negative_end_and_random_draws_are_reproducible():
    s = sets()
    assert s.select("bottom", 3).tolist() == s.ranking[::-1][:3].tolist()
    assert s.select("random", 12, 2).tolist() == sets().select("random", 12, 2).tolist()
    assert len(s.select("none", 0)) == 0 and len(s.select("random", 0, 1)) == 0
    for bad in (["top", "middle"], ["top", "top"], []):
        with pytest.raises(UserError, match="intervene.selections"):
            check_selections(bad, "intervene.selections")


def test_conditions_give_every_selection_its_first_draw_before_any_second():
    found = interventions.conditions("deactivate", [0, 10, 20], 2, ["top", "random", "layer", "bottom"])
    keys = [c.key for c in found]
    assert keys[0] == "deactivate/none/0/0" and len(keys) == len(set(keys)) == 1 + 2 * 4 + 2 * 2
    first_second = keys.index("deactivate/random/1/10")
    assert all(k.split("/")[2] == "0" for k in keys[:first_second])
    assert not any(k.startswith(("deactivate/top/1", "deactivate/bottom/1")) for k in keys)


def test_loop_effect_interval_is_paired_and_covers_the_point():
    base = np.ones(40)
    edited = np.stack([np.r_[np.zeros(10), np.ones(30)], np.r_[np.zeros(14), np.ones(26)]])
    out = stats.loop_rates(base, edited, sign=-1.0)
    assert out["effect"] == pytest.approx(0.3) and out["rate"] == pytest.approx(0.7)
    assert out["effect_lo"] < 0.3 < out["effect_hi"] and out["effect_hi"] - out["effect_lo"] < 0.35
    assert (out["rate_min"], out["rate_max"]) == (pytest.approx(0.65), pytest.approx(0.75))
    same = stats.loop_rates(base, base[None], sign=-1.0)
    assert same["effect"] == same["effect_lo"] == same["effect_hi"] == 0.0  # no change, no width


def test_perplexity_ratio_and_table():
    tokens = np.full(8, 10)
    base = np.full(8, 20.0)  # 2 nats per token
    doubled = base + 10 * np.log(2)
    out = stats.perplexity_ratio(base, doubled[None], tokens)
    assert out["ratio"] == pytest.approx(2.0) and out["ratio_lo"] == pytest.approx(2.0) and out["perplexity"] == pytest.approx(2 * np.e ** 2)
    rows = [{"experiment": "unedited", "selection": "none", "k": 0, "draw": 0, "window_nll": base.tolist(), "window_tokens": tokens.tolist()},
            {"experiment": "deactivate", "selection": "top", "k": 5, "draw": 0, "window_nll": doubled.tolist(), "window_tokens": tokens.tolist()}]
    table = perplexity.summarise(rows, [0, 5])
    assert [(r["k"], r["selection"]) for r in table] == [(0, "none"), (5, "top")]
    assert table[0]["ratio"] == pytest.approx(1.0) and table[1]["ratio"] == pytest.approx(2.0)
