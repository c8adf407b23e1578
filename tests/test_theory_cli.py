"""`python -m toybigram.theory` on good and bad run directories, through the command line.

One tiny model is trained per module; each case gets its own copy of the run directory,
damaged or edited as the case needs. The commands run concurrently (a few at a time), and
each test then checks its own outcome: exit code, one ``error:`` line and nothing written
for refusals; the right files, and the training job's files untouched, for successes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import TINY
from toybigram.checkpoint import CHECKPOINT_FILE, FORMAT_VERSION, clean_stale_temporaries, load_checkpoint
from toybigram.cli import compose
from toybigram.config import register_configs
from toybigram.errors import ConfigError
from toybigram.theory.__main__ import LOADED, precheck
from toybigram.theory.config import register_configs as register_theory_configs
from toybigram.train import train

register_configs()  # the tests compose both commands' configs, as the commands do
register_theory_configs()

QUICK = ("quick=true", "families=[hijack]", "threads=1")  # the cheapest analysis that still has a headline
MAIN_JOB_FILES = ("run/theory.json", "run/theory/logits_scatter.png", "run/summary.json")


def edit_checkpoint(run: Path, change: Callable[[dict, dict], None]) -> None:
    """Load the checkpoint as stored, let ``change(state, config)`` edit it, save it back."""
    path = run / CHECKPOINT_FILE
    state = torch.load(path, weights_only=True)
    config = json.loads(state["config_json"])
    change(state, config)
    state["config_json"] = json.dumps(config)
    torch.save(state, path)


def as_older_code(state: dict, config: dict) -> None:
    """A checkpoint from before format_version and before these settings existed."""
    del state["format_version"], config["model"]["rope_base"], config["train"]["progress"]
    config.pop("max_memory_gb", None)


def set_value(group: str, key: str, value) -> Callable[[dict, dict], None]:
    def change(state: dict, config: dict) -> None:
        config[group][key] = value
    return change


def cut_checkpoint(keep: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / CHECKPOINT_FILE
        path.write_bytes(keep(path.read_bytes()))
    return damage


def foreign_objects(run: Path) -> None:
    torch.save({"model": {}, "config_json": "{}", "extra": argparse.Namespace(x=1)}, run / CHECKPOINT_FILE)


def malformed_config(run: Path) -> None:
    path = run / CHECKPOINT_FILE
    state = torch.load(path, weights_only=True)
    state["config_json"] = '{"model": {"d_model": 64'
    torch.save(state, path)


def diverged(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "diverged", "diverged_at_step": 12}))


def with_main_job_analysis(run: Path) -> None:
    """The files of the training job's own analysis, which the command must never touch."""
    (run / "theory").mkdir()
    (run / "theory.json").write_text('{"top1_agreement": 0.5}\n')
    (run / "theory" / "logits_scatter.png").write_bytes(b"main job plot")


def with_earlier_analysis(run: Path) -> None:
    with_main_job_analysis(run)
    (run / "theory_full_quick_hijack").mkdir()
    (run / "theory_full_quick_hijack.json").write_text('{"earlier": true}\n')
    (run / "theory_full_quick_hijack" / "hijack_margins.png").write_bytes(b"earlier plot")


def make_read_only(path: Path) -> bool:
    """chmod a-w, or for root the immutable attribute; False when the directory stays writable here."""
    path.chmod(0o555)
    if os.access(path, os.W_OK) and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    return not os.access(path, os.W_OK)


def make_writable(path: Path) -> None:
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


@dataclass
class Case:
    args: tuple[str, ...] = ()
    prepare: Callable[[Path], None] | None = None
    read_only: bool = False
    out_dir: str | None = None  # a folder beside the run directory to write into
    outcome: dict = field(default_factory=dict)


