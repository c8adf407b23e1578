"""Reading a sweep: every run directory of it, sorted into usable runs and named problems.

Reading a sweep (``collect``):
- a run is a job directory, or each ``instance{i}/`` of a job that trained its seeds together
  (``experiments/run.py --seeds-together``);
- a run is named by its swept values, e.g. ``seed=2,model.pos=rpe`` (from .hydra/overrides.yaml,
  else from its config);
- usable: summary.json says finished (summaries without a ``status`` field are finished), the
  settings are the experiment's for that point, and the figure's per-run result file is there;
- mismatch: the run's settings (summary.json's config, else .hydra/config.yaml, else an
  instance's config.yaml) differ from the experiment's at that point, in anything but
  bookkeeping (progress display, resume/overwrite, threads, device, seeds-together grouping):
  a stale run of another config, or a run made with other overrides;
- failed: summary.json says failed (its error is quoted) or cannot be read, or a job left neither
  summary nor metrics (the last error line of train.log is quoted);
- diverged: summary.json says diverged (the step and the reason are quoted);
- interrupted: metrics or a checkpoint but no summary.json;
- incomplete: trained, but the figure's post-run result file is missing;
- extra: a run that is not a point of the grid, or a second run of a point;
- missing: a point of the grid with no run directory at all.
Problems are reported by name and left out of the tables; nothing crashes on them.
"""
from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import OmegaConf

from toybigram.errors import UserError
from toybigram.runio import INSTANCE_CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_jsonl

JOB_LOG = "train.log"  # Hydra's log of a job (hydra.job.name: train)
CHECKPOINT = "checkpoint.pt"
RESULTS_DIR = "experiments"  # per-run result files of the post-run analysis: <run>/experiments/<figure>.json
# Settings that do not change what a run computes, and may differ from the experiment's.
BOOKKEEPING_KEYS = ("hydra", "train.progress", "train.report", "train.resume", "train.overwrite", "threads", "device", "max_memory_gb",
                    "train.instances", "train.instance_seeds", "train.instance_data_seeds")
DERIVED_KEYS = {"data_seed"}  # follows the seed in every experiment config (data_seed: ${seed})
SEED_AXIS = "seed"
FAILED, DIVERGED, INTERRUPTED, MISMATCH, INCOMPLETE, EXTRA, MISSING = (
    "failed", "diverged", "interrupted", "mismatch", "incomplete", "extra", "missing")


class MixedRunsError(UserError):
    """Runs of one sweep whose configs differ in a setting the figure does not sweep."""


@dataclass
class Run:
    name: str
    path: Path
    values: dict[str, str]
    config: dict
    summary: dict
    result: dict | None = None

    def metrics(self) -> list[dict]:
        return read_jsonl(self.path / METRICS_FILE)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


@dataclass
class Problem:
    name: str
    path: Path | None
    status: str  # failed | diverged | interrupted | mismatch | incomplete | extra | missing
    why: str

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.status}: {self.name}{where}: {self.why}"

    @property
    def reason(self) -> str:
        """Why, in the words of a job's own error line ('error: ...', 'diverged at step 3 (...)')."""
        return {FAILED: f"error: {self.why}", DIVERGED: self.why}.get(self.status, f"{self.status}: {self.why}")


@dataclass
class Collected:
    experiment: str
    runs: list[Run] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    axes: dict[str, list[str]] = field(default_factory=dict)  # the grid, when known

    @property
    def points(self) -> list[dict[str, str]]:
        return [dict(zip(self.axes, combo)) for combo in _product(self.axes)]

    def uncovered(self) -> list[str]:
        """The points of the grid, seeds aside, without a single usable run."""
        others = [k for k in self.axes if k != SEED_AXIS]
        covered = {tuple(_normal(run.values.get(k, "?")) for k in others) for run in self.runs}
        points = {tuple(p[k] for k in others): p for p in self.points}
        return [run_name(dict(zip(others, key)), others) or "any seed" for key in points
                if tuple(_normal(v) for v in key) not in covered]


def lowest_seed(runs: list[Run]) -> Run | None:
    """The run of the lowest seed (the one a figure shows alone), None for no runs."""
    return min(runs, key=lambda r: r.seed) if runs else None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        if not tree and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: tree}


def _read_yaml(path: Path, resolve: bool = False):
    """A recorded config; resolved when asked and possible (Hydra-only interpolations stay as written)."""
    loaded = OmegaConf.load(path)
    if resolve:
        try:
            return OmegaConf.to_container(loaded, resolve=True)
        except Exception:  # e.g. ${hydra:...} outside a Hydra job
            pass
    return OmegaConf.to_container(loaded, resolve=False)


