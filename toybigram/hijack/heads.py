"""Induction heads found by behaviour, and what they do during a hijack.

The prefix-matching score of a head is its mean attention, on a sequence of random words repeated
twice, from each position of the second copy to the position just after the same word's first
occurrence: what an induction head attends to. Heads scoring at least a threshold (at most
``max_heads``, best first) are the study's induction heads. During a hijack the same heads'
attention from the final q to the o's that follow earlier q's says whether they carry the copy.
"""
from __future__ import annotations

import torch

from toybigram.hijack.lexicon import Lexicon
from toybigram.hijack.reader import Head, Reader


@torch.no_grad()
def prefix_matching(reader: Reader, lexicon: Lexicon, length: int, sequences: int, generator: torch.Generator) -> torch.Tensor:
    """(layers, heads) prefix-matching scores on ``sequences`` random word sequences of ``length`` repeated twice.

    The words of one sequence are distinct, so each position of the second copy has exactly one earlier
    occurrence of its word.
    """
    pool = torch.tensor(lexicon.pool)
    if length > len(pool):
        length = len(pool)
    first = torch.stack([pool[torch.randperm(len(pool), generator=generator)[:length]] for _ in range(sequences)])
    tokens = torch.cat([first, first], dim=1)
    offset = len(reader.start)
    second = torch.arange(length, 2 * length) + offset
    target = second - length + 1  # the token after the first occurrence
    scores = []
    for pattern in reader.patterns(tokens):
        scores.append(pattern[:, :, second, target].mean(dim=(0, 2)))  # (H,)
    return torch.stack(scores)


def induction_heads(scores: torch.Tensor, threshold: float, max_heads: int) -> list[Head]:
    """Heads scoring at least ``threshold``, best first, at most ``max_heads`` of them."""
    flat = [(float(scores[l, h]), (l, h)) for l in range(scores.shape[0]) for h in range(scores.shape[1])]
    chosen = [head for score, head in sorted(flat, reverse=True) if score >= threshold]
    return chosen[:max_heads]


@torch.no_grad()
def attention_to_outputs(reader: Reader, prompts: torch.Tensor, o: int, heads: list[Head]) -> list[dict]:
    """Per hijack prompt (B, T) with c >= 1 pairs, at its last position: the attention each chosen head, and the
    mean of all other heads, puts on the o's that follow an earlier q (the positions an induction head copies
    from), summed over those positions."""
    q = prompts[:, -1:]
    is_copy = torch.zeros_like(prompts, dtype=torch.bool)
    is_copy[:, 1:] = (prompts[:, :-1] == q) & (prompts[:, 1:] == o)
    if reader.start:
        is_copy = torch.cat([torch.zeros(len(prompts), len(reader.start), dtype=torch.bool), is_copy], dim=1)
    per_head = torch.stack([(p[:, :, -1, :] * is_copy[:, None, :]).sum(-1) for p in reader.patterns(prompts)], dim=1)  # (B, L, H)
    chosen = torch.zeros(per_head.shape[1:], dtype=torch.bool)
    for layer, head in heads:
        chosen[layer, head] = True
    others = per_head[:, ~chosen].mean(-1) if (~chosen).any() else torch.full((len(prompts),), float("nan"))
    return [{"induction": [row[l, h].item() for l, h in heads], "other_mean": other.item()}
            for row, other in zip(per_head, others)]
