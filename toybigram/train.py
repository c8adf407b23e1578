"""Train the associative-memory transformer on bigram-with-triggers data.

    python -m toybigram.train                       # the main job: Shakespeare bigrams, ~1 min on 2 CPU cores
    python -m toybigram.train data=dirichlet data.vocab_size=32 optim=sgd train.loss=incontext
    python -m toybigram.train -m seed=0,1,2         # a Hydra multirun
    python -m toybigram.train train.instances=8     # 8 seeds trained together in one process

Each run directory gets metrics.jsonl (one row per evaluation), checkpoint.pt and,
when the run has finished, summary.json.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from toybigram import config as _config  # noqa: F401  (registers the structured configs)
from toybigram.build import apply_threads, as_container, data_seeds, make_sampler, resolve_device, validate
from toybigram.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from toybigram.data import Batch, TriggerSampler
from toybigram.evaluation import class_mask, evaluate, token_losses
from toybigram.model import AssociativeTransformer
from toybigram.errors import UserError
from toybigram.runio import METRICS_FILE, SUMMARY_FILE, append_jsonl, provenance, read_jsonl, write_json, write_jsonl

log = logging.getLogger("toybigram.train")
TIMING_KEYS = ("elapsed_seconds",)
# Settings that may change when a run is resumed; everything else must match the checkpoint.
RESUMABLE_SETTINGS = {("train", "steps"), ("train", "resume"), ("train", "progress"), ("train", "overwrite"), ("train", "theory"),
                      # instance settings: resume needs train.instances=1 anyway (older checkpoints lack them)
                      ("train", "instances"), ("train", "instance_seeds"), ("train", "instance_data_seeds"), ("train", "instance_lrs")}


def make_optimizer(model: AssociativeTransformer, optim: DictConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay)


def learning_rate(optim: DictConfig, step: int, total: int) -> float:
    """The learning rate for update ``step`` (0-based) of ``total``: linear warm-up, then the schedule."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    progress = (step - optim.warmup_steps) / max(1, total - optim.warmup_steps)
    floor = optim.lr * optim.min_lr_ratio
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def training_loss(logits: torch.Tensor, batch, loss_on: str) -> torch.Tensor:
    """Mean cross-entropy over a batch's (B, T) targets; one per instance for stacked (S, B, T) batches."""
    losses = token_losses(logits, batch.targets)
    if loss_on == "incontext":
        mask = class_mask(batch.labels, "incontext")
        return (losses * mask).sum((-2, -1)) / mask.sum((-2, -1)).clamp_min(1)
    return losses.mean((-2, -1))


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to clobber a run, or to resume one that is not there or does not match."""
    summary, checkpoint = run_dir / SUMMARY_FILE, run_dir / CHECKPOINT_FILE
    if cfg.train.resume:
        if not checkpoint.is_file():
            raise UserError(f"train.resume: no checkpoint to resume in {run_dir} (set hydra.run.dir to the run's directory)")
        saved = load_checkpoint(checkpoint)
        mismatched = [
            f"{group}.{key}"
            for group, values in as_container(cfg).items() if isinstance(values, dict)
            for key, value in values.items()
            if (group, key) not in RESUMABLE_SETTINGS and saved["config"].get(group, {}).get(key) != value
        ] + [key for key in ("seed", "data_seed") if saved["config"].get(key) != cfg[key]]
        if mismatched:
            raise UserError(f"train.resume: settings differ from the checkpoint in {run_dir}: {', '.join(mismatched)}")
        if saved["step"] >= cfg.train.steps and summary.is_file():
            raise UserError(f"train.resume: the run in {run_dir} already finished {saved['step']} steps; raise train.steps to continue")
    elif not cfg.train.overwrite and (summary.is_file() or checkpoint.is_file()):
        state = "a finished run" if summary.is_file() else "an interrupted run"
        raise UserError(
            f"{run_dir} already holds {state}; choose another hydra.run.dir, "
            "continue it with train.resume=true, or start over with train.overwrite=true"
        )


def precheck(cfg: DictConfig) -> None:
    """Everything that can be checked before Hydra writes the run directory."""
    validate(cfg)
    run_dir = cfg.get("hydra", {}).get("run", {}).get("dir")
    if run_dir and cfg.train.instances > 1:
        from toybigram.ensemble import check_instance_dirs

        check_instance_dirs(cfg, Path(run_dir))
    elif run_dir:
        check_run_dir(cfg, Path(run_dir))


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise (CI, files)."""

    def __init__(self, mode: str, total: int, initial: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() and not os.environ.get("CI") else "lines"
        self.mode, self.bar = mode, None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def report(self, row: dict) -> None:
        text = (
            f"step {row['step']:>6} | train loss {row['train_loss'] if row['train_loss'] is not None else float('nan'):.4f} "
            f"| global {fmt(row['loss_global'])} (bayes {fmt(row['bayes_loss_global'])}) "
            f"| in-context acc {fmt(row['acc_incontext'])} loss {fmt(row['loss_incontext'])}"
        )
        if self.bar is not None:
            self.bar.set_postfix_str(f"ic acc {fmt(row['acc_incontext'], 3)} gap {fmt(row['gap_global'], 3)}")
        elif self.mode == "lines":
            log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


@dataclass
class RunParts:
    """The objects of one run, built from its config: what a training loop needs besides its own state."""

    model: AssociativeTransformer
    optimizer: torch.optim.Optimizer
    sampler: TriggerSampler
    eval_batch: Batch
    eval_bayes: torch.Tensor
    transition: torch.Tensor
    fixed_triggers: torch.Tensor | None
    groups: dict[str, list[torch.nn.Parameter]]
    freeze_until: dict[str, int]
    device: torch.device


def build_run(cfg: DictConfig, chain, spec, device: torch.device) -> RunParts:
    """Model, optimizer, training sampler and held-out batch of the run ``cfg`` describes."""
    model = AssociativeTransformer(spec, seed=cfg.seed).to(device)
    optimizer = make_optimizer(model, cfg.optim)
    train_seed, eval_seed = data_seeds(cfg.data_seed)
    sampler = make_sampler(cfg.data, chain, device, train_seed)
    held_out = make_sampler(cfg.data, chain, device, eval_seed)
    eval_batch = held_out.sample(cfg.train.eval_batch_size, cfg.data.seq_len)
    return RunParts(
        model=model,
        optimizer=optimizer,
        sampler=sampler,
        eval_batch=eval_batch,
        eval_bayes=held_out.bayes_loss(eval_batch),
        transition=torch.tensor(chain.transition, device=device),
        fixed_triggers=sampler.fixed_triggers if cfg.data.triggers == "fixed" else None,
        groups=model.trainable_groups(),
        freeze_until={name: int(step) for name, step in (cfg.train.freeze_until or {}).items()},
        device=device,
    )


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Create the run directory; with train.overwrite, clear a previous run's files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.overwrite and not cfg.train.resume:
        for name in (SUMMARY_FILE, CHECKPOINT_FILE, METRICS_FILE, "theory.json"):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "theory", ignore_errors=True)


