#!/usr/bin/env python
"""Fault battery: drive the real command lines with bad input, kills and signals, and check each promise.

Every case runs ``python -m toybigram.train`` (or ``toybigram.theory``, ``toybigram.repetition``)
in a subprocess, in a temporary directory of its own, and checks what a user sees and what is
left on disk:

- a bad setting ends in exit code 2 and exactly one stderr line ``error: <setting>: <why>``,
  with no traceback, no run directory and little memory (sizes are refused before allocating);
- a diverging run exits 3 and leaves summary.json with status diverged and the metrics up to
  the step it diverged at;
- a run killed with SIGKILL at any moment (also while a checkpoint is written and while the
  theory runs) and resumed with ``train.resume=true`` ends with the same metrics.jsonl as an
  uninterrupted run; Ctrl-C and SIGTERM save a checkpoint and print the command that resumes;
- a sweep with one bad job finishes the others; file-system faults are one error line.

    .venv/bin/python scripts/fault_battery.py --jobs 2 --out table.md
    .venv/bin/python scripts/fault_battery.py --only kill --keep

Children run under an address-space limit (``--memory-gb``), so that a size that is not
refused fails its case instead of exhausting the machine. Cases that need a tmpfs mount
(full disk, read-only directories) are skipped where mounting is not allowed.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TRAIN, THEORY, REPETITION = "toybigram.train", "toybigram.theory", "toybigram.repetition"
TINY = tuple(
    "data=dirichlet data.vocab_size=16 data.seq_len=32 data.n_triggers=2 model.d_model=64 train.batch_size=16 "
    "train.eval_batch_size=32 train.eval_every=10 train.progress=none train.theory=false".split()
)
TRAIN_BASE = (*TINY, "train.steps=5", "threads=1")  # what a bad setting would run if it were not refused
SHORT = (*TINY, "train.steps=40", "train.ckpt_every=10", "threads=1")  # the runs that are killed and resumed
REPETITION_BASE = tuple(
    "progress=false figures=false threads=1 detector.ngram=2 detector.window=10 detector.repeats=2 "
    "detector.min_onset=5 detector.min_after=5 score.width=5 score.profile_before=5 score.profile_after=5 "
    "collect.prefix_len=5 collect.greedy_len=40 collect.n_rank=2 collect.n_heldout=1 collect.n_plain=0 "
    "collect.max_texts=64 intervene.ks=[0,2] intervene.random_draws=1 intervene.new_tokens=10 "
    "intervene.activate_prompt_len=10 intervene.run_activate=false perplexity.toy_sequences=4 "
    "perplexity.seq_len=16 perplexity.max_tokens=64".split()
)
FIXTURES = {
    "ref": SHORT,  # the uninterrupted run every resumed run is compared with
    "ref_theory": (*SHORT, "train.theory=true"),
    "pair": (*SHORT, "train.instances=2"),
    "relu": (*TINY, "train.steps=20", "threads=1", "model.ffn=relu", "model.d_hidden=16", "model.max_len=64"),
}
TIMING_KEYS = ("elapsed_seconds",)
CASE_TIMEOUT = 120.0
MEMORY_GB = 4.0  # address-space limit of every child (--memory-gb)
MAX_REFUSAL_RSS_MB = 1500.0  # a refused size must not be allocated first
RUN_FILE_MODE = 0o644
USAGE, DIVERGED = 2, 3
KILLED = -signal.SIGKILL


# -- child processes ---------------------------------------------------------------------------


@dataclass
class Finished:
    """What one command did: exit code (None: timed out; negative: killed by that signal), output, cost."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    @property
    def first_line(self) -> str:
        lines = self.error_lines or [line for line in self.stdout.splitlines() if line.strip()]
        return lines[0].strip() if lines else ""


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return {**env, "CI": "true", "PYTHONPATH": str(REPO)}


class Child:
    """A command-line run in a subprocess: output in files, memory capped, peak memory read from wait4."""

    numbers = itertools.count()

    def __init__(self, module: str, args: Sequence[str], log_dir: Path):
        log_dir.mkdir(parents=True, exist_ok=True)
        stem = log_dir / f"{next(Child.numbers)}-{module.rsplit('.', 1)[-1]}"
        self.out_path, self.err_path = stem.with_suffix(".stdout"), stem.with_suffix(".stderr")
        stem.with_suffix(".argv").write_text(shlex.join([PYTHON, "-m", module, *args]) + "\n")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([PYTHON, "-m", module, *args], cwd=REPO, env=child_env(),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, umask=0o022)
        limit = int(MEMORY_GB * 2**30)
        try:
            resource.prlimit(self.proc.pid, resource.RLIMIT_AS, (limit, limit))
        except (ProcessLookupError, PermissionError):
            pass
        self.started = time.monotonic()
        self.result: Finished | None = None

    def _reap(self, options: int) -> bool:
        pid, status, usage = os.wait4(self.proc.pid, options)
        if pid == 0:
            return False
        code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = code
        self.result = Finished(code, self.out_path.read_text(errors="replace"), self.err_path.read_text(errors="replace"),
                               time.monotonic() - self.started, usage.ru_maxrss / 1024)
        return True

    def exited(self) -> bool:
        return self.result is not None or self._reap(os.WNOHANG)

    def send(self, signum: int) -> None:
        if not self.exited():
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = CASE_TIMEOUT) -> Finished:
        deadline = self.started + timeout
        while not self.exited():
            if time.monotonic() > deadline:
                os.kill(self.proc.pid, signal.SIGKILL)
                self._reap(0)
                self.result.code = None
                break
            time.sleep(0.01)
        return self.result


def wait_until(child: Child, condition: Callable[[], bool], busy: bool = False, timeout: float = CASE_TIMEOUT) -> bool:
    """Poll ``condition`` while ``child`` runs; True as soon as it holds (``busy``: no sleeping, to catch short windows)."""
    deadline = time.monotonic() + timeout
    while not child.exited() and time.monotonic() < deadline:
        if condition():
            return True
        if not busy:
            time.sleep(0.002)
    return False


# -- what a case observes -----------------------------------------------------------------------


@dataclass
class Report:
    """The outcome of one case: problems found, the main command's exit code and first line, and tallies."""

    problems: list[str] = field(default_factory=list)
    code: int | None = None
    first_line: str = ""
    tracebacks: int = 0
    data_lost: bool = False
    left_behind: bool = False
    skipped: str = ""
    seconds: float = 0.0

    def saw(self, result: Finished, main: bool = True) -> Finished:
        """Record a finished command: any traceback, a timeout, and (``main``) its code and first line."""
        if "Traceback" in result.output:
            self.tracebacks += 1
            self.problems.append("traceback in the output")
        if result.code is None:
            self.problems.append(f"timed out after {CASE_TIMEOUT:.0f} s")
        if main:
            self.code, self.first_line = result.code, result.first_line
        return result

    def expect(self, condition: bool, problem: str) -> bool:
        if not condition:
            self.problems.append(problem)
        return condition

    def lost(self, what: str) -> None:
        self.data_lost = True
        self.problems.append(f"data lost: {what}")

    def left(self, what: str) -> None:
        self.left_behind = True
        self.problems.append(f"left behind: {what}")

    @property
    def passed(self) -> bool:
        return not self.problems and not self.skipped


def refusal_problems(result: Finished, names: Sequence[str]) -> list[str]:
    """Exit code 2 and one stderr line ``error: ...`` naming one of ``names``, without allocating much."""
    problems = []
    if result.code != USAGE:
        problems.append(f"exit code {result.code}, expected {USAGE}")
    lines = result.error_lines
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, expected 1")
    if not lines or not lines[0].startswith("error: "):
        problems.append("stderr does not start with 'error: '")
    elif names and not any(name in lines[0] for name in names):
        problems.append(f"the error line does not name {' or '.join(names)}")
    if result.peak_rss_mb > MAX_REFUSAL_RSS_MB:
        problems.append(f"peak memory {result.peak_rss_mb:.0f} MB before the refusal")
    return problems


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash (``dir`` for folders) of everything under ``root`` but the logs."""
    if not root.exists():
        return {}
    entries = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if relative == "logs" or relative.startswith("logs/"):
            continue
        entries[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "other"
    return entries


def compare_snapshots(report: Report, before: dict[str, str], after: dict[str, str], allow_new: bool = False) -> None:
    """Files changed or removed are lost data; anything new (unless ``allow_new``) was left behind."""
    changed = [path for path, digest in before.items() if after.get(path) != digest]
    if changed:
        report.lost(", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else ""))
    new = sorted(set(after) - set(before))
    if new and not allow_new:
        report.left(", ".join(new[:3]) + (f" and {len(new) - 3} more" if len(new) > 3 else ""))


def read_json_file(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def metrics_rows(run_dir: Path) -> list[dict]:
    """The complete rows of metrics.jsonl, timing keys dropped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append({k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS})
        except ValueError:
            break
    return rows


