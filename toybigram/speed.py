"""Time to a trained model: training steps and whole-process wall seconds until held-out
in-context accuracy first reaches a target, for toybigram and, beside it, the reference code.

    python -m toybigram.bench --time-to-accuracy model.d_model=128 data.seq_len=128 train.loss=incontext
    python -m toybigram.bench --time-to-accuracy ... --reference /path/to/transformer-birth --repeats 2

Each training runs in a fresh process, as a user runs it: the clock starts when the process
is launched (interpreter and torch start-up, data and model set-up, every evaluation
included) and an evaluation counts at the moment its record appears (toybigram: its
metrics.jsonl row; the reference: its log line). A process is stopped once every target is
met. toybigram evaluates on its fixed held-out batch every ``train.eval_every`` steps (10
unless overridden); the reference (toybigram.reference) on its own fixed held-out batch of
512 sequences at the same period, after updates 1, 1 + period, ...; the accuracy it reports on the
batch it is training on is recorded as well. With train.loss=all, the step at which the
global gap (global loss minus its Bayes floor) first falls to ``gap_target`` is reported too.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from toybigram.errors import UserError
from toybigram.reference import CPU_LAUNCHER, REPO, check_reference, parse_reference_line, reference_overrides, write_meta

POLL_SECONDS = 0.05
LOW_TARGET = 0.9  # reported beside the target: the fast part of the curve
# Settings added to the user's unless given there: evaluations often, nothing but training.
QUIET_TRAINING = {"train.eval_every": "10", "train.theory": "false", "train.report": "false",
                  "train.progress": "none", "train.ckpt_every": "0"}


@dataclass
class Targets:
    """What counts as trained: held-out in-context accuracy >= accuracy (and >= LOW_TARGET, reported
    too); with train.loss=all also a global gap <= gap (None: not asked)."""

    accuracy: float = 0.97
    gap: float | None = None

    def thresholds(self) -> list[float]:
        return sorted({LOW_TARGET, self.accuracy})

    def check(self) -> "Targets":
        if not 0 < self.accuracy <= 1:
            raise UserError(f"--target: must be in (0, 1], got {self.accuracy}")
        if self.gap is not None and not self.gap > 0:
            raise UserError(f"--gap-target: must be positive, got {self.gap}")
        return self

    def met(self, points: list[dict]) -> bool:
        """Whether the evaluations so far meet every target."""
        return all(first_reaching(points, "acc_incontext", t, above=True) for t in self.thresholds()) and (
            self.gap is None or first_reaching(points, "gap_global", self.gap, above=False) is not None)


def first_reaching(points: list[dict], key: str, threshold: float, above: bool) -> dict | None:
    """The first evaluation whose ``key`` is >= threshold (``above``) or <= threshold; None if none."""
    for point in points:
        value = point.get(key)
        if value is not None and (value >= threshold if above else value <= threshold):
            return point
    return None


def _new_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """Complete lines of ``path`` from byte ``offset`` on, and the offset after them."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8", "replace").splitlines(), offset + end


def watch_training(command: list[str], cwd: Path, env: dict, records: Path, stderr: Path,
                   parse: Callable[[str], dict | None], enough: Callable[[list[dict]], bool]) -> dict:
    """Run ``command`` in its own process group and timestamp each evaluation record as it appears.

    ``records`` is the file the evaluations are read from (it may be ``stderr``); each parsed
    record gets ``wall``, seconds since launch. The group is killed once ``enough(points)``.
    """
    start = time.perf_counter()
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    points: list[dict] = []
    offset, stopped = 0, False
    try:
        while not stopped:
            exited = proc.poll() is not None
            lines, offset = _new_lines(records, offset)
            now = time.perf_counter() - start
            points += [{**point, "wall": now} for point in map(parse, lines) if point is not None]
            stopped = enough(points)
            if exited:
                break
            time.sleep(POLL_SECONDS)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if not stopped and proc.returncode not in (0, 3):  # 3: diverged, a result like any other
        tail = stderr.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{command[:3]} failed (exit {proc.returncode}):\n{tail}")
    return {"points": points, "process_seconds": time.perf_counter() - start, "stopped_at_target": stopped}


