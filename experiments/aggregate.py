"""Aggregation: every run directory of a sweep -> one table per figure (CSV, written atomically).

    python experiments/aggregate.py fig1 --profile quick      # or: all

Reading a sweep (``collect``):
- a run is a job directory, or each ``instance{i}/`` of a job that trained its seeds together
  (``experiments/run.py --seeds-together``);
- a run is named by its swept values, e.g. ``seed=2,model.pos=rpe`` (from .hydra/overrides.yaml,
  else from its config);
- complete: summary.json is there (and the figure's per-run result file, when it needs one);
- incomplete: metrics were written but no summary.json (interrupted), or the result file is missing;
- failed: no metrics, or an unreadable summary.json (the last error line of train.log is quoted);
- missing: a point of the grid with no run directory at all.
Problems are reported by name and left out of the table; nothing crashes on them.
Runs whose resolved configs differ in a setting the figure does not sweep are refused
(MixedRunsError): a table never mixes, say, two widths.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

if __package__ in (None, ""):  # run as a script: experiments/aggregate.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toybigram.errors import UserError
from toybigram.runio import INSTANCE_CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, atomic_write_text, read_jsonl

JOB_LOG = "train.log"  # Hydra's log of a job (hydra.job.name: train)
RESULTS_DIR = "experiments"  # per-run result files of the post-run analysis: <run>/experiments/<figure>.json
# Settings allowed to differ between the runs of one sweep besides the swept ones.
RUNTIME_KEYS = {"train.resume", "train.overwrite", "train.progress"}
DERIVED_KEYS = {"data_seed"}  # follows the seed in every experiment config (data_seed: ${seed})


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
    status: str  # missing | failed | incomplete
    why: str

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.status}: {self.name}{where}: {self.why}"


@dataclass
class Collected:
    experiment: str
    runs: list[Run] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        if not tree and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: tree}


def _read_yaml(path: Path):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


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


def collect(sweep_dir: str | Path, axes: dict[str, list[str]] | list[str], experiment: str = "",
            result: str | None = None) -> Collected:
    """Read every run directory of a sweep; ``axes`` = the swept keys (with their values, to find missing points).

    ``result``: the per-run result file the figure needs (<run>/experiments/<result>.json).
    """
    sweep_dir = Path(sweep_dir)
    expected = axes if isinstance(axes, dict) else {k: [] for k in axes}
    keys = list(expected)
    out = Collected(experiment or sweep_dir.name)
    seen: set[tuple] = set()
    for path in run_dirs(sweep_dir):
        summary, config = None, None
        if (path / SUMMARY_FILE).is_file():
            try:
                summary = json.loads((path / SUMMARY_FILE).read_text())
                config = summary.get("config")
            except (json.JSONDecodeError, OSError) as err:
                values = _run_values(path, keys, None)
                out.problems.append(Problem(run_name(values, keys), path, "failed", f"unreadable summary.json ({err})"))
                seen.add(tuple(_normal(values.get(k, "?")) for k in keys))
                continue
        for recorded in (path / ".hydra" / "config.yaml", path / INSTANCE_CONFIG_FILE):  # a job's, an instance's
            if config is None and recorded.is_file():
                config = _read_yaml(recorded)
        values = _run_values(path, keys, config)
        name = run_name(values, keys)
        seen.add(tuple(_normal(values.get(k, "?")) for k in keys))
        if summary is None:
            rows = read_jsonl(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else []
            if rows:
                total = (config or {}).get("train", {}).get("steps", "?")
                out.problems.append(Problem(name, path, "incomplete", f"stopped at step {rows[-1].get('step')} of {total} (no summary.json)"))
            else:
                out.problems.append(Problem(name, path, "failed", _log_error(path)))
            continue
        data = None
        if result is not None:
            file = path / RESULTS_DIR / f"{result}.json"
            if not file.is_file():
                out.problems.append(Problem(name, path, "incomplete", f"trained, but no {RESULTS_DIR}/{result}.json (post-run analysis missing)"))
                continue
            data = json.loads(file.read_text())
        out.runs.append(Run(name, path, values, config or {}, summary, data))
    for point in (dict(zip(keys, combo)) for combo in _product(expected)):
        if tuple(_normal(point[k]) for k in keys) not in seen:
            out.problems.append(Problem(run_name(point, keys), None, "missing", f"no run directory in {sweep_dir}"))
    check_consistent(out.runs, keys, out.experiment)
    return out


def _product(expected: dict[str, list[str]]):
    import itertools

    if not expected or any(not v for v in expected.values()):
        return []
    return itertools.product(*expected.values())


def check_consistent(runs: list[Run], swept: Iterable[str], experiment: str = "") -> None:
    """Raise MixedRunsError when runs differ in a setting that is not swept."""
    ignore = set(swept) | RUNTIME_KEYS | DERIVED_KEYS
    flats = [(run, flatten(run.config)) for run in runs]
    keys = sorted(set().union(*(f.keys() for _, f in flats))) if flats else []
    differing = []
    for key in keys:
        if key in ignore:
            continue
        values = {json.dumps(f.get(key, "<absent>"), sort_keys=True) for _, f in flats}
        if len(values) > 1:
            by_value: dict[str, list[str]] = {}
            for run, f in flats:
                by_value.setdefault(json.dumps(f.get(key, "<absent>"), sort_keys=True), []).append(run.name)
            differing.append(f"{key}: " + "; ".join(f"{v} in {', '.join(names)}" for v, names in by_value.items()))
    if differing:
        raise MixedRunsError(f"{experiment or 'sweep'}: runs differ in settings the figure does not sweep: " + " | ".join(differing))


# -- statistics and tables -----------------------------------------------------------------
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean, half-width of the 95% t confidence interval (over seeds), and n (finite values only)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(xs) / n
    if n == 1:
        return mean, math.nan, 1
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, _T975.get(n - 1, 1.96) * sd / math.sqrt(n), n


def summarise(rows: list[dict], keys: list[str], values: list[str]) -> list[dict]:
    """Group per-seed rows by ``keys``; each value column becomes <v>_mean, <v>_ci, <v>_n."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for group_key, members in groups.items():
        row = dict(zip(keys, group_key))
        for v in values:
            mean, ci, n = mean_ci(m.get(v) for m in members)
            row.update({f"{v}_mean": mean, f"{v}_ci": ci, f"{v}_n": n})
        out.append(row)
    return out


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else repr(round(value, 6)))
    return str(value)


def write_table(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """A CSV table, written atomically (readers see the old table or the whole new one)."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def report(collected: list[Collected], out=sys.stderr) -> list[str]:
    lines = [f"[{c.experiment}] {p}" for c in collected for p in c.problems]
    for line in lines:
        print(line, file=out)
    return lines


def main(argv=None) -> int:
    import argparse

    from experiments.figures import FIGURES, aggregate_figure

    parser = argparse.ArgumentParser(description="Aggregate the sweeps of a figure into its tables")
    parser.add_argument("figure", choices=[*FIGURES, "all"])
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"])
    args = parser.parse_args(argv)
    figures = list(FIGURES) if args.figure == "all" else [args.figure]
    status = 0
    for name in figures:
        try:
            paths = aggregate_figure(name, args.profile)
            print(f"{name}: wrote {', '.join(str(p) for p in paths)}")
        except UserError as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
