"""Regenerate paper figures: sweeps -> post-run analysis -> tables -> PNG and PDF.

    python experiments/run.py all --profile quick               # `make figures`: every figure, ~3 min on 2 idle CPU cores
    python experiments/run.py fig3 --profile paper --launcher slurm_gpu   # the same sweeps on a Slurm cluster
    python experiments/run.py fig3 --seeds-together             # each point's seeds trained together in one job (GPU)
    python experiments/run.py fig4 --skip-train                 # re-analyse existing runs, re-aggregate, re-plot
    python experiments/run.py fig1 --plot-only                  # only redraw from paper_figures/data/

Steps per figure: (1) each experiment config it needs runs as a Hydra multirun
(`python -m toybigram.train -m +experiment=<name>`) into its sweep directory, emptied first; a
sweep shared by several figures runs once per invocation; (2) analyses that need a model write
<run>/experiments/<result>.json; (3) experiments/aggregate.py writes paper_figures/data/*.csv;
(4) paper_figures/<figure>.py draws paper_figures/<figure>.png and .pdf from those tables.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.aggregate import RESULTS_DIR, collect  # noqa: E402
from experiments.figures import DATA_DIR, FIGURES, WIDTHS, aggregate_figure, width_dir  # noqa: E402
from experiments.sweeps import PROFILES, Sweep, experiment_name, launch  # noqa: E402
from toybigram.errors import UserError  # noqa: E402
from toybigram.runio import write_json  # noqa: E402

LAUNCHERS = ("joblib", "basic", "submitit_local", "submitit_slurm", "slurm_cpu", "slurm_gpu")


def log(msg: str) -> None:
    print(msg, flush=True)


def run_script(script: Path, data_dir: Path = DATA_DIR, out_dir: Path | None = None) -> list[Path]:
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--data", str(data_dir), "--out", str(out_dir or script.parent)])


def post_run(sweep: Sweep, result: str, fn, done: set) -> None:
    """Write <run>/experiments/<result>.json for every finished run of the sweep (once per invocation)."""
    key = (str(sweep.sweep_dir), result)
    if key in done:
        return
    done.add(key)
    collected = collect(sweep.sweep_dir, sweep.axes, sweep.name)
    start = time.perf_counter()
    for run in collected.runs:
        write_json(run.path / RESULTS_DIR / f"{result}.json", fn(run.path))
    log(f"[{sweep.name}] {result}: {len(collected.runs)} runs analysed in {time.perf_counter() - start:.0f} s")


def widths(profile: str) -> None:
    from experiments.analysis import width_agreement

    w = WIDTHS[profile]
    start = time.perf_counter()
    folder = width_dir(profile)
    for d in w["d"]:
        for seed in w["seeds"]:
            write_json(folder / f"d{d}_s{seed}.json", width_agreement(d, w["N"], w["T"], seed))
    log(f"[fig5_width] {len(w['d']) * len(w['seeds'])} ideal builds in {time.perf_counter() - start:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", choices=[*FIGURES, "all"], nargs="+")
    parser.add_argument("--profile", default="quick", choices=PROFILES)
    parser.add_argument("--launcher", default="joblib", choices=LAUNCHERS,
                        help="Hydra launcher for the sweeps: joblib (local, parallel), basic (one after another), "
                             "submitit_local, submitit_slurm or the presets slurm_cpu / slurm_gpu (conf/hydra/launcher/)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs of the joblib launcher")
    parser.add_argument("--seeds-together", action="store_true",
                        help="train each point's seeds together in one job (train.instances); same runs, fewer processes")
    parser.add_argument("--skip-train", action="store_true", help="use the runs already in the sweep directories")
    parser.add_argument("--plot-only", action="store_true", help="only draw the figures from the existing tables")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for every sweep (repeatable)")
    args = parser.parse_args(argv)
    figures = list(FIGURES) if "all" in args.figure else list(dict.fromkeys(args.figure))
    os.environ.setdefault("CI", "true")
    trained, analysed, failures, timings = set(), set(), [], {}
    total = time.perf_counter()
    for name in figures:
        fig, start = FIGURES[name], time.perf_counter()
        try:
            if not args.plot_only:
                for base, result in fig.experiments:
                    sweep = Sweep.load(experiment_name(base, args.profile), tuple(args.override))
                    if not args.skip_train and str(sweep.sweep_dir) not in trained:
                        trained.add(str(sweep.sweep_dir))
                        launcher = None if args.launcher == "basic" else args.launcher
                        launch(sweep, launcher, args.jobs, tuple(args.override), log=log, seeds_together=args.seeds_together)
                    if result is not None:
                        post_run(sweep, result, fig.post[result], analysed)
                if name == "fig5":
                    widths(args.profile)
                paths = aggregate_figure(name, args.profile)
                log(f"[{name}] tables: {', '.join(p.name for p in paths)}")
            outputs = run_script(fig.script)
            log(f"[{name}] figure: {', '.join(str(Path(p).name) for p in outputs)}")
        except UserError as err:
            failures.append(name)
            log(f"error: {name}: {err}")
        except Exception as err:  # a figure script that cannot draw: report it, go on with the others
            failures.append(name)
            log(f"error: {name}: {type(err).__name__}: {err}")
        timings[name] = round(time.perf_counter() - start, 1)
        log(f"[{name}] done in {timings[name]:.0f} s")
    timings["total"] = round(time.perf_counter() - total, 1)
    if not args.plot_only and args.skip_train is False and set(figures) == set(FIGURES):
        write_json(DATA_DIR / f"runtimes_{args.profile}.json", {"seconds": timings, "launcher": args.launcher, "jobs": args.jobs,
                                                                "seeds_together": args.seeds_together,
                                                                "cpu_count": os.cpu_count()})
    log(f"all done in {timings['total']:.0f} s" + (f"; failed: {', '.join(failures)}" if failures else ""))
    return 2 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