def _our_point(line: str) -> dict:
    row = json.loads(line)
    return {"step": row["step"], "elapsed": row["elapsed_seconds"], "acc_incontext": row.get("acc_incontext"),
            "gap_global": row.get("gap_global")}


def with_quiet_training(overrides: list[str]) -> list[str]:
    """The user's overrides plus ``QUIET_TRAINING``'s settings that they do not give."""
    given = {item.split("=", 1)[0].lstrip("+~") for item in overrides if "=" in item}
    return [*overrides, *(f"{key}={value}" for key, value in QUIET_TRAINING.items() if key not in given)]


def run_ours(overrides: list[str], enough: Callable[[list[dict]], bool], env: dict) -> dict:
    """One toybigram training process with ``overrides`` (``with_quiet_training``'s) until ``enough(evaluations)``,
    e.g. ``Targets.met``."""
    with tempfile.TemporaryDirectory(prefix="toybigram-speed-") as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "toybigram.train", *overrides, f"hydra.run.dir={run_dir}"]
        return watch_training(command, REPO, env, run_dir / "metrics.jsonl", Path(tmp) / "stderr.txt",
                              _our_point, enough)


def run_reference(reference: Path, cfg: DictConfig, steps: int, workers: int, targets: Targets, env: dict) -> dict:
    """One run of the reference at ``cfg``'s shape, evaluating every ``train.eval_every`` steps, until the targets."""
    threads = cfg.threads or os.cpu_count() or 1
    cli = [*reference_overrides(cfg), f"eval_delta={cfg.train.eval_every}", f"num_data_workers={workers}",
           f"max_iters={steps}", f"seed={cfg.seed}"]
    accuracy_only = Targets(targets.accuracy)  # the reference reports no global gap
    with tempfile.TemporaryDirectory(prefix="toybigram-speed-") as tmp:
        log = Path(tmp) / "stderr.txt"
        command = [sys.executable, "-c", CPU_LAUNCHER.format(threads=threads), *cli]
        try:
            return watch_training(command, reference, env, log, log, parse_reference_line, accuracy_only.met)
        except RuntimeError as error:  # its checkout or its dependencies: the user's to fix
            last = str(error).strip().splitlines()[-1]
            raise UserError(f"--reference: the reference code failed in {reference}: {last}") from None


def summarise(run: dict, targets: Targets) -> dict:
    """Steps and seconds to each target, the loop's ms/step (between its evaluations), the process's seconds."""
    points = run["points"]
    out = {"process_seconds": run["process_seconds"], "stopped_at_target": run["stopped_at_target"],
           "last_step": points[-1]["step"] if points else 0}
    for threshold in targets.thresholds():
        out[f"acc_{threshold:g}"] = _reached(first_reaching(points, "acc_incontext", threshold, above=True))
        if any("acc_incontext_train" in point for point in points):
            out[f"train_batch_acc_{threshold:g}"] = _reached(first_reaching(points, "acc_incontext_train", threshold, True))
    if targets.gap is not None:
        out[f"gap_{targets.gap:g}"] = _reached(first_reaching(points, "gap_global", targets.gap, above=False))
    timed = points[1:]  # the first evaluation comes before the loop has settled
    out["ms_per_step"] = (1e3 * (timed[-1]["elapsed"] - timed[0]["elapsed"]) / (timed[-1]["step"] - timed[0]["step"])
                          if len(timed) > 1 else None)
    return out


def _reached(point: dict | None) -> dict | None:
    return None if point is None else {"step": point["step"], "seconds": point["wall"]}