def drop_frozen_gradients(parts: RunParts, step: int) -> None:
    """Matrices still frozen by ``train.freeze_until`` lose their gradient: no update, momentum or decay."""
    for name, until in parts.freeze_until.items():
        if step < until:
            for p in parts.groups[name]:
                p.grad = None


def evaluation_row(parts: RunParts, step: int, loss_sum: float, loss_count: int, start: float) -> dict:
    """One metrics.jsonl row: mean training loss since the last row, then everything ``evaluate`` logs."""
    row = {"step": step, "train_loss": loss_sum / loss_count if loss_count else None}
    row.update(evaluate(parts.model, parts.eval_batch, parts.eval_bayes, parts.transition, parts.fixed_triggers))
    row["elapsed_seconds"] = time.perf_counter() - start
    return row


def save_run_checkpoint(run_dir: Path, parts: RunParts, step: int, loss_sum: float, loss_count: int, config: dict) -> None:
    save_checkpoint(
        run_dir / CHECKPOINT_FILE,
        {
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "sampler_rng": parts.sampler.get_state().cpu(),
            "step": step,
            "loss_sum": loss_sum,
            "loss_count": loss_count,
        },
        config,
    )


def finish_run(cfg: DictConfig, run_dir: Path, parts: RunParts, chain, row: dict, step: int, start: float,
               step_seconds: list[float], config: dict) -> dict:
    """Write summary.json (after the optional theory analysis) and return the summary."""
    fixed_triggers = parts.fixed_triggers
    summary = {
        **{k: v for k, v in row.items() if k not in TIMING_KEYS},
        "steps": step,
        "wall_seconds": time.perf_counter() - start,
        "step_ms_median": 1e3 * sorted(step_seconds)[len(step_seconds) // 2] if step_seconds else None,
        "seed": cfg.seed,
        "data_seed": cfg.data_seed,
        "data_source": chain.name,
        "vocab_size": chain.vocab_size,
        "triggers": chain.decode(fixed_triggers.tolist()) if fixed_triggers is not None and chain.alphabet else
        (fixed_triggers.tolist() if fixed_triggers is not None else "random"),
        "run_dir": str(run_dir),
        **provenance(parts.device, next(parts.model.parameters()).dtype),
        "config": config,
    }
    if cfg.train.theory:
        from toybigram.theory import analyze_run

        parts.model.eval()
        summary["theory"] = analyze_run(run_dir, parts.model, cfg, quick=True)
    write_json(run_dir / SUMMARY_FILE, summary)  # last: its presence marks a finished run
    return summary


def train(cfg: DictConfig, run_dir: str | Path) -> dict | list[dict]:
    """Train one model as ``cfg`` says and write its run directory; returns the summary.

    With ``train.instances > 1`` the instances train together (toybigram.ensemble) and
    the result is the list of their summaries.
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    chain, spec = validate(cfg)
    apply_threads(cfg.threads)
    if cfg.train.instances > 1:
        from toybigram.ensemble import train_ensemble

        return train_ensemble(cfg, run_dir)
    check_run_dir(cfg, run_dir)
    prepare_run_dir(cfg, run_dir)
    device = resolve_device(cfg.device)
    config = as_container(cfg)
    parts = build_run(cfg, chain, spec, device)
    model, optimizer, sampler = parts.model, parts.optimizer, parts.sampler

    step, loss_sum, loss_count, step_seconds = 0, 0.0, 0, []
    metrics_path = run_dir / METRICS_FILE
    if cfg.train.resume:
        state = load_checkpoint(run_dir / CHECKPOINT_FILE, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler_rng"].cpu() if device.type == "cpu" else state["sampler_rng"])
        step, loss_sum, loss_count = state["step"], state["loss_sum"], state["loss_count"]
        rows = [r for r in read_jsonl(metrics_path) if r["step"] <= step] if metrics_path.is_file() else []
        write_jsonl(metrics_path, rows)  # drop rows written after the checkpoint
        log.info("resumed %s at step %d", run_dir, step)
    else:
        write_jsonl(metrics_path, [])

    def record() -> dict:
        nonlocal loss_sum, loss_count
        row = evaluation_row(parts, step, loss_sum, loss_count, start)
        append_jsonl(metrics_path, row)
        loss_sum, loss_count = 0.0, 0
        return row

    progress = Progress(cfg.train.progress, cfg.train.steps, step)
    row = record() if step == 0 else None
    if row:
        progress.report(row)
    model.train()
    try:
        while step < cfg.train.steps:
            tick = time.perf_counter()
            batch = sampler.sample(cfg.train.batch_size, cfg.data.seq_len)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg.optim, step, cfg.train.steps)
            loss = training_loss(model(batch.inputs), batch, cfg.train.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            drop_frozen_gradients(parts, step)
            optimizer.step()
            step += 1
            loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
            step_seconds.append(time.perf_counter() - tick)
            progress.step()
            if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                row = record()
                progress.report(row)
            if cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0 and step < cfg.train.steps:
                save_run_checkpoint(run_dir, parts, step, loss_sum, loss_count, config)
    finally:
        progress.close()
    save_run_checkpoint(run_dir, parts, step, loss_sum, loss_count, config)

    if row is None or row["step"] != step:
        row = record()
    return finish_run(cfg, run_dir, parts, chain, row, step, start, step_seconds, config)


def print_summary(summary: dict) -> None:
    print(
        "\n".join([
            f"toybigram: {summary['steps']} steps in {summary['wall_seconds']:.1f} s "
            f"({summary['step_ms_median']:.1f} ms/step) on {summary['device']} ({summary['dtype']})",
            f"  in-context  acc {fmt(summary['acc_incontext'])}  loss {fmt(summary['loss_incontext'])}  (Bayes 0)",
            f"  global      acc {fmt(summary['acc_global'])}  loss {fmt(summary['loss_global'])}  "
            f"Bayes {fmt(summary['bayes_loss_global'])}  gap {fmt(summary['gap_global'])}",
            f"  first occ.  acc {fmt(summary['acc_first'])}  loss {fmt(summary['loss_first'])}  Bayes {fmt(summary['bayes_loss_first'])}",
            f"  probes      prev-token recall {fmt(summary['recall_prev_token'], 3)}  induction-key recall "
            f"{fmt(summary['recall_induction_key'], 3)}  copy recall {fmt(summary['recall_copy'], 3)}  "
            f"bigram KL {fmt(summary['bigram_kl'], 3)}",
            f"  attention   layer-1 on previous token {fmt(summary['attn_prev_token'], 3)}  "
            f"layer-2 on induction target {fmt(summary['attn_induction'], 3)}",
        ])
    )
    if "theory" in summary:
        from toybigram.theory.__main__ import headline

        print("  " + headline(summary["theory"], Path(summary["run_dir"])))
    print(f"  output      {summary['run_dir']}")


def main_task(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    summary = train(cfg, HydraConfig.get().runtime.output_dir)
    if isinstance(summary, list):  # train.instances > 1
        from toybigram.ensemble import print_ensemble

        print_ensemble(summary)
    else:
        print_summary(summary)
    return summary


def main() -> None:
    from toybigram.cli import run_app

    run_app(main_task, "train", precheck)


if __name__ == "__main__":
    main()
