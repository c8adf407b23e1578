"""Global knowledge: a bigram Markov chain (pi_u, pi_b) from one of three sources."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from toybigram.errors import ConfigError, require

SHAKESPEARE_TABLE = "shakespeare_bigram.json"


@dataclass(frozen=True)
class BigramChain:
    """A bigram chain over N tokens.

    unigram:    pi_u, shape (N,), the distribution of the first token.
    transition: pi_b, shape (N, N), row i is pi_b(. | i).
    alphabet:   the symbol of each token, when tokens are characters.
    """

    unigram: np.ndarray
    transition: np.ndarray
    alphabet: tuple[str, ...] | None = None
    name: str = "chain"

    @property
    def vocab_size(self) -> int:
        return int(self.unigram.shape[0])

    def conditional_entropy(self) -> np.ndarray:
        """H(pi_b(. | i)) in nats for every i, shape (N,)."""
        p = self.transition
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, -p * np.log(p), 0.0)
        return terms.sum(axis=1)

    def decode(self, ids) -> str:
        if self.alphabet is None:
            return " ".join(str(int(i)) for i in ids)
        return "".join(self.alphabet[int(i)] for i in ids)

    @classmethod
    def from_counts(
        cls, unigram_counts, bigram_counts, alphabet=None, name: str = "counts"
    ) -> "BigramChain":
        """Normalise counts; a row never observed falls back to the unigram distribution."""
        unigram = np.asarray(unigram_counts, dtype=np.float64)
        bigram = np.asarray(bigram_counts, dtype=np.float64)
        unigram = unigram / unigram.sum()
        row_sums = bigram.sum(axis=1, keepdims=True)
        transition = np.where(row_sums > 0, bigram / np.maximum(row_sums, 1.0), unigram[None, :])
        return cls(unigram, transition, None if alphabet is None else tuple(alphabet), name)


def stationary_distribution(transition: np.ndarray) -> np.ndarray:
    """The stationary distribution pi = pi P of an irreducible chain (left eigenvector for 1)."""
    n = transition.shape[0]
    # Solve pi (P - I) = 0 with sum(pi) = 1 as a least-squares system: stable for any N.
    system = np.vstack([transition.T - np.eye(n), np.ones((1, n))])
    rhs = np.zeros(n + 1)
    rhs[-1] = 1.0
    pi, *_ = np.linalg.lstsq(system, rhs, rcond=None)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def shakespeare_chain() -> BigramChain:
    """Character bigrams of Shakespeare's plays over the 65-symbol tiny-Shakespeare alphabet."""
    text = resources.files("toybigram.data").joinpath(SHAKESPEARE_TABLE).read_text("utf-8")
    table = json.loads(text)
    return BigramChain.from_counts(
        table["unigram_counts"], table["bigram_counts"], table["alphabet"], name="shakespeare"
    )


def dirichlet_chain(vocab_size: int, alpha: float, seed: int) -> BigramChain:
    """Rows of pi_b ~ Dirichlet(alpha * 1); pi_u is the stationary distribution. Seeded."""
    require(vocab_size >= 2, "data.vocab_size", f"must be at least 2, got {vocab_size}")
    require(alpha > 0, "data.dirichlet_alpha", f"must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    transition = rng.dirichlet(np.full(vocab_size, float(alpha)), size=vocab_size)
    # Tiny alpha can underflow whole rows to zero mass on most tokens; keep rows normalised.
    transition = transition / transition.sum(axis=1, keepdims=True)
    return BigramChain(stationary_distribution(transition), transition, None, name="dirichlet")


def text_chain(path: str | Path, vocab_size: int | None = None) -> BigramChain:
    """Character statistics of a text file, restricted to its ``vocab_size`` most frequent symbols.

    Symbols outside the kept set are dropped before counting bigrams.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.text_path: no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"data.text_path: cannot read {path} as UTF-8 text ({err})") from None
    frequencies = Counter(text)
    require(len(frequencies) >= 2, "data.text_path", f"{path} has fewer than 2 distinct symbols")
    if vocab_size is not None:
        require(
            vocab_size <= len(frequencies),
            "data.vocab_size",
            f"{vocab_size} exceeds the {len(frequencies)} distinct symbols of {path}",
        )
    ranked = sorted(frequencies, key=lambda ch: (-frequencies[ch], ch))
    kept = sorted(ranked[: vocab_size or len(ranked)])
    index = {ch: i for i, ch in enumerate(kept)}
    ids = np.array([index[ch] for ch in text if ch in index], dtype=np.int64)
    n = len(kept)
    unigram = np.bincount(ids, minlength=n)
    bigram = np.bincount(ids[:-1] * n + ids[1:], minlength=n * n).reshape(n, n)
    return BigramChain.from_counts(unigram, bigram, kept, name=f"text:{path.name}")


def build_chain(source: str, vocab_size: int | None, dirichlet_alpha: float, chain_seed: int,
                text_path: str | None) -> BigramChain:
    """The chain named by ``data.source``."""
    if source == "shakespeare":
        chain = shakespeare_chain()
        require(
            vocab_size in (None, chain.vocab_size),
            "data.vocab_size",
            f"the shakespeare source has exactly {chain.vocab_size} symbols, got {vocab_size}",
        )
        return chain
    if source == "dirichlet":
        require(vocab_size is not None, "data.vocab_size", "is required for the dirichlet source")
        return dirichlet_chain(int(vocab_size), dirichlet_alpha, chain_seed)
    if source == "text":
        require(bool(text_path), "data.text_path", "is required for the text source")
        if vocab_size is not None:
            require(vocab_size >= 2, "data.vocab_size", f"must be at least 2, got {vocab_size}")
        return text_chain(text_path, vocab_size)
    raise ConfigError(f"data.source: unknown source {source!r} (choose shakespeare, dirichlet or text)")
