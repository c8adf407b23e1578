"""Experiment configs (conf/experiment/) as sweeps: their grid, their directory, launching them.

An experiment config declares its grid in ``hydra.sweeper.params`` and its directory in
``hydra.sweep.dir``; ``python -m toybigram.train -m +experiment=NAME`` runs the grid.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("quick", "paper")


def experiment_name(base: str, profile: str) -> str:
    """``fig1_dynamics`` + ``quick`` -> ``fig1_dynamics_quick``; the paper profile is the base file."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (choose {', '.join(PROFILES)})")
    return base if profile == "paper" else f"{base}_{profile}"


def parse_sweep_values(key: str, value: str) -> list[str]:
    """The values of one swept axis as Hydra's basic sweeper expands them ("0,1,2", range(0,3), ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_overrides([f"{key}={value}"])[0]
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [str(override.get_value_element_as_str())]


@dataclass
class Sweep:
    """One experiment config: its name, sweep directory, grid and the composed (unswept) config."""

    name: str
    sweep_dir: Path
    axes: dict[str, list[str]]
    config: dict
    data_seeds: dict[str, int] = field(default_factory=dict)  # the data seed each swept seed resolves to

    @property
    def points(self) -> list[dict[str, str]]:
        keys = list(self.axes)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.axes[k] for k in keys))]

    @classmethod
    def load(cls, name: str, overrides: tuple[str, ...] = ()) -> "Sweep":
        import toybigram.config  # noqa: F401  (registers the structured configs)
        from toybigram.cli import compose

        cfg = compose("train", [f"+experiment={name}", *overrides], with_hydra=True)
        params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
        axes = {str(k): parse_sweep_values(str(k), str(v)) for k, v in params.items()}
        sweep_dir = Path(cfg.hydra.sweep.dir)
        if not sweep_dir.is_absolute():
            sweep_dir = ROOT / sweep_dir
        task = OmegaConf.to_container(cfg, resolve=False)
        task.pop("hydra", None)
        data_seeds = {}
        for seed in axes.get("seed", []):
            point = OmegaConf.create(task)
            point.seed = int(seed)
            data_seeds[seed] = int(point.data_seed)
        return cls(name, sweep_dir, axes, OmegaConf.to_container(OmegaConf.create(task), resolve=True), data_seeds)

    def seeds_together(self) -> list[str]:
        """Overrides that turn the seed axis into one job per point training every seed together
        (``train.instances``); each seed still gets its own run directory, ``<job>/instance{i}/``."""
        seeds = self.axes.get("seed", [])
        if len(seeds) < 2:
            return []
        data = [str(self.data_seeds[s]) for s in seeds]
        return [f"seed={seeds[0]}", f"train.instances={len(seeds)}", f"train.instance_seeds=[{','.join(seeds)}]",
                f"train.instance_data_seeds=[{','.join(data)}]"]


def launch(sweep: Sweep, launcher: str = "joblib", jobs: int = 2, extra: tuple[str, ...] = (), fresh: bool = True,
           log=print, seeds_together: bool = False) -> tuple[int, float]:
    """Run the sweep as a Hydra multirun in a subprocess; returns (exit code, seconds).

    ``fresh`` empties the sweep directory first, so a table never mixes two invocations.
    ``seeds_together``: one job per point of the other axes trains all its seeds (``Sweep.seeds_together``).
    A failing job does not raise here: the aggregator reports it by name.
    """
    if fresh and sweep.sweep_dir.exists():
        shutil.rmtree(sweep.sweep_dir)
    together = sweep.seeds_together() if seeds_together else []
    job_count = len(sweep.points) // (len(sweep.axes["seed"]) if together else 1)
    cmd = [sys.executable, "-m", "toybigram.train", "-m", f"+experiment={sweep.name}", f"hydra.sweep.dir={sweep.sweep_dir}"]
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
        if launcher == "joblib":
            cmd.append(f"hydra.launcher.n_jobs={jobs}")
    cmd.extend(together)
    cmd.extend(extra)
    env = dict(os.environ)
    env.setdefault("CI", "true")
    parallel = min(jobs, job_count)
    if launcher in ("joblib", "submitit_local") and parallel > 1:
        # the cores shared among the jobs that run at once: jobs x threads must not oversubscribe the CPU
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
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