def _run_values(path: Path, axes: Iterable[str], config: dict | None) -> dict[str, str]:
    """The swept values of a run directory: its recorded overrides, else its config."""
    values: dict[str, str] = {}
    overrides = path / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        for item in _read_yaml(overrides) or []:
            key, _, value = str(item).lstrip("+~").partition("=")
            if key in axes:
                values[key] = value
    if config is not None:
        flat = flatten(config)
        for key in axes:
            if key not in values and key in flat:
                values[key] = _as_override(flat[key])
    return values


def _as_override(value: Any) -> str:
    """A config value written as on the command line (true, null, 0.5)."""
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def run_name(values: dict[str, str], axes: Iterable[str]) -> str:
    return ",".join(f"{k}={values.get(k, '?')}" for k in axes)


def _normal(value: str) -> str:
    """Compare swept values as numbers where they are numbers ("0.50" == "0.5")."""
    try:
        return repr(float(value))
    except ValueError:
        return value


def _log_error(path: Path) -> str:
    log = path / JOB_LOG
    lines = [line for line in (log.read_text(errors="replace").splitlines() if log.is_file() else []) if "error" in line.lower()]
    return lines[-1].strip() if lines else "no summary.json and no metrics"


def _by_number(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: (len(p.name), p.name))


def run_dirs(sweep_dir: Path) -> list[Path]:
    """The run directories of a sweep: its jobs, and in place of a job that trained seeds together, its instances."""
    if not sweep_dir.is_dir():
        return []
    out = []
    for job in _by_number(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        instances = _by_number(p for p in job.glob("instance*") if p.is_dir() and p.name[len("instance"):].isdigit())
        if instances:
            out.extend(instances)
        elif any((job / f).exists() for f in (SUMMARY_FILE, METRICS_FILE, ".hydra", JOB_LOG)):
            out.append(job)  # anything else is not a run (e.g. submitit's .submitit folder, stray files)
    return out


def is_bookkeeping(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in BOOKKEEPING_KEYS)


def _same(a: Any, b: Any) -> bool:
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    return float(a) == float(b) if numbers else a == b


def config_differences(expected: dict, actual: dict) -> list[str]:
    """The settings, bookkeeping aside, where a run's config differs from the expected one: 'key: got (expected x)'."""
    want, got = flatten(expected), flatten(actual)
    out = []
    for key in sorted(set(want) | set(got)):
        if is_bookkeeping(key) or (key in want and key in got and _same(want[key], got[key])):
            continue
        have = json.dumps(got[key]) if key in got else "absent"
        out.append(f"{key}: {have} (expected {json.dumps(want[key]) if key in want else 'absent'})")
    return out


@dataclass
class _Record:
    """What a run directory says about itself."""

    path: Path
    values: dict[str, str]
    summary: dict | None
    config: dict | None
    unreadable: str | None = None  # why summary.json could not be read


def _read_record(path: Path, keys: list[str]) -> _Record:
    summary, config, unreadable = None, None, None
    if (path / SUMMARY_FILE).is_file():
        try:
            summary = json.loads((path / SUMMARY_FILE).read_text())
            config = summary.get("config")
        except (json.JSONDecodeError, OSError) as err:
            unreadable = f"unreadable summary.json ({err})"
    for recorded in (path / ".hydra" / "config.yaml", path / INSTANCE_CONFIG_FILE):  # a job's, an instance's
        if config is None and unreadable is None and recorded.is_file():
            config = _read_yaml(recorded, resolve=True)
    return _Record(path, _run_values(path, keys, config), summary, config, unreadable)


def _unfinished(record: _Record) -> tuple[str, str]:
    """Status and reason of a run without a usable summary.json."""
    rows = read_jsonl(record.path / METRICS_FILE) if (record.path / METRICS_FILE).is_file() else []
    if rows:
        total = (record.config or {}).get("train", {}).get("steps", "?")
        return INTERRUPTED, f"stopped at step {rows[-1].get('step')} of {total} (no summary.json)"
    if (record.path / CHECKPOINT).is_file():
        return INTERRUPTED, "a checkpoint but no summary.json"
    return FAILED, _log_error(record.path)


def classify(record: _Record, name: str, expected: dict | None, result: str | None) -> Run | Problem:
    """A usable run, or the problem that keeps it out of the table."""
    def problem(status: str, why: str) -> Problem:
        return Problem(name, record.path, status, why)

    if record.unreadable:
        return problem(FAILED, record.unreadable)
    status = None if record.summary is None else record.summary.get("status", "finished")
    if status == FAILED:
        return problem(FAILED, str(record.summary.get("error") or "the job failed"))
    differences = config_differences(expected, record.config) if expected is not None and record.config is not None else []
    if differences:
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        return problem(MISMATCH, "settings differ from the experiment's: " + "; ".join(differences[:3]) + more)
    if status == DIVERGED:
        reason = record.summary.get("reason")
        return problem(DIVERGED, f"diverged at step {record.summary.get('diverged_at_step')}" + (f" ({reason})" if reason else ""))
    if record.summary is None:
        return problem(*_unfinished(record))
    data = None
    if result is not None:
        file = record.path / RESULTS_DIR / f"{result}.json"
        if not file.is_file():
            return problem(INCOMPLETE, f"trained, but no {RESULTS_DIR}/{result}.json (post-run analysis missing)")
        data = json.loads(file.read_text())
    return Run(name, record.path, record.values, record.config or {}, record.summary, data)


def collect(sweep_dir: str | Path, axes: dict[str, list[str]] | list[str], experiment: str = "",
            result: str | None = None, expected: Callable[[dict[str, str]], dict] | None = None) -> Collected:
    """Read every run directory of a sweep; ``axes`` = the swept keys (with their values, to find missing points).

    ``result``: the per-run result file the figure needs (<run>/experiments/<result>.json).
    ``expected(point)``: the settings a run of that point must have (e.g. ``Sweep.expected``); with it,
    runs off the grid or with other settings are left out, and without it, runs that differ from
    each other in an unswept setting raise MixedRunsError.
    """
    sweep_dir = Path(sweep_dir)
    grid = axes if isinstance(axes, dict) else {k: [] for k in axes}
    keys = list(grid)
    out = Collected(experiment or sweep_dir.name, axes=grid)
    points = {tuple(_normal(p[k]) for k in keys): p for p in out.points}
    seen: dict[tuple, Path] = {}  # point -> the run directory that covers it
    for path in run_dirs(sweep_dir):
        record = _read_record(path, keys)
        name, point = run_name(record.values, keys), tuple(_normal(record.values.get(k, "?")) for k in keys)
        if points and point not in points:
            out.problems.append(Problem(name, path, EXTRA, f"not a point of the sweep's grid ({run_name(grid, keys)})"))
            continue
        if point in seen:
            out.problems.append(Problem(name, path, EXTRA, f"a second run of this point (the first: {seen[point]})"))
            continue
        seen[point] = path
        want = expected(points[point]) if expected is not None and points else None
        verdict = classify(record, name, want, result)
        (out.runs if isinstance(verdict, Run) else out.problems).append(verdict)
    for point, values in points.items():
        if point not in seen:
            out.problems.append(Problem(run_name(values, keys), None, MISSING, f"no run directory in {sweep_dir}"))
    if expected is None:
        check_consistent(out.runs, keys, out.experiment)
    return out


def _product(expected: dict[str, list[str]]):
    if not expected or any(not v for v in expected.values()):
        return []
    return itertools.product(*expected.values())


def check_consistent(runs: list[Run], swept: Iterable[str], experiment: str = "") -> None:
    """Raise MixedRunsError when runs differ in a setting that is not swept."""
    ignore = set(swept) | DERIVED_KEYS
    flats = [(run, flatten(run.config)) for run in runs]
    keys = sorted(set().union(*(f.keys() for _, f in flats))) if flats else []
    differing = []
    for key in keys:
        if key in ignore or is_bookkeeping(key):
            continue
        values = {json.dumps(f.get(key, "<absent>"), sort_keys=True) for _, f in flats}
        if len(values) > 1:
            by_value: dict[str, list[str]] = {}
            for run, f in flats:
                by_value.setdefault(json.dumps(f.get(key, "<absent>"), sort_keys=True), []).append(run.name)
            differing.append(f"{key}: " + "; ".join(f"{v} in {', '.join(names)}" for v, names in by_value.items()))
    if differing:
        raise MixedRunsError(f"{experiment or 'sweep'}: runs differ in settings the figure does not sweep: " + " | ".join(differing))


def report(collected: list[Collected], out=sys.stderr) -> list[str]:
    lines = [f"[{c.experiment}] {p}" for c in collected for p in c.problems]
    for line in lines:
        print(line, file=out)
    return lines


