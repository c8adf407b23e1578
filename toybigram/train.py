"""Train the associative-memory transformer on bigram-with-triggers data.

    python -m toybigram.train                       # the main job: Shakespeare bigrams, then the theory analysis
    python -m toybigram.train data=dirichlet data.vocab_size=32 optim=sgd train.loss=incontext
    python -m toybigram.train -m seed=0,1,2         # a Hydra multirun
    python -m toybigram.train train.instances=8     # 8 seeds trained together in one process

Each run directory gets metrics.jsonl (one row per evaluation), checkpoint.pt and, when
training has finished (or diverged), summary.json. One loop trains S >= 1 runs: a single
run calls its model directly, several instances share one vmapped step (toybigram.ensemble).
Ctrl-C or SIGTERM stops at the next step boundary with a checkpoint and prints the command
that resumes; a non-finite loss or parameter stops the run as diverged (exit code 3).
"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

import logging
import math
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from toybigram.checkpoint import CHECKPOINT_FILE, clean_stale_temporaries, load_checkpoint, load_run, save_checkpoint
from toybigram.cli import run_app
from toybigram.data import Batch, BigramChain, TriggerSampler
from toybigram.ensemble import ENSEMBLE_FILE, StackedModels, run_layout
from toybigram.errors import DIVERGED_EXIT_CODE, UserError
from toybigram.evaluation import evaluate, training_loss
from toybigram.factory import data_seeds, make_sampler
from toybigram.model import AssociativeTransformer
from toybigram.report.build import write_report
from toybigram.rundir import DIVERGED, FINISHED, check_run_dir, link_latest, prepare_run_dir, read_summary, run_settings
from toybigram.runio import INSTANCE_CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, append_jsonl, atomic_write_text, provenance, read_jsonl, write_json, write_jsonl
from toybigram.runtime import apply_threads, resolve_device
from toybigram.startup import on_terminal
from toybigram.theory.report import analyze_run, headline
from toybigram.validation import validate

log = logging.getLogger("toybigram.train")
TIMING_KEYS = ("elapsed_seconds",)
BLOWUP_FACTOR = 100
PROGRESS_SECONDS = 10.0  # longest silence between progress lines when the output is not a terminal


def make_optimizer(model: AssociativeTransformer, optim: DictConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable matrices; the feed-forward block's group runs at ``ffn_lr_scale`` x the rate."""
    groups = model.trainable_groups()
    ffn = [p for p in groups.pop("W_F", []) if p.requires_grad]
    params = [{"params": [p for ps in groups.values() for p in ps if p.requires_grad], "lr_scale": 1.0}]
    if ffn:
        params.append({"params": ffn, "lr_scale": float(optim.ffn_lr_scale)})
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


def precheck(cfg: DictConfig) -> None:
    """Everything that can be checked before Hydra writes the run directory."""
    validate(cfg)
    run_dir = cfg.get("hydra", {}).get("run", {}).get("dir")
    if run_dir:
        check_layout(cfg, Path(run_dir))


def check_layout(cfg: DictConfig, run_dir: Path) -> list[str]:
    """Check every run directory the config writes (UserError on a clash); returns what each run will do."""
    layout = run_layout(cfg, run_dir)
    actions = [check_run_dir(single, directory) for single, directory in layout]
    if cfg.train.resume and len(layout) > 1:
        steps = {load_checkpoint(directory / CHECKPOINT_FILE, setting="train.resume")["step"]
                 for (_, directory), action in zip(layout, actions) if action == "resume"}
        if len(set(actions)) > 1 or len(steps) > 1:
            raise UserError(f"train.resume: the instances in {run_dir} stopped at different points (steps {sorted(steps)}); "
                            "resume each instance{i}/ directory as a single run")
    return actions


# -- one step for S >= 1 runs ----------------------------------------------------------------


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


def drop_frozen_gradients(parts: RunParts, step: int) -> None:
    """Matrices still frozen by ``train.freeze_until`` lose their gradient: no update, momentum or decay."""
    for name, until in parts.freeze_until.items():
        if step < until:
            for p in parts.groups[name]:
                p.grad = None


