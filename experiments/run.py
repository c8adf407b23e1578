"""Regenerate paper figures: sweeps -> post-run analysis -> tables -> PNG and PDF.

    python experiments/run.py all --profile quick               # `make figures`: every figure made from sweeps
    python experiments/run.py fig3 --profile paper --launcher slurm_gpu   # the same sweeps on a Slurm cluster
    python experiments/run.py fig3 --no-seeds-together          # each seed a job of its own (default: together, one job per point)
    python experiments/run.py fig4 --skip-train                 # re-analyse existing runs, re-aggregate, re-plot
    python experiments/run.py fig1 --plot-only                  # only redraw from paper_figures/data/
    python experiments/run.py fig8                              # a figure whose tables come from elsewhere: redraw

Before anything runs, every experiment config the figures need is composed with the
``--override``s and every point of its grid is validated: a bad override ends in one
``error:`` line and exit code 2, with nothing written.

Each figure is a module of experiments/figures/ (experiments.figure.Figure). Steps:
(1) every experiment config the figures need starts at once as a Hydra multirun in the background
(`python -m toybigram.train -m +experiment=<name> profile=<profile>`), into its sweep directory,
emptied first: with the basic launcher (default) one process per sweep, --jobs sweeps at a time,
the longest first, each point's seeds in one job; a sweep shared by several figures runs once per
invocation; a job that fails or diverges fails alone, and the others go on. Then figure by figure,
as soon as its sweeps have ended: (2) analyses that need a model write
<run>/experiments/<result>.json for every usable run, and inputs that are not sweeps are built;
(3) each run's summary.json and settings are checked (experiments/runs.py): the figure's tables
are built only when every point of every grid has a finished run with the experiment's settings;
(4) the tables and the figure are written to a temporary folder, and moved to paper_figures/data/
and paper_figures/ only when the figure has been drawn from them. A figure with failed or missing
runs keeps its previous tables and figure; the run ends with a `failed: <figure> (...)` line and
exit code 2. ``all`` is every figure made from sweeps; a figure whose tables come from elsewhere
(Figure 8) is redrawn when named.

``--allow-missing`` builds a figure from the usable runs when every point of every grid (seeds
aside) still has at least one of them: the runs left out are listed, the means are over fewer
seeds (the tables' ``_n`` columns say how many), and the exit code is 0. A point with no usable
run at all still fails the figure.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.figure import DATA_DIR, FIGURES_DIR, Figure, Input, figure_tables, registry
from experiments.runs import RESULTS_DIR, collect
from experiments.sweeps import PROFILES, Setup, SweepPool
from experiments.tables import write_table
from toybigram.cli import compose, first_lines
from toybigram.errors import INTERRUPT_EXIT_CODE, OneLineParser, UserError, exit_with
from toybigram.rundir import check_writable_dir
from toybigram.runio import atomic_write_bytes, write_json
from toybigram.runtime import apply_threads

LAUNCHERS = ("joblib", "basic", "submitit_local", "submitit_slurm", "slurm_cpu", "slurm_gpu")


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (user + system)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def log(msg: str) -> None:
    print(msg, flush=True)


def positive_int(text: str) -> int:
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def parse_args(argv) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", choices=[*registry(), "all"], nargs="+")
    parser.add_argument("--profile", default="quick", choices=PROFILES)
    parser.add_argument("--launcher", default="basic", choices=LAUNCHERS,
                        help="Hydra launcher for the sweeps: basic (each sweep one process, its jobs one after another; "
                             "--jobs sweeps at once), joblib (one sweep at a time, --jobs jobs at once), "
                             "submitit_local, submitit_slurm or the presets slurm_cpu / slurm_gpu (conf/hydra/launcher/)")
    parser.add_argument("--jobs", type=positive_int, default=2,
                        help="sweeps trained at once (basic launcher), or parallel jobs of the joblib launcher")
    parser.add_argument("--seeds-together", action=argparse.BooleanOptionalAction, default=None,
                        help="train each point's seeds together in one job (train.instances); same runs, fewer jobs. "
                             "Default: on with the basic launcher, whose jobs run one after another anyway; off with the others")
    parser.add_argument("--skip-train", action="store_true", help="use the runs already in the sweep directories")
    parser.add_argument("--plot-only", action="store_true", help="only draw the figures from the existing tables")
    parser.add_argument("--override", action="append", default=[],
                        help="extra Hydra override for every sweep (repeatable); an override of a swept setting replaces its axis")
    parser.add_argument("--allow-missing", action="store_true",
                        help="build a figure from the usable runs when every point still has at least one seed")
    parser.add_argument("--sweeps-dir", type=Path, help="keep the sweeps in DIR/<sweep>/ instead of outputs/experiments/<profile>/")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where the tables go (default paper_figures/data)")
    parser.add_argument("--figures-dir", type=Path, default=FIGURES_DIR, help="where the PNG and PDF files go (default paper_figures)")
    args = parser.parse_args(argv)
    if args.seeds_together is None:
        args.seeds_together = args.launcher == "basic"
    if args.plot_only and args.override:
        parser.error("--override: has no effect with --plot-only (the figures are drawn from the existing tables)")
    return args


def prepare(figures: list[str], args: argparse.Namespace) -> Setup:
    """Compose every sweep with the overrides and validate every point; refuse unwritable output folders."""
    setup = Setup(args.profile, tuple(args.override), args.sweeps_dir)
    for setting, folder in (("--data-dir", args.data_dir), ("--figures-dir", args.figures_dir), ("--sweeps-dir", args.sweeps_dir)):
        if folder is not None:
            check_writable_dir(folder, setting)
    if args.plot_only:
        return setup
    if not args.skip_train and args.launcher != "basic":
        try:  # a launcher whose plugin is not installed
            compose("train", [f"hydra/launcher={args.launcher}"], with_hydra=True)
        except Exception as err:
            raise UserError(f"--launcher {args.launcher}: {first_lines(err)}") from None
    for name in figures:
        for item in registry()[name].inputs:
            setup.sweep(item.experiment).check()
    return setup


def publish(staged: Path, folder: Path) -> list[Path]:
    """Copy every file of ``staged`` into ``folder``, each atomically."""
    out = []
    for file in sorted(staged.iterdir()) if staged.is_dir() else []:
        if file.is_file() and not file.name.startswith("."):
            atomic_write_bytes(folder / file.name, file.read_bytes())
            out.append(folder / file.name)
    return out


def draw(fig: Figure, tables: dict[str, list[dict]] | None, data_dir: Path, figures_dir: Path) -> list[Path]:
    """Write the tables (None: keep the existing ones) and draw the figure in a temporary folder;
    move the files into place only when both worked, so a failure leaves the previous ones."""
    with tempfile.TemporaryDirectory(prefix="toybigram-figure-") as tmp:
        staged_data, staged_figures = Path(tmp, "data"), Path(tmp, "figures")
        staged_data.mkdir()
        for table, rows in (tables or {}).items():
            write_table(staged_data / f"{table}.csv", rows)
        fig.draw(staged_data if tables is not None else data_dir, staged_figures)
        return publish(staged_data, data_dir) + publish(staged_figures, figures_dir)


@dataclass
class Progress:
    """What this invocation has already done, so that a sweep shared by figures runs once."""

    pool: SweepPool | None = None  # the sweeps training in the background (None: --skip-train, --plot-only)
    analysed: set = field(default_factory=set)


def post_run(setup: Setup, item: Input, progress: Progress) -> None:
    """Write <run>/experiments/<result>.json for every usable run of the input's sweep (once per invocation)."""
    sweep = setup.sweep(item.experiment)
    key = (str(sweep.sweep_dir), item.result)
    if key in progress.analysed:
        return
    progress.analysed.add(key)
    collected = collect(sweep.sweep_dir, sweep.axes, sweep.name, expected=sweep.expected)
    start, cpu = time.perf_counter(), time.process_time()
    for run in collected.runs:
        write_json(run.path / RESULTS_DIR / f"{item.result}.json", item.analysis(run.path))
    log(f"[{sweep.name}] {item.result}: {len(collected.runs)} runs analysed in {time.perf_counter() - start:.0f} s "
        f"({time.process_time() - cpu:.0f} CPU s)")


