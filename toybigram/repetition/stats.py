"""Paired bootstrap intervals over prompts (loop rates) and over text windows (perplexity).

Every condition is measured on the same prompts and windows as the unedited model, so
one resample of units is applied to both: the interval is that of the difference, not
of two independent means. Random neuron sets average their draws inside each resample,
so the interval reflects prompt-to-prompt variation; the spread over draws is reported
separately (min, max).
"""
from __future__ import annotations

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


def resample(n_units: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n_units) unit indices drawn with replacement."""
    return np.random.default_rng([seed, n_units]).integers(0, n_units, size=(n_boot, n_units))


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def loop_rates(base: np.ndarray, edited: np.ndarray, sign: float, seed: int = 0) -> dict:
    """Share of edited outputs that loop, and the effect ``sign * (edited - base)``, with intervals.

    ``base`` (P,) and ``edited`` (draws, P) hold 1 where a prompt's output loops;
    ``sign`` -1 counts loops removed (deactivation), +1 loops added (activation).
    """
    base, edited = np.asarray(base, float), np.atleast_2d(np.asarray(edited, float))
    idx = resample(base.size, seed=seed)
    rate_boot = edited[:, idx].mean(axis=(0, 2))
    effect_boot = sign * (rate_boot - base[idx].mean(1))
    rate_lo, rate_hi = interval(rate_boot)
    effect_lo, effect_hi = interval(effect_boot)
    per_draw = edited.mean(1)
    return {
        "rate": float(edited.mean()), "rate_lo": rate_lo, "rate_hi": rate_hi,
        "rate_min": float(per_draw.min()), "rate_max": float(per_draw.max()),
        "effect": float(sign * (edited.mean() - base.mean())), "effect_lo": effect_lo, "effect_hi": effect_hi,
    }


def perplexity_ratio(base_nll: np.ndarray, edited_nll: np.ndarray, tokens: np.ndarray, seed: int = 0) -> dict:
    """Edited over unedited perplexity, with an interval over windows.

    ``base_nll`` (C,) and ``edited_nll`` (draws, C) are summed NLLs per window, ``tokens``
    (C,) the scored tokens per window; draws are averaged in log space (geometric mean).
    """
    base_nll, tokens = np.asarray(base_nll, float), np.asarray(tokens, float)
    edited_nll = np.atleast_2d(np.asarray(edited_nll, float))
    idx = resample(base_nll.size, seed=seed)
    n_tok = tokens[idx].sum(1)
    log_ratio = edited_nll[:, idx].sum(2).mean(0) / n_tok - base_nll[idx].sum(1) / n_tok
    lo, hi = interval(np.exp(log_ratio))
    per_draw = np.exp(edited_nll.sum(1) / tokens.sum())
    return {
        "perplexity": float(np.exp(edited_nll.sum(1).mean() / tokens.sum())),
        "perplexity_min": float(per_draw.min()), "perplexity_max": float(per_draw.max()),
        "ratio": float(np.exp((edited_nll.sum(1).mean() - base_nll.sum()) / tokens.sum())), "ratio_lo": lo, "ratio_hi": hi,
    }
