"""Hydra entry points whose user errors end in one line and exit code 2.

Hydra writes a run directory before the task starts and reports its own errors over
several lines. We compose the config once up front (cheap) so that a bad override or
an invalid value is reported before anything is written, then hand over to Hydra.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from toybigram.errors import UserError, exit_with

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
MULTIRUN_FLAGS = {"-m", "--multirun"}


def _first_lines(error: BaseException) -> str:
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

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=with_hydra)


def run_app(
    task: Callable[[DictConfig], object],
    config_name: str,
    precheck: Callable[[DictConfig], None] | None = None,
) -> None:
    """Run ``task`` as a Hydra app named ``config_name``.

    ``precheck(cfg)`` validates a composed config (before Hydra writes anything) and
    raises UserError on bad input. In multirun each job is checked when it starts.
    """
    import hydra

    args = sys.argv[1:]
    is_multirun = any(a in MULTIRUN_FLAGS for a in args)
    informational = any(a.startswith(("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion")) for a in args)
    if not is_multirun and not informational:
        overrides = [a for a in args if not a.startswith("-")]
        try:
            cfg = compose(config_name, overrides, with_hydra=True)
        except UserError as err:
            exit_with(err)
        except Exception as err:  # Hydra/OmegaConf composition errors: unknown keys, bad types
            exit_with(_first_lines(err))
        if precheck is not None:
            try:
                precheck(cfg)
            except UserError as err:
                exit_with(err)

    @hydra.main(version_base=None, config_path=CONF_DIR, config_name=config_name)
    def _main(cfg: DictConfig):
        try:
            if precheck is not None and is_multirun:
                precheck(cfg)
            return task(cfg)
        except UserError as err:
            _log_to_job_file(f"error: {err}")  # a sweep's aggregator quotes it from there
            exit_with(err)

    _main()


def _log_to_job_file(message: str) -> None:
    """Write ``message`` to the Hydra job's log file only (the console gets exit_with's one line)."""
    record = logging.LogRecord("toybigram", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
