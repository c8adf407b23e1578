"""Experiments: configs compose in each profile, the aggregator on a fixture of run directories, the submitit_local sweep."""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY
from experiments.figure import registry
from experiments.figures.fig1_dynamics import tables as fig1_tables
from experiments.runs import Collected, MixedRunsError, collect, config_differences
from experiments.sweeps import PROFILES, ROOT, Sweep
from experiments.tables import mean_ci, summarise, write_table
from toybigram.cli import compose

CONFIG = {"data": {"source": "dirichlet", "vocab_size": 16, "seq_len": 32}, "model": {"d_model": 64, "pos": "ape"},
          "train": {"steps": 20, "freeze_until": {}, "progress": "none"}, "seed": 0, "data_seed": 0, "device": "cpu"}


def _metrics(steps):
    return [{"step": s, "loss_global": 2.0 - s / 100, "acc_incontext": s / 20, "recall_copy": s / 20,
             "recall_induction_key": s / 40, "recall_prev_token": s / 80, "recall_prev_token_first64": s / 60,
             "bigram_kl": 1 - s / 40} for s in steps]


def make_run(root: Path, name: str, seed: int, *, summary=True, metrics=(0, 10, 20), overrides=None, config=None, log=None):
    """A run directory as Hydra + toybigram.train leave it."""
    path = root / name
    (path / ".hydra").mkdir(parents=True)
    cfg = json.loads(json.dumps(config or CONFIG))
    cfg["seed"] = cfg["data_seed"] = seed
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in (overrides or [f"seed={seed}"])))
    (path / ".hydra" / "config.yaml").write_text(json.dumps(cfg))
    if metrics:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _metrics(metrics)))
    if summary:
        (path / "summary.json").write_text(json.dumps({"acc_incontext": 0.9, "steps": 20, "config": cfg}))
    if log:
        (path / "train.log").write_text(log)
    return path


@pytest.fixture
def sweep_dir(tmp_path):
    """Seeds 0..4 expected: 0 and 1 finished, 2 failed at start, 3 interrupted, 4 never ran."""
    root = tmp_path / "sweep"
    make_run(root, "0", 0)
    make_run(root, "1", 1)
    make_run(root, "2", 2, summary=False, metrics=(), log="[INFO] start\nerror: data.vocab_size: must be at least 2\n")
    make_run(root, "3", 3, summary=False, metrics=(0, 10))
    (root / ".submitit").mkdir()  # launcher files are not runs
    return root


def test_collect_reports_failed_incomplete_and_missing_runs_by_name(sweep_dir):
    got = collect(sweep_dir, {"seed": ["0", "1", "2", "3", "4"]}, "fixture")
    assert sorted(r.name for r in got.runs) == ["seed=0", "seed=1"]
    status = {p.name: p for p in got.problems}
    assert set(status) == {"seed=2", "seed=3", "seed=4"}
    assert status["seed=2"].status == "failed" and "vocab_size" in status["seed=2"].why
    assert status["seed=3"].status == "interrupted" and "step 10 of 20" in status["seed=3"].why
    assert status["seed=4"].status == "missing" and status["seed=4"].path is None


def test_collect_requires_the_post_run_result(sweep_dir):
    (sweep_dir / "0" / "experiments").mkdir()
    (sweep_dir / "0" / "experiments" / "length.json").write_text('{"x": 1}')
    got = collect(sweep_dir, {"seed": ["0", "1"]}, "fixture", result="length")
    assert [r.name for r in got.runs] == ["seed=0"] and got.runs[0].result == {"x": 1}
    assert [(p.name, p.status) for p in got.problems if p.name == "seed=1"] == [("seed=1", "incomplete")]


def test_collect_survives_an_unreadable_summary(sweep_dir):
    (sweep_dir / "1" / "summary.json").write_text('{"torn": ')
    got = collect(sweep_dir, {"seed": ["0", "1"]}, "fixture")
    assert [r.name for r in got.runs] == ["seed=0"]
    assert any(p.name == "seed=1" and p.status == "failed" for p in got.problems)


def test_collect_refuses_runs_whose_unswept_settings_differ(tmp_path):
    other = json.loads(json.dumps(CONFIG))
    other["model"]["d_model"] = 128
    make_run(tmp_path, "0", 0)
    make_run(tmp_path, "1", 1, config=other)
    with pytest.raises(MixedRunsError, match=r"model\.d_model: 64 in seed=0; 128 in seed=1"):
        collect(tmp_path, {"seed": ["0", "1"]}, "fixture")


def test_collect_accepts_runs_that_differ_only_in_swept_settings(tmp_path):
    other = json.loads(json.dumps(CONFIG))
    other["model"]["pos"] = "rpe"
    make_run(tmp_path, "0", 0, overrides=["model.pos=ape", "seed=0"])
    make_run(tmp_path, "1", 0, overrides=["model.pos=rpe", "seed=0"], config=other)
    got = collect(tmp_path, {"model.pos": ["ape", "rpe"], "seed": ["0"]}, "fixture")
    assert sorted(r.name for r in got.runs) == ["model.pos=ape,seed=0", "model.pos=rpe,seed=0"] and not got.problems


