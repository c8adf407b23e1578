"""From measured margins to thresholds, the law's fit and its baselines.

A *curve* is one instance's margin m(c) = logit(o) - logit(b*) at the last position over the count
grid; its threshold c* is the first count from which the margin stays positive (inf: the grid's
largest count does not flip it). Aggregates resample *queries* (a query's pairs and instances move
together), so intervals hold for new words, not only for new filler.

The threshold law is the toy's closed form with two numbers: the in-context term is beta times the
attention share of c matching keys of strength E among T positions, a(c) = c E / (c E + T - c), and o
wins once beta a(c) > gap, gap = log p(b*|q) - log p(o|q) from the model's own bigram. Solving,

    c*(gap, T) = r T / (E (1 - r) + r),   r = gap / beta   (inf for r >= 1).

beta and E are fitted on half of the queries and scored on the others, against rules with no fitted
number (o wins at its first occurrence; o never wins), a constant threshold (one number) and the law
with the gap or the length taken out (does each input carry information?).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import spearmanr

from toybigram.theory.calculator import first_crossing

N_BOOT = 1000
BETAS = np.geomspace(0.1, 200.0, 90)
STRENGTHS = np.geomspace(1.0, 1e5, 90)


def crossings(counts: list[int], margins: np.ndarray) -> np.ndarray:
    """First count from which every margin (..., C) stays positive; inf if none (calculator.first_crossing)."""
    return first_crossing(torch.tensor(counts), torch.as_tensor(np.asarray(margins, dtype=float))).numpy()


def quantile(values: np.ndarray, q: float) -> float:
    """A quantile that tolerates inf (no interpolation between values)."""
    return float(np.quantile(values, q, method="inverted_cdf")) if len(values) else math.nan


def by_query_bootstrap(query_of: np.ndarray, statistic, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """95% interval of ``statistic(rows)`` over resampled queries (all rows of a drawn query come along)."""
    queries = np.unique(query_of)
    members = {q: np.flatnonzero(query_of == q) for q in queries}
    rng = np.random.default_rng([seed, len(query_of)])
    samples = []
    for _ in range(n_boot):
        drawn = rng.choice(queries, size=len(queries), replace=True)
        samples.append(statistic(np.concatenate([members[q] for q in drawn])))
    samples = np.asarray(samples, dtype=float)
    return quantile(samples, 0.025), quantile(samples, 0.975)


def threshold_summary(c_star: np.ndarray, query_of: np.ndarray, seed: int = 0) -> dict:
    """Median threshold over curves with a query-bootstrap interval, and the share of curves that flip at all."""
    lo, hi = by_query_bootstrap(query_of, lambda rows: quantile(c_star[rows], 0.5), seed=seed)
    return {"c_star": quantile(c_star, 0.5), "interval": [lo, hi], "flipped": float(np.isfinite(c_star).mean()),
            "curves": int(len(c_star)), "queries": int(len(np.unique(query_of)))}


def gap_dependence(c_star: np.ndarray, gap: np.ndarray, query_of: np.ndarray, seed: int = 0) -> dict:
    """Spearman correlation between a curve's threshold (inf ranks last) and its pair's gap, with an interval."""
    finite_cap = np.where(np.isfinite(c_star), c_star, 1e9)

    def rho(rows):
        if len(np.unique(finite_cap[rows])) < 2 or len(np.unique(gap[rows])) < 2:
            return 0.0
        return float(spearmanr(finite_cap[rows], gap[rows]).statistic)

    lo, hi = by_query_bootstrap(query_of, rho, seed=seed)
    return {"spearman": rho(np.arange(len(gap))), "interval": [lo, hi], "curves": int(len(gap))}


def law_threshold(gap, T, beta: float, strength: float) -> np.ndarray:
    """c*(gap, T) = r T / (E (1 - r) + r), r = gap / beta; inf where r >= 1."""
    r = np.asarray(gap, dtype=float) / beta
    with np.errstate(divide="ignore", invalid="ignore"):
        c = r * np.asarray(T, dtype=float) / (strength * (1 - r) + r)
    return np.where(r <= 0, 0.0, np.where(r < 1, c, np.inf))


def flips_predicted(c_star_rule: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """o predicted to win at count c when c >= c*."""
    return counts >= c_star_rule


def capped_error(predicted: np.ndarray, measured: np.ndarray, cap: float) -> float:
    """Mean |c*_predicted - c*_measured| with both capped at ``cap`` (inf and beyond-grid read as cap)."""
    return float(np.abs(np.minimum(predicted, cap) - np.minimum(measured, cap)).mean())


def fit_and_score(cells: dict, curves: dict, fit_queries: set, cap: float) -> dict:
    """Fit every rule on the fit queries' cells, score on the others.

    ``cells``: arrays over (curve, count) cells: query, gap, context_gap, T, count, flipped (margin > 0).
    ``curves``: arrays over curves: query, gap, context_gap, T, c_star (measured). ``gap`` is the model's own
    bigram gap; ``context_gap`` is -m(0), the margin b* holds over o in the same prompt without pairs.
    Each rule maps (gap, T) to a threshold; a cell is predicted right when (c >= c*) equals its flip.
    """
    fit_cell = np.isin(cells["query"], list(fit_queries))
    fit_curve = np.isin(curves["query"], list(fit_queries))
    median_gap = float(np.median(cells["gap"][fit_cell]))
    median_T = float(np.median(cells["T"][fit_cell]))

    def accuracy(rule, rows, gap="gap"):
        return float((flips_predicted(rule(cells[gap][rows], cells["T"][rows]), cells["count"][rows]) == cells["flipped"][rows]).mean())

    def best_law(transform, gap):
        grid = [(accuracy(lambda g, T: law_threshold(*transform(g, T), b, e), fit_cell, gap), b, e) for b in BETAS for e in STRENGTHS]
        score, beta, strength = max(grid, key=lambda t: (t[0], -t[1], -t[2]))
        return beta, strength

    constant = max(sorted(set(cells["count"].tolist()) | {math.inf}),
                   key=lambda k: accuracy(lambda g, T: np.full(len(g), k), fit_cell))
    rules = {
        "first_sight": (0, "none", "gap", lambda g, T: np.ones(len(g))),
        "never": (0, "none", "gap", lambda g, T: np.full(len(g), np.inf)),
        "constant": (1, f"c* = {constant} fitted", "gap", lambda g, T: np.full(len(g), constant)),
    }
    for name, transform, numbers, gap in (("law", lambda g, T: (g, T), 2, "gap"),
                                          ("law_without_gap", lambda g, T: (np.full(len(g), median_gap), T), 3, "gap"),
                                          ("law_without_length", lambda g, T: (g, np.full(len(g), median_T)), 3, "gap"),
                                          ("law_context_gap", lambda g, T: (g, T), 2, "context_gap")):
        beta, strength = best_law(transform, gap)
        rules[name] = (numbers, {"beta": beta, "E": strength}, gap,
                       (lambda tr, b, e: lambda g, T: law_threshold(*tr(g, T), b, e))(transform, beta, strength))
    held_cell, held_curve = ~fit_cell, ~fit_curve
    out = {}
    for name, (numbers, fitted, gap, rule) in rules.items():
        out[name] = {"numbers": numbers, "fitted": fitted, "gap": gap,
                     "accuracy_fit": accuracy(rule, fit_cell, gap), "accuracy_held_out": accuracy(rule, held_cell, gap),
                     "c_star_error_held_out": capped_error(rule(curves[gap][held_curve], curves["T"][held_curve]),
                                                           curves["c_star"][held_curve], cap)}
    return {"rules": out, "fit_queries": len(fit_queries), "held_out_queries": len(set(cells["query"].tolist()) - fit_queries),
            "fit_cells": int(fit_cell.sum()), "held_out_cells": int(held_cell.sum()), "cap": cap,
            "median_gap_fit": median_gap, "median_T_fit": median_T}
