"""Global knowledge: a bigram Markov chain (pi_u, pi_b) from one of three sources."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from toybigram.checks import choice, integer, number
from toybigram.checks import seed as check_seed
from toybigram.errors import ConfigError, require

SHAKESPEARE_TABLE = "shakespeare_bigram.json"
SOURCES = ("shakespeare", "dirichlet", "text")
# Building a chain and its samplers' alias tables is O(N^2) Python work, and the dirichlet
# chain's stationary distribution an O(N^3) solve: about two minutes at N = 4096.
MAX_VOCAB = 4096
# Beyond this a Dirichlet row is uniform to within 1e-3, and N * alpha must not overflow a float.
MAX_DIRICHLET_ALPHA = 1e6


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
    check_vocab_size(vocab_size)
    check_dirichlet_settings(alpha, seed)
    rng = np.random.default_rng(seed)
    transition = rng.dirichlet(np.full(vocab_size, float(alpha)), size=vocab_size)
    # Tiny alpha can underflow whole rows to zero mass on most tokens; keep rows normalised.
    transition = transition / transition.sum(axis=1, keepdims=True)
    return BigramChain(stationary_distribution(transition), transition, None, name="dirichlet")


def check_vocab_size(vocab_size: int) -> None:
    integer(vocab_size, "data.vocab_size", 2, MAX_VOCAB, " (building the chain's tables takes minutes beyond that)")


def check_dirichlet_settings(alpha: float, chain_seed: int) -> None:
    number(alpha, "data.dirichlet_alpha", above=0, at_most=MAX_DIRICHLET_ALPHA)
    check_seed(chain_seed, "data.chain_seed")


def read_text(path: str | Path) -> str:
    """The contents of a UTF-8 text file; ConfigError (data.text_path) when it is missing, empty or not text."""
    path = Path(path).expanduser()
    require(not path.is_dir(), "data.text_path", f"{path} is a directory, not a text file")
    require(path.exists(), "data.text_path", f"no such file: {path}")
    require(path.is_file(), "data.text_path", f"{path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"data.text_path: {path} is not UTF-8 text") from None
    except OSError as err:
        raise ConfigError(f"data.text_path: cannot read {path} ({err.strerror or err})") from None
    require(bool(text), "data.text_path", f"{path} is empty")
    return text


def text_vocab_size(frequencies: Counter, vocab_size: int | None, path: str | Path) -> int:
    """N for a text of these symbol frequencies: ``vocab_size``, or every distinct symbol."""
    distinct = len(frequencies)
    require(distinct >= 2, "data.text_path", f"{path} has fewer than 2 distinct symbols")
    if vocab_size is None:
        require(distinct <= MAX_VOCAB, "data.vocab_size",
                f"{path} has {distinct} distinct symbols, more than the limit {MAX_VOCAB}; "
                "set data.vocab_size to keep the most frequent ones")
        return distinct
    require(vocab_size <= distinct, "data.vocab_size", f"{vocab_size} exceeds the {distinct} distinct symbols of {path}")
    return vocab_size


def text_chain(path: str | Path, vocab_size: int | None = None) -> BigramChain:
    """Character statistics of a text file, restricted to its ``vocab_size`` most frequent symbols.

    Symbols outside the kept set are dropped before counting bigrams.
    """
    if vocab_size is not None:
        check_vocab_size(vocab_size)
    text = read_text(path)
    frequencies = Counter(text)
    n = text_vocab_size(frequencies, vocab_size, path)
    ranked = sorted(frequencies, key=lambda ch: (-frequencies[ch], ch))
    kept = sorted(ranked[:n])
    index = {ch: i for i, ch in enumerate(kept)}
    ids = np.array([index[ch] for ch in text if ch in index], dtype=np.int64)
    unigram = np.bincount(ids, minlength=n)
    bigram = np.bincount(ids[:-1] * n + ids[1:], minlength=n * n).reshape(n, n)
    return BigramChain.from_counts(unigram, bigram, kept, name=f"text:{Path(path).expanduser().name}")


def check_chain_settings(source: str, vocab_size: int | None, dirichlet_alpha: float, chain_seed: int,
                         text_path: str | None) -> None:
    """data.source and the settings of the chain it names, without building it (nor reading a text)."""
    choice(source, "data.source", SOURCES)
    if vocab_size is not None:
        check_vocab_size(vocab_size)
    check_dirichlet_settings(dirichlet_alpha, chain_seed)
    if source == "dirichlet":
        require(vocab_size is not None, "data.vocab_size", "is required for the dirichlet source")
    if source == "text":
        require(bool(text_path), "data.text_path", "is required for the text source")


def chain_vocab_size(source: str, vocab_size: int | None, dirichlet_alpha: float, chain_seed: int,
                     text_path: str | None) -> int:
    """N of the chain ``build_chain`` would build, after checking its settings; reads a text source's file."""
    check_chain_settings(source, vocab_size, dirichlet_alpha, chain_seed, text_path)
    if source == "shakespeare":
        return checked_shakespeare(vocab_size).vocab_size
    if source == "dirichlet":
        return vocab_size
    return text_vocab_size(Counter(read_text(text_path)), vocab_size, text_path)


def checked_shakespeare(vocab_size: int | None) -> BigramChain:
    chain = shakespeare_chain()
    require(
        vocab_size in (None, chain.vocab_size),
        "data.vocab_size",
        f"the shakespeare source has exactly {chain.vocab_size} symbols, got {vocab_size}",
    )
    return chain


def build_chain(source: str, vocab_size: int | None, dirichlet_alpha: float, chain_seed: int,
                text_path: str | None) -> BigramChain:
    """The chain named by ``data.source`` (shakespeare, dirichlet or text)."""
    check_chain_settings(source, vocab_size, dirichlet_alpha, chain_seed, text_path)
    if source == "shakespeare":
        return checked_shakespeare(vocab_size)
    if source == "dirichlet":
        return dirichlet_chain(int(vocab_size), dirichlet_alpha, chain_seed)
    return text_chain(text_path, vocab_size)
