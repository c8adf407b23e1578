"""Experiment configs (conf/experiment/) as sweeps: their grid, their directory, their settings per point, launching them.

An experiment config declares its grid in ``hydra.sweeper.params`` and takes its sizes from a
profile (conf/profile/, and conf/sizes/<experiment>/ where an experiment's own sizes differ by
profile); ``python -m toybigram.train -m +experiment=NAME profile=quick`` runs the grid into
``outputs/experiments/<profile>/<experiment>/``.
Extra overrides behave as on Hydra's command line: they apply to every job, and an
override of a swept setting replaces that axis (``seed=0`` runs seed 0 only,
``seed=0,1`` runs seeds 0 and 1). Several values for a setting the experiment does not
sweep are refused: the figure's tables would not know the extra axis.
"""
from __future__ import annotations

import copy
import itertools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from toybigram.validation import validate
from toybigram.cli import CONF_DIR, compose, first_lines
from toybigram.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PROFILES = tuple(sorted(p.stem for p in Path(CONF_DIR, "profile").glob("*.yaml")))  # conf/profile/<name>.yaml
SWEEP_DIR_KEY = "hydra.sweep.dir"
# Progress of each job as plain log lines (one per evaluation), never a terminal bar: in its train.log and cluster log.
JOB_PROGRESS = "train.progress=lines"
JOB_REPORT = "train.report=false"  # figures read the tables; a page per sweep job would only cost time


def _selection(name: str, profile: str) -> list[str]:
    """The overrides that choose an experiment config and its profile."""
    return [f"+experiment={name}", f"profile={profile}"]


def _parse(override: str):
    """One command-line override as Hydra parses it; a syntax error is the user's."""
    try:
        return OverridesParser.create().parse_overrides([override])[0]
    except Exception as err:  # Hydra's OverrideParseException and friends
        raise UserError(f"--override {override}: {first_lines(err)}") from None


def override_key(override: str) -> str:
    """``+data.x=1`` -> ``data.x``; ``hydra/launcher=joblib`` -> ``hydra/launcher``."""
    return override.partition("=")[0].lstrip("+~")


def parse_sweep_values(key: str, value: str) -> list[str]:
    """The values of one swept axis as Hydra's basic sweeper expands them ("0,1,2", range(0,3), ...)."""
    override = _parse(f"{key}={value}")
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [str(override.get_value_element_as_str())]


def typed_value(key: str, value: str):
    """A swept value as the Python value Hydra would set ("8" -> 8, "rpe" -> "rpe", "0.5" -> 0.5)."""
    return _parse(f"{key}={value}").value()


@dataclass
class Sweep:
    """One experiment config in a profile with the extra overrides: its name, sweep directory, grid and settings."""

    name: str
    profile: str
    sweep_dir: Path
    axes: dict[str, list[str]]
    data_seeds: dict[str, int] = field(default_factory=dict)  # the data seed each swept seed resolves to
    overrides: tuple[str, ...] = ()  # the extra overrides, as given
    base: DictConfig | None = field(default=None, repr=False)  # the composed settings, unresolved
    _expected: dict[tuple, dict] = field(default_factory=dict, repr=False)

    @property
    def points(self) -> list[dict[str, str]]:
        keys = list(self.axes)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.axes[k] for k in keys))]

    @classmethod
    def load(cls, name: str, profile: str, overrides: tuple[str, ...] = (), sweeps_dir: str | Path | None = None) -> "Sweep":
        """Compose ``+experiment=name profile=profile`` with ``overrides``; bad overrides raise UserError naming them.

        ``sweeps_dir``: put the sweep in ``sweeps_dir/<last part of its hydra.sweep.dir>``.
        """
        parsed = [(item, _parse(item)) for item in overrides]
        fixed = [item for item, p in parsed if not p.is_sweep_override()]
        try:
            cfg = compose("train", [*_selection(name, profile), *fixed], with_hydra=True)
        except UserError:
            raise
        except Exception as err:  # unknown keys, values of the wrong type
            raise UserError(f"{name}: {first_lines(err)}" + (f" (--override {' '.join(fixed)})" if fixed else "")) from None
        params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
        axes = {str(k): parse_sweep_values(str(k), str(v)) for k, v in params.items()}
        for item, p in parsed:  # as on Hydra's command line: an override of a swept setting replaces the axis
            key = override_key(item)
            if key in axes:
                axes[key] = [str(v) for v in p.sweep_string_iterator()] if p.is_sweep_override() else [str(p.get_value_element_as_str())]
            elif p.is_sweep_override():
                raise UserError(f"--override {item}: several values for a setting {name} does not sweep "
                                f"(it sweeps {', '.join(axes) or 'nothing'})")
        sweep_dir = Path(cfg.hydra.sweep.dir)
        sweep_dir = Path(sweeps_dir) / sweep_dir.name if sweeps_dir is not None else sweep_dir
        sweep_dir = sweep_dir if sweep_dir.is_absolute() else ROOT / sweep_dir
        base = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        sweep = cls(name, profile, sweep_dir, axes, overrides=tuple(overrides), base=base)
        sweep.data_seeds = {seed: int(sweep.point_config({"seed": seed}).data_seed) for seed in axes.get("seed", [])}
        return sweep

    def point_config(self, point: dict[str, str]) -> DictConfig:
        """The settings a job of this point runs with: the composed config with the point's values set."""
        cfg = self.base.copy()
        for key, value in point.items():
            if "." not in key and isinstance(cfg.get(key), DictConfig):  # a config group: let Hydra compose it
                return compose("train", [*_selection(self.name, self.profile), *self._fixed_overrides(),
                                         *(f"{k}={v}" for k, v in point.items())])
            OmegaConf.update(cfg, key, typed_value(key, value), merge=True)
        return cfg

    def _fixed_overrides(self) -> list[str]:
        return [item for item in self.overrides if override_key(item) not in self.axes and not _parse(item).is_sweep_override()]

    def expected(self, point: dict[str, str]) -> dict:
        """The resolved settings a finished run of ``point`` must have recorded (a copy of a cached dict)."""
        key = tuple(sorted(point.items()))
        if key not in self._expected:
            self._expected[key] = OmegaConf.to_container(self.point_config(point), resolve=True)
        return copy.deepcopy(self._expected[key])

    def check(self) -> None:
        """Validate the settings of every point before anything runs; a bad one raises UserError naming it.

        Each seed and each combination of the other values is checked at least once, not every
        pairing: a seed is checked on its own (its range), and building the chain dominates the cost.
        """
        checked_others, checked_seeds = set(), set()
        for point in self.points:
            others = tuple((k, v) for k, v in point.items() if k != "seed")
            if others in checked_others and point.get("seed") in checked_seeds:
                continue
            checked_others.add(others)
            checked_seeds.add(point.get("seed"))
            try:
                validate(self.point_config(point))
            except UserError as err:
                where = ",".join(f"{k}={v}" for k, v in point.items())
                raise UserError(f"{err} ({self.name} at {where}" + (f", with --override {' '.join(self.overrides)})" if self.overrides else ")")) from None
            except Exception as err:  # a value of the wrong type for its setting
                raise UserError(f"{self.name}: {first_lines(err)}") from None

    def seeds_together(self) -> list[str]:
        """Overrides that turn the seed axis into one job per point training every seed together
        (``train.instances``); each seed still gets its own run directory, ``<job>/instance{i}/``."""
        seeds = self.axes.get("seed", [])
        if len(seeds) < 2:
            return []
        data = [str(self.data_seeds[s]) for s in seeds]
        return [f"seed={seeds[0]}", f"train.instances={len(seeds)}", f"train.instance_seeds=[{','.join(seeds)}]",
                f"train.instance_data_seeds=[{','.join(data)}]"]

    def job_overrides(self, together: bool) -> list[str]:
        """The extra overrides as passed to the multirun: the sweep directory is set by ``launch``, and
        with seeds together the seed axis is in ``seeds_together``."""
        dropped = {SWEEP_DIR_KEY, *(("seed",) if together else ())}
        return [item for item in self.overrides if override_key(item) not in dropped]


