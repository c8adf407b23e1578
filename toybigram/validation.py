"""Every setting of a training config checked before anything large is allocated: ConfigError names the first bad one."""
from __future__ import annotations

import os
from dataclasses import fields

import torch
from omegaconf import DictConfig

from toybigram.checks import SEED_LIMIT, boolean, choice, integer, number
from toybigram.checks import seed as check_seed
from toybigram.config import LOSSES, OPTIMIZERS, PROGRESS_MODES, SCHEDULES, TrainAppConfig
from toybigram.data import BigramChain
from toybigram.data.bigram import chain_vocab_size
from toybigram.data.sampler import check_trigger_settings, require_trigger_support
from toybigram.errors import require
from toybigram.factory import make_chain, make_spec
from toybigram.memory import check_memory
from toybigram.model import ModelSpec
from toybigram.runtime import resolve_device

MAX_THREADS_PER_CORE = 4  # more torch threads than this only oversubscribe the cores


def validate(cfg: DictConfig) -> tuple[BigramChain, ModelSpec]:
    """Check every setting of a training config, then its memory; raises ConfigError naming the first bad one.

    Nothing large is allocated before the memory check: the chain is built last.
    """
    device = _check_top_level(cfg)
    vocab_size = _check_data(cfg.data)
    spec = make_spec(cfg, vocab_size)
    spec.positional.check_length(spec, cfg.data.seq_len)
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
    number(optim.ffn_lr_scale, "optim.ffn_lr_scale", above=0)


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
    groups = spec.trainable_names()
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
