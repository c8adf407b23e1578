"""The words a hijack study uses and the model's own bigram over them.

For a real LM the words are single-token words (a space and letters: " value") ranked by how
often they occur in shipped prose (the corpus); for the toy they are its tokens ranked by the
chain's first-token distribution, and its corpus is a long sample of its own chain. The model's
own bigram g(.|q) is its next-token log-distribution after "q" alone and after a few neutral
one-word contexts "x q" (x random frequent words), averaged over the contexts; its favourite b*(q)
is the argmax over the whole vocabulary (q itself and special tokens excluded). Outputs o are
pool words at log-spaced ranks of g(.|q), so the gaps log p(b*|q) - log p(o|q) range from small
to large.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from toybigram.errors import ConfigError
from toybigram.hijack.reader import Reader
from toybigram.repetition.perplexity import load_text

WORD = re.compile(r"^ [A-Za-z]{2,}$")


@dataclass
class Lexicon:
    """Frequent words (``pool``, most frequent first), the corpus as tokens, and what each token reads as."""

    pool: list[int]
    counts: dict[int, int]
    corpus: np.ndarray
    corpus_name: str
    excluded: set[int] = field(default_factory=set)  # never a favourite: special tokens

    def draw(self, n: int, banned: set[int], generator: torch.Generator) -> torch.Tensor:
        """``n`` pool words drawn uniformly, none of them in ``banned``."""
        allowed = torch.tensor([w for w in self.pool if w not in banned])
        return allowed[torch.randint(len(allowed), (n,), generator=generator)]


def hf_lexicon(reader, corpus: str, pool_size: int, pattern: str = WORD.pattern) -> Lexicon:
    """Single-token words (tokens whose text matches ``pattern``) ranked by their count in the corpus text."""
    text, description = load_text(corpus)
    try:
        word = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"words.pattern: {pattern!r} is not a regular expression ({err})") from None
    tokens = np.asarray(reader.encode(text), dtype=np.int64)
    ids, counts = np.unique(tokens, return_counts=True)
    words = [(int(c), int(i)) for i, c in zip(ids, counts) if word.match(reader.token_text(int(i)))]
    words.sort(key=lambda wc: (-wc[0], wc[1]))
    if len(words) < pool_size:
        raise ConfigError(f"words.pool_size: the corpus has only {len(words)} single-token words, asked for {pool_size}")
    pool = [i for _, i in words[:pool_size]]
    special = set(int(t) for t in getattr(reader.tokenizer, "all_special_ids", []))
    return Lexicon(pool, {i: c for c, i in words[:pool_size]}, tokens, description, special)


def toy_lexicon(chain, pool_size: int, corpus_tokens: int, generator: torch.Generator) -> Lexicon:
    """The toy's tokens ranked by the chain's first-token distribution; its corpus is a sample of the chain."""
    order = np.argsort(-chain.unigram, kind="stable")[:pool_size]
    corpus = sample_chain(chain, corpus_tokens, generator)
    counts = np.bincount(corpus, minlength=chain.vocab_size)
    return Lexicon([int(t) for t in order], {int(t): int(counts[t]) for t in order}, corpus, "a sample of the toy's chain")


def sample_chain(chain, length: int, generator: torch.Generator) -> np.ndarray:
    """One sequence of ``length`` tokens from the chain (first token from pi_u)."""
    unigram, rows = torch.tensor(chain.unigram), torch.tensor(chain.transition)
    out = torch.empty(length, dtype=torch.long)
    out[0] = torch.multinomial(unigram, 1, generator=generator)
    for t in range(1, length):
        out[t] = torch.multinomial(rows[out[t - 1]], 1, generator=generator)
    return out.numpy()


def choose_queries(lexicon: Lexicon, n: int, query_pool: int, generator: torch.Generator) -> list[int]:
    """``n`` queries drawn without replacement from the ``query_pool`` most frequent words."""
    top = lexicon.pool[: min(query_pool, len(lexicon.pool))]
    if n > len(top):
        raise ConfigError(f"words.n_queries: asked for {n} queries from the {len(top)} most frequent words; "
                          "raise words.query_pool or lower words.n_queries")
    return [top[i] for i in torch.randperm(len(top), generator=generator)[:n].tolist()]


@torch.no_grad()
def own_bigram(reader: Reader, queries: list[int], contexts: list[int], batch: int = 256) -> torch.Tensor:
    """g(.|q) (Q, V): the model's next-token log-probabilities after "q" and after "x q" for each context word x,
    averaged over those contexts."""
    sums = torch.zeros(len(queries), reader.vocab_size, dtype=torch.float64)
    q = torch.tensor(queries)[:, None]
    variants = [q] + [torch.cat([torch.full_like(q, x), q], dim=1) for x in contexts]
    for prompts in variants:
        for lo in range(0, len(prompts), batch):
            sums[lo:lo + batch] += torch.log_softmax(reader.last_logits(prompts[lo:lo + batch]), dim=-1)
    return sums / len(variants)


def favourites(g: torch.Tensor, queries: list[int], excluded: set[int]) -> list[int]:
    """b*(q) = argmax_j g(j|q) over the vocabulary, j != q and j not a special token."""
    out = []
    for row, q in zip(g, queries):
        row = row.clone()
        row[list(excluded | {q})] = -torch.inf
        out.append(int(row.argmax()))
    return out


def choose_pairs(g: torch.Tensor, queries: list[int], b_star: list[int], pool: list[int], n_outputs: int) -> list[dict]:
    """(q, o, b*) with o a pool word (not q, not b*) at log-spaced ranks of g(.|q) among the pool, and the gap
    g(b*|q) - g(o|q) the in-context evidence has to beat."""
    pairs = []
    for row, q, b in zip(g, queries, b_star):
        candidates = [w for w in pool if w not in (q, b)]
        ranked = [candidates[i] for i in row[candidates].argsort(descending=True).tolist()]
        ranks = np.unique(np.round(np.geomspace(1, len(ranked), n_outputs)).astype(int) - 1)
        for rank in ranks:
            o = ranked[int(rank)]
            pairs.append({"q": q, "o": o, "b": b, "rank": int(rank), "gap": float(row[b] - row[o]),
                          "log_p_b": float(row[b]), "log_p_o": float(row[o])})
    return pairs


def corpus_bigram(corpus: np.ndarray, queries: list[int]) -> dict[int, dict[int, int]]:
    """Counts of the token after each query in the corpus: {q: {next: count}}."""
    out: dict[int, dict[int, int]] = {q: {} for q in queries}
    wanted = np.isin(corpus[:-1], queries)
    for q, nxt in zip(corpus[:-1][wanted].tolist(), corpus[1:][wanted].tolist()):
        out[q][nxt] = out[q].get(nxt, 0) + 1
    return out


def compare_with_corpus(g: torch.Tensor, queries: list[int], b_star: list[int], corpus: np.ndarray,
                        min_count: int = 5) -> dict:
    """How the model's own bigram compares with the corpus bigram: for queries seen at least ``min_count``
    times, the share whose corpus favourite is the model's b*, and the median rank of the corpus
    favourite in the model's g(.|q) (0: the model's favourite too)."""
    counts = corpus_bigram(corpus, queries)
    same, ranks, rows = 0, [], []
    for row, q, b in zip(g, queries, b_star):
        seen = counts[q]
        if sum(seen.values()) < min_count:
            continue
        top = max(seen, key=lambda t: (seen[t], -t))
        rank = int((row > row[top]).sum())
        same += int(top == b)
        ranks.append(rank)
        rows.append({"q": q, "corpus_favourite": top, "corpus_share": seen[top] / sum(seen.values()), "lm_rank": rank})
    n = len(ranks)
    return {"queries_compared": n, "min_count": min_count, "same_favourite": same / n if n else None,
            "median_rank_of_corpus_favourite": float(np.median(ranks)) if n else None, "rows": rows}
