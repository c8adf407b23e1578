"""A paper figure as one module: the sweeps it reads, the analyses its runs need, its tables and its plot.

Each module of the package ``experiments.figures`` defines ``FIGURE = Figure(...)``; ``registry()``
finds them all, so a new figure is one module (plus its experiment config when it needs runs of
its own). Tables land in paper_figures/data/<table>.csv (mean, 95% CI half-width over seeds, n
per point), with <name>_runs.csv saying which runs made them (profile and settings, for the
caption line); the plot reads only those tables and is saved as paper_figures/<name>.png and .pdf.
A figure's tables are built only from a complete set of runs (``figure_tables``); with
``allow_missing``, from whatever is usable as long as every point of every grid keeps one seed.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

import experiments.figures as figures_package
from experiments.plotting import save
from experiments.runs import DIVERGED, EXTRA, FAILED, Collected, Run, collect, flatten, report
from experiments.sweeps import ROOT, Setup
from toybigram.errors import OneLineParser, UserError

DATA_DIR = ROOT / "paper_figures" / "data"
FIGURES_DIR = ROOT / "paper_figures"
# The settings a caption names (experiments.plotting.CAPTION_FORMATS): column -> where a run's config keeps it.
CAPTION_SETTINGS = {"source": "data.source", "N": "data.vocab_size", "d": "model.d_model", "T": "data.seq_len",
                    "pos": "model.pos", "layers": "model.n_layers", "steps": "train.steps"}
# Every post-run analysis draws its prompts from generators seeded with this, so a re-run gives the same numbers.
PROMPT_SEED = 1234


@dataclass(frozen=True)
class Input:
    """A sweep the figure reads (conf/experiment/<experiment>.yaml), and the analysis that writes
    <run>/experiments/<result>.json for each of its usable runs (None: the tables read the run files)."""

    experiment: str
    result: str | None = None
    analysis: Callable[[Path], dict] | None = None


@dataclass(frozen=True)
class Build:
    """An input that is not a sweep: ``make(setup, log)`` writes its files, ``collect(setup)`` reads them as a grid."""

    name: str
    make: Callable[[Setup, Callable[[str], None]], None]
    collect: Callable[[Setup], Collected]
    kind: str = "builds"  # what the caption calls them: "ideal-memory builds"


@dataclass(frozen=True)
class Figure:
    """One paper figure. ``plot(data_dir)`` draws it from its tables alone; ``tables`` turns the
    collected runs into those tables (None: the tables come from elsewhere, as Figure 8's)."""

    key: str  # its name on the command line: fig4
    name: str  # its files: paper_figures/<name>.png, .pdf, and the script paper_figures/<name>.py
    plot: Callable[[Path], object]
    inputs: tuple[Input, ...] = ()
    tables: Callable[[dict[str, Collected]], dict[str, list[dict]]] | None = None
    builds: tuple[Build, ...] = ()

    @property
    def from_sweeps(self) -> bool:
        """Whether ``experiments/run.py`` makes the tables (from runs and builds) before drawing."""
        return self.tables is not None

    def draw(self, data_dir: str | Path, out_dir: str | Path) -> list[Path]:
        """Draw the figure from the tables in ``data_dir``; writes <out_dir>/<name>.png and .pdf."""
        return save(self.plot(Path(data_dir)), out_dir, self.name)

    def script_main(self, argv=None) -> list[Path]:
        """The command line of paper_figures/<name>.py: redraw from the tables (default paper_figures/data)."""
        doc = " ".join((sys.modules[self.plot.__module__].__doc__ or self.name).split())
        parser = OneLineParser(description=doc.split(". ")[0])  # the module docstring's first sentence
        parser.add_argument("--data", default=str(DATA_DIR), help="folder of the aggregated tables")
        parser.add_argument("--out", default=str(FIGURES_DIR), help="folder for the PNG and PDF")
        args = parser.parse_args(argv)
        return self.draw(args.data, args.out)


@cache
def registry() -> dict[str, Figure]:
    """Every figure by key (fig1, fig2, ..., in number order): the ``FIGURE`` of each module of
    ``experiments.figures`` and of the folders in TOYBIGRAM_FIGURE_PATH."""
    found: dict[str, Figure] = {}
    for module in pkgutil.iter_modules(figures_package.__path__):
        figure = getattr(importlib.import_module(f"{figures_package.__name__}.{module.name}"), "FIGURE", None)
        if figure is None:
            continue
        if figure.key in found:
            raise ValueError(f"two figures named {figure.key}: {found[figure.key].name} and {figure.name}")
        found[figure.key] = figure
    return dict(sorted(found.items(), key=lambda item: (len(item[0]), item[0])))


class IncompleteFigure(UserError):
    """A figure whose runs are not all usable: its tables are not written."""


def collect_figure(fig: Figure, setup: Setup) -> dict[str, Collected]:
    """Every input of a figure: each sweep's runs checked against the experiment's settings, and its builds."""
    out = {}
    for item in fig.inputs:
        sweep = setup.sweep(item.experiment)
        out[item.experiment] = collect(sweep.sweep_dir, sweep.axes, sweep.name, item.result, expected=sweep.expected)
    for build in fig.builds:
        out[build.name] = build.collect(setup)
    return out


def outcome(collected: dict[str, Collected]) -> str:
    """'2 of 27 runs failed, 1 missing: <the first problem>' for a figure with problems, '' without."""
    problems = [(c, p) for c in collected.values() for p in c.problems]
    if not problems:
        return ""
    total = sum(len(c.points) or len(c.runs) + len(c.problems) for c in collected.values())
    failed = sum(p.status in (FAILED, DIVERGED) for _, p in problems)
    stray = sum(p.status == EXTRA for _, p in problems)
    missing = len(problems) - failed - stray
    counts = [f"{failed} of {total} runs failed"] if failed else []
    if missing:
        counts.append(f"{missing} missing" if counts else f"{missing} of {total} runs missing")
    if stray:
        counts.append(f"{stray} off the grid")
    c, first = next(((c, p) for c, p in problems if p.status in (FAILED, DIVERGED)), problems[0])
    where = f"{c.experiment} " if len(collected) > 1 else ""
    more = f"; {len(problems) - 1} more above" if len(problems) > 1 else ""
    return f"{', '.join(counts)}: {where}{first.name}: {first.reason}{more}"


def figure_tables(fig: Figure, setup: Setup, allow_missing: bool = False) -> tuple[dict[str, list[dict]], str]:
    """The rows of each table of a figure and what was left out ('' when nothing); IncompleteFigure
    when runs failed or are missing.

    ``allow_missing``: build from the usable runs, as long as each point (seeds aside) of every
    grid has at least one; the problems are still reported.
    """
    collected = collect_figure(fig, setup)
    report(list(collected.values()))
    problems = outcome(collected)
    if problems and not allow_missing:
        raise IncompleteFigure(problems)
    uncovered = [f"{c.experiment} {point}" for c in collected.values() for point in c.uncovered()]
    if uncovered:
        more = f" and {len(uncovered) - 5} more" if len(uncovered) > 5 else ""
        raise IncompleteFigure(f"no usable run at {', '.join(uncovered[:5])}{more} ({problems})")
    return {**fig.tables(collected), f"{fig.name}_runs": runs_table(fig, setup.profile, collected)}, problems


def _values(values) -> str | None:
    """The distinct values of a setting over the runs: '64', '8/16/32' (numbers in order); None when no run has it."""
    found = {v for v in values if v not in (None, "", {})}
    ordered = sorted(found, key=lambda v: (not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v)))
    return "/".join(str(v) for v in ordered) if ordered else None