def last_step(run_dir: Path) -> int:
    rows = metrics_rows(run_dir)
    return rows[-1]["step"] if rows else -1


def temporaries(run_dir: Path) -> list[str]:
    """Leftovers of atomic writes that were cut short, anywhere in the run directory."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*.tmp")) if run_dir.is_dir() else []


def mode_problems(run_dir: Path) -> list[str]:
    """Run files must be readable by all (0644), not private to the owner like mkstemp's default."""
    wrong = [f"{p.relative_to(run_dir)} {p.stat().st_mode & 0o777:o}" for p in sorted(run_dir.rglob("*"))
             if p.is_file() and p.stat().st_mode & 0o777 != RUN_FILE_MODE]
    return [f"file modes not {RUN_FILE_MODE:o}: {', '.join(wrong[:3])}"] if wrong else []


def same_metrics(report: Report, run_dir: Path, reference: Path) -> None:
    """metrics.jsonl equals the reference's, all keys but the timing ones."""
    got, want = metrics_rows(run_dir), metrics_rows(reference)
    if got == want:
        return
    steps = [w["step"] for g, w in zip(got, want) if g != w]
    where = f"first difference at step {steps[0]}" if steps else "rows missing or extra"
    report.problems.append(f"metrics.jsonl differs from the uninterrupted run ({len(got)} vs {len(want)} rows, {where})")


def theory_quoted_problems(run_dir: Path) -> list[str]:
    """The headline summary.json quotes must be the figures theory.json holds."""
    summary, theory = read_json_file(run_dir / "summary.json"), read_json_file(run_dir / "theory.json")
    if not summary or "theory" not in summary:
        return ["summary.json has no theory headline"]
    if theory is None:
        return ["no readable theory.json"]
    stale = [k for k, v in summary["theory"].items() if k != "wall_seconds" and k in theory and theory[k] != v]
    return [f"theory.json no longer holds what summary.json quotes ({', '.join(stale)})"] if stale else []


def check_finished_run(report: Report, run_dir: Path, reference: Path, theory: bool = False) -> None:
    """A completed run: same metrics as the reference, status finished, no temporaries, 0644 files."""
    same_metrics(report, run_dir, reference)
    summary = read_json_file(run_dir / "summary.json") or {}
    report.expect(summary.get("status") == "finished", f"summary.json status {summary.get('status')!r}, expected 'finished'")
    report.expect(not temporaries(run_dir), f"temporaries left: {', '.join(temporaries(run_dir))}")
    report.problems += mode_problems(run_dir)
    if theory:
        report.problems += theory_quoted_problems(run_dir)


# -- cases and their context -------------------------------------------------------------------


class FixtureError(Exception):
    """A run the case builds on could not be trained."""


class Fixtures:
    """Runs trained once and shared by the cases (copied before a case touches them)."""

    def __init__(self, root: Path):
        self.root = root
        self.locks = {name: threading.Lock() for name in FIXTURES}
        self.errors: dict[str, str] = {}
        self.built: set[str] = set()

    def get(self, name: str) -> Path:
        run_dir = self.root / name
        with self.locks[name]:
            if name in self.errors:
                raise FixtureError(self.errors[name])
            if name not in self.built:
                result = Child(TRAIN, [*FIXTURES[name], f"hydra.run.dir={run_dir}"], self.root / "logs").wait()
                if result.code != 0:
                    self.errors[name] = f"fixture {name} failed (exit {result.code}): {result.first_line}"
                    raise FixtureError(self.errors[name])
                self.built.add(name)
        return run_dir


@dataclass
class Context:
    """A case's temporary directory and the shared fixtures."""

    workdir: Path
    fixtures: Fixtures

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    def start(self, module: str, *args: str) -> Child:
        return Child(module, args, self.workdir / "logs")

    def run(self, module: str, *args: str, timeout: float = CASE_TIMEOUT) -> Finished:
        return self.start(module, *args).wait(timeout)

    def copy(self, fixture: str, name: str = "run") -> Path:
        destination = self.workdir / name
        shutil.copytree(self.fixtures.get(fixture), destination, symlinks=True)
        return destination

    def values(self) -> dict[str, Path]:
        return {"tmp": self.workdir, "run": self.run_dir}


@dataclass
class Case:
    name: str
    group: str
    command: str  # what it runs, for the table
    expected: str
    procedure: Callable[[Context, Report], None]


class Skip(Exception):
    """The case cannot run here (for example, mounting a tmpfs is not allowed)."""


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merged(base: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """``base`` with ``overrides`` after it, dropping base entries for the same keys (Hydra refuses duplicates)."""
    keys = {override_key(o) for o in overrides}
    return [b for b in base if override_key(b) not in keys] + list(overrides)


def fill(args: Sequence[str], values: dict) -> list[str]:
    """Replace the ``{name}`` placeholders of ``values`` in ``args`` (other braces, like Hydra dicts, stay)."""
    filled = []
    for arg in args:
        for name, value in values.items():
            arg = arg.replace("{" + name + "}", str(value))
        filled.append(arg)
    return filled


def as_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@contextmanager
def tmpfs(path: Path, size_kb: int, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at ``path`` (needs root); raises Skip where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kb}k" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        raise Skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount_read_only(path: Path) -> None:
    if subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True).returncode != 0:
        raise Skip("cannot remount the tmpfs read-only")


# -- refusals --------------------------------------------------------------------------------


def refused_case(name: str, group: str, module: str, args: Sequence[str], names: str | Sequence[str],
                 prepare: Callable[[Context], dict] | None = None, shown: str | None = None) -> Case:
    """``module args`` must be refused: exit 2, one error line naming one of ``names``, nothing written.

    ``args`` may hold ``{tmp}``, ``{run}`` and the keys ``prepare(ctx)`` returns.
    """
    names = as_tuple(names)

    def procedure(ctx: Context, report: Report) -> None:
        values = {**ctx.values(), **(prepare(ctx) if prepare else {})}
        before = snapshot(ctx.workdir)
        result = report.saw(ctx.run(module, *fill(args, values)))
        report.problems += refusal_problems(result, names)
        compare_snapshots(report, before, snapshot(ctx.workdir))

    return Case(name, group, shown or f"{module.rsplit('.', 1)[-1]} {' '.join(args)}",
                f"exit 2, one line naming {' or '.join(names)}", procedure)


def train_refusal(overrides: str | Sequence[str], names: str | Sequence[str], group: str, base: Sequence[str] = TRAIN_BASE,
                  prepare: Callable[[Context], dict] | None = None, name: str | None = None) -> Case:
    overrides = as_tuple(overrides)
    args = [*merged(base, overrides), "hydra.run.dir={run}"]
    return refused_case(name or " ".join(overrides), group, TRAIN, args, names, prepare,
                        shown="train TINY " + " ".join(overrides))


