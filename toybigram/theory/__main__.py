"""python -m toybigram.theory run_dir=outputs/train/... [quick=true variant=diagonal families=[hijack] out_dir=...]

Runs the analytic calculator against a trained model and writes, into ``out_dir`` (the
run directory unless given), ``theory_<variant>_<full|quick>[_seed<k>][_<families>].json``
and a folder of the same name with the plots: the name says which analysis it holds,
and the JSON records it again under ``settings`` (variant, quick, seed, families, run_dir).

The training job's own analysis (quick, variant full, seed 0, every family) lives in
``theory.json`` and ``theory/``; summary.json quotes its headline. This command never
writes those files, so a rerun with other settings cannot change what the summary
quotes. Running it again with the same settings is refused unless ``overwrite=true``.

Everything is checked before anything is written: the settings, that the run directory
holds a readable checkpoint whose config matches its weights (checkpoints of older code
get the settings added since at their defaults), that the run did not diverge, and that
the output directory can be written. Each problem ends in one line ``error: ...``, exit 2.
"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

from pathlib import Path

import torch
from omegaconf import DictConfig

from toybigram.checkpoint import CHECKPOINT_FILE, load_run
from toybigram.cli import run_app
from toybigram.errors import ConfigError, UserError, require
from toybigram.rundir import DIVERGED, check_writable_dir, read_summary, run_status
from toybigram.runtime import resolve_device
from toybigram.theory.config import register_configs
from toybigram.theory.families import FAMILIES, chosen
from toybigram.theory.report import analyze_run, headline, output_paths
from toybigram.theory.strengths import VARIANTS

LOADED: dict[tuple[str, str], tuple] = {}  # (run_dir, device) -> (model, train config), loaded by the pre-check


def chosen_families(families) -> list[str]:
    """The requested prompt families in the order the analysis runs them (ConfigError for unknown ones)."""
    return chosen(list(families), "families")


def output_name(cfg: DictConfig) -> str:
    """theory_<variant>_<full|quick>, then _seed<k> unless seed 0, then the families unless all of them."""
    name = f"theory_{cfg.variant}_{'quick' if cfg.quick else 'full'}"
    if cfg.seed:
        name += f"_seed{cfg.seed}"
    families = chosen_families(cfg.families)
    return name if families == list(FAMILIES) else f"{name}_{'-'.join(families)}"


def check_settings(cfg: DictConfig) -> None:
    """The options alone, before any file is looked at."""
    require(bool(cfg.run_dir), "run_dir", "required (a training run directory holding checkpoint.pt)")
    if cfg.variant not in VARIANTS:
        raise ConfigError(f"variant: unknown value {cfg.variant!r} (choose {', '.join(VARIANTS)})")
    chosen_families(cfg.families)
    require(cfg.seed >= 0, "seed", f"must be non-negative, got {cfg.seed}")
    require(cfg.threads >= 0, "threads", f"must be non-negative (0 = the analysis's own choice), got {cfg.threads}")
    require(bool(cfg.out_dir), "out_dir", "must name a directory (leave it out to write into the run directory)")
    resolve_device(cfg.device)


def check_run(run_dir: Path) -> None:
    """A run directory with a checkpoint of a run that did not diverge."""
    if not run_dir.is_dir():
        raise UserError(f"run_dir: no run directory at {run_dir}")
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise UserError(f"run_dir: no {CHECKPOINT_FILE} in {run_dir} (not a training run, or one that failed to start)")
    summary = read_summary(run_dir)
    if run_status(summary) == DIVERGED:
        raise UserError(f"run_dir: the run in {run_dir} diverged at step {summary.get('diverged_at_step')} "
                        "(its weights are not finite); there is no model to analyse")


def check_output(cfg: DictConfig) -> None:
    """The output directory can be written and does not already hold this analysis (unless overwrite)."""
    out_dir, in_run_dir = Path(cfg.out_dir), Path(cfg.out_dir).absolute() == Path(cfg.run_dir).absolute()
    json_path, folder = output_paths(out_dir, output_name(cfg))
    try:
        check_writable_dir(folder if folder.is_dir() else out_dir, "run_dir" if in_run_dir else "out_dir")
    except UserError as err:
        raise UserError(f"{err}; write the analysis elsewhere with out_dir=DIR" if in_run_dir else str(err)) from None
    if not cfg.overwrite and (json_path.exists() or folder.exists()):
        raise UserError(f"overwrite: {json_path if json_path.exists() else folder} already holds this analysis "
                        "(same variant, quick, seed and families); set overwrite=true to replace it")


def load_model(cfg: DictConfig):
    """The run's model (loaded once: by the pre-check, then handed to the task) with finite weights."""
    key = (str(Path(cfg.run_dir).absolute()), str(cfg.device))
    if key not in LOADED:
        model, train_cfg = load_run(cfg.run_dir, resolve_device(cfg.device))
        if not all(torch.isfinite(tensor).all() for tensor in model.state_dict().values() if tensor.is_floating_point()):
            raise UserError(f"run_dir: the weights in {Path(cfg.run_dir) / CHECKPOINT_FILE} are not all finite "
                            "(a diverged run); there is no model to analyse")
        LOADED[key] = model, train_cfg
    return LOADED[key]


def precheck(cfg: DictConfig) -> None:
    """Everything, the checkpoint included, is checked before Hydra or the analysis writes a file."""
    check_settings(cfg)
    check_run(Path(cfg.run_dir))
    check_output(cfg)
    load_model(cfg)


def task(cfg: DictConfig) -> dict:
    model, train_cfg = load_model(cfg)
    name = output_name(cfg)
    head = analyze_run(cfg.run_dir, model, train_cfg, quick=cfg.quick, variant=cfg.variant, seed=cfg.seed,
                       families=chosen_families(cfg.families), plots=cfg.plots, out_dir=cfg.out_dir, name=name,
                       threads=cfg.threads or 1)
    print(headline(head, Path(cfg.out_dir), f"{name}.json"))
    return head


def main() -> None:
    register_configs()
    run_app(task, "theory", precheck)


if __name__ == "__main__":
    main()
