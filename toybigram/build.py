"""From a config to the objects of a run: chain, sampler, model spec, device. Validates as it goes."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from toybigram.data import BigramChain, TriggerSampler, build_chain
from toybigram.errors import ConfigError, require
from toybigram.model import ModelSpec


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
        raise ConfigError(f"device: unknown device {name!r} (choose cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda":
        require(torch.cuda.is_available(), "device", f"{name} requested but CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        require(device.type == "cpu", "device", f"unsupported device {name!r} (choose cpu, cuda, cuda:N or auto)")
    return device


def apply_threads(threads: int) -> None:
    """Set torch's CPU thread count (0 keeps torch's default)."""
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(int(threads))


def make_chain(data: DictConfig) -> BigramChain:
    return build_chain(data.source, data.vocab_size, data.dirichlet_alpha, data.chain_seed, data.text_path)


def make_spec(cfg: DictConfig, chain: BigramChain) -> ModelSpec:
    m = cfg.model
    spec = ModelSpec(
        vocab_size=chain.vocab_size,
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
    """Check every setting of a training config; raises ConfigError naming the first bad one."""
    data, train = cfg.data, cfg.train
    require(data.seq_len > 0, "data.seq_len", f"must be positive, got {data.seq_len}")
    if data.vocab_size is not None:
        require(data.vocab_size >= 2, "data.vocab_size", f"must be at least 2, got {data.vocab_size}")
        require(
            data.n_triggers <= data.vocab_size,
            "data.n_triggers",
            f"{data.n_triggers} triggers exceed the vocabulary size {data.vocab_size}",
        )
    chain = make_chain(data)
    spec = make_spec(cfg, chain)
    make_sampler(data, chain, torch.device("cpu"), 0)  # validates trigger settings
    if spec.pos == "ape" and spec.ape_extension == "error":
        require(
            data.seq_len <= spec.max_len,
            "data.seq_len",
            f"{data.seq_len} exceeds the absolute position table (model.max_len={spec.max_len}); "
            "raise model.max_len or set model.ape_extension=random or clamp",
        )
    require(train.steps > 0, "train.steps", f"must be positive, got {train.steps}")
    require(train.batch_size > 0, "train.batch_size", f"must be positive, got {train.batch_size}")
    require(train.eval_batch_size > 0, "train.eval_batch_size", f"must be positive, got {train.eval_batch_size}")
    require(train.eval_every > 0, "train.eval_every", f"must be positive, got {train.eval_every}")
    require(train.ckpt_every >= 0, "train.ckpt_every", f"must be non-negative, got {train.ckpt_every}")
    require(train.loss in ("all", "incontext"), "train.loss", f"unknown value {train.loss!r} (choose all or incontext)")
    require(train.progress in ("auto", "bar", "lines", "none"), "train.progress", f"unknown value {train.progress!r} (choose auto, bar, lines or none)")
    require(cfg.optim.name in ("adamw", "sgd"), "optim.name", f"unknown optimizer {cfg.optim.name!r} (choose adamw or sgd)")
    require(cfg.optim.lr > 0, "optim.lr", f"must be positive, got {cfg.optim.lr}")
    require(cfg.optim.schedule in ("constant", "cosine"), "optim.schedule", f"unknown value {cfg.optim.schedule!r} (choose constant or cosine)")
    require(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", f"must be non-negative, got {cfg.optim.warmup_steps}")
    require(0 <= cfg.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    groups = _trainable_names(spec)
    for name, step in (train.freeze_until or {}).items():
        require(name in groups, "train.freeze_until", f"unknown matrix {name!r} (choose from {', '.join(groups)})")
        require(int(step) >= 0, "train.freeze_until", f"{name}: step must be non-negative, got {step}")
    resolve_device(cfg.device)
    require(cfg.get("threads", 0) >= 0, "threads", f"must be non-negative (0 = torch's default), got {cfg.get('threads')}")
    _validate_instances(train)
    return chain, spec


def _validate_instances(train: DictConfig) -> None:
    """train.instances and the per-instance lists (seeds trained together, toybigram.ensemble)."""
    instances = train.get("instances", 1)
    require(instances >= 1, "train.instances", f"must be at least 1, got {instances}")
    for key in ("instance_seeds", "instance_data_seeds", "instance_lrs"):
        values = train.get(key)
        if values is not None:
            require(len(values) == instances, f"train.{key}", f"needs one value per instance (train.instances={instances}), got {len(values)}")
    for lr in train.get("instance_lrs") or []:
        require(lr > 0, "train.instance_lrs", f"learning rates must be positive, got {lr}")
    require(not (instances > 1 and train.resume), "train.resume", "not supported with train.instances > 1; resume an instance's directory as a single run")


def _trainable_names(spec: ModelSpec) -> list[str]:
    names = [f"W_K{i + 1}" for i in range(spec.n_layers)] + [f"W_O{spec.n_layers}"]
    return names + (["W_F"] if spec.ffn != "none" else [])