BAD_SETTINGS = [  # (overrides, what the error line must name)
    ("data.vocab_size=0", "data.vocab_size"), ("data.vocab_size=1", "data.vocab_size"), ("data.vocab_size=-3", "data.vocab_size"),
    ("data.vocab_size=abc", "data.vocab_size"), (("data=shakespeare", "data.vocab_size=100"), "data.vocab_size"),
    ("data.seq_len=0", "data.seq_len"), ("data.seq_len=-1", "data.seq_len"), ("data.seq_len=abc", "data.seq_len"),
    ("data.seq_len=[1,2]", "data.seq_len"), ("data.seq_len=1.5", "data.seq_len"),
    ("data.n_triggers=-1", "data.n_triggers"), ("data.n_triggers=17", "data.n_triggers"),
    (("data.n_triggers=0", "train.theory=true"), ("data.n_triggers", "train.theory")),
    ("data.trigger_offset=-1", "data.trigger_offset"), ("data.trigger_offset=15", ("data.trigger_offset", "data.n_triggers")),
    ("data.chain_seed=-1", "data.chain_seed"), ("data.chain_seed=abc", "data.chain_seed"),
    ("data.dirichlet_alpha=0", "data.dirichlet_alpha"), ("data.dirichlet_alpha=-1", "data.dirichlet_alpha"),
    ("data.dirichlet_alpha=inf", "data.dirichlet_alpha"), ("data.dirichlet_alpha=nan", "data.dirichlet_alpha"),
    ("data.exclude_trigger_output=maybe", "data.exclude_trigger_output"),
    ("model.d_model=0", "model.d_model"), ("model.d_model=-8", "model.d_model"), ("model.d_model=abc", "model.d_model"),
    ("model.n_layers=0", "model.n_layers"), ("model.n_layers=1", "model.n_layers"), ("model.n_layers=4", "model.n_layers"),
    ("model.n_layers=-1", "model.n_layers"),
    ("model.max_len=0", "model.max_len"), ("model.max_len=-1", "model.max_len"),
    (("model.ffn=relu", "model.d_hidden=0"), "model.d_hidden"), (("model.ffn=relu", "model.d_hidden=-1"), "model.d_hidden"),
    (("model.pos=rope", "model.rope_base=0"), "model.rope_base"), (("model.pos=rope", "model.rope_base=-1"), "model.rope_base"),
    (("model.pos=rope", "model.rope_base=nan"), "model.rope_base"), (("model.pos=rope", "model.rope_base=inf"), "model.rope_base"),
    ("model.rope_base=0", "model.rope_base"), ("model.scale_scores=maybe", "model.scale_scores"),
    ("optim.lr=0", "optim.lr"), ("optim.lr=-1", "optim.lr"), ("optim.lr=inf", "optim.lr"), ("optim.lr=nan", "optim.lr"),
    ("optim.lr=abc", "optim.lr"),
    (("optim=sgd", "optim.momentum=-1"), "optim.momentum"), (("optim=sgd", "optim.momentum=nan"), "optim.momentum"),
    ("optim.momentum=-1", "optim.momentum"),
    ("optim.beta1=2", "optim.beta1"), ("optim.beta1=-0.1", "optim.beta1"), ("optim.beta1=nan", "optim.beta1"),
    ("optim.beta2=1.0", "optim.beta2"), ("optim.beta2=2", "optim.beta2"), ("optim.beta2=-1", "optim.beta2"),
    ("optim.weight_decay=-1", "optim.weight_decay"), ("optim.weight_decay=inf", "optim.weight_decay"),
    ("optim.weight_decay=nan", "optim.weight_decay"),
    ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("optim.min_lr_ratio=-0.1", "optim.min_lr_ratio"), ("optim.min_lr_ratio=2", "optim.min_lr_ratio"),
    ("optim.min_lr_ratio=nan", "optim.min_lr_ratio"),
    ("train.steps=0", "train.steps"), ("train.steps=-1", "train.steps"), ("train.steps=abc", "train.steps"),
    ("train.steps=1.5", "train.steps"),
    ("train.batch_size=0", "train.batch_size"), ("train.batch_size=-4", "train.batch_size"),
    ("train.eval_batch_size=0", "train.eval_batch_size"), ("train.eval_batch_size=-1", "train.eval_batch_size"),
    ("train.eval_every=0", "train.eval_every"), ("train.eval_every=-1", "train.eval_every"),
    ("train.ckpt_every=-1", "train.ckpt_every"),
    ("train.instances=0", "train.instances"), ("train.instances=-1", "train.instances"),
    (("train.instances=2", "train.instance_seeds=[-1,2]"), "train.instance_seeds"),
    (("train.instances=2", "train.instance_seeds=[0]"), "train.instance_seeds"),
    (("train.instances=2", "train.instance_data_seeds=[-1,2]"), "train.instance_data_seeds"),
    (("train.instances=2", "train.instance_lrs=[0.1,-1]"), "train.instance_lrs"),
    (("train.instances=2", "train.instance_lrs=[0.1,0]"), "train.instance_lrs"),
    (("train.instances=2", "train.instance_lrs=[0.1,nan]"), "train.instance_lrs"),
    (("train.instances=2", "train.instance_lrs=[0.1,inf]"), "train.instance_lrs"),
    (("train.instances=2", "train.instance_lrs=[0.1]"), "train.instance_lrs"),
    ("train.theory=perhaps", "train.theory"),
    ("+train.freeze_until={W_X: 3}", "train.freeze_until"), ("train.freeze_until={W_X: 3}", "train.freeze_until"),
    ("+train.freeze_until={W_K3: 3}", "train.freeze_until"),
    (("model.ffn=none", "+train.freeze_until={W_F: 3}"), "train.freeze_until"),
    ("+train.freeze_until={W_K1: -1}", "train.freeze_until"), ("+train.freeze_until={W_K1: abc}", "train.freeze_until"),
    ("seed=-1", "seed"), ("seed=abc", "seed"), ("seed=1.5", "seed"), ("data_seed=-1", "data_seed"),
    ("threads=-1", "threads"), ("threads=abc", "threads"),
    ("max_memory_gb=0", "max_memory_gb"), ("max_memory_gb=-1", "max_memory_gb"), ("max_memory_gb=nan", "max_memory_gb"),
    ("max_memory_gb=abc", "max_memory_gb"), ("max_memory_gb=0.001", "max_memory_gb"),
    ("model.pos=nope", "model.pos"), (("data.seq_len=64", "model.max_len=32"), ("data.seq_len", "model.max_len")),
    ("data=text", "data.text_path"), (("train.resume=true",), "train.resume"),
    ("model.no_such_option=3", "no_such_option"), ("no_such_option=1", "no_such_option"),
    ("train.no_such_option=1", "no_such_option"), ("+no_such_option=1", "no_such_option"),
]
WRONG_ENUMS = [
    ("data=no_such_source", "data"), ("data.source=foo", "data.source"), ("data.triggers=foo", "data.triggers"),
    ("data.outputs=foo", "data.outputs"), ("model.pos=alibi", "model.pos"), ("model.ape_extension=foo", "model.ape_extension"),
    ("model.ffn=gelu", "model.ffn"), ("model.init=foo", "model.init"), ("model.dtype=float16", "model.dtype"),
    ("model.dtype=int8", "model.dtype"), ("optim=rmsprop", "optim"), ("optim.name=rmsprop", "optim.name"),
    ("optim.schedule=linear", "optim.schedule"), ("train.loss=foo", "train.loss"), ("train.progress=foo", "train.progress"),
    ("device=tpu", "device"), ("device=cuda", "device"), ("device=cuda:0", "device"), ("device=cuda:abc", "device"),
    ("device=mps", "device"),
]
HUGE_SIZES = [  # refused before anything is allocated (by the memory budget or a cap naming the size)
    ("data.seq_len=100000", "model.max_len=100000"), ("train.batch_size=10000000",), ("model.d_model=1000000",),
    ("data=dirichlet", "data.vocab_size=10000000"), ("train.eval_batch_size=100000000",),
    ("model.d_hidden=100000000", "model.ffn=relu"), ("train.instances=100000",),
    ("data.seq_len=100000", "model.pos=rpe"),
]


def make_text_inputs(ctx: Context) -> dict:
    (ctx.workdir / "folder").mkdir()
    (ctx.workdir / "empty.txt").write_text("")
    (ctx.workdir / "one_char.txt").write_text("a" * 1000)
    return {"folder": ctx.workdir / "folder", "empty": ctx.workdir / "empty.txt", "one_char": ctx.workdir / "one_char.txt"}


