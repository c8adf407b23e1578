"""What a report reads from disk: one run's files and status, the runs of a sweep, groups of seeds."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from toybigram.checkpoint import CHECKPOINT_FILE, load_checkpoint
from toybigram.errors import UserError
from toybigram.rundir import read_summary, run_status
from toybigram.runio import INSTANCE_CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_jsonl

INTERRUPTED = "interrupted"
RUN_MARKERS = (SUMMARY_FILE, METRICS_FILE, CHECKPOINT_FILE)
# Settings that differ between the seeds of one experiment, or do not change its results.
NOT_GROUPING = {"seed", "data_seed", "device", "threads", "max_memory_gb", "train.resume", "train.overwrite",
                "train.progress", "train.instances", "train.instance_seeds", "train.instance_data_seeds", "train.instance_lrs"}


@dataclass
class Run:
    """One run directory as found on disk; ``figures`` are the summary's, else the last evaluation's."""

    path: Path
    status: str
    summary: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    config: dict | None = None
    checkpoint_step: int | None = None
    checkpoint_seconds: float | None = None  # training wall time recorded in the checkpoint
    notes: list[str] = field(default_factory=list)

    @property
    def figures(self) -> dict:
        if self.summary and "step" in self.summary:
            return self.summary
        return self.rows[-1] if self.rows else {}

    @property
    def figures_step(self) -> int | None:
        return self.figures.get("step")


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in RUN_MARKERS)


def _config_from_files(path: Path) -> dict | None:
    """The config a run recorded outside its summary and checkpoint: instance config.yaml, else Hydra's (unresolved)."""
    for candidate in (path / INSTANCE_CONFIG_FILE, path / ".hydra" / "config.yaml"):
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(candidate), resolve=False)
        except Exception:  # missing or unreadable: try the next place
            continue
        if isinstance(loaded, dict):
            loaded.pop("hydra", None)
            return loaded
    return None


def load_run_files(path: Path) -> Run:
    """Status, summary, metrics rows, config and checkpoint step of the run in ``path``."""
    summary = read_summary(path)
    notes = []
    if summary is None and (path / SUMMARY_FILE).is_file():
        notes.append(f"{SUMMARY_FILE} could not be read")
    rows = read_jsonl(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else []
    run = Run(path, run_status(summary) or INTERRUPTED, summary or {}, rows, (summary or {}).get("config"), notes=notes)
    if (path / CHECKPOINT_FILE).is_file():
        try:
            state = load_checkpoint(path / CHECKPOINT_FILE)
            run.checkpoint_step, run.config = state["step"], run.config or state["config"]
            run.checkpoint_seconds = state.get("wall_seconds")
        except UserError as err:
            run.notes.append(str(err))
    if run.config is None:
        run.config = _config_from_files(path)
    return run


def _natural_key(path: Path) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def find_runs(root: Path) -> list[Path]:
    """The run directories inside a sweep: ``0/``, ``1/``, ... or ``instance0/``, ... (one level deeper too)."""
    found = []
    for child in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key):
        if is_run_dir(child):
            found.append(child)
        else:
            found += [grandchild for grandchild in sorted(child.iterdir(), key=_natural_key) if is_run_dir(grandchild)]
    return found


def flatten(config: dict | None, prefix: str = "") -> dict[str, object]:
    """``{"model": {"d_model": 64}}`` -> ``{"model.d_model": 64}``."""
    out = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


@dataclass
class Group:
    """Runs that differ only in their seeds; ``label`` names the settings that set it apart from other groups."""

    label: str
    runs: list[Run]

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.status == "finished"]


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by their settings, seeds and machine settings aside; labelled by what varies between groups.

    Failed jobs and runs without recorded settings trained nothing to compare: they join no group.
    """
    runs = [run for run in runs if run.config and run.status != "failed"]
    settings = [{k: v for k, v in flatten(run.config).items() if k not in NOT_GROUPING} for run in runs]
    keys = [json.dumps(s, sort_keys=True, default=str) for s in settings]
    varying = sorted({k for s in settings for k in s if len({json.dumps(t.get(k), default=str) for t in settings}) > 1})
    groups = []
    for key in dict.fromkeys(keys):
        example = settings[keys.index(key)]
        label = " ".join(f"{k}={example.get(k)}" for k in varying) or "all runs"
        groups.append(Group(label, [run for run, k in zip(runs, keys) if k == key]))
    return groups