def test_fig1_tables_from_fixture_runs_keep_the_two_variants_apart(sweep_dir, tmp_path):
    free = collect(sweep_dir, {"seed": ["0", "1", "2", "3", "4"]}, "fixture").runs
    frozen_config = json.loads(json.dumps(CONFIG))
    frozen_config["train"]["freeze_until"] = {"W_K1": 10}
    for seed in (0, 1):  # W_K1 held until step 10: its probe rises only at step 20; losses one nat higher
        path = make_run(tmp_path / "freeze", str(seed), seed, metrics=(), config=frozen_config)
        rows = [{**m, "recall_prev_token": 0.25 * (m["step"] == 20), "loss_global": m["loss_global"] + 1} for m in _metrics((0, 10, 20))]
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    frozen = collect(tmp_path / "freeze", {"seed": ["0", "1"]}, "fixture").runs
    tables = fig1_tables({"fig1_dynamics": Collected("a", free), "fig1_freeze": Collected("b", frozen)})
    at_20 = {r["variant"]: r for r in tables["fig1_dynamics"] if r["step"] == 20}
    assert at_20["free"]["loss_global_n"] == 2 and at_20["free"]["loss_global_mean"] == pytest.approx(1.8)
    assert at_20["freeze"]["loss_global_n"] == 2 and at_20["freeze"]["loss_global_mean"] == pytest.approx(2.8)
    order = {(r["variant"], r["probe"]): r for r in tables["fig1_order"]}
    assert order["free", "recall_copy"]["rise_step_mean"] == 10 and order["free", "recall_prev_token"]["rise_step_mean"] == 10
    assert order["freeze", "recall_prev_token"]["rise_step_mean"] == 20  # half of the final value
    assert order["freeze", "recall_prev_token"]["release_step_mean"] == 10 and order["freeze", "recall_copy"]["release_step_mean"] == 0
    assert order["free", "recall_prev_token"]["release_step_mean"] == 0


def test_mean_ci_and_summarise():
    mean, ci, n = mean_ci([1.0, 2.0, 3.0, None, math.inf])
    assert (mean, n) == (2.0, 3) and ci == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(mean_ci([])[0])
    rows = summarise([{"k": 1, "v": 1.0}, {"k": 1, "v": 3.0}, {"k": 2, "v": 5.0}], ["k"], ["v"])
    assert rows[0]["v_mean"] == 2.0 and rows[1]["v_n"] == 1 and math.isnan(rows[1]["v_ci"])


def test_write_table_is_atomic(tmp_path, monkeypatch):
    path = write_table(tmp_path / "t.csv", [{"a": 1, "b": math.inf}, {"a": 2.5, "b": None}])
    assert path.read_text() == "a,b\n1,inf\n2.5,\n"
    import toybigram.runio as runio

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(runio.os, "replace", boom)
    with pytest.raises(OSError):
        write_table(path, [{"a": 9}])
    assert path.read_text() == "a,b\n1,inf\n2.5,\n"
    assert not list(tmp_path.glob(".t.csv*"))


@pytest.mark.parametrize("profile", PROFILES)
def test_every_experiment_config_composes_and_validates(profile):
    experiments = {item.experiment for fig in registry().values() for item in fig.inputs}
    for name in sorted(experiments):
        sweep = Sweep.load(name, profile)
        assert sweep.sweep_dir == ROOT / "outputs" / "experiments" / profile / name
        seeds = 1 if profile == "smoke" else 3  # smoke checks the pipeline, with one seed
        assert list(sweep.axes)[0] == "seed" and len(sweep.axes["seed"]) >= seeds, f"{name}: at least {seeds} seeds per point"
        sweep.check()  # every point of the grid validates


@pytest.mark.parametrize("profile, sizes", [
    ("quick", {"data.source": "dirichlet", "data.vocab_size": 16, "data.seq_len": 64, "model.d_model": 64, "train.steps": 200,
               "device": "cpu"}),
    ("paper", {"data.source": "shakespeare", "data.vocab_size": None, "data.seq_len": 256, "model.d_model": 512,
               "train.steps": 2000, "device": "auto"})])
def test_an_experiment_takes_its_sizes_from_the_profile(profile, sizes):
    """Figure 4's runs: the experiment's settings, the profile's shared sizes and the experiment's own sizes in that profile."""
    cfg = Sweep.load("fig4_hijack", profile).expected({"seed": "1"})
    got = {key: cfg[key] if "." not in key else cfg[key.split(".")[0]][key.split(".")[1]] for key in sizes}
    assert got == sizes
    assert (cfg["model"]["pos"], cfg["data"]["triggers"], cfg["seed"], cfg["data_seed"]) == ("rpe", "random", 1, 1)


