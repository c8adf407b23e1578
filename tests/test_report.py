"""python -m toybigram.report: one self-contained HTML file per run or sweep, whatever state the runs are in."""
import base64
import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from conftest import TINY
from toybigram.cli import compose
from toybigram.report.build import write_report
from toybigram.report.__main__ import main
from toybigram.report.figures import ALL_FIGURES, THEORY_FIGURES, fmt
from toybigram.report.single import rebuild_task
from toybigram.train import train

REPO = Path(__file__).resolve().parents[1]
IMAGE = re.compile(r'<img src="([^"]+)"')


def report_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toybigram.report", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def embedded_images(html: str) -> list[Image.Image]:
    """Every <img> of the page, decoded; fails on anything that is not an inline PNG."""
    images = []
    for source in IMAGE.findall(html):
        assert source.startswith("data:image/png;base64,"), source[:60]
        images.append(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))))
    return images


def figure_cell(html: str, name: str) -> str:
    """The value printed in the figure table row named ``name``."""
    match = re.search(rf'<td>{re.escape(name)}</td><td class="num">([^<]*)</td>', html)
    assert match, f"no row for {name}"
    return match.group(1)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    train(compose("train", [*TINY, "train.steps=30", "train.theory=true", "threads=1"]), run_dir)
    return run_dir


def test_report_holds_every_section_and_the_summary_numbers(finished_run):
    done = report_cli(finished_run)
    assert done.returncode == 0, done.stderr
    html = (finished_run / "report.html").read_text()
    summary = json.loads((finished_run / "summary.json").read_text())
    for anchor in ("run", "figures", "curves", "attention", "theory", "settings"):
        assert f'<section id="{anchor}">' in html
    assert not re.search(r"<script|<link|src=\"http|url\(", html)  # self-contained: nothing fetched
    images = embedded_images(html)
    assert len(images) == 3 + len(list((finished_run / "theory").glob("*.png")))  # curves, maps, by position, theory
    assert all(image.width > 300 and image.height > 200 for image in images)
    for figure in ALL_FIGURES:
        assert figure_cell(html, figure.name) == fmt(summary[figure.key]), figure.key
    for figure in THEORY_FIGURES:
        assert figure_cell(html, figure.name) == fmt(summary["theory"][figure.key]), figure.key
    assert 'class="status finished"' in html and "<code>model.d_model</code></td><td>64" in html
    assert f"chance 1/N = {1 / 16:.3f}" in html
    task = rebuild_task(summary["config"])  # the held-out batch the run evaluated on, drawn again
    entropy = task.chain.conditional_entropy()[task.held_out.inputs.numpy()]
    assert entropy[task.held_out.labels.numpy() == 0].mean() == pytest.approx(summary["bayes_loss_global"], abs=1e-5)


def test_sweep_report_gives_mean_and_t_interval_over_finished_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    cfg = compose("train", [*TINY, "train.steps=20", "train.instances=3", "train.instance_lrs=[0.01,0.01,1e30]", "threads=1"])
    train(cfg, sweep)
    done = report_cli(sweep, "--out", tmp_path / "sweep.html")
    assert done.returncode == 0, done.stderr
    html = (tmp_path / "sweep.html").read_text()
    values = [json.loads((sweep / f"instance{i}" / "summary.json").read_text())["acc_incontext"] for i in (0, 1)]
    mean = sum(values) / 2
    spread = abs(values[0] - values[1]) / math.sqrt(2)  # standard deviation of two values
    half = stats.t.ppf(0.975, 1) * spread / math.sqrt(2)
    row = re.search(r"<td>in-context accuracy</td>((?:<td[^>]*>[^<]*</td>){3})", html).group(1)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", row) == [fmt(mean), f"[{fmt(mean - half)}, {fmt(mean + half)}]", "2"]
    assert "n=2" in html and "Group 2: optim.lr=1e+30" in html
    for i in range(3):  # each run's own report, linked relative to the sweep's report
        assert (sweep / f"instance{i}" / "report.html").is_file()
        assert f'href="sweep/instance{i}/report.html"' in html
    assert "diverged at step" in (sweep / "instance2" / "report.html").read_text()
    assert len(embedded_images(html)) == 1  # the mean curves of the group with finished runs


def test_unfinished_and_failed_runs_get_a_report_that_says_so(finished_run, tmp_path):
    interrupted = tmp_path / "interrupted"
    shutil.copytree(finished_run, interrupted, ignore=shutil.ignore_patterns("summary.json", "report.html"))
    html = write_report(interrupted).read_text()
    assert 'class="status interrupted"' in html and "its checkpoint is at step 30" in html
    assert figure_cell(html, "in-context accuracy") != "n/a"  # from the last metrics.jsonl row
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "summary.json").write_text(json.dumps({"status": "failed", "error": "data.vocab_size: must be at least 2, got 1",
                                                     "config": {"seed": 0, "data": {"vocab_size": 1}}}))
    html = write_report(failed).read_text()
    assert 'class="status failed"' in html and "data.vocab_size: must be at least 2, got 1" in html
    assert '<section id="attention">' not in html


def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys):
    done = report_cli(tmp_path / "missing")
    assert done.returncode == 2 and done.stderr.startswith("error: run_dir:") and done.stderr.count("\n") == 1
    assert not (tmp_path / "missing").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, reason in (([str(empty)], "holds no run"), ([str(empty), "--bogus"], "unrecognized arguments")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith("error: ") and reason in err and err.count("\n") == 1
    assert list(empty.iterdir()) == []


def test_report_renders_in_chromium(finished_run, tmp_path):
    """The page as a browser draws it: the attention maps' colours must show up (images decoded and laid out)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    report = finished_run / "report.html"
    if not report.exists():
        write_report(finished_run)
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
                    "--window-size=1400,6000", report.absolute().as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB").resize((350, 1500))).reshape(-1, 3).astype(int)
    r, g, b = pixels.T
    viridis_dark = ((r < 90) & (g < 40) & (b > 60) & (b < 110)).sum()  # attention near 0 in the maps
    assert viridis_dark > 2000
    assert (pixels != 255).any(axis=1).mean() > 0.2  # not a blank page