def run_inputs(fig: Figure, setup: Setup, args: argparse.Namespace, progress: Progress) -> None:
    """Wait for the figure's sweeps (unless --skip-train), run its post-run analyses and builds."""
    for item in fig.inputs:
        if progress.pool is not None:
            progress.pool.wait(setup.sweep(item.experiment))
        if item.analysis is not None:
            post_run(setup, item, progress)
    for build in fig.builds:
        build.make(setup, log)


def make_figure(name: str, setup: Setup, args: argparse.Namespace, progress: Progress) -> str:
    """Sweeps, analyses, tables and figure of one figure; returns the runs left out (--allow-missing), or ''."""
    fig = registry()[name]
    tables, left_out = None, ""
    if fig.from_sweeps and not args.plot_only:
        run_inputs(fig, setup, args, progress)
        tables, left_out = figure_tables(fig, setup, args.allow_missing)
    paths = draw(fig, tables, args.data_dir, args.figures_dir)
    log(f"[{name}] wrote {', '.join(p.name for p in paths)}")
    return left_out


def final_line(failures: dict[str, str], left_out: dict[str, str], done: list[str], seconds: float) -> str:
    """The last line: 'all done', what --allow-missing left out, or which figures failed and why."""
    if failures:
        ok = f"; done: {', '.join(done)}" if done else ""
        return "failed: " + "; ".join(f"{name} ({why})" for name, why in failures.items()) + ok
    if left_out:
        return f"done in {seconds:.0f} s, runs left out (--allow-missing): " + "; ".join(f"{n} ({why})" for n, why in left_out.items())
    return f"all done in {seconds:.0f} s"