def setting_cases() -> list[Case]:
    cases = [train_refusal(o, n, "train: bad setting") for o, n in BAD_SETTINGS]
    cases += [train_refusal(o, n, "train: wrong choice") for o, n in WRONG_ENUMS]
    cases += [train_refusal(o, (*(override_key(k) for k in o if "." in override_key(k)), "max_memory_gb"), "train: huge size")
              for o in HUGE_SIZES]
    cases.append(train_refusal("threads=100000", ("threads", "max_memory_gb"), "train: huge size"))
    for what, names in (("folder", "data.text_path"), ("empty", "data.text_path"), ("one_char", ("data.text_path", "data.vocab_size"))):
        cases.append(train_refusal(("data=text", f"data.text_path={{{what}}}"), names, "filesystem", prepare=make_text_inputs,
                                   name=f"data=text data.text_path=<{what}>"))
    cases.append(train_refusal(("data=text", "data.text_path=/no/such/file.txt"), "data.text_path", "filesystem"))
    return cases


# -- accepted settings (the controls) -------------------------------------------------------


def accepted_case(name: str, overrides: Sequence[str], group: str = "controls") -> Case:
    """The settings must train: exit 0, summary finished, 0644 files, no traceback."""

    def procedure(ctx: Context, report: Report) -> None:
        if "{text}" in " ".join(overrides):
            (ctx.workdir / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
        values = {**ctx.values(), "text": ctx.workdir / "text.txt"}
        args = fill([*merged(TRAIN_BASE, overrides), "hydra.run.dir={run}"], values)
        result = report.saw(ctx.run(TRAIN, *args))
        report.expect(result.code == 0, f"exit code {result.code}, expected 0")
        for run_dir in sorted(ctx.run_dir.glob("instance*")) or [ctx.run_dir]:
            summary = read_json_file(run_dir / "summary.json") or {}
            report.expect(summary.get("status") == "finished", f"{run_dir.name}/summary.json status {summary.get('status')!r}")
        report.problems += mode_problems(ctx.run_dir)

    return Case(name, group, "train TINY " + " ".join(overrides), "exit 0, status finished, files 0644", procedure)


CONTROLS = [
    ("tiny run trains", ()), ("nope with three layers", ("model.pos=nope", "model.n_layers=3")),
    ("longer prompts with fresh position rows", ("data.seq_len=64", "model.max_len=32", "model.ape_extension=random")),
    ("device=auto", ("device=auto",)), ("threads=1 with theory", ("train.theory=true",)),
    ("data=text from a file", ("data=text", "data.text_path={text}", "data.vocab_size=null", "data.n_triggers=2")),
    ("freeze_until a known matrix", ("+train.freeze_until={W_K1: 2}",)),
    ("two instances with their own lrs", ("train.instances=2", "train.instance_lrs=[0.01,0.02]")),
]


# -- divergence ----------------------------------------------------------------------------


def diverged_case(overrides: Sequence[str], instance: str | None = None) -> Case:
    """Exit 3, a line saying at which step, summary.json diverged, metrics up to that step, no theory."""

    def procedure(ctx: Context, report: Report) -> None:
        args = [*merged(SHORT, ("train.theory=true", *overrides)), f"hydra.run.dir={ctx.run_dir}"]
        result = report.saw(ctx.run(TRAIN, *args))
        report.expect(result.code == DIVERGED, f"exit code {result.code}, expected {DIVERGED}")
        run_dir = ctx.run_dir / instance if instance else ctx.run_dir
        summary = read_json_file(run_dir / "summary.json") or {}
        step = summary.get("diverged_at_step")
        if not report.expect(summary.get("status") == "diverged" and isinstance(step, int),
                             f"summary.json status {summary.get('status')!r}, diverged_at_step {step!r}"):
            return
        said = [int(n) for n in re.findall(r"diverged at step (\d+)", result.output)]
        report.expect(step in said, f"no line says 'diverged at step {step}'")
        steps = [row["step"] for row in metrics_rows(run_dir)]
        report.expect(bool(steps) and steps[-1] == step and steps == sorted(set(steps)),
                      f"metrics.jsonl steps {steps[-3:]} should end at {step}")
        report.expect(not (run_dir / "theory.json").exists(), "theory.json written for a diverged run")
        if instance:
            other = read_json_file(ctx.run_dir / "instance1" / "summary.json") or {}
            report.expect(other.get("status") == "finished", f"the healthy instance's status is {other.get('status')!r}")

    return Case(" ".join(overrides), "train: divergence", "train SHORT theory=true " + " ".join(overrides),
                "exit 3, summary diverged, metrics to that step, no theory.json", procedure)


# -- kill -9 and resume ---------------------------------------------------------------------


def rows_at_least(n: int) -> Callable[[Path], bool]:
    return lambda run_dir: len(metrics_rows(run_dir)) >= n


def checkpointed_rows(n: int) -> Callable[[Path], bool]:
    """At least ``n`` metrics rows and a checkpoint on disk (so that there is something to resume)."""
    return lambda run_dir: (run_dir / "checkpoint.pt").is_file() and len(metrics_rows(run_dir)) >= n


def temporary_appears(name: str, after_rows: int = 0) -> Callable[[Path], bool]:
    """The temporary of an atomic write of ``name`` is on disk (the write is under way), after ``after_rows`` rows."""

    def seen(run_dir: Path) -> bool:
        try:
            names = os.listdir(run_dir)
        except OSError:
            return False
        written = any(n.startswith(f".{name}.") and n.endswith(".tmp") for n in names)
        return written and len(metrics_rows(run_dir)) >= after_rows

    return seen


def file_appears(name: str) -> Callable[[Path], bool]:
    return lambda run_dir: (run_dir / name).exists()


def kill_args(ctx: Context, theory: bool) -> list[str]:
    return [*merged(SHORT, ("train.theory=true",) if theory else ()), f"hydra.run.dir={ctx.run_dir}"]


def interrupt(ctx: Context, report: Report, args: Sequence[str], moment: Callable[[Path], bool], signums: Sequence[int],
              busy_after: int | None = None, delay: Callable[[int], float] | None = None) -> Finished | None:
    """Start a run, wait for ``moment``, send ``signums``; retries when the run ended first. None: never caught.

    ``busy_after``: poll without sleeping once metrics.jsonl has that many rows (windows of a few ms).
    """
    for attempt in range(4):
        shutil.rmtree(ctx.run_dir, ignore_errors=True)
        child = ctx.start(TRAIN, *args)
        ready = busy_after is None or wait_until(child, lambda: rows_at_least(busy_after)(ctx.run_dir))
        if ready and wait_until(child, lambda: moment(ctx.run_dir), busy=busy_after is not None):
            if delay is not None:
                time.sleep(delay(attempt))
            for i, signum in enumerate(signums):
                if i:
                    time.sleep(0.01)
                child.send(signum)
        result = report.saw(child.wait(), main=False)
        if result.code != 0:  # stopped (or broke); a clean exit means the moment never came
            return result
    report.skipped = "the run always ended before the moment to interrupt it"
    return None


def run_complete(run_dir: Path, theory: bool) -> bool:
    """summary.json says finished and, with the theory on, quotes its headline: nothing is left to do."""
    summary = read_json_file(run_dir / "summary.json") or {}
    return summary.get("status") == "finished" and (not theory or "theory" in summary)


def resume_and_check(ctx: Context, report: Report, args: Sequence[str], theory: bool) -> None:
    """Resume with train.resume=true: exit 0 and a run identical to the uninterrupted one.

    A signal that came after the run had done everything leaves a finished run; resuming
    that must be refused with the data untouched.
    """
    reference = ctx.fixtures.get("ref")
    if run_complete(ctx.run_dir, theory):
        before = snapshot(ctx.run_dir)
        report.problems += refusal_problems(report.saw(ctx.run(TRAIN, *args, "train.resume=true")), ("train.resume",))
        compare_snapshots(report, before, snapshot(ctx.run_dir))
    else:
        result = report.saw(ctx.run(TRAIN, *args, "train.resume=true"))
        if not report.expect(result.code == 0, f"resume exit code {result.code}: {result.first_line}"):
            return
    check_finished_run(report, ctx.run_dir, reference, theory)


def killed_case(name: str, moment: Callable[[Path], bool], theory: bool = False, busy_after: int | None = None,
                delay: Callable[[int], float] | None = None) -> Case:
    def procedure(ctx: Context, report: Report) -> None:
        ctx.fixtures.get("ref")
        args = kill_args(ctx, theory)
        killed = interrupt(ctx, report, args, moment, [signal.SIGKILL], busy_after, delay)
        if killed is None:
            return
        report.expect(killed.code == KILLED, f"the run exited {killed.code} before the kill")
        resume_and_check(ctx, report, args, theory)

    return Case(name, "train: kill -9 + resume", f"train SHORT{' theory=true' if theory else ''}; kill -9 {name}; resume",
                "resumed run identical to the uninterrupted one", procedure)


def random_kill_case(seed: int, theory: bool) -> Case:
    """kill -9 at a random moment between the first checkpoint and the end (theory included)."""
    rng = random.Random(seed)
    span = 1.5 if theory else 0.4
    moments = [rng.uniform(0, span) for _ in range(4)]
    return killed_case(f"at a random moment #{seed} ({moments[0]:.3f} s after the first checkpoint)",
                       file_appears("checkpoint.pt"), theory=theory, delay=lambda attempt: moments[attempt] / (attempt + 1))


def double_kill_case() -> Case:
    def procedure(ctx: Context, report: Report) -> None:
        ctx.fixtures.get("ref")
        args = kill_args(ctx, False)
        if interrupt(ctx, report, args, checkpointed_rows(2), [signal.SIGKILL]) is None:
            return
        child = ctx.start(TRAIN, *args, "train.resume=true")
        if wait_until(child, lambda: last_step(ctx.run_dir) >= 30):
            child.send(signal.SIGKILL)
        if report.saw(child.wait()).code == 0:  # the resumed run finished before the second kill
            check_finished_run(report, ctx.run_dir, ctx.fixtures.get("ref"))
        else:
            resume_and_check(ctx, report, args, False)

    return Case("killed again while resuming", "train: kill -9 + resume", "train SHORT; kill -9; resume; kill -9; resume",
                "resumed run identical to the uninterrupted one", procedure)


def kill_cases() -> list[Case]:
    cases = [
        killed_case("before the first checkpoint", rows_at_least(1)),
        killed_case("after the step-10 row and checkpoint", checkpointed_rows(2)),
        killed_case("after the step-20 row", checkpointed_rows(3)),
        killed_case("after the step-30 row", checkpointed_rows(4)),
        killed_case("during the first checkpoint write", temporary_appears("checkpoint.pt"), busy_after=1),
        killed_case("during the second checkpoint write", temporary_appears("checkpoint.pt", after_rows=3), busy_after=2),
        killed_case("during the final checkpoint write", temporary_appears("checkpoint.pt", after_rows=5), busy_after=4),
        killed_case("during the final checkpoint write (theory on)", temporary_appears("checkpoint.pt", after_rows=5),
                    theory=True, busy_after=4),
        killed_case("after summary.json, before the theory", file_appears("summary.json"), theory=True, busy_after=4),
        killed_case("while the theory runs", file_appears("summary.json"), theory=True, delay=lambda attempt: 0.3 / (attempt + 1)),
        killed_case("while theory.json is written", temporary_appears("theory.json"), theory=True, busy_after=5),
        killed_case("while summary.json is written", temporary_appears("summary.json", after_rows=5), theory=True, busy_after=5),
        double_kill_case(),
    ]
    cases += [random_kill_case(seed, theory=seed % 2 == 0) for seed in range(1, 7)]
    return cases


# -- resuming and reusing run directories ----------------------------------------------------------


def reuse_case(name: str, fixture: str | None, extra: Sequence[str], names: str | Sequence[str],
               edit: Callable[[Path], None] | None = None) -> Case:
    """Reusing a directory that holds a run (or nothing) the wrong way: refused, the data untouched."""
    names = as_tuple(names)

    def procedure(ctx: Context, report: Report) -> None:
        if fixture:
            ctx.copy(fixture)
        if edit:
            edit(ctx.run_dir)
        before = snapshot(ctx.workdir)
        result = report.saw(ctx.run(TRAIN, *merged(SHORT, extra), f"hydra.run.dir={ctx.run_dir}"))
        report.problems += refusal_problems(result, names)
        compare_snapshots(report, before, snapshot(ctx.workdir))

    return Case(name, "train: run directory", f"train SHORT {' '.join(extra)} (dir: {fixture or 'none'})",
                "exit 2, one error line, data untouched", procedure)


def drop_summary(run_dir: Path) -> None:
    (run_dir / "summary.json").unlink()


DIVERGING = ("optim.lr=1e30", "train.ckpt_every=1")  # diverges at step 2, after a checkpoint at step 1
DIVERGING_AT_ONCE = ("optim.lr=1e30",)  # diverges at step 2, before the first checkpoint


def diverged_before(overrides: Sequence[str]) -> Callable[[Path], None]:
    """Train a run that diverges into the directory first."""

    def train_it(run_dir: Path) -> None:
        Child(TRAIN, [*merged(SHORT, overrides), f"hydra.run.dir={run_dir}"], run_dir.parent / "logs").wait()

    return train_it


def overwrite_case() -> Case:
    def procedure(ctx: Context, report: Report) -> None:
        ctx.copy("ref_theory")
        result = report.saw(ctx.run(TRAIN, *SHORT, f"hydra.run.dir={ctx.run_dir}", "train.overwrite=true"))
        if report.expect(result.code == 0, f"exit code {result.code}: {result.first_line}"):
            check_finished_run(report, ctx.run_dir, ctx.fixtures.get("ref"))
            report.expect(not (ctx.run_dir / "theory.json").exists(), "the old run's theory.json was kept")

    return Case("train.overwrite=true over a finished run", "train: run directory", "train SHORT train.overwrite=true",
                "exit 0, a fresh run identical to the reference, old theory gone", procedure)


def more_steps_case() -> Case:
    def procedure(ctx: Context, report: Report) -> None:
        ctx.copy("ref")
        args = [*merged(SHORT, ("train.steps=50",)), f"hydra.run.dir={ctx.run_dir}", "train.resume=true"]
        result = report.saw(ctx.run(TRAIN, *args))
        if report.expect(result.code == 0, f"exit code {result.code}: {result.first_line}"):
            rows, reference = metrics_rows(ctx.run_dir), metrics_rows(ctx.fixtures.get("ref"))
            report.expect(rows[:len(reference)] == reference, "the first 40 steps' rows changed")
            report.expect(last_step(ctx.run_dir) == 50, f"last step {last_step(ctx.run_dir)}, expected 50")

    return Case("resume a finished run with more steps", "train: run directory", "train SHORT train.steps=50 train.resume=true",
                "exit 0, old rows kept, runs to step 50", procedure)


def run_dir_cases() -> list[Case]:
    return [
        reuse_case("resume a finished run", "ref", ("train.resume=true",), ("train.resume", "finished")),
        reuse_case("new run over a finished run", "ref", (), ("train.resume", "train.overwrite")),
        reuse_case("new run over an interrupted run", "ref", (), ("train.resume", "train.overwrite"), edit=drop_summary),
        reuse_case("resume with another d_model", "ref", ("train.resume=true", "model.d_model=32"), "model.d_model", edit=drop_summary),
        reuse_case("resume with another seed", "ref", ("train.resume=true", "seed=5"), "seed", edit=drop_summary),
        reuse_case("resume a diverged run", None, ("train.resume=true", *DIVERGING), "diverged",
                   edit=diverged_before(DIVERGING)),
        reuse_case("resume a run that diverged before its first checkpoint", None, ("train.resume=true", *DIVERGING_AT_ONCE),
                   "diverged", edit=diverged_before(DIVERGING_AT_ONCE)),
        reuse_case("resume in an empty directory", None, ("train.resume=true",), "train.resume", edit=lambda d: d.mkdir()),
        reuse_case("resume in a missing directory", None, ("train.resume=true",), "train.resume"),
        reuse_case("resume with a truncated checkpoint", "ref", ("train.resume=true",), ("checkpoint", "train.resume"),
                   edit=lambda d: (drop_summary(d), truncate(d / "checkpoint.pt"))),
        overwrite_case(),
        more_steps_case(),
    ]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# -- signals -------------------------------------------------------------------------------


def resume_line(result: Finished, run_dir: Path) -> str | None:
    lines = [line for line in result.output.splitlines() if "train.resume=true" in line]
    return lines[0] if len(lines) == 1 and str(run_dir) in lines[0] else None


def run_printed_command(ctx: Context, report: Report, line: str) -> Finished | None:
    """Run the resume command the interrupted run printed (``python`` is this interpreter)."""
    words = shlex.split(line.split("resume with:", 1)[-1].strip())
    if not report.expect(words[:3] == ["python", "-m", TRAIN], f"the printed command is not 'python -m {TRAIN} ...': {line}"):
        return None
    return report.saw(ctx.run(TRAIN, *words[3:]), main=False)


def signal_case(name: str, signum: int, expected: int, moment: Callable[[Path], bool] = rows_at_least(2),
                fixture: str = "ref", extra: Sequence[str] = ()) -> Case:
    """A signal during training: exit 128+N, a checkpoint, one line with the resume command, which works."""

    def procedure(ctx: Context, report: Report) -> None:
        reference = ctx.fixtures.get(fixture)
        args = [*merged(SHORT, extra), f"hydra.run.dir={ctx.run_dir}"]
        result = interrupt(ctx, report, args, moment, [signum])
        if result is None:
            return
        report.code, report.first_line = result.code, result.first_line
        report.expect(result.code == expected, f"exit code {result.code}, expected {expected}")
        line = resume_line(result, ctx.run_dir)
        if not report.expect(line is not None, "no single line with the resume command (train.resume=true and the run dir)"):
            return
        resumed = run_printed_command(ctx, report, line)
        if resumed is None or not report.expect(resumed.code == 0, f"the printed command exited {resumed.code}: {resumed.first_line}"):
            return
        for directory in sorted(reference.glob("instance*")) or [reference]:
            check_finished_run(report, ctx.run_dir / directory.relative_to(reference), directory)

    return Case(name, "train: signals", f"train SHORT {' '.join(extra)}; {name}; run the printed command",
                f"exit {expected}, resume line, identical metrics after resuming", procedure)


def signal_in_theory_case(signum: int, expected: Sequence[int]) -> Case:
    """A signal while the theory runs: no traceback; resuming completes the theory."""

    def procedure(ctx: Context, report: Report) -> None:
        ctx.fixtures.get("ref")
        args = kill_args(ctx, True)
        result = interrupt(ctx, report, args, file_appears("summary.json"), [signum], delay=lambda attempt: 0.2 / (attempt + 1))
        if result is None:
            return
        report.code, report.first_line = result.code, result.first_line
        report.expect(result.code in expected, f"exit code {result.code}, expected {' or '.join(map(str, expected))}")
        resume_and_check(ctx, report, args, True)

    name = f"{signal.Signals(signum).name} while the theory runs"
    return Case(name, "train: signals", f"train SHORT theory=true; {name}; resume", "no traceback, resume completes theory", procedure)


def double_interrupt_case() -> Case:
    """A second Ctrl-C stops at once: exit 130, no traceback, and the run still resumes from its last checkpoint."""

    def procedure(ctx: Context, report: Report) -> None:
        ctx.fixtures.get("ref")
        args = kill_args(ctx, False)
        result = interrupt(ctx, report, args, checkpointed_rows(2), [signal.SIGINT, signal.SIGINT])
        if result is None:
            return
        report.expect(result.code == 130, f"exit code {result.code}, expected 130")
        resume_and_check(ctx, report, args, False)
        report.code, report.first_line = result.code, result.first_line  # the table shows the interrupted run

    return Case("SIGINT twice", "train: signals", "train SHORT; SIGINT, SIGINT 10 ms later; resume",
                "exit 130, no traceback, identical metrics after resuming", procedure)


def startup_signal_case() -> Case:
    def procedure(ctx: Context, report: Report) -> None:
        child = ctx.start(TRAIN, *SHORT, f"hydra.run.dir={ctx.run_dir}")
        time.sleep(0.7)
        child.send(signal.SIGINT)
        result = report.saw(child.wait())
        report.expect(result.code == 130, f"exit code {result.code}, expected 130")

    return Case("SIGINT during start-up", "train: signals", "train SHORT; SIGINT after 0.7 s", "exit 130, no traceback", procedure)


def signal_cases() -> list[Case]:
    return [
        signal_case("SIGINT after the step-10 row", signal.SIGINT, 130),
        signal_case("SIGTERM after the step-10 row", signal.SIGTERM, 143),
        signal_case("SIGINT after the step-30 row", signal.SIGINT, 130, rows_at_least(4)),
        double_interrupt_case(),
        signal_case("SIGTERM with two instances", signal.SIGTERM, 143, lambda run_dir: rows_at_least(2)(run_dir / "instance0"),
                    "pair", ("train.instances=2",)),
        signal_in_theory_case(signal.SIGINT, (130,)),
        signal_in_theory_case(signal.SIGTERM, (143, -signal.SIGTERM)),
        startup_signal_case(),
    ]


# -- multirun --------------------------------------------------------------------------------


def sweep_statuses(sweep_dir: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(sweep_dir)): read_json_file(p) or {} for p in sorted(sweep_dir.rglob("summary.json"))}


