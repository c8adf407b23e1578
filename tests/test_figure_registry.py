"""A figure is one module: a module defining FIGURE is found by the registry and built by experiments/run.py."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from experiments.figure import registry
from experiments.figures import FIGURE_PATH_VARIABLE
from experiments.figures.fig5_theory import WIDTHS
from experiments.sweeps import ROOT, Setup

# A figure whose input is a build (no sweep): three points written to a file, one table, one line plot.
DEMO = '''
    import json

    from experiments.figure import Build, Figure
    from experiments.plotting import plt
    from experiments.runs import Collected, Run
    from experiments.tables import read_table

    NAME = "fig99_demo"


    def make(setup, log):
        setup.build_dir(NAME).mkdir(parents=True, exist_ok=True)
        (setup.build_dir(NAME) / "points.json").write_text(json.dumps([[0, 0], [1, 1], [2, 4]]))


    def collect(setup):
        path = setup.build_dir(NAME) / "points.json"
        return Collected(NAME, runs=[Run("points", path, {}, {}, {}, json.loads(path.read_text()))])


    def tables(collected):
        return {NAME: [{"x": x, "y": y} for x, y in collected[NAME].runs[0].result]}


    def plot(data):
        rows = read_table(data, NAME)
        fig, ax = plt.subplots()
        ax.plot([r["x"] for r in rows], [r["y"] for r in rows])
        return fig


    FIGURE = Figure("fig99", NAME, plot, tables=tables, builds=(Build(NAME, make, collect),))
'''


def run_py(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "experiments/run.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_new_figure_module_is_registered_and_drawn_by_the_runner(tmp_path):
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "fig99_demo.py").write_text(textwrap.dedent(DEMO))
    data, figures, sweeps = tmp_path / "data", tmp_path / "png", tmp_path / "sweeps"
    env = {**os.environ, FIGURE_PATH_VARIABLE: str(folder)}
    proc = run_py("fig99", "--sweeps-dir", str(sweeps), "--data-dir", str(data), "--figures-dir", str(figures), env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[fig99] wrote fig99_demo.csv, fig99_demo_runs.csv, fig99_demo.pdf, fig99_demo.png" in proc.stdout
    assert (data / "fig99_demo.csv").read_text() == "x,y\n0,0\n1,1\n2,4\n"
    assert (data / "fig99_demo_runs.csv").read_text().splitlines()[1].startswith("fig99_demo,quick,1,1,builds,")
    assert (figures / "fig99_demo.png").read_bytes()[:4] == b"\x89PNG"
    assert (sweeps / "fig99_demo" / "points.json").is_file()


def test_an_unknown_figure_is_one_error_line():
    assert "fig99" not in registry()
    proc = run_py("fig99", "--plot-only")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: argument figure: invalid choice: 'fig99'") and len(proc.stderr.splitlines()) == 1


def test_the_smoke_profile_composes_and_validates_for_every_figure():
    """`experiments/run.py all --profile smoke` checks the pipeline: every sweep of every figure composes
    with the smoke sizes, every point validates, and it trains one or two seeds."""
    setup = Setup("smoke")
    experiments = {item.experiment for fig in registry().values() for item in fig.inputs}
    assert experiments == {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")} - {"base"}
    for name in sorted(experiments):
        sweep = setup.sweep(name)
        sweep.check()
        assert 1 <= len(sweep.axes["seed"]) <= 2 and sweep.sweep_dir.parts[-2:] == ("smoke", name)
    assert "smoke" in WIDTHS


def test_an_experiment_composes_with_the_smoke_profile_on_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "toybigram.train", "+experiment=fig7_vocab_length", "profile=smoke", "--cfg", "job"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "steps: 30" in proc.stdout and "d_model: 32" in proc.stdout
