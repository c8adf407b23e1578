"""A run's life: finished means finished, divergence stops it, signals checkpoint it, kills leave no debris."""
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY
from toybigram.runio import read_jsonl, write_json
from toybigram.train import TIMING_KEYS, train

REPO = Path(__file__).resolve().parents[1]


def rows_without_timing(path):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in read_jsonl(path)]


def test_finished_run_whose_theory_was_cut_short_completes_it_on_resume(compose_train, tmp_path):
    overrides = (*TINY, "train.steps=20", "train.theory=true")
    run_dir = tmp_path / "run"
    train(compose_train(*overrides), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    theory = summary.pop("theory")
    write_json(run_dir / "summary.json", summary)  # as if killed after the final checkpoint, during the theory
    rows = (run_dir / "metrics.jsonl").read_text()

    completed = train(compose_train(*overrides, "train.resume=true"), run_dir)
    assert completed["status"] == "finished"
    assert completed["theory"]["top1_agreement"] == theory["top1_agreement"]
    assert (run_dir / "metrics.jsonl").read_text() == rows  # no duplicate final row

    from toybigram.errors import UserError

    with pytest.raises(UserError, match="already finished"):
        train(compose_train(*overrides, "train.resume=true"), run_dir)


def test_diverging_instance_stops_alone_and_is_never_finished(compose_train, tmp_path):
    cfg = compose_train(*TINY, "train.steps=20", "train.instances=2", "train.instance_lrs=[1e30,0.01]")
    first, second = train(cfg, tmp_path / "run")
    assert first["status"] == "diverged" and first["diverged_at_step"] <= 2
    assert "theory" not in first
    last = read_jsonl(tmp_path / "run" / "instance0" / "metrics.jsonl")[-1]
    assert last["step"] == first["diverged_at_step"]
    assert second["status"] == "finished" and second["steps"] == 20
    assert second["acc_incontext"] is not None


def test_atomic_writes_have_ordinary_permissions(tmp_path):
    write_json(tmp_path / "summary.json", {"status": "finished"})
    mode = stat.S_IMODE((tmp_path / "summary.json").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigterm_checkpoints_instances_and_the_printed_command_resumes_them(tmp_path):
    """Seeds trained together: SIGTERM (what Slurm sends) saves every instance; the printed command ends as an uninterrupted run."""
    signum = signal.SIGTERM
    args = [*TINY, "train.steps=400", "train.eval_every=20", "train.ckpt_every=0", "train.instances=2", "threads=1"]
    command = [sys.executable, "-m", "toybigram.train", *args]
    reference = subprocess.run([*command, f"hydra.run.dir={tmp_path / 'whole'}"], cwd=REPO, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    run_dir = tmp_path / "stopped"
    process = subprocess.Popen([*command, f"hydra.run.dir={run_dir}"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "instance1" / "metrics.jsonl"
    assert wait_for(lambda: metrics.is_file() and len(read_jsonl(metrics)) >= 3)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "resume with:" in line]
    assert len(lines) == 1 and "train.resume=true" in lines[0], err
    assert not (run_dir / "instance0" / "summary.json").exists()

    resume = lines[0].split("resume with: ", 1)[1].replace("python -m", f"{sys.executable} -m", 1)
    resumed = subprocess.run(resume, shell=True, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    for i in (0, 1):
        whole, stopped = tmp_path / "whole" / f"instance{i}", run_dir / f"instance{i}"
        assert rows_without_timing(stopped / "metrics.jsonl") == rows_without_timing(whole / "metrics.jsonl")
        assert json.loads((stopped / "summary.json").read_text())["status"] == "finished"
