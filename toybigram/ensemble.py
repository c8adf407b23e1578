"""Seeds trained together: S runs in one process along an instance axis.

    python -m toybigram.train train.instances=8                      # seeds seed..seed+7, data seeds data_seed..data_seed+7
    python -m toybigram.train train.instances=3 train.instance_lrs=[0.1,0.2,0.4] train.instance_data_seeds=[0,0,0]
    python experiments/run.py fig3 --seeds-together                    # a figure's sweep, each point's seeds as one job

Instance i is the run ``seed=s_i data_seed=d_i optim.lr=lr_i``: it builds the same
model, optimizer, samplers and held-out batch (``train.build_run``), and writes
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

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call, vmap

from toybigram.build import as_container, resolve_device, validate
from toybigram.data import Batch, TriggerSampler
from toybigram.runio import INSTANCE_CONFIG_FILE, METRICS_FILE, append_jsonl, atomic_write_text, write_json, write_jsonl
from toybigram.train import (
    Progress,
    build_run,
    check_run_dir,
    drop_frozen_gradients,
    evaluation_row,
    finish_run,
    learning_rate,
    prepare_run_dir,
    save_run_checkpoint,
    training_loss,
)

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
    base = as_container(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]))  # hydra's node may not resolve
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


def check_instance_dirs(cfg: DictConfig, run_dir: Path) -> list[DictConfig]:
    """Refuse (UserError) to clobber any instance's run; returns the instance configs."""
    configs = instance_configs(cfg)
    for i, single in enumerate(configs):
        check_run_dir(single, instance_dir(run_dir, i))
    return configs


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


def train_ensemble(cfg: DictConfig, run_dir: str | Path) -> list[dict]:
    """Train the instances of ``cfg`` together; returns their summaries (also in <run dir>/ensemble.json)."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    chain, spec = validate(cfg)
    configs = check_instance_dirs(cfg, run_dir)  # refuse before anything is written
    dirs = [instance_dir(run_dir, i) for i in range(len(configs))]
    device = resolve_device(cfg.device)
    containers = [as_container(single) for single in configs]
    runs = [build_run(single, chain, spec, device) for single in configs]
    for single, directory in zip(configs, dirs):
        prepare_run_dir(single, directory)
        write_jsonl(directory / METRICS_FILE, [])
        atomic_write_text(directory / INSTANCE_CONFIG_FILE, OmegaConf.to_yaml(single))  # what a separate run's .hydra/config.yaml holds
    stacked = StackedModels([run.model for run in runs])
    samplers = [run.sampler for run in runs]
    train_cfg = cfg.train
    count = len(runs)

    step, step_seconds = 0, []
    loss_sums, loss_counts = [0.0] * count, [0] * count
    rows: list[dict] = []

    def record() -> None:
        nonlocal rows
        rows = []
        for i, (run, directory) in enumerate(zip(runs, dirs)):
            rows.append(evaluation_row(run, step, loss_sums[i], loss_counts[i], start))
            append_jsonl(directory / METRICS_FILE, rows[-1])
            loss_sums[i], loss_counts[i] = 0.0, 0

    progress = Progress(train_cfg.progress, train_cfg.steps, step)
    record()
    progress.report(rows[0])
    for run in runs:
        run.model.train()
    try:
        while step < train_cfg.steps:
            tick = time.perf_counter()
            batches = TriggerSampler.sample_together(samplers, train_cfg.batch_size, cfg.data.seq_len)
            for single, run in zip(configs, runs):
                for group in run.optimizer.param_groups:
                    group["lr"] = learning_rate(single.optim, step, train_cfg.steps)
            losses = stacked.losses(batches, train_cfg.loss)
            for run in runs:
                run.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # instance i's loss reaches only instance i's parameters
            for run in runs:
                drop_frozen_gradients(run, step)
                run.optimizer.step()
            step += 1
            for i, value in enumerate(losses.tolist()):
                loss_sums[i], loss_counts[i] = loss_sums[i] + value, loss_counts[i] + 1
            step_seconds.append(time.perf_counter() - tick)
            progress.step()
            if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
                record()
                progress.report(rows[0])
            if train_cfg.ckpt_every and step % train_cfg.ckpt_every == 0 and step < train_cfg.steps:
                for i, run in enumerate(runs):
                    save_run_checkpoint(dirs[i], run, step, loss_sums[i], loss_counts[i], containers[i])
    finally:
        progress.close()
    for i, run in enumerate(runs):
        save_run_checkpoint(dirs[i], run, step, loss_sums[i], loss_counts[i], containers[i])
    summaries = [
        finish_run(single, directory, run, chain, row, step, start, step_seconds, container)
        for single, directory, run, row, container in zip(configs, dirs, runs, rows, containers)
    ]
    write_json(run_dir / ENSEMBLE_FILE, {
        "instances": count,
        "wall_seconds": time.perf_counter() - start,
        "step_ms_median": 1e3 * sorted(step_seconds)[len(step_seconds) // 2] if step_seconds else None,
        "runs": [
            {"dir": str(directory), "seed": s["seed"], "data_seed": s["data_seed"], "lr": single.optim.lr,
             "acc_incontext": s.get("acc_incontext"), "loss_global": s.get("loss_global")}
            for directory, s, single in zip(dirs, summaries, configs)
        ],
    })
    return summaries


def print_ensemble(summaries: list[dict]) -> None:
    from toybigram.train import fmt

    first = summaries[0]
    print(f"toybigram: {len(summaries)} instances x {first['steps']} steps in {first['wall_seconds']:.1f} s "
          f"({first['step_ms_median']:.1f} ms/step for all) on {first['device']} ({first['dtype']})")
    for s in summaries:
        print(f"  seed {s['seed']:>3} data {s['data_seed']:>3} lr {s['config']['optim']['lr']:<8g} "
              f"in-context acc {fmt(s['acc_incontext'])}  global gap {fmt(s['gap_global'])}  {s['run_dir']}")