def multirun_case(name: str, overrides: Sequence[str], code: int, want: dict[str, int], error_names: Sequence[str] = ()) -> Case:
    """A sweep: ``want`` counts job statuses; each failed job shows one error line naming ``error_names``."""

    def procedure(ctx: Context, report: Report) -> None:
        sweep = ctx.workdir / "sweep"
        result = report.saw(ctx.run(TRAIN, "-m", *merged(TRAIN_BASE, overrides), f"hydra.sweep.dir={sweep}"))
        report.expect(result.code == code, f"exit code {result.code}, expected {code}")
        statuses = sweep_statuses(sweep)
        counts = {s: sum(1 for v in statuses.values() if v.get("status") == s) for s in want}
        report.expect(counts == want, f"job statuses {counts}, expected {want}")
        for job, summary in statuses.items():
            if summary.get("status") == "failed":
                report.expect(any(n in str(summary.get("error")) for n in error_names), f"job {job}'s error does not name the setting")
        if error_names:
            lines = [line for line in result.output.splitlines() if line.startswith("error:") and any(n in line for n in error_names)]
            report.expect(len(lines) == want.get("failed", 0), f"{len(lines)} error lines name the bad setting, expected {want.get('failed', 0)}")

    return Case(name, "train: multirun", f"train -m TINY {' '.join(overrides)}", f"exit {code}, jobs {want}", procedure)


