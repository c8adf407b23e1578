"""Structured configs of ``python -m toybigram.hijack``, registered in Hydra's ConfigStore.

Group ``lm`` picks the model (the repetition study's presets: smollm2, hf with ``lm.path``, toy with
``lm.path`` a training run). Group ``scale`` sets the study's size: ``quick`` (the default, 11-13
minutes for SmolLM2-135M on 2 CPU cores) or ``full`` (200 query words, prompts to 1024 tokens;
hours on a CPU, minutes on a GPU). ``+preset=smoke`` shrinks every stage to a pipeline check.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from toybigram.repetition.config import LMConfig


@dataclass
class WordsConfig:
    corpus: str = "python_docs"  # python_docs | shakespeare | a text file: word counts, corpus bigram, prose filler
    pattern: str = "^ [A-Za-z]{2,}$"  # a token is a word when its text matches (a space, then letters)
    pool_size: int = 1000  # the most frequent single-token words (the toy: its tokens, at most its vocabulary)
    query_pool: int = 300  # queries are drawn from this many most frequent words
    n_queries: int = 24
    n_outputs: int = 3  # outputs o per query, at log-spaced ranks of the model's g(.|q)
    contexts: int = 4  # neutral one-word contexts "x q" averaged into the model's own bigram (besides "q" alone)
    toy_corpus_tokens: int = 20000  # the toy's corpus: a sample of its chain this long


@dataclass
class PromptsConfig:
    lengths: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    counts: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 6, 8])
    instances: int = 1  # filler draws per (q, o, T); each is a margin curve over the counts
    fillers: list[str] = field(default_factory=lambda: ["random", "prose"])
    prose_lengths: list[int] = field(default_factory=lambda: [64, 128])  # the prose filler's lengths
    subset_queries: int = 12  # prose filler, recency, compete, attention and ablation use the first this many queries
    recency_length: int = 64  # pairs all in the first or all in the second half
    compete_length: int = 64
    batch_tokens: int = 4096  # prompts per forward pass: batch_tokens // T


@dataclass
class HeadsConfig:
    repeat_length: int = 32  # prefix matching: random words of this length, repeated once
    sequences: int = 8
    threshold: float = 0.15  # prefix-matching score that makes a head an induction head (best max_heads of them)
    max_heads: int = 8
    attention_length: int = 64  # their attention on the copied o, at this length
    ablation_length: int = 64  # the hijack grid with them (and as many random heads) zeroed


@dataclass
class LawConfig:
    fit_fraction: float = 0.5  # share of queries the law's two numbers are fitted on (the rest score it)


@dataclass
class HijackAppConfig:
    lm: LMConfig = field(default_factory=LMConfig)
    words: WordsConfig = field(default_factory=WordsConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    law: LawConfig = field(default_factory=LawConfig)
    seed: int = 0  # words, prompts, control heads, the fit split and bootstrap resamples
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    threads: Optional[int] = None  # torch CPU threads (None = torch's default)
    resume: bool = False  # continue an interrupted run in hydra.run.dir
    overwrite: bool = False  # allow replacing a finished run in hydra.run.dir
    progress: bool = True  # bars on a terminal, else a line at least every progress_every_s
    progress_every_s: float = 10.0


FULL = {
    "words": {"n_queries": 200, "query_pool": 600},
    "prompts": {"lengths": [16, 32, 64, 128, 256, 512, 1024], "counts": [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16],
                "instances": 2, "prose_lengths": [64, 256, 1024], "subset_queries": 50, "recency_length": 256},
    "heads": {"sequences": 16, "attention_length": 256, "ablation_length": 256},
}
# ``+preset=smoke``: every stage once on the smallest numbers that run it (a pipeline check, not a result).
SMOKE = {
    "words": {"pool_size": 200, "query_pool": 40, "n_queries": 4, "n_outputs": 2, "contexts": 1, "toy_corpus_tokens": 2000},
    "prompts": {"lengths": [16, 48], "counts": [0, 1, 2, 4], "prose_lengths": [48], "subset_queries": 2,
                "recency_length": 32, "compete_length": 32},
    "heads": {"repeat_length": 16, "sequences": 2, "attention_length": 32, "ablation_length": 32},
}


def register_configs() -> None:
    """Store the schema, the lm presets, the scales and the smoke preset in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="hijack_schema", node=HijackAppConfig)
    cs.store(group="lm", name="smollm2", node=LMConfig(kind="smollm2"))
    cs.store(group="lm", name="hf", node=LMConfig(kind="hf"))
    cs.store(group="lm", name="toy", node=LMConfig(kind="toy"))
    cs.store(group="scale", name="quick", node={}, package="_global_")
    cs.store(group="scale", name="full", node=FULL, package="_global_")
    cs.store(group="preset", name="smoke", node=SMOKE, package="_global_")