def time_to_accuracy(cfg: DictConfig, overrides: list[str], targets: Targets, reference: Path | None = None,
                     repeats: int = 1, reference_steps: int = 600, workers: int = 2) -> dict:
    """Run toybigram (and the reference, alternating: reference, ours, reference, ours, ...) ``repeats``
    times; returns every run's figures and the settings. ``overrides`` are ``with_quiet_training``'s,
    ``cfg`` their composed config."""
    if repeats < 1 or reference_steps < 1 or workers < 1:
        raise UserError(f"--repeats, --reference-steps and --workers must be positive, got {repeats}, "
                        f"{reference_steps}, {workers}")
    targets = Targets(targets.accuracy, targets.gap if cfg.train.loss == "all" else None).check()
    if reference is not None:
        check_reference(reference)
        reference_overrides(cfg)  # refuses a shape the reference cannot run, before anything runs
        write_meta(reference)
    env = dict(os.environ)
    runs: dict[str, list[dict]] = {"reference": [], "toybigram": []} if reference else {"toybigram": []}
    for _ in range(repeats):
        if reference is not None:
            runs["reference"].append(summarise(run_reference(reference, cfg, reference_steps, workers, targets, env), targets))
        runs["toybigram"].append(summarise(run_ours(overrides, targets.met, env), targets))
    return {"targets": {"accuracy": targets.accuracy, "low": LOW_TARGET, "gap": targets.gap}, "overrides": overrides,
            "eval_every": cfg.train.eval_every, "eval_batch_size": cfg.train.eval_batch_size,
            "train_steps": cfg.train.steps, "reference_steps": reference_steps, "runs": runs, "load_average": list(os.getloadavg()), "cpu_count": os.cpu_count()}


def _cell(reached: dict | None, key: str, digits: int = 0) -> str:
    return "-" if reached is None else f"{reached[key]:.{digits}f}"


def format_table(result: dict) -> str:
    """The runs as a Markdown table, then what each code's accuracy is measured on."""
    thresholds = sorted({result["targets"]["low"], result["targets"]["accuracy"]})
    gap = result["targets"]["gap"]
    head = ([f"steps to {t:g}" for t in thresholds] + [f"s to {t:g}" for t in thresholds]
            + ([f"steps to gap {gap:g}", f"s to gap {gap:g}"] if gap is not None else []) + ["ms/step", "process s"])
    lines = ["| code | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for code, runs in result["runs"].items():
        for run in runs:
            cells = ([_cell(run[f"acc_{t:g}"], "step") for t in thresholds]
                     + [_cell(run[f"acc_{t:g}"], "seconds", 1) for t in thresholds])
            if gap is not None:
                figure = run.get(f"gap_{gap:g}")
                cells += [_cell(figure, "step"), _cell(figure, "seconds", 1)] if code == "toybigram" else ["n/a", "n/a"]
            ms = "-" if run["ms_per_step"] is None else f"{run['ms_per_step']:.1f}"
            lines.append(f"| {code} | " + " | ".join(cells + [ms, f"{run['process_seconds']:.1f}"]) + " |")
    return "\n".join(lines + _notes(result, thresholds))


def _notes(result: dict, thresholds: list[float]) -> list[str]:
    every = result["eval_every"]
    notes = [f"toybigram: in-context accuracy on its fixed held-out batch ({result['eval_batch_size']} sequences) "
             f"every {every} steps, up to train.steps={result['train_steps']}."]
    if "reference" in result["runs"]:
        notes.append(f"reference: in-context accuracy on its fixed held-out batch (512 sequences) after updates 1, "
                     f"{1 + every}, {1 + 2 * every}, ..., up to {result['reference_steps']} steps; on the batch it trains "
                     "on (predicted before that batch's update), steps to "
                     + ", ".join(f"{t:g}: " + "/".join(_cell(run.get(f"train_batch_acc_{t:g}"), "step")
                                                          for run in result["runs"]["reference"]) for t in thresholds) + ".")
        for t in thresholds:
            ratio = median_speedup(result, f"acc_{t:g}")
            if ratio is not None:
                notes.append(f"wall time to {t:g}: the reference's / toybigram's = {ratio:.2f}x (median over pairs).")
    notes.append("- = not reached. Seconds from the process's launch to the evaluation that first reached the "
                 "target (start-up and evaluations included); ms/step: the loop between the first and last "
                 "evaluations. Load average " + ", ".join(f"{x:.2f}" for x in result["load_average"])
                 + f" on {result['cpu_count']} cores.")
    return notes


def median_speedup(result: dict, key: str) -> float | None:
    """Median over the runs of the reference's seconds to ``key`` over toybigram's (None unless both reached)."""
    pairs = [(r.get(key), o.get(key)) for r, o in zip(result["runs"].get("reference", []), result["runs"]["toybigram"])]
    ratios = [r["seconds"] / o["seconds"] for r, o in pairs if r and o]
    return statistics.median(ratios) if ratios else None