class TrainingStep:
    """One optimisation step of S >= 1 runs, each on its own batch with its own optimizer.

    A single run calls its model directly; several run as one model vmapped over their
    stacked weights. Runs in ``skip`` (diverged ones) compute but do not update.
    """

    def __init__(self, parts: list[RunParts], optims: list[DictConfig], train: DictConfig, seq_len: int):
        self.parts, self.optims, self.train, self.seq_len = parts, optims, train, seq_len
        self.stacked = StackedModels([p.model for p in parts]) if len(parts) > 1 else None

    def batches(self) -> list[Batch]:
        if self.stacked is None:
            return [self.parts[0].sampler.sample(self.train.batch_size, self.seq_len)]
        return TriggerSampler.sample_together([p.sampler for p in self.parts], self.train.batch_size, self.seq_len)

    def losses(self, batches: list[Batch]) -> torch.Tensor:
        if self.stacked is None:
            return training_loss(self.parts[0].model(batches[0].inputs), batches[0], self.train.loss).reshape(1)
        return self.stacked.losses(batches, self.train.loss)

    def __call__(self, step: int, skip: frozenset[int] = frozenset()) -> list[float]:
        """Update ``step`` (0-based) of every run on fresh batches; returns each run's training loss."""
        return self.update(self.batches(), step, skip)

    def update(self, batches: list[Batch], step: int, skip: frozenset[int] = frozenset()) -> list[float]:
        """Update ``step`` of every run on the given batches (one per run)."""
        for optim, parts in zip(self.optims, self.parts):
            rate = learning_rate(optim, step, self.train.steps)
            for group in parts.optimizer.param_groups:
                group["lr"] = rate * group["lr_scale"]
        losses = self.losses(batches)
        for parts in self.parts:
            parts.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # run i's loss reaches only run i's parameters
        for i, parts in enumerate(self.parts):
            if i not in skip:
                drop_frozen_gradients(parts, step)
                parts.optimizer.step()
        return losses.tolist()


def parameters_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


# -- the loop ----------------------------------------------------------------------------------


