"""Figure sweeps with bad jobs: each kind of unusable run is named, bad overrides stop before anything
runs, and a figure with failed or missing runs keeps its previous tables and figure."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.runs import collect
from experiments.run import parse_args
from experiments.sweeps import ROOT, Sweep
from toybigram.errors import UserError

RUN_PY = [sys.executable, "experiments/run.py"]
FIG1_SETTINGS = ("train.steps=4", "train.eval_every=2", "data.seq_len=16", "model.d_model=16")


def write_run(path: Path, config: dict, summary: dict | None, metrics=(0, 2, 4), checkpoint: bool = False) -> Path:
    """A run directory as a sweep job leaves it: .hydra/, metrics, and summary.json unless interrupted."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(f"- seed={config['seed']}\n")
    (path / ".hydra" / "config.yaml").write_text(json.dumps(config))
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss_global": 2.0 - s / 10, "recall_copy": s / 4,
                                                            "acc_incontext": s / 4}) + "\n" for s in metrics))
    if checkpoint:
        (path / "checkpoint.pt").write_bytes(b"")
    if summary is not None:
        (path / "summary.json").write_text(json.dumps({**summary, "steps": 4, "config": config}))
    return path


def fill_sweep(sweep: Sweep, outcomes: dict[str, dict | None]) -> None:
    """One job directory per seed with the experiment's settings; ``outcomes``: seed -> summary (None: interrupted)."""
    for job, seed in enumerate(sweep.axes["seed"]):
        summary = outcomes.get(seed, {"status": "finished"})
        write_run(sweep.sweep_dir / str(job), sweep.expected({"seed": seed}), summary, checkpoint=summary is None)


def test_collect_names_each_kind_of_unusable_run(tmp_path):
    """finished / failed / diverged / interrupted / other settings / off the grid / no directory."""
    sweep = Sweep.load("fig1_dynamics", "quick", (f"hydra.sweep.dir={tmp_path / 'sweep'}", "seed=0,1,2,3,4,5", *FIG1_SETTINGS))
    fill_sweep(sweep, {"1": {"status": "failed", "error": "data.vocab_size: must be at least 2, got 1"},
                       "2": {"status": "diverged", "diverged_at_step": 3, "reason": "non-finite training loss"},
                       "3": None})
    shutil.rmtree(sweep.sweep_dir / "5")
    stale = sweep.expected({"seed": "4"})
    stale["model"]["d_model"] = 64  # a run left from other settings
    shutil.rmtree(sweep.sweep_dir / "4")
    write_run(sweep.sweep_dir / "4", stale, {"acc_incontext": 1.0})  # an old summary without status: finished
    write_run(sweep.sweep_dir / "9", sweep.expected({"seed": "9"}), {"status": "finished"})
    got = collect(sweep.sweep_dir, sweep.axes, sweep.name, expected=sweep.expected)
    assert [r.name for r in got.runs] == ["seed=0"]
    problems = {p.name: p for p in got.problems}
    assert {name: p.status for name, p in problems.items()} == {
        "seed=1": "failed", "seed=2": "diverged", "seed=3": "interrupted", "seed=4": "mismatch", "seed=5": "missing", "seed=9": "extra"}
    assert problems["seed=1"].reason == "error: data.vocab_size: must be at least 2, got 1"
    assert problems["seed=2"].reason == "diverged at step 3 (non-finite training loss)"
    assert "model.d_model: 64 (expected 16)" in problems["seed=4"].why
    assert list(sweep.axes) == ["seed"] and sweep.axes["seed"] == ["0", "1", "2", "3", "4", "5"]  # the override replaced the axis


def test_an_override_changing_a_setting_makes_the_existing_runs_mismatch(tmp_path):
    sweep = Sweep.load("fig1_dynamics", "quick", (f"hydra.sweep.dir={tmp_path}", "seed=0", *FIG1_SETTINGS))
    fill_sweep(sweep, {})
    other = Sweep.load("fig1_dynamics", "quick", (f"hydra.sweep.dir={tmp_path}", "seed=0", *FIG1_SETTINGS, "optim.lr=0.02"))
    assert collect(sweep.sweep_dir, sweep.axes, expected=sweep.expected).runs
    got = collect(other.sweep_dir, other.axes, expected=other.expected)
    assert not got.runs and [p.status for p in got.problems] == ["mismatch"] and "(expected 0.02)" in got.problems[0].why


def test_several_values_for_an_unswept_setting_are_refused():
    with pytest.raises(UserError, match=r"--override model.d_model=16,32: several values .* \(it sweeps seed\)"):
        Sweep.load("fig1_dynamics", "quick", ("model.d_model=16,32",))