def test_a_sweep_without_a_profile_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toybigram.train", "-m", "+experiment=fig1_dynamics", f"hydra.sweep.dir={tmp_path / 's'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ") and "profile" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "s").exists()


def test_submitit_local_sweep_runs_two_jobs(tmp_path):
    """The cluster code path: a two-job multirun through hydra/launcher=submitit_local, then aggregation."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "toybigram.train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
           f"hydra.sweep.dir={sweep}", "seed=0,1", "train.steps=5", "train.eval_every=5", "train.ckpt_every=0", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert glob.glob(str(sweep / ".submitit" / "*")), "the jobs did not go through submitit"
    got = collect(sweep, {"seed": ["0", "1"]}, "submitit")
    assert sorted(r.name for r in got.runs) == ["seed=0", "seed=1"] and not got.problems
    assert all(r.summary["steps"] == 5 for r in got.runs)


@pytest.mark.parametrize("preset, gpus", [("slurm_cpu", 0), ("slurm_gpu", 1)])
def test_slurm_presets_compose(preset, gpus):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose("train", ["+experiment=fig1_dynamics", "profile=paper", f"hydra/launcher={preset}"], with_hydra=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == gpus and cfg.hydra.launcher.timeout_min > 0


def test_collect_reads_the_instances_of_a_job_that_trained_seeds_together(tmp_path):
    """A seeds-together job is one run per instance; an interrupted instance is named by its own seed."""
    root = tmp_path / "sweep"
    job = make_run(root, "0", 0, summary=False, metrics=(), overrides=["seed=0", "train.instances=3"])
    (job / "ensemble.json").write_text("{}")
    for i, seed in enumerate((0, 1, 2)):
        instance = make_run(job, f"instance{i}", seed, summary=seed != 2, metrics=(0, 10) if seed == 2 else (0, 10, 20))
        shutil.rmtree(instance / ".hydra")  # an instance records its config in config.yaml, with no .hydra
        (instance / "config.yaml").write_text(json.dumps({**CONFIG, "seed": seed, "data_seed": seed}))
    got = collect(root, {"seed": ["0", "1", "2", "3"]}, "together")
    assert [r.name for r in got.runs] == ["seed=0", "seed=1"]
    assert [r.path.name for r in got.runs] == ["instance0", "instance1"]
    assert sorted((p.status, p.name) for p in got.problems) == [("interrupted", "seed=2"), ("missing", "seed=3")]


def test_sweep_with_seeds_together_gives_each_seed_its_separate_run(tmp_path):
    """experiments/run.py --seeds-together: one job trains every seed; each instance equals its separate run."""
    from test_ensemble import assert_rows_close

    from experiments.sweeps import launch
    from toybigram.runio import read_json, read_jsonl
    from toybigram.train import train

    tiny = ("data.seq_len=32", "model.d_model=32", "train.steps=6", "train.eval_every=3", "train.batch_size=8",
            "train.eval_batch_size=16", "device=cpu")
    sweep = Sweep.load("fig1_dynamics", "quick", (f"hydra.sweep.dir={tmp_path / 'sweep'}", *tiny))
    assert sweep.seeds_together()[:2] == ["seed=0", "train.instances=3"]
    code, _ = launch(sweep, None, 1, log=lambda msg: None, seeds_together=True)
    assert code == 0
    got = collect(sweep.sweep_dir, sweep.axes, sweep.name, expected=sweep.expected)  # each instance has the point's settings
    assert [r.name for r in got.runs] == ["seed=0", "seed=1", "seed=2"] and not got.problems
    assert len([p for p in sweep.sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 1  # one job
    alone = compose("train", ["+experiment=fig1_dynamics", "profile=quick", "seed=2", *tiny])
    train(alone, tmp_path / "alone")
    assert_rows_close(read_jsonl(got.runs[2].path / "metrics.jsonl"), read_jsonl(tmp_path / "alone" / "metrics.jsonl"))
    assert config_differences(read_json(tmp_path / "alone" / "summary.json")["config"], got.runs[2].config) == []


def test_a_job_that_fails_on_bad_input_is_reported_with_its_error(tmp_path):
    """The job's one-line error reaches the console and its summary.json (status failed), and the aggregator quotes it."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "toybigram.train", "-m", f"hydra.sweep.dir={sweep}", "seed=0", *TINY, "data.vocab_size=1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert any(line.startswith("error: data.vocab_size") for line in proc.stderr.splitlines()), proc.stderr
    got = collect(sweep, {"seed": ["0"]}, "bad")
    assert not got.runs and [(p.status, p.name) for p in got.problems] == [("failed", "seed=0")]
    assert "data.vocab_size: must be at least 2" in got.problems[0].why
