"""Seeds trained together: S runs in one process along an instance axis.

    python -m toybigram.train train.instances=8                      # seeds seed..seed+7, data seeds data_seed..data_seed+7
    python -m toybigram.train train.instances=3 train.instance_lrs=[0.1,0.2,0.4] train.instance_data_seeds=[0,0,0]
    python experiments/run.py fig3 --seeds-together                    # a figure's sweep, each point's seeds as one job

Instance i is the run ``seed=s_i data_seed=d_i optim.lr=lr_i``: it builds the same
model, optimizer, samplers and held-out batch as that separate run, and writes
``<run dir>/instance{i}/`` with the same metrics.jsonl, checkpoint.pt and summary.json
(its config is that single run's, so ``load_run`` and ``train.resume`` treat it as one;
it is also in ``instance{i}/config.yaml`` from the start, for the sweep aggregator).
Only the training step is shared: the S batches come from one sampler walk
(``TriggerSampler.sample_together``), and one ``vmap`` over ``functional_call`` runs the
S models' forward and backward with their parameters and frozen matrices stacked.
Each model keeps its own parameters and optimizer, so per-run learning rates, momentum
and ``freeze_until`` behave exactly as in separate runs; metrics agree with separate
runs up to float rounding (batched kernels sum in a different order).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call, vmap

from toybigram.data import Batch
from toybigram.evaluation import training_loss

ENSEMBLE_FILE = "ensemble.json"


def instance_configs(cfg: DictConfig) -> list[DictConfig]:
    """The single-run config of each instance: its seed, data seed and learning rate, instances=1."""
    train = cfg.train
    count = train.instances
    seeds = list(train.instance_seeds) if train.instance_seeds is not None else [cfg.seed + i for i in range(count)]
    if train.instance_data_seeds is not None:
        data = list(train.instance_data_seeds)
    elif data_seed_follows_seed(cfg):
        data = seeds  # as each separate run would resolve it
    else:
        data = [cfg.data_seed + i for i in range(count)]
    lrs = list(train.instance_lrs) if train.instance_lrs is not None else [cfg.optim.lr] * count
    base = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]), resolve=True)
    configs = []
    for seed, data_seed, lr in zip(seeds, data, lrs):
        single = OmegaConf.create(base)
        single.seed, single.data_seed, single.optim.lr = int(seed), int(data_seed), float(lr)
        single.train.instances = 1
        single.train.instance_seeds = single.train.instance_data_seeds = single.train.instance_lrs = None
        configs.append(single)
    return configs


def data_seed_follows_seed(cfg: DictConfig) -> bool:
    """True when the config ties the data seed to the seed (``data_seed: ${seed}``, as the experiment configs do)."""
    raw = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["data_seed"]), resolve=False).get("data_seed")
    return isinstance(raw, str) and raw.replace(" ", "") == "${seed}"


def instance_dir(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / f"instance{index}"


def run_layout(cfg: DictConfig, run_dir: Path) -> list[tuple[DictConfig, Path]]:
    """Each run of a config with its directory: the run itself, or each instance in ``instance{i}/``."""
    if cfg.train.instances == 1:
        return [(cfg, Path(run_dir))]
    return [(single, instance_dir(run_dir, i)) for i, single in enumerate(instance_configs(cfg))]


class StackedModels:
    """S models of one architecture run as one: ``forward`` vmaps ``functional_call`` over stacked weights.

    Parameters are stacked on every call (a differentiable copy of a few d x d matrices),
    so gradients land on each model's own parameters; frozen buffers are stacked once.
    """

    def __init__(self, models: list[torch.nn.Module]):
        self.models, self.base = models, models[0]
        self.param_names = [name for name, _ in self.base.named_parameters()]
        buffers = [dict(m.named_buffers()) for m in models]
        self.buffers = {name: torch.stack([b[name] for b in buffers]) for name in buffers[0]}

        def one(params, buffers, tokens):
            return functional_call(self.base, {**params, **buffers}, (tokens,))

        self._forward = vmap(one)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (S, B, T, N) for tokens (S, B, T)."""
        params = [dict(m.named_parameters()) for m in self.models]
        stacked = {name: torch.stack([p[name] for p in params]) for name in self.param_names}
        return self._forward(stacked, self.buffers, tokens)

    def losses(self, batches: list[Batch], loss_on: str) -> torch.Tensor:
        """Training loss of each model on its own batch, shape (S,); summed, they backpropagate to each model alone."""
        batch = Batch.stack(batches)
        return training_loss(self(batch.inputs), batch, loss_on)
