"""The command line under faults, through real subprocesses: bad settings, kill -9, Ctrl-C, divergence, sweeps.

A representative subset of scripts/fault_battery.py (which runs hundreds of such cases); the
functions that start, watch and interrupt the runs come from there.
"""
import importlib.util
import json
import signal
import sys
from pathlib import Path

import pytest

BATTERY_PATH = Path(__file__).resolve().parents[1] / "scripts" / "fault_battery.py"
_spec = importlib.util.spec_from_file_location("fault_battery", BATTERY_PATH)
battery = importlib.util.module_from_spec(_spec)
sys.modules["fault_battery"] = battery  # its dataclasses look their module up
_spec.loader.exec_module(battery)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """The uninterrupted reference run (trained once for this module, on first use)."""
    return battery.Fixtures(tmp_path_factory.mktemp("fixtures"))


def train(tmp_path: Path, *args: str):
    return battery.Child(battery.TRAIN, args, tmp_path / "logs").wait()


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


REFUSALS = [
    (("data.seq_len=abc",), ("data.seq_len",)),
    (("optim.beta2=1.0",), ("optim.beta2",)),
    (("seed=-1",), ("seed",)),
    (("optim.ffn_lr_scale=0",), ("optim.ffn_lr_scale",)),
    (("model.param=foo",), ("model.param",)),
    (("train.batch_size=10000000",), ("train.batch_size", "max_memory_gb")),  # refused before allocating ~1 TB
]


@pytest.mark.parametrize("overrides,names", REFUSALS, ids=[o[0] for o, _ in REFUSALS])
def test_bad_setting_is_one_line_and_writes_nothing(tmp_path, overrides, names):
    run_dir = tmp_path / "run"
    result = train(tmp_path, *battery.merged(battery.TRAIN_BASE, overrides), f"hydra.run.dir={run_dir}")
    assert result.code == 2, result.output
    assert len(result.error_lines) == 1 and result.error_lines[0].startswith("error: "), result.stderr
    assert any(name in result.error_lines[0] for name in names), result.stderr
    assert "Traceback" not in result.output
    assert result.peak_rss_mb < battery.MAX_REFUSAL_RSS_MB
    assert not run_dir.exists()


def test_run_dir_that_is_a_file_is_refused_and_kept(tmp_path):
    target = tmp_path / "run"
    target.write_text("keep me\n")
    result = train(tmp_path, *battery.TRAIN_BASE, f"hydra.run.dir={target}")
    assert battery.refusal_problems(result, ("hydra.run.dir",)) == [], result.output
    assert "Traceback" not in result.output
    assert target.read_text() == "keep me\n"


def test_kill_9_while_a_checkpoint_is_written_then_resume_matches_an_uninterrupted_run(fixtures, tmp_path):
    reference = fixtures.get("ref")
    ctx, report = battery.Context(tmp_path, fixtures), battery.Report()
    args = battery.kill_args(ctx, theory=False)
    second_checkpoint = battery.temporary_appears("checkpoint.pt", after_rows=3)  # a first checkpoint exists by then
    killed = battery.interrupt(ctx, report, args, second_checkpoint, [signal.SIGKILL], busy_after=2)
    if killed is None:
        pytest.skip(report.skipped)
    assert killed.code == -signal.SIGKILL
    assert not (ctx.run_dir / "summary.json").exists()

    resumed = ctx.run(battery.TRAIN, *args, "train.resume=true")
    assert resumed.code == 0, resumed.output
    assert battery.metrics_rows(ctx.run_dir) == battery.metrics_rows(reference)  # timing keys aside
    assert summary_of(ctx.run_dir)["status"] == "finished"
    assert battery.temporaries(ctx.run_dir) == []
    assert battery.mode_problems(ctx.run_dir) == []


def test_ctrl_c_saves_prints_the_resume_command_and_that_command_finishes_the_run(fixtures, tmp_path):
    reference = fixtures.get("ref")
    ctx, report = battery.Context(tmp_path, fixtures), battery.Report()
    stopped = battery.interrupt(ctx, report, battery.kill_args(ctx, theory=False), battery.rows_at_least(2), [signal.SIGINT])
    if stopped is None:
        pytest.skip(report.skipped)
    assert stopped.code == 130, stopped.output
    assert "Traceback" not in stopped.output
    assert (ctx.run_dir / "checkpoint.pt").is_file() and not (ctx.run_dir / "summary.json").exists()
    line = battery.resume_line(stopped, ctx.run_dir)
    assert line is not None, stopped.output

    resumed = battery.run_printed_command(ctx, report, line)
    assert resumed is not None and resumed.code == 0, report.problems or resumed.output
    assert battery.metrics_rows(ctx.run_dir) == battery.metrics_rows(reference)
    assert summary_of(ctx.run_dir)["status"] == "finished"


def test_divergence_exits_3_with_the_step_and_no_theory(tmp_path):
    run_dir = tmp_path / "run"
    result = train(tmp_path, *battery.merged(battery.SHORT, ("optim.lr=1e30", "train.theory=true")), f"hydra.run.dir={run_dir}")
    assert result.code == 3, result.output
    assert "Traceback" not in result.output
    summary = summary_of(run_dir)
    step = summary["diverged_at_step"]
    assert summary["status"] == "diverged" and isinstance(step, int)
    assert f"diverged at step {step}" in result.output
    assert [row["step"] for row in battery.metrics_rows(run_dir)][-1] == step
    assert not (run_dir / "theory.json").exists()


def test_sweep_with_one_bad_job_finishes_the_others_and_exits_2(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = ("data=dirichlet", "data.vocab_size=1,8,16", "data.n_triggers=1")
    result = train(tmp_path, "-m", *battery.merged(battery.TRAIN_BASE, overrides), f"hydra.sweep.dir={sweep}")
    assert result.code == 2, result.output
    assert "Traceback" not in result.output
    statuses = {job: s["status"] for job, s in battery.sweep_statuses(sweep).items()}
    assert sorted(statuses.values()) == ["failed", "finished", "finished"], statuses
    failed = next(s for s in battery.sweep_statuses(sweep).values() if s["status"] == "failed")
    assert "data.vocab_size" in failed["error"]
    named = [line for line in result.output.splitlines() if line.startswith("error:") and "data.vocab_size" in line]
    assert len(named) == 1, result.output
