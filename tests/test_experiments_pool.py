"""Sweeps trained in the background (experiments.sweeps.SweepPool): the longest first, at most --jobs
at once with the cores shared among them, a failing sweep alone, nothing left running after a stop;
and the runner's choices that follow from it (next figure, seeds together by default)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import experiments.sweeps as sweeps
from experiments.run import next_figure, parse_args
from experiments.sweeps import Launch, Sweep, SweepPool, estimated_work


@dataclass
class FakeSweep:
    """What the pool reads of a sweep: its name, directory and points (its work comes from WORK)."""

    name: str
    sweep_dir: Path
    points: tuple = ({"seed": "0"},)


WORK = {"long": 3.0, "middle": 2.0, "short": 1.0, "fails": 0.5, "hangs": 9.0}
EXIT_CODES = {"fails": 3}


@pytest.fixture
def fake_start(monkeypatch, tmp_path):
    """Replace the multirun by a short sleep; record each start with the threads it was given and
    how many multiruns were running at that moment."""
    started = []
    pools = []

    def start(sweep, launcher, jobs, log=print, seeds_together=False, threads=None):
        running = sum(len(pool.running) for pool in pools)
        started.append((sweep.name, threads, running))
        sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep.sweep_dir / sweeps.MULTIRUN_LOG).write_text("error: a job failed\n")
        seconds = 30 if sweep.name == "hangs" else 0.3
        code = EXIT_CODES.get(sweep.name, 0)
        process = subprocess.Popen([sys.executable, "-c", f"import time, sys; time.sleep({seconds}); sys.exit({code})"])
        return Launch(sweep, process, time.perf_counter(), 1, False)

    monkeypatch.setattr(sweeps, "start", start)
    monkeypatch.setattr(sweeps, "estimated_work", lambda sweep: WORK.get(sweep.name, 0.0))

    def make_pool(jobs: int, launcher=None) -> SweepPool:
        pool = SweepPool(launcher, jobs, log=lambda msg: None)
        pools.append(pool)
        return pool

    return make_pool, started, {name: FakeSweep(name, tmp_path / name) for name in WORK}


def test_the_longest_sweeps_start_first_and_at_most_jobs_run_at_once(fake_start):
    make_pool, started, fake = fake_start
    pool = make_pool(jobs=2)
    pool.submit([fake["short"], fake["fails"], fake["long"], fake["middle"]])
    assert [name for name, _, _ in started] == ["long", "middle"]  # two lanes, longest first
    assert {threads for _, threads, _ in started} == {max(1, (os.cpu_count() or 1) // 2)}
    assert pool.wait(fake["fails"]) == 3  # a failing sweep reports its exit code ...
    assert all(pool.wait(fake[name]) == 0 for name in ("long", "middle", "short"))  # ... and the others still run
    assert [name for name, _, _ in started] == ["long", "middle", "short", "fails"]
    assert max(running for _, _, running in started) <= 1  # never a third one beside two
    assert pool.have_ended([fake["long"], fake["fails"]]) and not pool.running and not pool.queue


def test_a_sweep_is_trained_once_and_a_parallel_launcher_runs_one_sweep_at_a_time(fake_start):
    make_pool, started, fake = fake_start
    pool = make_pool(jobs=2, launcher="joblib")
    pool.submit([fake["short"], fake["long"]])
    pool.submit([fake["long"]])
    assert [name for name, _, _ in started] == ["long"]  # joblib: its own jobs run in parallel, one sweep at a time
    assert started[0][1] is None  # the launcher shares the cores among its own jobs
    assert pool.wait(fake["short"]) == 0
    assert [name for name, _, _ in started] == ["long", "short"]


def test_stop_leaves_no_multirun_running(fake_start):
    make_pool, _, fake = fake_start
    pool = make_pool(jobs=1)
    pool.submit([fake["hangs"], fake["short"]])
    process = pool.running[fake["hangs"].sweep_dir].process
    start = time.perf_counter()
    pool.stop()
    assert process.poll() is not None and time.perf_counter() - start < 10
    assert not pool.running and not pool.queue  # the queued sweep never starts


def test_the_quick_sweeps_are_ordered_by_their_training_work():
    work = {name: estimated_work(Sweep.load(name, "quick")) for name in ("fig7_vocab_length", "fig1_dynamics", "fig3_length_nope")}
    assert work["fig7_vocab_length"] > work["fig1_dynamics"] > work["fig3_length_nope"] > 0


class EndedPool:
    def __init__(self, ended: set[str]):
        self.ended = ended

    def have_ended(self, sweeps_of_a_figure) -> bool:
        return all(s.name in self.ended for s in sweeps_of_a_figure)


class NamedSetup:
    def sweep(self, experiment: str):
        return FakeSweep(experiment, Path(experiment))


def test_the_runner_takes_the_first_figure_whose_sweeps_have_ended():
    waiting = ["fig1", "fig3", "fig7"]
    assert next_figure(waiting, NamedSetup(), EndedPool({"fig3_length", "fig3_length_nope", "fig1_dynamics"})) == "fig3"
    assert next_figure(waiting, NamedSetup(), EndedPool(set())) == "fig1"  # none ready: wait for the first
    assert next_figure(waiting, NamedSetup(), None) == "fig1"  # --skip-train: in order


@pytest.mark.parametrize("argv, together", [(["fig1"], True), (["fig1", "--launcher", "joblib"], False),
                                            (["fig1", "--no-seeds-together"], False),
                                            (["fig1", "--launcher", "joblib", "--seeds-together"], True)])
def test_seeds_train_together_by_default_with_the_basic_launcher(argv, together):
    assert parse_args(argv).seeds_together is together