REFUSALS = {  # case -> (what it does, words the error line must contain)
    "unknown-setting": (Case(prepare=lambda r: edit_checkpoint(r, set_value("model", "wings", 2))), "model.wings"),
    "newer-format": (Case(prepare=lambda r: edit_checkpoint(r, lambda s, c: s.update(format_version=FORMAT_VERSION + 1))),
                     f"format version {FORMAT_VERSION + 1}"),
    "edited-width": (Case(prepare=lambda r: edit_checkpoint(r, set_value("model", "d_model", 32))), "has shape"),
    "malformed-config": (Case(prepare=malformed_config), "malformed config"),
    "empty": (Case(prepare=cut_checkpoint(lambda data: b"")), "is empty"),
    "truncated": (Case(prepare=cut_checkpoint(lambda data: data[: len(data) // 2])), "truncated or corrupt"),
    "corrupt": (Case(prepare=cut_checkpoint(lambda data: bytes(range(256)) * 8)), "not a toybigram checkpoint"),
    "foreign-objects": (Case(prepare=foreign_objects), "not a toybigram checkpoint"),
    "no-checkpoint": (Case(prepare=lambda r: (r / CHECKPOINT_FILE).unlink()), "no checkpoint.pt"),
    "diverged": (Case(prepare=diverged), "diverged at step 12"),
    "read-only": (Case(read_only=True), "out_dir="),
    "rerun": (Case(args=QUICK, prepare=with_earlier_analysis), "overwrite=true"),
    "bad-seed": (Case(args=("seed=-1",)), "seed:"),
    "bad-quick": (Case(args=("quick=maybe",)), "quick"),
}
SUCCESSES = {
    "older-code": Case(args=QUICK, prepare=lambda r: (edit_checkpoint(r, as_older_code), with_main_job_analysis(r))),
    "overwrite": Case(args=(*QUICK, "overwrite=true", "plots=false"), prepare=with_earlier_analysis),
    "read-only-out-dir": Case(args=(*QUICK, "plots=false"), read_only=True, out_dir="elsewhere"),
}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("theory_cli") / "run"
    train(compose("train", [*TINY, "train.theory=false", "train.steps=30", "threads=1"]), run_dir)
    return run_dir


def _launch(name: str, case: Case, root: Path, trained: Path) -> None:
    run = root / name / "run"
    shutil.copytree(trained, run)
    if case.prepare is not None:
        case.prepare(run)
    args = [*case.args, *([f"out_dir={root / name / case.out_dir}"] if case.out_dir else [])]
    if case.read_only and not make_read_only(run):
        case.outcome["skip"] = "cannot make a directory read-only here"
        return
    before = snapshot(root / name)
    out = subprocess.run([sys.executable, "-m", "toybigram.theory", f"run_dir={run}", *args],
                         capture_output=True, text=True, timeout=300)
    make_writable(run)
    case.outcome.update(run=run, before=before, after=snapshot(root / name), out=out)


@pytest.fixture(scope="module")
def outcomes(trained_run, tmp_path_factory) -> dict[str, Case]:
    """Run every case's command once (three at a time) and keep what happened."""
    root = tmp_path_factory.mktemp("theory_cli_cases")
    cases = {name: case for name, (case, _) in REFUSALS.items()} | SUCCESSES
    with ThreadPoolExecutor(max_workers=3) as pool:
        for future in [pool.submit(_launch, name, case, root, trained_run) for name, case in cases.items()]:
            future.result()
    return cases


def outcome_of(outcomes: dict[str, Case], name: str) -> dict:
    result = outcomes[name].outcome
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusal_is_one_line_and_writes_nothing(outcomes, name):
    result = outcome_of(outcomes, name)
    out, expected = result["out"], REFUSALS[name][1]
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr and "weights_only" not in out.stderr
    assert result["after"] == result["before"]  # no file created, removed or modified


def test_checkpoint_of_older_code_is_analysed_beside_the_main_job_files(outcomes):
    result = outcome_of(outcomes, "older-code")
    out, run = result["out"], result["run"]
    assert out.returncode == 0, out.stderr
    assert "theory_full_quick_hijack.json" in out.stdout
    assert "(bayes rule " in out.stdout and "in-context R^2 (prompt - counterfactual) full " in out.stdout
    record = json.loads((run / "theory_full_quick_hijack.json").read_text())
    assert record["calculators"]["scalar"]["n_parameters"] == len(record["calculator_fit"]["scalar"]) and record["fit_on"]["prompt_seed"] == 1
    assert {k: record["settings"][k] for k in ("variant", "quick", "seed", "families")} == \
        {"variant": "full", "quick": True, "seed": 0, "families": ["hijack"]}
    assert (run / "theory_full_quick_hijack" / "hijack_margins.png").stat().st_size > 0
    for name in (*MAIN_JOB_FILES, f"run/{CHECKPOINT_FILE}"):  # the files summary.json quotes, and the checkpoint, as they were
        assert result["after"][name] == result["before"][name]
    assert load_checkpoint(run / CHECKPOINT_FILE)["config"]["model"]["rope_base"] == 10000.0  # filled from the defaults


def test_overwrite_replaces_only_the_same_analysis(outcomes):
    result = outcome_of(outcomes, "overwrite")
    out, run = result["out"], result["run"]
    assert out.returncode == 0, out.stderr
    assert json.loads((run / "theory_full_quick_hijack.json").read_text())["settings"]["quick"] is True
    assert not (run / "theory_full_quick_hijack" / "hijack_margins.png").exists()  # plots=false: no stale plot left
    for name in MAIN_JOB_FILES:
        assert result["after"][name] == result["before"][name]


def test_read_only_run_directory_is_analysed_into_out_dir(outcomes):
    result = outcome_of(outcomes, "read-only-out-dir")
    out, run = result["out"], result["run"]
    assert out.returncode == 0, out.stderr
    assert (run.parent / "elsewhere" / "theory_full_quick_hijack.json").is_file()
    assert {k: v for k, v in result["after"].items() if k.startswith("run")} == result["before"]


@pytest.mark.parametrize("setting, value", [("variant", "sideways"), ("families", "[length,twist]"), ("families", "[]"),
                                            ("seed", "-1"), ("threads", "-1"), ("device", "tpu")])
def test_every_setting_is_checked_before_the_run_is_read(trained_run, setting, value):
    LOADED.clear()
    cfg = compose("theory", [f"run_dir={trained_run}", f"{setting}={value}"], with_hydra=True)
    with pytest.raises(ConfigError, match=f"^{setting}: "):
        precheck(cfg)
    assert not LOADED


def test_clean_stale_temporaries_removes_only_atomic_write_leftovers(tmp_path):
    (tmp_path / "theory").mkdir()
    (tmp_path / "instance0").mkdir()
    stale = [Path(tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")[1])
             for folder, name in ((tmp_path, CHECKPOINT_FILE), (tmp_path, "summary.json"), (tmp_path / "theory", "hijack_margins.png"))]
    kept = [tmp_path / "notes.tmp", tmp_path / ".notes.tmp", tmp_path / CHECKPOINT_FILE,
            Path(tempfile.mkstemp(dir=tmp_path / "instance0", prefix=f".{CHECKPOINT_FILE}.", suffix=".tmp")[1])]
    for path in kept[:3]:
        path.write_text("mine")
    assert sorted(clean_stale_temporaries(tmp_path)) == sorted(stale)
    assert not any(path.exists() for path in stale) and all(path.exists() for path in kept)
    assert clean_stale_temporaries(tmp_path / "missing") == []