def start_training(figures: list[str], setup: Setup, args: argparse.Namespace) -> SweepPool:
    """Start every sweep the figures need in the background; this process's own torch work
    (analyses, builds) runs on one thread beside them."""
    launcher = None if args.launcher == "basic" else args.launcher
    pool = SweepPool(launcher, args.jobs, log, args.seeds_together)
    pool.submit([setup.sweep(item.experiment) for name in figures for item in registry()[name].inputs])
    apply_threads(1)  # more threads beside the training processes spin on busy cores (3x the CPU time, no faster)
    return pool


def next_figure(waiting: list[str], setup: Setup, pool: SweepPool | None) -> str:
    """The first figure whose sweeps have all ended, else the first in order: the analyses of
    the sweeps done go on while the longest sweep still trains."""
    if pool is not None:
        for name in waiting:
            if pool.have_ended([setup.sweep(item.experiment) for item in registry()[name].inputs]):
                return name
    return waiting[0]


def make_figures(figures: list[str], setup: Setup, args: argparse.Namespace, progress: Progress, record: tuple) -> None:
    """Each figure in turn, as soon as its sweeps have ended; a failure is recorded and the others go on."""
    failures, left_out, timings, done = record
    waiting = list(figures)
    while waiting:
        name = next_figure(waiting, setup, progress.pool)
        waiting.remove(name)
        start, cpu = time.perf_counter(), cpu_seconds()
        try:
            missing = make_figure(name, setup, args, progress)
            done.append(name)
            if missing:
                left_out[name] = missing
        except UserError as err:  # failed or missing runs, a missing table: the previous files stay
            failures[name] = str(err)
        except Exception as err:  # a figure script that cannot draw: report it, go on with the others
            failures[name] = f"{type(err).__name__}: {err}"
        timings[name] = round(time.perf_counter() - start, 1)
        log(f"[{name}] {'failed' if name in failures else 'done'} in {timings[name]:.0f} s ({cpu_seconds() - cpu:.0f} CPU s)")


def main(argv=None) -> int:
    args = parse_args(argv)
    from_sweeps = [key for key, fig in registry().items() if fig.from_sweeps]
    figures = from_sweeps if "all" in args.figure else list(dict.fromkeys(args.figure))
    try:
        setup = prepare(figures, args)
    except UserError as err:
        exit_with(err)
    progress, failures, left_out, timings, done = Progress(), {}, {}, {}, []
    total = time.perf_counter()
    if not (args.skip_train or args.plot_only):
        progress.pool = start_training(figures, setup, args)
    try:
        make_figures(figures, setup, args, progress, (failures, left_out, timings, done))
    finally:  # an interrupted or crashed runner leaves no multirun behind
        if progress.pool is not None:
            progress.pool.stop()
    timings = {**{name: timings[name] for name in figures if name in timings}, "total": round(time.perf_counter() - total, 1)}
    complete = not failures and not left_out and not args.plot_only and not args.skip_train
    if complete and set(figures) >= set(from_sweeps):
        write_json(args.data_dir / f"runtimes_{args.profile}.json", {
            "seconds": timings, "cpu_seconds": round(cpu_seconds(), 1), "launcher": args.launcher, "jobs": args.jobs,
            "seeds_together": args.seeds_together, "cpu_count": os.cpu_count()})
    line = final_line(failures, left_out, done, timings["total"])
    print(line, file=sys.stderr if failures else sys.stdout, flush=True)
    return 2 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # tables and figures not yet moved into place stay as they were
        exit_with("interrupted", INTERRUPT_EXIT_CODE)
