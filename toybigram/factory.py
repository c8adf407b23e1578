"""From a training config to the objects of a run: the chain, the sampler, the model spec, the data seeds."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from toybigram.data import BigramChain, TriggerSampler, build_chain
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


def make_chain(data: DictConfig) -> BigramChain:
    return build_chain(data.source, data.vocab_size, data.dirichlet_alpha, data.chain_seed, data.text_path)


def make_spec(cfg: DictConfig, chain: BigramChain | int) -> ModelSpec:
    """The model spec of ``cfg`` for a chain (or its vocabulary size), validated."""
    vocab_size = chain if isinstance(chain, int) else chain.vocab_size
    return ModelSpec.of(cfg.model, vocab_size, cfg.data.seq_len).validate()


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
