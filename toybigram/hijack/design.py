"""Designed prompts for a real LM, with exact counts, built as nested series.

The theory's families (toybigram.theory.families: hijack, dilution, compete) on a model whose
filler is not a bigram chain. One *instance* is a filler sequence of length T and the starts of
up to ``c_max`` pair slots inside a region of it (theory.prompts.pair_starts, in a random order);
the prompt at count c writes "q o" into the first c slots and q last. Every count of an instance
shares its filler, so the margin against c is a paired curve and its crossing is one prompt's
threshold. The filler never holds q, o or b* (they are redrawn from the word pool), so the counts
are exact: q occurs c + 1 times, o c times, b* never.

Filler kinds: ``random`` (independent frequent words) and ``prose`` (windows of the corpus).
Regions: ``uniform`` (anywhere after the first token), ``early`` (first half), ``late`` (second half).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from toybigram.errors import ConfigError
from toybigram.hijack.lexicon import Lexicon
from toybigram.theory.prompts import pair_starts

FILLERS = ("random", "prose")
REGIONS = ("uniform", "early", "late")


def region_span(region: str, T: int) -> tuple[int, int]:
    """Positions [lo, hi) pairs may occupy: never the first token (filler) nor the last (the query)."""
    if region == "uniform":
        return 1, T - 1
    if region == "early":
        return 1, T // 2
    if region == "late":
        return T // 2, T - 1
    raise ConfigError(f"prompts: unknown region {region!r} (choose {', '.join(REGIONS)})")


def max_pairs(T: int, region: str = "uniform") -> int:
    lo, hi = region_span(region, T)
    return max(hi - lo, 0) // 2


def filler(kind: str, lexicon: Lexicon, banned: set[int], batch: int, T: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, T) filler without any banned token: independent pool words, or corpus windows with banned
    tokens replaced by pool words."""
    if kind == "random":
        return lexicon.draw(batch * T, banned, generator).view(batch, T)
    if kind != "prose":
        raise ConfigError(f"prompts.fillers: unknown filler {kind!r} (choose {', '.join(FILLERS)})")
    corpus = torch.as_tensor(lexicon.corpus)
    if len(corpus) < T:
        raise ConfigError(f"prompts: the corpus has {len(corpus)} tokens, fewer than a prompt of {T}")
    offsets = torch.randint(len(corpus) - T + 1, (batch,), generator=generator)
    out = corpus[offsets[:, None] + torch.arange(T)].clone()
    bad = torch.isin(out, torch.tensor(sorted(banned)))
    out[bad] = lexicon.draw(int(bad.sum()), banned, generator)
    return out


@dataclass
class Instances:
    """``batch`` fillers (batch, T) and, per row, pair-slot starts in the order counts fill them (batch, c_max)."""

    fill: torch.Tensor
    slots: torch.Tensor

    @classmethod
    def draw(cls, kind: str, lexicon: Lexicon, banned: set[int], batch: int, T: int, c_max: int, region: str,
             generator: torch.Generator) -> "Instances":
        lo, hi = region_span(region, T)
        if 2 * c_max > hi - lo:
            raise ConfigError(f"prompts: {c_max} pairs do not fit the {region} region of a prompt of {T} tokens")
        fill = filler(kind, lexicon, banned, batch, T, generator)
        starts = pair_starts(batch, c_max, lo, hi, generator)
        order = torch.rand(batch, c_max, generator=generator).argsort(-1)
        return cls(fill, starts.gather(1, order))

    def prompts(self, q: int, outputs: list[int], counts: list[int]) -> torch.Tensor:
        """(batch, T): each row's filler with sum(counts) pairs in its first slots, ``counts[i]`` of them
        "q outputs[i]" (taken in slot order), and q last."""
        n = sum(counts)
        if n > self.slots.shape[1]:
            raise ConfigError(f"prompts: {n} pairs asked for, the instances have {self.slots.shape[1]} slots")
        out = self.fill.clone()
        starts = self.slots[:, :n]
        kinds = torch.tensor([o for o, c in zip(outputs, counts) for _ in range(c)], dtype=torch.long)
        out.scatter_(1, starts, q)
        out.scatter_(1, starts + 1, kinds.expand(len(out), -1))
        out[:, -1] = q
        return out

    def series(self, q: int, o: int, counts: list[int]) -> torch.Tensor:
        """(len(counts), batch, T): the hijack prompts of every count, sharing fillers and slots."""
        return torch.stack([self.prompts(q, [o], [c]) for c in counts])

    def compete(self, q: int, o1: int, c1: int, o2: int, c2: int, o1_last: bool) -> torch.Tensor:
        """Two outputs after q: o1 takes the latest c1 of the c1 + c2 used slots (``o1_last``) or the earliest."""
        n = c1 + c2
        by_position = self.slots[:, :n].sort(-1).values
        first, second = (o2, o1) if o1_last else (o1, o2)
        count_first = c2 if o1_last else c1
        out = self.fill.clone()
        kinds = torch.tensor([first] * count_first + [second] * (n - count_first), dtype=torch.long)
        out.scatter_(1, by_position, q)
        out.scatter_(1, by_position + 1, kinds.expand(len(out), -1))
        out[:, -1] = q
        return out


def counts_that_fit(counts: list[int], T: int, region: str = "uniform") -> list[int]:
    """The counts of the grid whose pairs fit a prompt of length T in ``region``."""
    return [c for c in counts if c <= max_pairs(T, region)]