def test_every_swept_seed_is_validated_before_the_sweep():
    sweep = Sweep.load("fig1_dynamics", "quick", ("seed=0,-1",))
    with pytest.raises(UserError, match=r"^seed: must be in \[0, 2\*\*63\), got -1 \(fig1_dynamics at seed=-1"):
        sweep.check()


def test_bad_option_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["fig1", "--jobs", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["error: argument --jobs: must be a positive integer, got '0'"]


def test_bad_override_stops_before_any_sweep_with_one_error_line():
    table, sweep_dir = ROOT / "paper_figures" / "data" / "fig7_grid.csv", ROOT / "outputs" / "experiments" / "quick" / "fig7_vocab_length"
    before = (table.read_bytes(), sorted(sweep_dir.rglob("*")) if sweep_dir.exists() else None)
    proc = subprocess.run([*RUN_PY, "fig7", "--override", "data.vocab_size=1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: data.vocab_size: must be at least 2, got 1")
    assert (table.read_bytes(), sorted(sweep_dir.rglob("*")) if sweep_dir.exists() else None) == before


def copy_outputs(tmp_path: Path, figure: str, tables: list[str]) -> tuple[Path, Path, dict[Path, bytes]]:
    """Copies of the committed tables and figure files to run against; returns them with their bytes."""
    data, figures = tmp_path / "data", tmp_path / "figures"
    data.mkdir()
    figures.mkdir()
    for name in tables:
        shutil.copy(ROOT / "paper_figures" / "data" / f"{name}.csv", data)
    for ext in ("png", "pdf"):
        shutil.copy(ROOT / "paper_figures" / f"{figure}.{ext}", figures)
    return data, figures, {p: p.read_bytes() for folder in (data, figures) for p in folder.iterdir()}


def test_a_diverging_sweep_keeps_the_previous_table_and_figure(tmp_path):
    """Every job runs (each has its summary), and the failure is named in the last line, exit code 2."""
    data, figures, before = copy_outputs(tmp_path, "fig7_vocab_length", ["fig7_grid"])
    tiny = ["seed=0,1", "data.vocab_size=8", "data.seq_len=16", "model.d_model=16", "train.steps=4", "train.eval_every=2",
            "train.batch_size=4", "train.eval_batch_size=8", "threads=1", "optim.lr=1e30"]
    cmd = [*RUN_PY, "fig7", "--launcher", "basic", "--sweeps-dir", str(tmp_path / "sweeps"), "--data-dir", str(data),
           "--figures-dir", str(figures), *(f"--override={o}" for o in tiny)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("failed: fig7 (2 of 2 runs failed: seed=0,data.vocab_size=8,data.seq_len=16: diverged at step"), last
    assert "all done" not in proc.stdout + proc.stderr
    assert sorted(json.loads(p.read_text())["status"] for p in (tmp_path / "sweeps").rglob("summary.json")) == ["diverged"] * 2
    assert {p: p.read_bytes() for folder in (data, figures) for p in folder.iterdir()} == before


def test_failed_runs_keep_the_previous_tables_unless_missing_runs_are_allowed(tmp_path):
    """--skip-train over sweeps with a failed job: exit 2 and nothing replaced; --allow-missing: the tables from the rest."""
    data, figures, before = copy_outputs(tmp_path, "fig1_dynamics", ["fig1_dynamics", "fig1_order"])
    overrides = ["seed=0,1", *FIG1_SETTINGS]
    for name in ("fig1_dynamics", "fig1_freeze"):
        sweep = Sweep.load(name, "quick", tuple(overrides), tmp_path / "sweeps")
        fill_sweep(sweep, {"1": {"status": "failed", "error": "cuda: out of memory"}} if name == "fig1_freeze" else {})
    cmd = [*RUN_PY, "fig1", "--skip-train", "--sweeps-dir", str(tmp_path / "sweeps"), "--data-dir", str(data),
           "--figures-dir", str(figures), *(f"--override={o}" for o in overrides)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "failed: fig1 (1 of 4 runs failed: fig1_freeze seed=1: error: cuda: out of memory)"
    assert {p: p.read_bytes() for folder in (data, figures) for p in folder.iterdir()} == before

    proc = subprocess.run([*cmd, "--allow-missing"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "runs left out (--allow-missing): fig1 (1 of 4 runs failed" in proc.stdout.strip().splitlines()[-1]
    with open(data / "fig1_dynamics.csv", newline="") as handle:
        seeds = {row["variant"]: row["loss_global_n"] for row in csv.DictReader(handle) if row["step"] == "4"}
    assert seeds == {"free": "2", "freeze": "1"}
    assert (figures / "fig1_dynamics.png").read_bytes() != before[figures / "fig1_dynamics.png"]