def multirun_cases() -> list[Case]:
    one_bad = ("data=dirichlet", "data.vocab_size=1,8,16", "data.n_triggers=1")
    return [
        multirun_case("one job with a bad vocabulary", one_bad, USAGE, {"finished": 2, "failed": 1}, ("data.vocab_size",)),
        multirun_case("every job bad", ("data.vocab_size=0,1",), USAGE, {"failed": 2}, ("data.vocab_size",)),
        multirun_case("one job diverges", ("optim.lr=0.01,1e30", "optim.schedule=constant"), DIVERGED, {"finished": 1, "diverged": 1}),
        refused_case("unknown option in a sweep", "train: multirun", TRAIN,
                     ["-m", *TRAIN_BASE, "model.no_such=1,2", "hydra.sweep.dir={tmp}/sweep"], "no_such"),
        refused_case("sweep dir is a file", "train: multirun", TRAIN, ["-m", *TRAIN_BASE, "seed=0,1", "hydra.sweep.dir={tmp}/file"],
                     "hydra.sweep.dir", prepare=lambda ctx: write_file(ctx.workdir / "file")),
    ]


# -- file system ---------------------------------------------------------------------------


def write_file(path: Path, text: str = "keep me\n") -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return {}


def read_only_parent_case() -> Case:
    def procedure(ctx: Context, report: Report) -> None:
        with tmpfs(ctx.workdir / "ro", 64, read_only=True) as parent:
            result = report.saw(ctx.run(TRAIN, *TRAIN_BASE, f"hydra.run.dir={parent}/run"))
            report.problems += refusal_problems(result, ("hydra.run.dir",))
            report.expect(not (parent / "run").exists(), "run directory created")

    return Case("parent of the run directory is read-only", "filesystem", "train TINY hydra.run.dir=<read-only>/run",
                "exit 2, one line naming hydra.run.dir", procedure)


