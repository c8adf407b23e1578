"""Designed prompts with exact counts and positions, and the threshold estimate on a constructed model whose
logits follow the closed form exactly."""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from toybigram.errors import ConfigError
from toybigram.hijack.analysis import crossings, fit_and_score, law_threshold
from toybigram.hijack.design import Instances, counts_that_fit, region_span
from toybigram.hijack.lexicon import Lexicon, choose_pairs, favourites, own_bigram
from toybigram.hijack.reader import Reader
from toybigram.hijack.results import curves_of, law_fit, threshold_rows
from toybigram.hijack.study import Setting, compete_job, hijack_job, run_jobs
from toybigram.theory.calculator import hijack_threshold
from toybigram.theory.prompts import count_pairs as pair_count, pair_starts
from toybigram.theory.threshold import law_logits

N = 40


def lexicon(n: int = N) -> Lexicon:
    corpus = np.random.default_rng(0).integers(0, n, 5000)
    return Lexicon(list(range(n)), {i: 1 for i in range(n)}, corpus, "test corpus")


@pytest.mark.parametrize("kind", ["random", "prose"])
@pytest.mark.parametrize("region", ["uniform", "early", "late"])
def test_series_hold_exact_counts_in_their_region_and_share_filler(kind, region):
    gen = torch.Generator().manual_seed(0)
    q, o, b, T, counts = 3, 7, 11, 40, [0, 1, 2, 4, 6]
    fit = counts_that_fit(counts, T, region)
    found = Instances.draw(kind, lexicon(), {q, o, b}, 16, T, max(fit), region, gen)
    series = found.series(q, o, fit)  # (C, B, T)
    lo, hi = region_span(region, T)
    for c, prompts in zip(fit, series):
        assert (prompts[:, -1] == q).all()
        assert (pair_count(prompts, q, o) == c).all()
        assert ((prompts == q).sum(1) == c + 1).all()  # q nowhere else
        assert ((prompts == o).sum(1) == c).all()  # o only after q
        assert not (prompts == b).any()  # the favourite never appears
        where = torch.nonzero(prompts[:, :-1] == q)
        assert ((where[:, 1] >= lo) & (where[:, 1] + 1 < hi)).all()  # every pair inside the region
    # nested: the prompt at count c differs from the filler only at its pairs and the final q, and keeps the smaller count's pairs
    for prompts in series:  # the filler holds neither q nor o, so the changed positions are exactly theirs
        assert torch.equal(prompts != found.fill, (prompts == q) | (prompts == o))
    for small, large in zip(series[:-1], series[1:]):
        assert (large[small == q] == q).all() and (large[small == o] == o).all()


def test_pair_starts_never_overlap_and_cover_the_span():
    gen = torch.Generator().manual_seed(1)
    starts = pair_starts(2000, 3, 5, 15, gen)
    assert (starts[:, 1:] - starts[:, :-1] >= 2).all()
    assert starts.min() == 5 and starts.max() == 13  # the last pair may end at position 14
    with pytest.raises(ConfigError, match="pairs need"):
        pair_starts(1, 4, 0, 7, gen)


def test_compete_puts_each_output_where_asked():
    gen = torch.Generator().manual_seed(2)
    found = Instances.draw("random", lexicon(), {1, 2, 3, 4}, 8, 32, 4, "uniform", gen)
    for o1_last in (True, False):
        prompts = found.compete(1, 2, 1, 3, 3, o1_last)
        assert (pair_count(prompts, 1, 2) == 1).all() and (pair_count(prompts, 1, 3) == 3).all()
        pos_o1 = (prompts == 2).float().argmax(1)
        last_o2 = (prompts == 3).long().cumsum(1).argmax(1)
        assert ((pos_o1 > last_o2) == o1_last).all()


def test_region_and_count_refusals():
    gen = torch.Generator().manual_seed(3)
    with pytest.raises(ConfigError, match="do not fit"):
        Instances.draw("random", lexicon(), {0}, 1, 16, 5, "early", gen)
    with pytest.raises(ConfigError, match="unknown region"):
        region_span("middle", 16)
    assert counts_that_fit([0, 1, 2, 8], 12) == [0, 1, 2]


def test_crossing_needs_the_margin_to_stay_positive():
    margins = np.array([[-1, 1, -1, 1, 1], [-1, -1, -1, -1, -1], [1, 1, 1, 1, 1]], dtype=float)
    assert crossings([0, 1, 2, 3, 4], margins).tolist() == [3, math.inf, 0]


