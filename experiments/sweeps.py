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
from typing import Callable

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


# The launchers of --launcher: basic runs a sweep's jobs one after another in one process (one
# torch start-up per sweep), and several such sweeps run at once; the others run one sweep at a time.
CONCURRENT_SWEEPS_LAUNCHERS = ("basic",)
MULTIRUN_LOG = "multirun.log"  # the multirun's own output, beside the job directories
POLL_SECONDS = 0.2


def _command(sweep: Sweep, launcher: str | None, jobs: int, together: list[str]) -> list[str]:
    """The multirun command line of a sweep."""
    cmd = [sys.executable, "-m", "toybigram.train", "-m", *_selection(sweep.name, sweep.profile),
           f"{SWEEP_DIR_KEY}={sweep.sweep_dir}", JOB_PROGRESS, JOB_REPORT]
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
        if launcher == "joblib":
            cmd.append(f"hydra.launcher.n_jobs={jobs}")
    return [*cmd, *together, *sweep.job_overrides(bool(together))]


def estimated_work(sweep: Sweep) -> float:
    """A rough training cost of a sweep, to start the longest first: per run, steps x batch x
    (1 + (T/32)^1.5), which follows the CPU time of these small models within a factor of 1.5."""
    total = 0.0
    for point in sweep.points:
        size = {key: point.get(key, OmegaConf.select(sweep.base, key)) for key in ("train.steps", "train.batch_size", "data.seq_len")}
        steps, batch, length = (float(size[key]) for key in ("train.steps", "train.batch_size", "data.seq_len"))
        total += steps * batch * (1 + (length / 32) ** 1.5)
    return total


@dataclass
class Launch:
    """A sweep's multirun running in a subprocess, its output going to <sweep dir>/multirun.log."""

    sweep: Sweep
    process: subprocess.Popen
    started: float
    job_count: int
    together: bool

    def poll(self) -> tuple[int, float] | None:
        """(exit code, CPU seconds of the multirun and its workers) once it has ended, else None."""
        pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
        if pid == 0:
            return None
        self.process.returncode = os.waitstatus_to_exitcode(status)
        return self.process.returncode, usage.ru_utime + usage.ru_stime

    def report(self, code: int, cpu: float, log) -> float:
        """Log how the multirun ended (the tail of its output when it failed); returns its wall seconds."""
        seconds = time.perf_counter() - self.started
        name = self.sweep.name
        if code != 0:
            output = (self.sweep.sweep_dir / MULTIRUN_LOG).read_text(errors="replace").strip().splitlines()
            log(f"[{name}] multirun exited with code {code} after {seconds:.0f} s:\n" + "\n".join(output[-15:]))
        else:
            jobs = f" in {self.job_count} jobs" if self.together else ""
            log(f"[{name}] {len(self.sweep.points)} runs{jobs} in {seconds:.0f} s ({cpu:.0f} CPU s)")
        return seconds


def start(sweep: Sweep, launcher: str | None, jobs: int, log=print, seeds_together: bool = False,
          threads: int | None = None) -> Launch:
    """Empty the sweep directory and start the sweep's multirun in a subprocess.

    ``threads``: torch threads of each job (OMP_NUM_THREADS); None: the cores shared among the
    jobs of a parallel launcher (jobs x threads must not oversubscribe the CPU).
    """
    if sweep.sweep_dir.exists():
        shutil.rmtree(sweep.sweep_dir)
    sweep.sweep_dir.mkdir(parents=True)
    together = sweep.seeds_together() if seeds_together else []
    job_count = len(sweep.points) // (len(sweep.axes["seed"]) if together else 1)
    env = dict(os.environ)
    parallel = min(jobs, job_count) if launcher in ("joblib", "submitit_local") else 1
    if threads is None and parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // parallel)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = _command(sweep, launcher, jobs, together)
    log(f"[{sweep.name}] {' '.join(cmd[1:])}")
    with open(sweep.sweep_dir / MULTIRUN_LOG, "w") as output:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    return Launch(sweep, process, time.perf_counter(), job_count, bool(together))