def disk_full_case(name: str, size_kb: int, keeps_checkpoint: bool) -> Case:
    """The disk fills up: one error line, no temporaries left, the last good checkpoint intact."""

    def procedure(ctx: Context, report: Report) -> None:
        with tmpfs(ctx.workdir / "disk", size_kb) as disk:
            run_dir = disk / "run"
            result = report.saw(ctx.run(TRAIN, *SHORT, f"hydra.run.dir={run_dir}"))
            report.problems += refusal_problems(result, ())
            report.expect(not temporaries(run_dir), f"temporaries left: {temporaries(run_dir)}")
            if keeps_checkpoint:
                report.expect(checkpoint_loads(run_dir / "checkpoint.pt"), "the last good checkpoint is gone or unreadable")

    return Case(name, "filesystem", f"train SHORT on a {size_kb} kB tmpfs", "exit 2, one error line, no temporaries", procedure)


def checkpoint_loads(path: Path) -> bool:
    import torch  # deferred: only the checkpoint checks need it

    try:
        torch.load(path, weights_only=True)
        return True
    except Exception:
        return False


def file_mode_case() -> Case:
    def procedure(ctx: Context, report: Report) -> None:
        report.problems += mode_problems(ctx.fixtures.get("ref_theory"))
        report.code = 0

    return Case("run files are 0644", "filesystem", "train SHORT theory=true (umask 022)", "every file mode 644", procedure)


def filesystem_cases() -> list[Case]:
    return [
        refused_case("hydra.run.dir is a file", "filesystem", TRAIN, [*TRAIN_BASE, "hydra.run.dir={run}"], "hydra.run.dir",
                     prepare=lambda ctx: write_file(ctx.run_dir)),
        refused_case("hydra.run.dir below a file", "filesystem", TRAIN, [*TRAIN_BASE, "hydra.run.dir={run}/sub"], "hydra.run.dir",
                     prepare=lambda ctx: write_file(ctx.run_dir)),
        read_only_parent_case(),
        disk_full_case("disk full at the first checkpoint", 200, False),
        disk_full_case("disk full at a later checkpoint", 450, True),
        file_mode_case(),
    ]


# -- the theory command --------------------------------------------------------------------------


def edit_checkpoint(path: Path, edit: Callable[[dict], None]) -> None:
    import torch  # deferred: only the checkpoint cases need it

    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def edit_config(change: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        config = json.loads(state["config_json"])
        change(config)
        state["config_json"] = json.dumps(config)

    return edit


def drop_keys(*dotted: str) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        for key in dotted:
            *groups, last = key.split(".")
            node = config
            for group in groups:
                node = node[group]
            node.pop(last, None)

    return edit_config(change)


def corrupt(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))


CHECKPOINT_EDITS = {
    "zero-byte": lambda path: path.write_bytes(b""),
    "truncated": truncate,
    "corrupt": corrupt,
    "edited d_model": lambda path: edit_checkpoint(path, edit_config(lambda c: c["model"].update(d_model=128))),
    "malformed config_json": lambda path: edit_checkpoint(path, lambda s: s.update(config_json="{not json")),
    "no config_json": lambda path: edit_checkpoint(path, lambda s: s.pop("config_json")),
    "no model weights": lambda path: edit_checkpoint(path, lambda s: s.pop("model")),
}


def theory_refusal(name: str, args: Sequence[str], names: Sequence[str], edit: Callable[[Path], None] | None = None,
                   fixture: str | None = "ref") -> Case:
    def prepare(ctx: Context) -> dict:
        if fixture:
            ctx.copy(fixture)
            if edit:
                edit(ctx.run_dir / "checkpoint.pt")
        return {}

    return refused_case(name, "theory CLI", THEORY, list(args), names, prepare)


def theory_accepted(name: str, args: Sequence[str], edit: Callable[[Path], None] | None = None, fixture: str = "ref",
                    again: bool = False) -> Case:
    """The theory command must run (exit 0), write a theory*.json (0644) and keep summary.json's quote true.

    ``again``: the same command a second time must be refused, leaving the first results as they are.
    """

    def procedure(ctx: Context, report: Report) -> None:
        ctx.copy(fixture)
        if edit:
            edit(ctx.run_dir / "checkpoint.pt")
        before = snapshot(ctx.run_dir)
        result = report.saw(ctx.run(THEORY, *fill(args, ctx.values())))
        report.expect(result.code == 0, f"exit code {result.code}, expected 0")
        written = [p for p in set(snapshot(ctx.run_dir)) - set(before) if p.startswith("theory") and p.endswith(".json")]
        report.expect(bool(written), "no theory*.json written")
        report.problems += mode_problems(ctx.run_dir)
        if fixture == "ref_theory":
            report.problems += theory_quoted_problems(ctx.run_dir)
        if again and result.code == 0:
            first = snapshot(ctx.workdir)
            report.problems += refusal_problems(report.saw(ctx.run(THEORY, *fill(args, ctx.values()))), ("overwrite",))
            compare_snapshots(report, first, snapshot(ctx.workdir))

    expected = "exit 0, theory*.json written" + ("; the same again: exit 2, untouched" if again else "")
    return Case(name, "theory CLI", "theory " + " ".join(args), expected, procedure)


def theory_read_only_case() -> Case:
    def procedure(ctx: Context, report: Report) -> None:
        with tmpfs(ctx.workdir / "disk", 4096) as disk:
            shutil.copytree(ctx.fixtures.get("ref"), disk / "run")
            remount_read_only(disk)
            before = snapshot(disk)
            result = report.saw(ctx.run(THEORY, f"run_dir={disk / 'run'}", "quick=true"))
            report.problems += refusal_problems(result, ("run_dir", "read-only", "Read-only"))
            compare_snapshots(report, before, snapshot(disk))

    return Case("read-only run dir", "theory CLI", "theory run_dir=<read-only>", "exit 2, one error line", procedure)


def theory_cases() -> list[Case]:
    run = "run_dir={run}"
    cases = [
        theory_refusal("missing run dir", [run], "run_dir", fixture=None),
        theory_refusal("no run_dir given", ["hydra.run.dir={tmp}/hydra"], "run_dir", fixture=None),
        refused_case("run dir without a checkpoint", "theory CLI", THEORY, [run], ("run_dir", "checkpoint"),
                     prepare=lambda ctx: ctx.run_dir.mkdir() or {}),
        theory_refusal("unknown option", [run, "no_such=1"], "no_such"),
        theory_refusal("variant=foo", [run, "variant=foo"], "variant"),
        theory_refusal("families=[foo]", [run, "families=[foo]"], "families"),
        theory_refusal("device=cuda", [run, "device=cuda"], "device"),
        theory_refusal("quick=maybe", [run, "quick=maybe"], "quick"),
        theory_read_only_case(),
        theory_accepted("threads=1 accepted", [run, "quick=true", "threads=1"]),
        theory_accepted("config without newer train keys", [run, "quick=true"],
                        edit=lambda p: edit_checkpoint(p, drop_keys("max_memory_gb", "train.instances", "train.instance_seeds",
                                                                   "train.instance_data_seeds", "train.instance_lrs"))),
        theory_accepted("config without newer model keys", [run, "quick=true"],
                        edit=lambda p: edit_checkpoint(p, drop_keys("model.ape_extension", "model.rope_base", "optim.min_lr_ratio"))),
        theory_accepted("rerun keeps the theory.json summary.json quotes", [run], fixture="ref_theory"),
        theory_accepted("the same analysis twice", [run, "quick=true", "variant=diagonal"], again=True),
    ]
    cases += [theory_refusal(f"{what} checkpoint", [run, "quick=true"], ("checkpoint", "run_dir", "d_model", "config"), edit=edit)
              for what, edit in CHECKPOINT_EDITS.items()]
    return cases


# -- the repetition command -----------------------------------------------------------------------


def repetition_refusal(name: str, overrides: Sequence[str], names: str | Sequence[str], fixture: str = "relu",
                       edit: Callable[[Path], None] | None = None) -> Case:
    def prepare(ctx: Context) -> dict:
        subject = ctx.copy(fixture, "subject")
        if edit:
            edit(subject)
        return {"subject": subject}

    args = [*merged(("lm=toy", "lm.path={subject}", *REPETITION_BASE), overrides), "hydra.run.dir={run}"]
    return refused_case(name, "repetition CLI", REPETITION, args, names, prepare, shown="repetition lm=toy TINY " + " ".join(overrides))