def test_law_threshold_rises_with_gap_and_length():
    assert law_threshold(1.0, 64, 4.0, 50.0) < law_threshold(2.0, 64, 4.0, 50.0) < law_threshold(2.0, 256, 4.0, 50.0)
    assert law_threshold(5.0, 64, 4.0, 50.0) == math.inf  # the copy cannot beat a gap larger than beta
    assert law_threshold(-1.0, 64, 4.0, 50.0) == 0.0


class ConstructedReader(Reader):
    """A model whose last-position logits are the closed form exactly: the global term g(.|q) plus beta times the
    attention share, under an exact previous-token head (every key after a q scores lambda, the others 0)."""

    def __init__(self, g: torch.Tensor, lam: float, beta: float):
        super().__init__(name="constructed", kind="toy", model=torch.nn.Identity(), device=torch.device("cpu"),
                         dtype=torch.float64, n_layers=2, n_heads=1, vocab_size=g.shape[0], max_len=None)
        self.g, self.key, self.copy = g, torch.full((g.shape[0],), lam), torch.full((g.shape[0],), beta)
        self.copy_on = True

    def _last(self, ids):
        copy = self.copy if self.copy_on else torch.zeros_like(self.copy)
        return law_logits(ids, self.key, copy, self.g, torch.ones(ids.shape[1]))

    @contextmanager
    def ablate(self, heads):
        self.copy_on = False
        try:
            yield
        finally:
            self.copy_on = True


def constructed_study(lam=2.0, beta=6.0, n_queries=8, lengths=(16, 32, 64, 128)):
    g = torch.log_softmax(torch.randn(N, N, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2.5, -1)
    reader = ConstructedReader(g, lam, beta)
    words = lexicon()
    queries = list(range(n_queries))
    learned = own_bigram(reader, queries, [])
    b_star = favourites(learned, queries, set())
    pairs = choose_pairs(learned, queries, b_star, words.pool, 3)
    return reader, words, queries, pairs, Setting(reader, words, pairs, seed=0, batch_tokens=512), list(lengths)


def test_own_bigram_recovers_the_constructed_global_term():
    reader, words, queries, _, _, _ = constructed_study()
    # after "q" alone the copy lands on q only, so g(.|q) read from the model is the constructed one up to a shift
    learned = own_bigram(reader, queries, [])
    b_star = favourites(learned, queries, set())
    for q, b in zip(queries, b_star):
        row = reader.g[q].clone()
        row[q] = -torch.inf
        assert b == int(row.argmax())
    pairs = choose_pairs(learned, queries, b_star, words.pool, 3)
    for p in pairs:
        assert p["gap"] == pytest.approx((reader.g[p["q"], p["b"]] - reader.g[p["q"], p["o"]]).item())
    gaps = [p["gap"] for p in pairs]
    assert min(gaps) > 0 and max(gaps) > 3 * min(gaps)  # log-spaced ranks give small and large gaps


def test_measured_threshold_equals_the_closed_form_on_a_constructed_model(tmp_path: Path):
    lam, beta = 2.0, 6.0
    reader, words, queries, pairs, setting, lengths = constructed_study(lam, beta)
    counts = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12]
    jobs = [hijack_job(setting, f"grid/random/T{T}", list(range(len(pairs))), "random", T, counts, 2) for T in lengths]
    done = run_jobs(jobs, tmp_path / "jobs.jsonl", "s", False, lambda *a, **k: _Bar())
    checked = 0
    for T in lengths:
        curves = curves_of(done[f"grid/random/T{T}"], pairs)
        fit = done[f"grid/random/T{T}"]["counts"]
        for pair_index, c_star in zip(curves["pair"], curves["c_star"]):
            p = pairs[pair_index]
            gap = (reader.g[p["q"], p["b"]] - reader.g[p["q"], p["o"]]).item()
            expected = hijack_threshold(T, lam, beta, beta, gap).item()
            if expected <= max(fit):
                assert c_star == min(c for c in fit if c >= expected), (T, p, c_star, expected)
                checked += 1
            else:
                assert c_star == math.inf
    assert checked > 20
    rows = threshold_rows(done, pairs, "random", seed=0)
    assert [r["T"] for r in rows] == lengths
    assert rows[0]["c_star"] <= rows[-1]["c_star"]  # dilution: longer prompts need more pairs
    assert all(r["gap"]["spearman"] > 0.5 for r in rows if math.isfinite(r["c_star"]))
    # the two-number law recovers the constructed model out of sample, and beats the rules without numbers
    fitted = law_fit(done, pairs, queries, 0.5, seed=0)["rules"]
    assert fitted["law"]["accuracy_held_out"] > 0.97
    assert fitted["law"]["accuracy_held_out"] > fitted["first_sight"]["accuracy_held_out"] + 0.1
    assert fitted["law"]["accuracy_held_out"] > fitted["never"]["accuracy_held_out"] + 0.1
    assert fitted["law"]["accuracy_held_out"] > fitted["law_without_gap"]["accuracy_held_out"]