@dataclass
class Setup:
    """Where the sweeps of a profile live and which extra overrides they run with."""

    profile: str = "quick"
    overrides: tuple[str, ...] = ()
    sweeps_dir: Path | None = None  # None: each experiment config's hydra.sweep.dir
    _sweeps: dict[str, Sweep] = field(default_factory=dict, repr=False)

    def sweep(self, experiment: str) -> Sweep:
        """The sweep of an experiment config in this profile (composed once)."""
        if experiment not in self._sweeps:
            self._sweeps[experiment] = Sweep.load(experiment, self.profile, self.overrides, self.sweeps_dir)
        return self._sweeps[experiment]

    def build_dir(self, name: str) -> Path:
        """Where an input that is not a sweep (e.g. Figure 5's ideal builds) is written: beside the sweeps."""
        if self.sweeps_dir is not None:
            return Path(self.sweeps_dir) / name
        return ROOT / "outputs" / "experiments" / self.profile / name


def launch(sweep: Sweep, launcher: str | None = "joblib", jobs: int = 2, fresh: bool = True,
           log=print, seeds_together: bool = False) -> tuple[int, float]:
    """Run the sweep as a Hydra multirun in a subprocess; returns (exit code, seconds).

    ``fresh`` empties the sweep directory first, so a table never mixes two invocations.
    ``seeds_together``: one job per point of the other axes trains all its seeds (``Sweep.seeds_together``).
    A failing job fails alone (its summary.json says why) and the others go on; the exit
    code only says that something failed: the aggregator reads each job's summary.
    """
    if fresh and sweep.sweep_dir.exists():
        shutil.rmtree(sweep.sweep_dir)
    together = sweep.seeds_together() if seeds_together else []
    job_count = len(sweep.points) // (len(sweep.axes["seed"]) if together else 1)
    cmd = [sys.executable, "-m", "toybigram.train", "-m", *_selection(sweep.name, sweep.profile),
           f"{SWEEP_DIR_KEY}={sweep.sweep_dir}", JOB_PROGRESS, JOB_REPORT]
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
        if launcher == "joblib":
            cmd.append(f"hydra.launcher.n_jobs={jobs}")
    cmd.extend(together)
    cmd.extend(sweep.job_overrides(bool(together)))
    env = dict(os.environ)
    parallel = min(jobs, job_count)
    if launcher in ("joblib", "submitit_local") and parallel > 1:
        # the cores shared among the jobs that run at once: jobs x threads must not oversubscribe the CPU
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    log(f"[{sweep.name}] {' '.join(cmd[1:])}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        log(f"[{sweep.name}] multirun exited with code {proc.returncode} after {seconds:.0f} s:\n{tail}")
    else:
        log(f"[{sweep.name}] {len(sweep.points)} runs" + (f" in {job_count} jobs" if together else "") + f" in {seconds:.0f} s")
    return proc.returncode, seconds