def repetition_control() -> Case:
    def procedure(ctx: Context, report: Report) -> None:
        subject = ctx.copy("relu", "subject")
        result = report.saw(ctx.run(REPETITION, "lm=toy", f"lm.path={subject}", *REPETITION_BASE, f"hydra.run.dir={ctx.run_dir}"))
        report.expect(result.code == 0, f"exit code {result.code}, expected 0")
        report.expect((ctx.run_dir / "summary.json").is_file(), "no summary.json")
        report.problems += mode_problems(ctx.run_dir)

    return Case("tiny toy study runs", "repetition CLI", "repetition lm=toy TINY", "exit 0, summary.json", procedure)


def repetition_cases() -> list[Case]:
    return [
        repetition_control(),
        repetition_refusal("toy run without ReLU neurons", (), ("model.ffn", "relu", "ReLU"), fixture="ref"),
        repetition_refusal("truncated toy checkpoint", (), ("checkpoint", "lm.path"), edit=lambda d: truncate(d / "checkpoint.pt")),
        repetition_refusal("toy run without a checkpoint", (), ("checkpoint", "lm.path"), edit=lambda d: (d / "checkpoint.pt").unlink()),
        repetition_refusal("K above the neuron count", ("intervene.ks=[0,1000]",), "intervene.ks"),
        repetition_refusal("texts longer than the toy positions", ("collect.greedy_len=500",), ("collect.greedy_len", "positions")),
        repetition_refusal("missing lm.path", ("lm.path=/no/such/run",), "lm.path"),
        repetition_refusal("lm=toy without lm.path", ("lm.path=null",), "lm.path"),
        repetition_refusal("unknown option", ("no_such=1",), "no_such"),
        repetition_refusal("unknown lm option", ("lm.no_such=1",), "no_such"),
        repetition_refusal("lm=foo", ("lm=foo",), "lm"),
        repetition_refusal("lm.kind=foo", ("lm.kind=foo",), "lm.kind"),
        repetition_refusal("detector.ngram=0", ("detector.ngram=0",), "detector.ngram"),
        repetition_refusal("detector.repeats=1", ("detector.repeats=1",), "detector.repeats"),
        repetition_refusal("collect.temperature=0", ("collect.temperature=0",), "collect.temperature"),
        repetition_refusal("collect.n_rank=0", ("collect.n_rank=0",), "collect.n_rank"),
        repetition_refusal("collect.greedy_len=abc", ("collect.greedy_len=abc",), "collect.greedy_len"),
        repetition_refusal("score.top_fraction=2", ("score.top_fraction=2",), "score.top_fraction"),
        repetition_refusal("intervene.ks=[-1]", ("intervene.ks=[-1]",), "intervene.ks"),
        repetition_refusal("intervene.random_draws=0", ("intervene.random_draws=0",), "intervene.random_draws"),
        repetition_refusal("perplexity.seq_len=1", ("perplexity.seq_len=1",), "perplexity.seq_len"),
        repetition_refusal("threads=0", ("threads=0",), "threads"),
        repetition_refusal("device=cuda", ("device=cuda",), "device"),
        repetition_refusal("resume with nothing to resume", ("resume=true",), "resume"),
    ]


# -- running the battery ----------------------------------------------------------------------------


def all_cases() -> list[Case]:
    cases = [*setting_cases(), *(accepted_case(n, o) for n, o in CONTROLS),
             *(diverged_case(o) for o in (("optim.lr=100", "optim.schedule=constant"), ("optim.lr=1e30",))),
             diverged_case(("train.instance_lrs=[1e30,0.1]", "train.instances=2"), instance="instance0"),
             *kill_cases(), *signal_cases(), *run_dir_cases(), *multirun_cases(), *filesystem_cases(),
             *theory_cases(), *repetition_cases()]
    names = [f"{c.group}/{c.name}" for c in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"case names must be unique: {duplicates}"
    return cases


def run_case(case: Case, workdir: Path, fixtures: Fixtures) -> Report:
    report = Report()
    start = time.monotonic()
    workdir.mkdir(parents=True)
    try:
        case.procedure(Context(workdir, fixtures), report)
    except Skip as skip:
        report.skipped = str(skip)
    except FixtureError as err:
        report.problems.append(str(err))
    except Exception as err:  # a broken case is a failure to report, not a reason to stop the battery
        report.problems.append(f"battery error: {type(err).__name__}: {err}")
    report.seconds = time.monotonic() - start
    return report


def verdict(report: Report) -> str:
    return "SKIP" if report.skipped else "PASS" if report.passed else "FAIL"


def case_line(index: int, case: Case, report: Report) -> str:
    detail = report.skipped or "; ".join(report.problems)
    line = f"{verdict(report)} {index:3d} [{case.group}] {case.name} | exit {report.code} | {report.first_line[:160]}"
    return line + (f"\n         -> {detail}" if detail and not report.passed else "")


def markdown_table(cases: Sequence[Case], reports: Sequence[Report]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| # | group | case | command | expected | result | exit | first stderr line / problems |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, (case, report) in enumerate(zip(cases, reports), 1):
        detail = report.first_line[:120] if report.passed else report.skipped or "; ".join(report.problems)
        lines.append(f"| {i} | {cell(case.group)} | {cell(case.name)} | `{cell(case.command)}` | {cell(case.expected)} | "
                     f"{verdict(report)} | {report.code} | {cell(detail)} |")
    return "\n".join(lines) + "\n"


def totals(reports: Sequence[Report]) -> str:
    passed = sum(verdict(r) == "PASS" for r in reports)
    failed = sum(verdict(r) == "FAIL" for r in reports)
    skipped = sum(verdict(r) == "SKIP" for r in reports)
    return (f"{passed} passed, {failed} failed, {skipped} skipped; tracebacks seen in {sum(r.tracebacks > 0 for r in reports)} cases "
            f"({sum(r.tracebacks for r in reports)} in all); data lost in {sum(r.data_lost for r in reports)} cases; "
            f"run directory or files left behind in {sum(r.left_behind for r in reports)} cases")


def run_battery(cases: Sequence[Case], jobs: int, root: Path) -> list[Report]:
    fixtures = Fixtures(root / "fixtures")
    reports: list[Report | None] = [None] * len(cases)
    printing = threading.Lock()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_case, case, root / f"{i:03d}", fixtures): i for i, case in enumerate(cases)}
        for future in as_completed(futures):
            i = futures[future]
            reports[i] = future.result()
            with printing:
                print(case_line(i + 1, cases[i], reports[i]), flush=True)
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    global MEMORY_GB, CASE_TIMEOUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="cases run in parallel (default 2)")
    parser.add_argument("--out", type=Path, help="write a Markdown table of all cases here")
    parser.add_argument("--only", action="append", default=[], help="run the cases whose group/name contains this (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories (printed at the end)")
    parser.add_argument("--memory-gb", type=float, default=MEMORY_GB, help="address-space limit of each child (default 4)")
    parser.add_argument("--timeout", type=float, default=CASE_TIMEOUT, help="seconds per command (default 120)")
    options = parser.parse_args(argv)
    MEMORY_GB, CASE_TIMEOUT = options.memory_gb, options.timeout
    cases = [c for c in all_cases() if not options.only or any(s in f"{c.group}/{c.name}" for s in options.only)]
    if options.list:
        print("\n".join(f"{i:3d} [{c.group}] {c.name}" for i, c in enumerate(cases, 1)))
        return 0
    root = Path(tempfile.mkdtemp(prefix="fault_battery."))
    start = time.monotonic()
    try:
        reports = run_battery(cases, max(1, options.jobs), root)
    finally:
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{totals(reports)}  ({len(cases)} cases in {time.monotonic() - start:.0f} s)")
    if options.keep:
        print(f"case directories kept in {root}")
    if options.out:
        options.out.write_text(markdown_table(cases, reports) + "\n" + totals(reports) + "\n")
    return 1 if any(verdict(r) == "FAIL" for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