def test_fit_is_scored_only_on_held_out_queries():
    rng = np.random.default_rng(0)
    n = 400
    query = rng.integers(0, 10, n)
    gap, T = rng.uniform(0.5, 3, n), rng.choice([16, 64, 256], n)
    c_star = law_threshold(gap, T, 5.0, 30.0)
    counts = np.arange(0, 9)
    cells = {"query": np.repeat(query, 9), "gap": np.repeat(gap, 9), "context_gap": np.repeat(gap, 9), "T": np.repeat(T, 9),
             "count": np.tile(counts, n), "flipped": (np.tile(counts, n) >= np.repeat(c_star, 9))}
    # held-out queries behave differently (their outputs never win): the law fitted on the others must not see that
    held = query >= 5
    cells["flipped"][np.repeat(held, 9)] = False
    curves = {"query": query, "gap": gap, "context_gap": gap, "T": T, "c_star": np.where(held, np.inf, c_star)}
    out = fit_and_score(cells, curves, set(range(5)), cap=9.0)
    assert out["rules"]["law"]["accuracy_fit"] > 0.99
    assert out["rules"]["law"]["accuracy_held_out"] < out["rules"]["never"]["accuracy_held_out"]


def test_ablation_and_compete_jobs_share_their_prompts(tmp_path: Path):
    reader, words, queries, pairs, setting, _ = constructed_study()
    ids = list(range(6))
    jobs = [hijack_job(setting, f"ablation/{name}", ids, "random", 32, [0, 1, 2, 4], 1, heads=heads, prompt_key="ablation")
            for name, heads in (("none", ()), ("induction", ((1, 0),)))]
    jobs.append(compete_job(setting, "compete", [(0, 1), (3, 4)], "random", 32, 2))
    done = run_jobs(jobs, tmp_path / "jobs.jsonl", "s", False, lambda *a, **k: _Bar())
    intact, ablated = (np.asarray(done[k]["margin"]) for k in ("ablation/none", "ablation/induction"))
    # with the copy switched off the margin is the same -gap at every count
    assert np.allclose(ablated, ablated[..., :1]) and np.allclose(ablated[..., 0], intact[..., 0])
    assert (intact[..., -1] > intact[..., 0]).all()
    rows = done["compete"]["rows"]
    assert len(rows) == 2 * 5 * 2 and all(len(r["margin"]) == 2 for r in rows)
    # an exact previous-token head counts pairs wherever they sit: recency changes nothing, counts do
    by = {(tuple(r["pairs"]), r["c1"], r["c2"], r["o1_last"]): np.asarray(r["margin"]) for r in rows}
    for (pair, c1, c2, last), m in by.items():
        assert np.allclose(m, by[(pair, c1, c2, not last)])
        if (c1, c2) == (2, 1):
            assert (m > by[(pair, 1, 2, last)]).all()


def test_resume_keeps_finished_jobs_and_reruns_give_the_same_numbers(tmp_path: Path):
    _, _, _, pairs, setting, _ = constructed_study()
    partial = tmp_path / "jobs.jsonl"
    jobs = [hijack_job(setting, f"grid/random/T{T}", [0, 1], "random", T, [0, 1, 2], 1) for T in (16, 32)]
    first = run_jobs(jobs[:1], partial, "s", False, lambda *a, **k: _Bar())
    calls = []
    wrapped = [jobs[0].__class__(j.key, j.units, (lambda j=j: calls.append(j.key) or j.run())) for j in jobs]
    both = run_jobs(wrapped, partial, "s", True, lambda *a, **k: _Bar())
    assert calls == ["grid/random/T32"]
    assert both["grid/random/T16"]["margin"] == first["grid/random/T16"]["margin"]
    again = run_jobs(jobs, tmp_path / "other.jsonl", "s", False, lambda *a, **k: _Bar())
    assert again["grid/random/T32"]["margin"] == both["grid/random/T32"]["margin"]


class _Bar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, text):
        pass

    def close(self):
        pass
