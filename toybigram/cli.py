"""Hydra entry points whose user errors end in one line and exit code 2.

Hydra writes a run directory before the task starts and reports its own errors over
several lines. We compose the config once up front (cheap) so that a bad override or
an invalid value is reported before anything is written, then hand over to Hydra.
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from toybigram.config import register_configs as register_train_configs
from toybigram.errors import DIVERGED_EXIT_CODE, INTERRUPT_EXIT_CODE, USAGE_EXIT_CODE, UserError, exit_with
from toybigram.hijack.config import register_configs as register_hijack_configs
from toybigram.repetition.config import register_configs as register_repetition_configs
from toybigram.rundir import DIVERGED, FAILED, check_writable_dir, read_summary, run_status, write_failed_summary
from toybigram.runio import SUMMARY_FILE
from toybigram.theory.config import register_configs as register_theory_configs

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
MULTIRUN_FLAGS = {"-m", "--multirun"}
# The schemas and presets each primary config in conf/ composes from.
REGISTER_CONFIGS = {"train": register_train_configs, "theory": register_theory_configs, "repetition": register_repetition_configs,
                    "hijack": register_hijack_configs}


def register_configs(config_name: str) -> None:
    """Store the structured configs ``config_name`` needs in Hydra's ConfigStore (idempotent)."""
    if config_name in REGISTER_CONFIGS:
        REGISTER_CONFIGS[config_name]()


def first_lines(error: BaseException) -> str:
    """Hydra/OmegaConf messages carry the reason in the first lines and in their cause."""
    parts = [str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__]
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause).strip():
        first = str(cause).strip().splitlines()[0]
        if first not in parts[0]:
            parts.append(first)
    return " ".join(parts)


def compose(config_name: str, overrides: list[str] = (), with_hydra: bool = False) -> DictConfig:
    """Compose ``config_name`` from conf/ with ``overrides`` (for notebooks, tests and pre-checks).

    ``with_hydra`` keeps the ``hydra`` node (run directory and so on).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs(config_name)
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=with_hydra)


def run_app(
    task: Callable[[DictConfig], object],
    config_name: str,
    precheck: Callable[[DictConfig], None] | None = None,
) -> None:
    """Run ``task`` as a Hydra app named ``config_name``.

    ``precheck(cfg)`` validates a composed config (before Hydra writes anything) and
    raises UserError on bad input. In a multirun each job is checked when it starts; a
    job whose settings are refused fails alone (its summary.json says why) and the sweep
    goes on; the sweep's exit code then says that some job failed (2) or diverged (3).
    """
    import hydra

    register_configs(config_name)
    args = sys.argv[1:]
    is_multirun = any(a in MULTIRUN_FLAGS for a in args)
    informational = any(a.startswith(("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion")) for a in args)
    overrides = [a for a in args if not a.startswith("-")]
    if is_multirun and not informational:
        precheck_sweep(config_name, overrides)
    elif not informational:
        cfg = compose_or_exit(config_name, overrides)
        if precheck is not None:
            with user_errors():
                precheck(cfg)

    @hydra.main(version_base=None, config_path=CONF_DIR, config_name=config_name)
    def _main(cfg: DictConfig):
        try:
            with user_errors(job_file=True):
                if precheck is not None and is_multirun:
                    precheck(cfg)
                return task(cfg)
        except SystemExit as stop:
            if not is_multirun or stop.code != USAGE_EXIT_CODE:
                raise
            _fail_job(cfg)  # the error line is out; the other jobs go on

    SWEEP_OUTCOME.clear()
    _main()
    if is_multirun and SWEEP_OUTCOME:
        codes = set(SWEEP_OUTCOME.values())
        sys.exit(USAGE_EXIT_CODE if USAGE_EXIT_CODE in codes else DIVERGED_EXIT_CODE)


def compose_or_exit(config_name: str, overrides: list[str]) -> DictConfig:
    """The composed config with Hydra's node, or one ``error:`` line for an unknown key or a bad type."""
    try:
        return compose(config_name, overrides, with_hydra=True)
    except UserError as err:
        exit_with(err)
    except Exception as err:  # Hydra/OmegaConf composition errors: unknown keys, bad types
        exit_with(first_lines(err))


def precheck_sweep(config_name: str, overrides: list[str]) -> None:
    """Before a multirun starts: every job's overrides compose, and the sweep directory can be written.

    Values a job's own check refuses (a vocabulary of 1, say) are left to that job, which fails
    alone; what would stop Hydra itself (an unknown key, a bad type, a bad sweep syntax) ends here.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        jobs = BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]
    except Exception as err:  # override syntax, or a sweep kind the basic sweeper cannot expand
        exit_with(first_lines(err))
    for job in jobs:
        cfg = compose_or_exit(config_name, job)
    with user_errors():
        check_writable_dir(Path(cfg.hydra.sweep.dir), "hydra.sweep.dir")


@contextmanager
def user_errors(job_file: bool = False) -> Iterator[None]:
    """Turn user errors, file-system errors and Ctrl-C into one line and an exit code, without a traceback."""
    try:
        yield
    except UserError as err:
        _report(f"error: {err}", job_file)
        exit_with(err)
    except OSError as err:  # a full disk, a read-only directory, a file where a directory should be
        where = f"{err.filename}: " if err.filename else ""
        message = f"{where}{err.strerror or err}"
        _report(f"error: {message}", job_file)
        exit_with(message)
    except KeyboardInterrupt:
        exit_with("interrupted", INTERRUPT_EXIT_CODE)


LAST_ERROR: list[str] = []


def _report(message: str, job_file: bool) -> None:
    LAST_ERROR[:] = [message]
    if job_file:
        _log_to_job_file(message)  # a sweep's aggregator quotes it from there


def _fail_job(cfg: DictConfig) -> None:
    """Mark a refused sweep job as failed in its own directory (never over another run's files)."""
    from hydra.core.hydra_config import HydraConfig  # only inside a Hydra job

    error = LAST_ERROR[0].removeprefix("error: ") if LAST_ERROR else "refused"
    try:
        settings = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    except Exception:  # settings that do not even resolve are recorded as given
        settings = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=False)
    write_failed_summary(Path(HydraConfig.get().runtime.output_dir), error, settings)


SWEEP_OUTCOME: dict[str, int] = {}  # run directory -> exit code, for the jobs of a multirun that did not finish


class SweepOutcome(Callback):
    """At the end of a multirun, note the jobs that failed or diverged (read from their summary.json)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        for path in sorted(sweep_dir.rglob(SUMMARY_FILE)) if sweep_dir.is_dir() else []:
            status = run_status(read_summary(path.parent))
            if status in EXIT_CODES:
                SWEEP_OUTCOME[str(path.parent)] = EXIT_CODES[status]
        if SWEEP_OUTCOME:
            failed = ", ".join(f"{Path(d).relative_to(sweep_dir)} ({status_name(c)})" for d, c in SWEEP_OUTCOME.items())
            sys.stderr.write(f"error: {len(SWEEP_OUTCOME)} job(s) did not finish in {sweep_dir}: {failed}\n")


EXIT_CODES = {FAILED: USAGE_EXIT_CODE, DIVERGED: DIVERGED_EXIT_CODE}


def status_name(code: int) -> str:
    return FAILED if code == USAGE_EXIT_CODE else DIVERGED


def _log_to_job_file(message: str) -> None:
    """Write ``message`` to the Hydra job's log file only (the console gets exit_with's one line)."""
    record = logging.LogRecord("toybigram", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
