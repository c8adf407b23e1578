"""Run-directory policy: what a directory may hold before a run starts, and what "finished" means.

A run directory moves through these states:

- empty (or holding only a failed job's summary): a new run may start;
- interrupted: ``checkpoint.pt`` without ``summary.json``; ``train.resume=true`` continues it;
- finished: ``summary.json`` with ``status: finished`` (written right after the final
  checkpoint; the theory headline is added to it afterwards);
- diverged: ``summary.json`` with ``status: diverged`` and the step it happened at;
- failed: ``summary.json`` with ``status: failed`` and the error (a sweep job whose
  settings were refused).

Nothing here overwrites a run silently: reusing a directory that holds one needs
``train.resume=true`` or ``train.overwrite=true``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from toybigram.checkpoint import CHECKPOINT_FILE, clean_stale_temporaries, load_checkpoint
from toybigram.errors import UserError
from toybigram.runio import METRICS_FILE, SUMMARY_FILE, read_json, write_json

FINISHED, DIVERGED, FAILED = "finished", "diverged", "failed"
THEORY_FILES = ("theory.json", "theory", "theory_*")  # the main job's analysis; the theory command's
# Settings that may change when a run is resumed; everything else must match the checkpoint.
RESUMABLE_SETTINGS = {
    ("train", "steps"), ("train", "resume"), ("train", "progress"), ("train", "overwrite"), ("train", "theory"), ("train", "report"),
    ("train", "instances"), ("train", "instance_seeds"), ("train", "instance_data_seeds"), ("train", "instance_lrs"),
}
RESUMABLE_TOP_LEVEL = {"device", "threads", "max_memory_gb"}


def run_settings(cfg: DictConfig) -> dict:
    """The resolved settings of a run as plain data, without Hydra's own node (which may not resolve)."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]), resolve=True)


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary.json, or None when there is none (or it cannot be read)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def run_status(summary: dict | None) -> str | None:
    """finished, diverged or failed; summaries from before the status field count as finished."""
    return None if summary is None else summary.get("status", FINISHED)


def check_writable_dir(run_dir: Path, setting: str = "hydra.run.dir") -> None:
    """Refuse a run directory that is a file, sits below a file, or cannot be created or written."""
    run_dir = Path(run_dir).absolute()
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                raise UserError(f"{setting}: {path} is a file, not a directory")
            if not os.access(path, os.W_OK | os.X_OK):
                raise UserError(f"{setting}: cannot write in {path} (permission denied)")
            return


def mismatched_settings(saved: dict, settings: dict) -> list[str]:
    """Keys whose value differs between a checkpoint's config and the requested one (resumable ones aside)."""
    keys = []
    for group, values in settings.items():
        if isinstance(values, dict):
            keys += [f"{group}.{key}" for key, value in values.items()
                     if (group, key) not in RESUMABLE_SETTINGS and saved.get(group, {}).get(key) != value]
        elif group not in RESUMABLE_TOP_LEVEL and saved.get(group) != values:
            keys.append(group)
    return keys


def check_run_dir(cfg: DictConfig, run_dir: Path) -> str:
    """Refuse to clobber a run, or to resume one that is not there or does not match.

    Returns what the run will do: ``new``, ``resume``, ``restart`` (a run stopped before its
    first checkpoint starts again from step 0), or ``theory`` (a finished run whose theory
    analysis was interrupted: resuming completes it).
    """
    run_dir = Path(run_dir)
    check_writable_dir(run_dir)
    summary, checkpoint = read_summary(run_dir), run_dir / CHECKPOINT_FILE
    status = run_status(summary)
    if cfg.train.resume:
        if status == DIVERGED:
            raise UserError(f"train.resume: the run in {run_dir} diverged at step {summary.get('diverged_at_step')}; "
                            "start over with train.overwrite=true and other settings")
        if not checkpoint.is_file() and status is None and (run_dir / METRICS_FILE).is_file():
            return "restart"  # stopped before its first checkpoint: nothing to continue from
        if not checkpoint.is_file():
            raise UserError(f"train.resume: no checkpoint to resume in {run_dir} (set hydra.run.dir to the run's directory)")
        saved = load_checkpoint(checkpoint, setting="train.resume")
        mismatched = mismatched_settings(saved["config"], run_settings(cfg))
        if mismatched:
            raise UserError(f"train.resume: settings differ from the checkpoint in {run_dir}: {', '.join(mismatched)}")
        if status == FINISHED and saved["step"] >= cfg.train.steps:
            if cfg.train.theory and "theory" not in summary:
                return "theory"
            raise UserError(f"train.resume: the run in {run_dir} already finished {saved['step']} steps; "
                            "raise train.steps to continue")
        return "resume"
    if not cfg.train.overwrite and (checkpoint.is_file() or status in (FINISHED, DIVERGED)):
        state = {FINISHED: "a finished run", DIVERGED: "a diverged run"}.get(status, "an interrupted run")
        raise UserError(
            f"{run_dir} already holds {state}; choose another hydra.run.dir, "
            "continue it with train.resume=true, or start over with train.overwrite=true"
        )
    return "new"


def check_study_dir(run_dir: Path, partial: str, resume: bool, overwrite: bool, what: str = "run") -> None:
    """A study that keeps its finished parts in ``partial``: never overwrite a finished one (summary.json),
    continue an interrupted one only with ``resume``, and resume only what is there."""
    if overwrite:
        return
    started = (run_dir / partial).is_file()
    if (run_dir / SUMMARY_FILE).is_file():
        raise UserError(f"{run_dir} already holds a finished {what}; choose another hydra.run.dir or pass overwrite=true")
    if started and not resume:
        raise UserError(f"{run_dir} holds an interrupted run; continue it with resume=true or start over with overwrite=true")
    if resume and not started:
        raise UserError(f"resume: nothing to resume in {run_dir} (set hydra.run.dir to the interrupted run's directory)")


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Create the run directory, drop temporaries a killed write left, and with overwrite clear the old run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(run_dir)
    if not resume and run_status(read_summary(run_dir)) == FAILED:
        (run_dir / SUMMARY_FILE).unlink()
    if overwrite and not resume:
        for pattern in (SUMMARY_FILE, CHECKPOINT_FILE, METRICS_FILE, "report.html", *THEORY_FILES):
            for path in run_dir.glob(pattern):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def write_failed_summary(run_dir: Path, error: str, settings: dict | None) -> bool:
    """Mark a sweep job whose settings were refused; never replaces another run's summary. True if written."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY_FILE).exists() or (run_dir / CHECKPOINT_FILE).exists():
        return False
    write_json(run_dir / SUMMARY_FILE, {"status": FAILED, "error": error, "config": settings})
    return True


LATEST_LINK = "latest"


def link_latest(run_dir: Path, runs_root: Path = Path("outputs") / "train") -> Path | None:
    """Point ``outputs/train/latest`` at a finished run of the default run directory (replaced atomically).

    Only runs under ``runs_root`` (relative to the working directory) get the link; a run
    elsewhere (``hydra.run.dir=...``) leaves it alone. Returns the link, or None.
    """
    root = runs_root.resolve()
    target = run_dir.resolve()
    if root not in target.parents:
        return None
    link = root / LATEST_LINK
    if link.exists() and not link.is_symlink():
        return None  # a user's own file or folder of that name stays
    temporary = root / f".{LATEST_LINK}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target.relative_to(root), target_is_directory=True)
    os.replace(temporary, link)
    return link