def launch(sweep: Sweep, launcher: str | None = "joblib", jobs: int = 2, log=print,
           seeds_together: bool = False) -> tuple[int, float]:
    """Run the sweep as a Hydra multirun in a subprocess and wait for it; returns (exit code, seconds).

    The sweep directory is emptied first, so a table never mixes two invocations.
    ``seeds_together``: one job per point of the other axes trains all its seeds (``Sweep.seeds_together``).
    A failing job fails alone (its summary.json says why) and the others go on; the exit
    code only says that something failed: the aggregator reads each job's summary.
    """
    running = start(sweep, launcher, jobs, log, seeds_together)
    while (ended := running.poll()) is None:
        time.sleep(POLL_SECONDS)
    return ended[0], running.report(*ended, log)


@dataclass
class SweepPool:
    """Sweeps trained in the background while the runner analyses the ones already done.

    With the basic launcher, up to ``jobs`` sweeps run at once, each in one process whose jobs
    run one after another with cores / (sweeps at once) threads: one torch start-up per sweep
    instead of one per worker, and no core idle at the end of a sweep while another waits.
    Other launchers run one sweep at a time with their own parallelism. The longest sweeps
    (``estimated_work``) start first.
    """

    launcher: str | None
    jobs: int
    log: Callable[[str], None] = print
    seeds_together: bool = False
    queue: list[Sweep] = field(default_factory=list)
    running: dict[Path, Launch] = field(default_factory=dict)
    ended: dict[Path, int] = field(default_factory=dict)  # sweep directory -> exit code
    cpu_seconds: float = 0.0
    lanes: int = 1

    def submit(self, sweeps: list[Sweep]) -> None:
        """Queue sweeps (each sweep directory once), longest first, and start as many as may run."""
        known = {*self.ended, *self.running, *(s.sweep_dir for s in self.queue)}
        for sweep in sweeps:
            if sweep.sweep_dir not in known:
                known.add(sweep.sweep_dir)
                self.queue.append(sweep)
        self.queue.sort(key=estimated_work, reverse=True)
        at_once = self.jobs if (self.launcher or "basic") in CONCURRENT_SWEEPS_LAUNCHERS else 1
        self.lanes = max(1, min(at_once, len(self.queue) + len(self.running)))
        self._fill()

    def _fill(self) -> None:
        while self.queue and len(self.running) < self.lanes:
            sweep = self.queue.pop(0)
            threads = max(1, (os.cpu_count() or 1) // self.lanes) if self.lanes > 1 else None
            self.running[sweep.sweep_dir] = start(sweep, self.launcher, self.jobs, self.log, self.seeds_together, threads)

    def _reap(self) -> None:
        for folder, running in list(self.running.items()):
            ended = running.poll()
            if ended is not None:
                running.report(*ended, self.log)
                self.cpu_seconds += ended[1]
                self.ended[folder] = ended[0]
                del self.running[folder]
        self._fill()

    def have_ended(self, sweeps: list[Sweep]) -> bool:
        """Whether the multiruns of all these sweeps have ended (a sweep never submitted has not)."""
        self._reap()
        return all(sweep.sweep_dir in self.ended for sweep in sweeps)

    def wait(self, sweep: Sweep) -> int:
        """Block until the sweep's multirun has ended (starting it if it was not submitted); its exit code."""
        self.submit([sweep])
        while sweep.sweep_dir not in self.ended:
            self._reap()
            if sweep.sweep_dir not in self.ended:
                time.sleep(POLL_SECONDS)
        return self.ended[sweep.sweep_dir]

    def stop(self) -> None:
        """Stop the multiruns still running (SIGTERM: each job saves a checkpoint) and drop the queue."""
        self.queue.clear()
        for running in self.running.values():
            running.process.terminate()
        for running in self.running.values():
            running.process.wait()
        self.running.clear()