def _setting(run: Run, column: str):
    """One caption setting of a run: from its config, else (an input that is a build) from its result."""
    flat = flatten(run.config)
    result = run.result if isinstance(run.result, dict) else {}
    if column == "N" and flat.get("data.vocab_size") is None:  # a text source's vocabulary is known after reading it
        return run.summary.get("vocab_size") if "data.source" in flat else result.get("N")
    return flat[CAPTION_SETTINGS[column]] if CAPTION_SETTINGS[column] in flat else result.get(column)


def _freeze(run: Run) -> str:
    """train.freeze_until as 'W_K2@40 W_K1@80' ('' when nothing is frozen)."""
    release = run.config.get("train", {}).get("freeze_until") or {}
    return " ".join(f"{k}@{v}" for k, v in sorted(release.items(), key=lambda kv: kv[1]))


def runs_table(fig: Figure, profile: str, collected: dict[str, Collected]) -> list[dict]:
    """One row per input of a figure: the profile, how many runs and seeds went into the tables, and
    the settings they were trained with (several values joined by '/'), for the figure's caption."""
    kinds = {build.name: build.kind for build in fig.builds}
    rows = []
    for name, c in collected.items():
        source = kinds.get(name) or _values(run.config.get("data", {}).get("source") for run in c.runs)
        row = {"input": name, "profile": profile, "runs": len(c.runs), "seeds": len({run.seed for run in c.runs}), "source": source}
        row.update({column: _values(_setting(run, column) for run in c.runs) for column in CAPTION_SETTINGS if column != "source"})
        row["freeze"] = _values(_freeze(run) for run in c.runs)
        rows.append(row)
    return rows
