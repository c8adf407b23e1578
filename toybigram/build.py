"""From a config to the objects of a run: chain, sampler, model spec, device. Validates as it goes."""
from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from toybigram.checks import SEED_LIMIT, boolean, choice, integer, number
from toybigram.checks import seed as check_seed
from toybigram.config import LOSSES, OPTIMIZERS, PROGRESS_MODES, SCHEDULES, TrainAppConfig
from toybigram.data import BigramChain, TriggerSampler, build_chain
from toybigram.data.bigram import chain_vocab_size
from toybigram.data.sampler import check_trigger_settings, require_trigger_support
from toybigram.errors import ConfigError, require
from toybigram.memory import check_memory
from toybigram.model import ModelSpec

MAX_THREADS_PER_CORE = 4  # more torch threads than this only oversubscribe the cores
DEVICES = "cpu, cuda, cuda:N or auto"


def as_container(cfg: Any) -> dict:
    """A plain dict of a DictConfig, dataclass or dict (the ``hydra`` node dropped)."""
    if isinstance(cfg, DictConfig):
        container = OmegaConf.to_container(cfg, resolve=True)
    elif isinstance(cfg, dict):
        container = dict(cfg)
    else:
        container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    container.pop("hydra", None)
    return container


def resolve_device(name: str) -> torch.device:
    """cpu, cuda, cuda:N, or auto (CUDA when present). TF32 stays off so theory comparisons hold."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device {name!r} (choose {DEVICES})") from None
    if device.type == "cuda":
        require(torch.cuda.is_available(), "device", f"{name} requested but CUDA is not available")
        count = torch.cuda.device_count()
        require(device.index is None or device.index < count, "device", f"{name}: this machine has {count} CUDA device(s)")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        require(device.type == "cpu", "device", f"unsupported device {name!r} (choose {DEVICES})")
    return device


def apply_threads(threads: int) -> None:
    """Set torch's CPU thread count (0 keeps torch's default)."""
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(int(threads))


def make_chain(data: DictConfig) -> BigramChain:
    return build_chain(data.source, data.vocab_size, data.dirichlet_alpha, data.chain_seed, data.text_path)


def make_spec(cfg: DictConfig, chain: BigramChain | int) -> ModelSpec:
    """The model spec of ``cfg`` for a chain (or its vocabulary size), validated."""
    m = cfg.model
    spec = ModelSpec(
        vocab_size=chain if isinstance(chain, int) else chain.vocab_size,
        d_model=m.d_model,
        n_layers=m.n_layers,
        pos=m.pos,
        max_len=m.max_len if m.max_len is not None else cfg.data.seq_len,
        ape_extension=m.ape_extension,
        ffn=m.ffn,
        d_hidden=m.d_hidden,
        init=m.init,
        scale_scores=m.scale_scores,
        rope_base=m.rope_base,
        dtype=m.dtype,
    )
    return spec.validate()


def make_sampler(data: DictConfig, chain: BigramChain, device: torch.device, seed: int) -> TriggerSampler:
    return TriggerSampler(
        chain,
        n_triggers=data.n_triggers,
        triggers=data.triggers,
        trigger_offset=data.trigger_offset,
        outputs=data.outputs,
        exclude_trigger_output=data.exclude_trigger_output,
        device=device,
        seed=seed,
    )


def data_seeds(data_seed: int) -> tuple[int, int]:
    """Independent seeds for the training stream and the held-out evaluation batch."""
    train, held_out = np.random.SeedSequence(int(data_seed)).generate_state(2)
    return int(train), int(held_out)


def validate(cfg: DictConfig) -> tuple[BigramChain, ModelSpec]:
    """Check every setting of a training config, then its memory; raises ConfigError naming the first bad one.

    Nothing large is allocated before the memory check: the chain is built last.
    """
    device = _check_top_level(cfg)
    vocab_size = _check_data(cfg.data)
    spec = make_spec(cfg, vocab_size)
    if spec.pos == "ape" and spec.ape_extension == "error":
        require(
            cfg.data.seq_len <= spec.max_len,
            "data.seq_len",
            f"{cfg.data.seq_len} exceeds the absolute position table (model.max_len={spec.max_len}); "
            "raise model.max_len or set model.ape_extension=random or clamp",
        )
    _check_optim(cfg.optim)
    _check_train(cfg, spec)
    check_memory(cfg, spec, device)
    chain = make_chain(cfg.data)
    require_trigger_support(chain, cfg.data.n_triggers, cfg.data.trigger_offset)
    return chain, spec


def _check_top_level(cfg: DictConfig) -> torch.device:
    """No unknown keys; seed, data_seed, device and threads (max_memory_gb is checked with the memory estimate, last)."""
    known = {f.name for f in fields(TrainAppConfig)} | {"hydra"}
    for key in cfg:
        require(key in known, str(key), "unknown setting (a `+key=value` override adds a key the training app does not read)")
    check_seed(cfg.seed, "seed")
    check_seed(cfg.data_seed, "data_seed")
    device = resolve_device(cfg.device)
    cores = os.cpu_count() or 1
    integer(cfg.get("threads", 0), "threads", 0, MAX_THREADS_PER_CORE * cores,
            f" ({MAX_THREADS_PER_CORE} per CPU core of this machine; 0 = torch's default)")
    return device


def _check_data(data: DictConfig) -> int:
    """Every data setting that needs no chain; returns the vocabulary size N (a text source's file is read)."""
    vocab_size = chain_vocab_size(data.source, data.vocab_size, data.dirichlet_alpha, data.chain_seed, data.text_path)
    integer(data.seq_len, "data.seq_len", 1)
    check_trigger_settings(vocab_size, data.n_triggers, data.triggers, data.trigger_offset, data.outputs,
                           data.exclude_trigger_output)
    return vocab_size


def _check_optim(optim: DictConfig) -> None:
    choice(optim.name, "optim.name", OPTIMIZERS)
    number(optim.lr, "optim.lr", above=0)  # huge but finite rates are allowed: training stops as diverged
    for name in ("momentum", "beta1", "beta2"):
        number(optim[name], f"optim.{name}", at_least=0, below=1)
    number(optim.weight_decay, "optim.weight_decay", at_least=0)
    choice(optim.schedule, "optim.schedule", SCHEDULES)
    integer(optim.warmup_steps, "optim.warmup_steps", 0)
    number(optim.min_lr_ratio, "optim.min_lr_ratio", at_least=0, at_most=1)


def _check_train(cfg: DictConfig, spec: ModelSpec) -> None:
    train = cfg.train
    for name in ("steps", "batch_size", "eval_every", "eval_batch_size"):
        integer(train[name], f"train.{name}", 1)
    integer(train.ckpt_every, "train.ckpt_every", 0)
    choice(train.loss, "train.loss", LOSSES)
    choice(train.progress, "train.progress", PROGRESS_MODES)
    for name in ("resume", "overwrite", "theory"):
        boolean(train[name], f"train.{name}")
    no_triggers = cfg.data.n_triggers == 0
    require(not (no_triggers and train.loss == "incontext"), "train.loss",
            "incontext needs triggers (no target is in-context without them): set data.n_triggers >= 1 or train.loss=all")
    require(not (no_triggers and train.theory), "train.theory",
            "the theory analysis compares in-context predictions, which need triggers: "
            "set train.theory=false or data.n_triggers >= 1")
    groups = _trainable_names(spec)
    for name, step in (train.freeze_until or {}).items():
        choice(name, "train.freeze_until", groups)
        integer(step, f"train.freeze_until.{name}", 0)
    _check_instances(cfg)


def _check_instances(cfg: DictConfig) -> None:
    """train.instances and the per-instance lists (seeds trained together, toybigram.ensemble)."""
    train = cfg.train
    instances = integer(train.get("instances", 1), "train.instances", 1)
    for key in ("instance_seeds", "instance_data_seeds", "instance_lrs"):
        values = train.get(key)
        if values is not None:
            require(len(values) == instances, f"train.{key}", f"needs one value per instance (train.instances={instances}), got {len(values)}")
    for key, first in (("instance_seeds", "seed"), ("instance_data_seeds", "data_seed")):
        values = train.get(key)
        if values is None:  # instance i takes seed + i
            require(cfg[first] + instances - 1 < SEED_LIMIT, "train.instances",
                    f"{first} + train.instances - 1 must stay below 2**63, got {cfg[first]} + {instances} - 1")
        for value in values or []:
            check_seed(value, f"train.{key}")
    for lr in train.get("instance_lrs") or []:
        number(lr, "train.instance_lrs", above=0)


def _trainable_names(spec: ModelSpec) -> list[str]:
    names = [f"W_K{i + 1}" for i in range(spec.n_layers)] + [f"W_O{spec.n_layers}"]
    return names + (["W_F"] if spec.ffn != "none" else [])
