"""Structured configs for the training app, registered in Hydra's ConfigStore.

Groups: data, model, optim, train. Presets live beside the schemas (data=dirichlet,
optim=sgd, ...); experiment configs in conf/experiment/ combine them per figure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

# Choices of the string settings not defined by the modules that use them (data and model
# choices live in toybigram.data and toybigram.model, devices in toybigram.build).
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine")
LOSSES = ("all", "incontext")
PROGRESS_MODES = ("auto", "bar", "lines", "none")


@dataclass
class DataConfig:
    source: str = "shakespeare"  # shakespeare | dirichlet | text
    vocab_size: Optional[int] = None  # N; None = the source's own (65 for shakespeare)
    text_path: Optional[str] = None  # for source=text
    dirichlet_alpha: float = 0.5  # row concentration for source=dirichlet
    chain_seed: int = 0  # seeds the dirichlet chain (the "world"), separate from data_seed
    seq_len: int = 32  # T: inputs per training sequence
    n_triggers: int = 5  # K
    triggers: str = "fixed"  # fixed (top-K of pi_u, after trigger_offset) | random (per sequence)
    trigger_offset: int = 0
    outputs: str = "uniform"  # uniform over [N] | bigram (drawn from pi_b(. | q))
    exclude_trigger_output: bool = False  # uniform outputs never equal their trigger


@dataclass
class ModelConfig:
    d_model: int = 256
    n_layers: int = 2  # 2, or 3 (needed by pos=nope)
    pos: str = "ape"  # ape | rpe | rope | nope
    max_len: Optional[int] = None  # position table length; None = data.seq_len
    ape_extension: str = "error"  # longer prompts under ape: error | random (fresh frozen rows) | clamp
    ffn: str = "linear"  # none | linear | relu (feed-forward block in the last layer)
    d_hidden: int = 256  # relu hidden width
    init: str = "zero"  # zero | random: initial value of the trainable matrices
    scale_scores: bool = False  # divide attention scores by sqrt(d)
    rope_base: float = 10000.0
    dtype: str = "float32"  # float32 | float64


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 0.01
    momentum: float = 0.9  # sgd
    beta1: float = 0.9  # adamw
    beta2: float = 0.99  # adamw
    weight_decay: float = 0.0
    schedule: str = "cosine"  # constant | cosine (decays to min_lr_ratio * lr at the last step)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    steps: int = 1200
    batch_size: int = 64
    loss: str = "all"  # all | incontext (targets with label >= 2 only)
    eval_every: int = 50
    eval_batch_size: int = 256
    ckpt_every: int = 200  # 0 = only at the end
    # Keep a trainable matrix frozen until this step, e.g. {W_O2: 0, W_K2: 100, W_K1: 200}.
    freeze_until: dict[str, int] = field(default_factory=dict)
    resume: bool = False
    overwrite: bool = False  # allow reusing a directory that holds a finished run
    progress: str = "auto"  # auto (bar on a terminal, lines otherwise) | bar | lines | none
    theory: bool = True  # run the analytic logit calculator on the final model
    report: bool = True  # write report.html (python -m toybigram.report) when the command-line job ends
    # Train S runs together in one process along an instance axis (toybigram.ensemble);
    # run i writes <run dir>/instance{i}/ exactly as a separate run would.
    instances: int = 1
    instance_seeds: Optional[list[int]] = None  # model seeds; default seed + i
    instance_data_seeds: Optional[list[int]] = None  # data seeds; default data_seed + i (each seed, if data_seed: ${seed})
    instance_lrs: Optional[list[float]] = None  # learning rates; default optim.lr for all


@dataclass
class TrainAppConfig:
    defaults: list[Any] = field(
        default_factory=lambda: [
            "_self_",
            {"data": "shakespeare"},
            {"model": "default"},
            {"optim": "adamw"},
            {"train": "default"},
        ]
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0  # frozen random matrices and any random init
    data_seed: int = 0  # training stream and held-out batch
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    threads: int = 0  # CPU threads for torch; 0 = torch's default (one per core). 1 is fastest when processes share the cores
    # Refuse a run whose estimated peak memory exceeds this many GB (1e9 bytes); None = half the
    # machine's RAM (on CUDA, 90% of the GPU's memory). See toybigram.memory.
    max_memory_gb: Optional[float] = None


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainAppConfig)
    cs.store(group="data", name="shakespeare", node=DataConfig())
    cs.store(group="data", name="dirichlet", node=DataConfig(source="dirichlet", vocab_size=64))
    cs.store(group="data", name="text", node=DataConfig(source="text"))
    cs.store(group="model", name="default", node=ModelConfig())
    cs.store(group="optim", name="adamw", node=OptimConfig())
    cs.store(group="optim", name="sgd", node=OptimConfig(name="sgd", lr=0.2, momentum=0.9))
    cs.store(group="train", name="default", node=TrainConfig())


register_configs()