@dataclass
class RunState:
    """One run in the loop: its config, directory and objects, and what it has accumulated."""

    cfg: DictConfig
    run_dir: Path
    parts: RunParts
    settings: dict
    chain: BigramChain
    loss_sum: float = 0.0
    loss_count: int = 0
    wall_before: float = 0.0  # seconds spent by earlier processes (a resumed run)
    row: dict | None = None
    diverged_at: int | None = None
    step_seconds: list[float] = field(default_factory=list)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    def record(self, step: int, start: float) -> dict:
        """Evaluate, append one metrics.jsonl row and reset the training-loss average."""
        parts = self.parts
        row = {"step": step, "train_loss": self.loss_sum / self.loss_count if self.loss_count else None}
        row.update(evaluate(parts.model, parts.eval_batch, parts.eval_bayes, parts.transition, parts.fixed_triggers))
        row["elapsed_seconds"] = self.wall_before + time.perf_counter() - start
        append_jsonl(self.metrics_path, row)
        self.loss_sum, self.loss_count, self.row = 0.0, 0, row
        return row

    def save_checkpoint(self, step: int, start: float) -> None:
        save_checkpoint(
            self.run_dir / CHECKPOINT_FILE,
            {
                "model": self.parts.model.state_dict(),
                "optimizer": self.parts.optimizer.state_dict(),
                "sampler_rng": self.parts.sampler.get_state().cpu(),
                "step": step,
                "loss_sum": self.loss_sum,
                "loss_count": self.loss_count,
                "wall_seconds": self.wall_before + time.perf_counter() - start,
            },
            self.settings,
        )

    def restore(self) -> int:
        """Load the checkpoint and keep the metrics rows it covers; returns its step."""
        parts = self.parts
        state = load_checkpoint(self.run_dir / CHECKPOINT_FILE, parts.device, setting="train.resume")
        parts.model.load_state_dict(state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
        rng = state["sampler_rng"]
        parts.sampler.set_state(rng.cpu() if parts.device.type == "cpu" else rng)
        step = state["step"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        self.wall_before = state.get("wall_seconds", 0.0)
        rows = [r for r in read_jsonl(self.metrics_path) if r["step"] <= step] if self.metrics_path.is_file() else []
        write_jsonl(self.metrics_path, rows)  # drop rows written after the checkpoint
        self.row = rows[-1] if rows and rows[-1]["step"] == step else None
        return step


class Interrupted(Exception):
    """Training stopped on a signal at a step boundary, with a checkpoint saved."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.step, self.exit_code = step, 128 + signum


class StopRequest:
    """Within the block, SIGINT and SIGTERM ask the loop to stop at the next step boundary.

    A second Ctrl-C stops at once. Signal handlers can only be set from the main thread;
    elsewhere the block does nothing.
    """

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class Progress:
    """A tqdm bar on a terminal; otherwise a log line per evaluation and at least every PROGRESS_SECONDS."""

    def __init__(self, mode: str, total: int, initial: int):
        if mode == "auto":
            mode = "bar" if on_terminal() else "lines"
        self.mode, self.bar, self.total = mode, None, total
        self.last_line = time.perf_counter()
        if mode == "bar":
            from tqdm.auto import tqdm  # deferred: only a terminal needs it

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def step(self, step: int, step_seconds: list[float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
        elif self.mode == "lines" and time.perf_counter() - self.last_line > PROGRESS_SECONDS:
            recent = step_seconds[-50:]
            log.info("step %6d / %d  (%.1f ms/step)", step, self.total, 1e3 * sum(recent) / len(recent))
            self.last_line = time.perf_counter()

    def report(self, row: dict) -> None:
        text = (
            f"step {row['step']:>6} | train loss {fmt(row['train_loss'])} "
            f"| global {fmt(row['loss_global'])} (bayes {fmt(row['bayes_loss_global'])}) "
            f"| in-context acc {fmt(row['acc_incontext'])} loss {fmt(row['loss_incontext'])}"
        )
        if self.bar is not None:
            self.bar.set_postfix_str(f"ic acc {fmt(row['acc_incontext'], 3)} gap {fmt(row['gap_global'], 3)}")
        elif self.mode == "lines":
            log.info(text)
            self.last_line = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def start_runs(cfg: DictConfig, run_dir: Path, actions: list[str], chain, spec) -> tuple[list[RunState], int]:
    """Build every run of ``cfg``, prepare its directory and restore it when resuming; returns (runs, step)."""
    device = resolve_device(cfg.device)
    runs, step = [], 0
    for (single, directory), action in zip(run_layout(cfg, run_dir), actions):
        prepare_run_dir(directory, single.train.overwrite, single.train.resume)
        run = RunState(single, directory, build_run(single, chain, spec, device), run_settings(single), chain)
        if action in ("new", "restart"):
            if action == "restart":
                log.info("%s has no checkpoint yet: training starts again from step 0", directory)
            write_jsonl(run.metrics_path, [])
            if cfg.train.instances > 1:  # what a separate run's .hydra/config.yaml holds
                atomic_write_text(directory / INSTANCE_CONFIG_FILE, OmegaConf.to_yaml(single))
        else:
            step = run.restore()
            log.info("resumed %s at step %d", directory, step)
        runs.append(run)
    return runs, step


def divergence(run: RunState, loss: float) -> str | None:
    """Why the run has diverged, or None: a non-finite loss or parameter, or a loss that blew up.

    A model that predicts uniformly pays log N nats; a training loss above
    BLOWUP_FACTOR x log N means the updates have left any useful region.
    """
    if not math.isfinite(loss):
        return "non-finite training loss"
    if not parameters_finite(run.parts.model):
        return "non-finite parameter"
    if loss > BLOWUP_FACTOR * math.log(run.chain.vocab_size):
        return f"training loss {loss:.4g} nats, above {BLOWUP_FACTOR} x log N"
    return None


def train_loop(cfg: DictConfig, runs: list[RunState], step: int, start: float, stop: StopRequest) -> int:
    """Run updates until train.steps, a signal, or every run diverged; returns the last step."""
    train_cfg = cfg.train
    training_step = TrainingStep([r.parts for r in runs], [r.cfg.optim for r in runs], train_cfg, cfg.data.seq_len)
    progress = Progress(train_cfg.progress, train_cfg.steps, step)
    if step == 0:
        progress.report([r.record(step, start) for r in runs][0])
    for run in runs:
        run.parts.model.train()
    try:
        while step < train_cfg.steps and stop.signum is None:
            tick = time.perf_counter()
            diverged = frozenset(i for i, r in enumerate(runs) if r.diverged_at is not None)
            losses = training_step(step, diverged)
            step += 1
            seconds = time.perf_counter() - tick
            for i, (run, loss) in enumerate(zip(runs, losses)):
                if i in diverged:
                    continue
                run.loss_sum, run.loss_count = run.loss_sum + loss, run.loss_count + 1
                run.step_seconds.append(seconds)
                reason = divergence(run, loss)
                if reason is not None:
                    run.diverged_at = step
                    run.record(step, start)
                    finish_diverged(run, start, reason)
            live = [r for r in runs if r.diverged_at is None]
            if not live:
                break
            progress.step(step, live[0].step_seconds)
            if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
                progress.report([r.record(step, start) for r in live][0])
            if train_cfg.ckpt_every and step % train_cfg.ckpt_every == 0 and step < train_cfg.steps:
                for run in live:
                    run.save_checkpoint(step, start)
    finally:
        progress.close()
    return step


# -- finishing ---------------------------------------------------------------------------------


def run_summary(run: RunState, status: str, step: int, start: float) -> dict:
    """The summary.json of a run: last row's figures, timing, seeds, provenance and the resolved config."""
    chain, fixed = run.chain, run.parts.fixed_triggers
    if fixed is None:
        triggers = "random"
    else:
        triggers = chain.decode(fixed.tolist()) if chain.alphabet else fixed.tolist()
    seconds = run.step_seconds
    return {
        "status": status,
        **{k: v for k, v in (run.row or {}).items() if k not in TIMING_KEYS},
        "steps": step,
        "wall_seconds": run.wall_before + time.perf_counter() - start,
        "wall_seconds_this_process": time.perf_counter() - start,
        "step_ms_median": 1e3 * sorted(seconds)[len(seconds) // 2] if seconds else None,
        "seed": run.cfg.seed,
        "data_seed": run.cfg.data_seed,
        "data_source": chain.name,
        "vocab_size": chain.vocab_size,
        "triggers": triggers,
        "run_dir": str(run.run_dir),
        **provenance(run.parts.device, next(run.parts.model.parameters()).dtype),
        "config": run.settings,
    }


def finish_diverged(run: RunState, start: float, reason: str) -> None:
    """summary.json with status diverged, the step and the reason; the model is not analysed."""
    summary = {**run_summary(run, DIVERGED, run.diverged_at, start), "diverged_at_step": run.diverged_at, "reason": reason}
    write_json(run.run_dir / SUMMARY_FILE, summary)


def add_theory(run_dir: Path, model: AssociativeTransformer, cfg: DictConfig, summary: dict) -> dict:
    """Run the quick theory analysis of a finished run and add its headline to summary.json (atomically)."""
    model.eval()
    summary = {**summary, "theory": analyze_run(run_dir, model, cfg, quick=True)}
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def finish(runs: list[RunState], step: int, start: float) -> list[dict]:
    """Final checkpoint, then summary.json (finished) at once, then the theory headline added to it."""
    live = [r for r in runs if r.diverged_at is None]
    for run in live:
        run.save_checkpoint(step, start)
        if run.row is None or run.row["step"] != step:
            run.record(step, start)
        write_json(run.run_dir / SUMMARY_FILE, run_summary(run, FINISHED, step, start))
    summaries = []
    for run in runs:
        summary = read_summary(run.run_dir)
        if run.diverged_at is None and run.cfg.train.theory:
            summary = add_theory(run.run_dir, run.parts.model, run.cfg, summary)
        summaries.append(summary)
    return summaries


def complete_theory(cfg: DictConfig, run_dir: Path) -> dict:
    """A finished run whose theory analysis was cut short: run it now."""
    clean_stale_temporaries(run_dir)
    model, _ = load_run(run_dir)
    return add_theory(run_dir, model, cfg, read_summary(run_dir))


def write_ensemble(run_dir: Path, summaries: list[dict], start: float) -> None:
    first = summaries[0]
    write_json(run_dir / ENSEMBLE_FILE, {
        "instances": len(summaries),
        "wall_seconds": time.perf_counter() - start,
        "step_ms_median": first.get("step_ms_median"),
        "runs": [
            {"dir": s["run_dir"], "status": s["status"], "seed": s["seed"], "data_seed": s["data_seed"],
             "lr": s["config"]["optim"]["lr"], "acc_incontext": s.get("acc_incontext"), "loss_global": s.get("loss_global")}
            for s in summaries
        ],
    })


def train(cfg: DictConfig, run_dir: str | Path) -> dict | list[dict]:
    """Train as ``cfg`` says and write the run directory; returns the summary.

    With ``train.instances > 1`` the instances train together and the result is the list
    of their summaries. Raises Interrupted (checkpoint saved) on SIGINT or SIGTERM.
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    chain, spec = validate(cfg)
    apply_threads(cfg.threads)
    actions = check_layout(cfg, run_dir)
    if set(actions) == {"theory"}:
        summaries = [complete_theory(single, directory) for single, directory in run_layout(cfg, run_dir)]
    else:
        runs, step = start_runs(cfg, run_dir, actions, chain, spec)
        with StopRequest() as stop:
            step = train_loop(cfg, runs, step, start, stop)
            if stop.signum is not None:
                for run in runs:
                    if run.diverged_at is None:
                        run.save_checkpoint(step, start)
                raise Interrupted(step, stop.signum)
        summaries = finish(runs, step, start)
    if cfg.train.instances == 1:
        return summaries[0]
    write_ensemble(run_dir, summaries, start)
    return summaries


# -- the command line --------------------------------------------------------------------------


def print_summary(summary: dict) -> None:
    if summary.get("status") == DIVERGED:
        print(f"toybigram: diverged at step {summary['diverged_at_step']} ({summary['reason']}); "
              f"lower optim.lr or add optim.warmup_steps  ({summary['run_dir']})")
        return
    print(
        "\n".join([
            f"toybigram: {summary['steps']} steps in {summary['wall_seconds']:.1f} s "
            f"({fmt(summary['step_ms_median'], 1)} ms/step) on {summary['device']} ({summary['dtype']})",
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
        print("  " + headline(summary["theory"], Path(summary["run_dir"])))
    print(f"  output      {summary['run_dir']}")


def print_ensemble(summaries: list[dict]) -> None:
    first = max(summaries, key=lambda s: s["steps"])
    print(f"toybigram: {len(summaries)} instances x {first['steps']} steps in {first['wall_seconds']:.1f} s "
          f"({fmt(first['step_ms_median'], 1)} ms/step for all) on {first['device']} ({first['dtype']})")
    for s in summaries:
        state = f"diverged at step {s['diverged_at_step']}" if s["status"] == DIVERGED else \
            f"in-context acc {fmt(s['acc_incontext'])}  global gap {fmt(s['gap_global'])}"
        print(f"  seed {s['seed']:>3} data {s['data_seed']:>3} lr {s['config']['optim']['lr']:<8g} {state}  {s['run_dir']}")


def resume_command(run_dir: Path, overrides: list[str]) -> str:
    """The command line that continues the run in ``run_dir`` with the same settings."""
    dropped = ("hydra.run.dir=", "train.resume=", "train.overwrite=", "hydra.sweep.dir=", "hydra.job.num=")
    kept = [o for o in overrides if not o.lstrip("+~").startswith(dropped)]
    args = [*kept, f"hydra.run.dir={Path(run_dir).absolute()}", "train.resume=true"]
    return "python -m toybigram.train " + " ".join(shlex.quote(a) for a in args)


def main_task(cfg: DictConfig) -> dict | list[dict] | None:
    from hydra.core.hydra_config import HydraConfig  # only inside a Hydra job
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        summary = train(cfg, run_dir)
    except Interrupted as stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopped already: a further Ctrl-C has nothing to stop
        sys.stderr.write(f"{stop}: checkpoint saved; resume with: {resume_command(run_dir, list(hydra_cfg.overrides.task))}\n")
        sys.stderr.flush()
        sys.exit(stop.exit_code)
    summaries = summary if isinstance(summary, list) else [summary]
    (print_ensemble if isinstance(summary, list) else print_summary)(summary)
    if cfg.train.report:
        print(f"  report      {write_report(run_dir)}")
    diverged = any(s.get("status") == DIVERGED for s in summaries)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        if diverged:
            sys.exit(DIVERGED_EXIT_CODE)
        link_latest(run_dir)
    return summary


def main() -> None:
    run_app(main_task, "train", precheck)


if __name__ == "__main__":
    main()
