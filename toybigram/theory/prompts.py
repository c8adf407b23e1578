"""Designed prompts, with exact counts.

A designed prompt of length T ends with the query q and holds q nowhere else except in
"q o" pairs: q is followed by o_i exactly c_i times. Filler tokens come from the global
chain pi_b with q removed (renormalised; a row whose whole mass is on q falls back to
pi_u without q), and the first token is always filler, so no position reads q by accident.
"""
from __future__ import annotations

import numpy as np
import torch

from toybigram.data import BigramChain, TriggerSampler
from toybigram.errors import ConfigError

COMPETE_COUNTS = ((1, 2), (2, 1), (2, 2), (1, 3), (3, 1))  # (c1, c2): how often each of two outputs follows q


def _filler_tables(chain: BigramChain, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """pi_u and pi_b without q, renormalised, as torch tensors."""
    unigram = chain.unigram.copy()
    unigram[q] = 0.0
    if unigram.sum() <= 0:
        raise ConfigError(f"theory: the chain has no token other than q={q} to fill a prompt with")
    unigram /= unigram.sum()
    rows = chain.transition.copy()
    rows[:, q] = 0.0
    empty = rows.sum(1) <= 0
    rows[empty] = unigram
    rows /= rows.sum(1, keepdims=True)
    return torch.tensor(unigram), torch.tensor(rows)


def pair_starts(batch: int, n_pairs: int, lo: int, hi: int, generator: torch.Generator) -> torch.Tensor:
    """Where ``n_pairs`` non-overlapping two-token pairs start inside positions [lo, hi): (batch, n_pairs), ascending.

    Uniform over the layouts: the span holds hi - lo - 2 n_pairs filler tokens and n_pairs pairs as
    hi - lo - n_pairs items, and the pairs take a random n_pairs of them (each earlier pair shifts
    the later ones by one position). Refuses a span too short for the pairs.
    """
    items = hi - lo - n_pairs
    if lo < 0 or hi - lo < 2 * n_pairs:
        raise ConfigError(f"{n_pairs} pairs need {2 * n_pairs} positions, the span [{lo}, {hi}) has {max(hi - lo, 0)}")
    slots = torch.rand(batch, items, generator=generator).argsort(-1)[:, :n_pairs].sort(-1).values
    return lo + slots + torch.arange(n_pairs)


def designed(chain: BigramChain, q: int, pairs: list[tuple[int, int]], T: int, batch: int,
             generator: torch.Generator) -> torch.Tensor:
    """Prompts (batch, T): q followed by o exactly c times for each (o, c) in ``pairs``, last token q.

    Pair positions are uniform over the layouts that start with filler; refuses requests
    that cannot be met (o equal to q or repeated, negative counts, too many pairs for T).
    """
    n = chain.vocab_size
    outs = [int(o) for o, _ in pairs]
    counts = [int(c) for _, c in pairs]
    if not 0 <= q < n:
        raise ConfigError(f"theory: query token {q} is outside the vocabulary [0, {n})")
    for o, c in zip(outs, counts):
        if not 0 <= o < n:
            raise ConfigError(f"theory: output token {o} is outside the vocabulary [0, {n})")
        if o == q:
            raise ConfigError(f"theory: output token {o} equals the query token; q o pairs need o != q")
        if c < 0:
            raise ConfigError(f"theory: count {c} for output {o} is negative")
    if len(set(outs)) != len(outs):
        raise ConfigError(f"theory: output tokens {outs} repeat; give each output once")
    n_pairs = sum(counts)
    filler = T - 2 * n_pairs - 1
    if filler < 1:
        raise ConfigError(f"theory: {n_pairs} q o pairs need a prompt of at least {2 * n_pairs + 2} tokens "
                          f"(one filler token first, two per pair, the final q), got T={T}")
    unigram, rows = _filler_tables(chain, q)

    starts = pair_starts(batch, n_pairs, 1, T - 1, generator)
    kinds = torch.tensor([o for o, c in zip(outs, counts) for _ in range(c)], dtype=torch.long)
    kinds = kinds[torch.rand(batch, n_pairs, generator=generator).argsort(-1)] if n_pairs else kinds.expand(batch, 0)
    forced = torch.full((batch, T), -1, dtype=torch.long)
    forced.scatter_(1, starts, q)
    forced.scatter_(1, starts + 1, kinds)
    forced[:, -1] = q

    tokens = torch.empty(batch, T, dtype=torch.long)
    state = torch.multinomial(unigram, batch, replacement=True, generator=generator)
    tokens[:, 0] = state
    for t in range(1, T):
        free = torch.multinomial(rows[state], 1, generator=generator)[:, 0]
        state = torch.where(forced[:, t] >= 0, forced[:, t], free)
        tokens[:, t] = state
    return tokens


def hijack(chain: BigramChain, q: int, o: int, c: int, T: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """hijack(q, o, c, T): q followed by o exactly c times, ending with q."""
    return designed(chain, q, [(o, c)], T, batch, generator)


def compete(chain: BigramChain, q: int, o1: int, c1: int, o2: int, c2: int, T: int, batch: int,
            generator: torch.Generator) -> torch.Tensor:
    """compete(q, o1, c1, o2, c2, T): two in-context targets for one query."""
    return designed(chain, q, [(o1, c1), (o2, c2)], T, batch, generator)


def dilution(chain: BigramChain, q: int, o: int, c: int, lengths: list[int], batch: int,
             generator: torch.Generator) -> dict[int, torch.Tensor]:
    """A fixed count c of "q o" while filler makes the prompt longer: {T: prompts}."""
    return {T: hijack(chain, q, o, c, T, batch, generator) for T in lengths}


def length_prompts(sampler: TriggerSampler, T: int, batch: int):
    """Prompts from the training distribution at length T (a Batch; use .inputs and .labels)."""
    if T < 1:
        raise ConfigError(f"theory: prompt length must be positive, got {T}")
    return sampler.sample(batch, T)


def count_pairs(tokens: torch.Tensor, q: int, o: int) -> torch.Tensor:
    """How often q is followed by o in each prompt (B,)."""
    return ((tokens[:, :-1] == q) & (tokens[:, 1:] == o)).sum(1)


def global_favourite(g_rows: torch.Tensor | np.ndarray, q: int) -> int:
    """b* = argmax_j g(j | q) of a global map (the chain's pi_b or a g read from weights)."""
    return int(torch.as_tensor(np.asarray(g_rows))[q].argmax())


def counterfactual(chain: BigramChain, prompts: torch.Tensor, q: int, generator: torch.Generator) -> torch.Tensor:
    """The designed prompts with every "q o" pair replaced by two fresh chain steps (the final q kept).

    Every other token stays where it was, so the prompt and its counterfactual differ only in
    the in-context evidence: the logit difference between them is what that evidence does.
    The fresh steps follow pi_b without q (as the filler does), so q occurs only at the end.
    """
    _, rows = _filler_tables(chain, q)
    out = prompts.clone()
    B, T = out.shape
    is_pair = torch.zeros_like(out, dtype=torch.bool)
    is_pair[:, :-1] = out[:, :-1] == q
    is_pair[:, 1:] |= is_pair[:, :-1].clone()
    is_pair[:, -1] = False
    for t in range(1, T - 1):
        if is_pair[:, t].any():
            fresh = torch.multinomial(rows[out[:, t - 1]], 1, generator=generator)[:, 0]
            out[:, t] = torch.where(is_pair[:, t], fresh, out[:, t])
    return out
