"""Structured configs for the training app, registered in Hydra's ConfigStore.

Groups: data, model, optim, train. Presets live beside the schemas (data=dirichlet,
optim=sgd, ...); experiment configs in conf/experiment/ combine them per figure. The
``model`` schema is the architecture's own dataclass, toybigram.model.ModelConfig.
Entry points call ``register_configs()`` before composing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from toybigram.model import ModelConfig
from toybigram.settings_help import help_template, markdown_table, setting, setting_docs

# Choices of the string settings not defined by the modules that use them (data and model
# choices live in toybigram.data, toybigram.model and toybigram.positional, devices in toybigram.runtime).
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine")
LOSSES = ("all", "incontext")
PROGRESS_MODES = ("auto", "bar", "lines", "none")


@dataclass
class DataConfig:
    source: str = setting("shakespeare", "where the bigram chain comes from: shakespeare (shipped character table), dirichlet (synthetic, any N), text (a file of yours)")
    vocab_size: Optional[int] = setting(None, "N, the vocabulary size; null = the source's own (65 for shakespeare; required for dirichlet)")
    text_path: Optional[str] = setting(None, "the text file of data.source=text (its N most frequent characters)")
    dirichlet_alpha: float = setting(0.5, "row concentration of the synthetic chain (data.source=dirichlet)")
    chain_seed: int = setting(0, "seed of the synthetic chain (the world), separate from data_seed")
    seq_len: int = setting(32, "T, inputs per training sequence")
    n_triggers: int = setting(5, "K, trigger tokens whose successor is fixed within a sequence")
    triggers: str = setting("fixed", "fixed (the K most frequent tokens after data.trigger_offset) or random (drawn per sequence)")
    trigger_offset: int = setting(0, "skip this many most frequent tokens when choosing fixed triggers")
    outputs: str = setting("uniform", "a trigger's successor: uniform over the vocabulary or bigram (drawn from the chain's row)")
    exclude_trigger_output: bool = setting(False, "uniform successors never equal their trigger")


@dataclass
class OptimConfig:
    name: str = setting("adamw", "adamw or sgd (presets optim=adamw, optim=sgd set their learning rates)")
    lr: float = setting(0.03, "learning rate (peak of the schedule)")
    momentum: float = setting(0.9, "sgd momentum")
    beta1: float = setting(0.9, "adamw first-moment decay")
    beta2: float = setting(0.99, "adamw second-moment decay")
    weight_decay: float = setting(0.0, "weight decay (adamw: decoupled; sgd: L2 added to the gradient)")
    schedule: str = setting("cosine", "constant, or cosine (decays to optim.min_lr_ratio x lr at the last step)")
    warmup_steps: int = setting(30, "linear warm-up steps")
    min_lr_ratio: float = setting(0.0, "the cosine schedule's final learning rate, as a share of optim.lr")
    ffn_lr_scale: float = setting(5.0, "learning-rate multiplier of the feed-forward block W_F, which stores the bigram (1 = one rate for all)")


@dataclass
class TrainConfig:
    steps: int = setting(600, "training steps")
    batch_size: int = setting(64, "sequences per step")
    loss: str = setting("all", "all tokens, or incontext only (labels >= 2: a trigger's second and later firings)")
    eval_every: int = setting(50, "evaluate on the held-out batch every this many steps")
    eval_batch_size: int = setting(256, "sequences in the fixed held-out batch")
    ckpt_every: int = setting(200, "checkpoint period in steps (0 = only at the end; always at the end)")
    freeze_until: dict[str, int] = setting(description="keep trainable matrices frozen until a step, e.g. '+train.freeze_until={W_K1: 300, W_K2: 150}'", factory=dict)
    resume: bool = setting(False, "continue the run in hydra.run.dir from its checkpoint")
    overwrite: bool = setting(False, "allow reusing a directory that holds a finished run")
    progress: str = setting("auto", "auto (a bar on a terminal, lines every ~10 s otherwise), bar, lines or none")
    theory: bool = setting(True, "run the analytic logit calculator on the final model (theory.json)")
    report: bool = setting(True, "write report.html when the command-line job ends")
    instances: int = setting(1, "train S runs together in one process; run i writes <run dir>/instance<i>/ as a separate run would")
    instance_seeds: Optional[list[int]] = setting(None, "model seeds of the instances; null = seed + i")
    instance_data_seeds: Optional[list[int]] = setting(None, "data seeds of the instances; null = data_seed + i")
    instance_lrs: Optional[list[float]] = setting(None, "learning rates of the instances; null = optim.lr for all")


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
    seed: int = setting(0, "seed of the frozen random matrices and of any random initialisation")
    data_seed: int = setting(0, "seed of the training stream and of the held-out batch")
    device: str = setting("cpu", "cpu, cuda, cuda:N, or auto (CUDA when present; TF32 stays off)")
    threads: int = setting(0, "torch CPU threads; 0 = torch's default (one per core); 1 is fastest when processes share the cores")
    max_memory_gb: Optional[float] = setting(None, "refuse a run whose estimated peak memory is above this many GB; null = half the RAM (90% of the GPU's on CUDA)")


def register_configs() -> None:
    """Store the schema and the presets of every group in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainAppConfig)
    cs.store(group="data", name="shakespeare", node=DataConfig())
    cs.store(group="data", name="dirichlet", node=DataConfig(source="dirichlet", vocab_size=64))
    cs.store(group="data", name="text", node=DataConfig(source="text"))
    cs.store(group="model", name="default", node=ModelConfig())
    cs.store(group="model", name="bietti", node=ModelConfig(param="bietti", init="random", scale_scores=True))
    cs.store(group="optim", name="adamw", node=OptimConfig())
    cs.store(group="optim", name="sgd", node=OptimConfig(name="sgd", lr=0.2, momentum=0.9, warmup_steps=0, ffn_lr_scale=1.0))
    cs.store(group="train", name="default", node=TrainConfig())
    cs.store(group="hydra/help", name="toybigram_train", node=help_template(
        "python -m toybigram.train", "train the associative-memory transformer on bigram data with triggers",
        setting_docs(TrainAppConfig),
        "Examples: python -m toybigram.train data=dirichlet data.vocab_size=32 model.pos=rpe\n"
        "          python -m toybigram.train -m seed=0,1,2   (a sweep; see experiments/ for the figures)\n"
        "Every setting's range: docs/settings.md. Run files and printed figures: docs/metrics.md.\n"))


def settings_table() -> str:
    """The Markdown table of every training setting, its default and what it does (the README's table)."""
    return markdown_table(setting_docs(TrainAppConfig))


if __name__ == "__main__":
    print(settings_table(), end="")
