"""Choose between a run's report and a sweep's, and write it atomically."""
from __future__ import annotations

import os
from pathlib import Path

from toybigram.errors import UserError
from toybigram.rundir import check_writable_dir
from toybigram.report.runs import find_runs, is_run_dir, load_run_files
from toybigram.report.single import single_page
from toybigram.report.sweep import sweep_page
from toybigram.runio import atomic_write_text

REPORT_FILE = "report.html"


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, run_reports: bool = True) -> Path:
    """Write the report of a run or sweep directory (default ``<run_dir>/report.html``); returns its path.

    For a sweep, ``run_reports`` also writes each run's own report.html, which the sweep's
    report links. Raises UserError when ``run_dir`` holds no run or ``out`` is a directory.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"run_dir: no run directory at {root}")
    out = Path(out) if out is not None else root / REPORT_FILE
    if out.is_dir():
        raise UserError(f"--out: {out} is a directory; give a file name such as {out / REPORT_FILE}")
    check_writable_dir(out.parent, "--out")
    if is_run_dir(root):
        atomic_write_text(out, single_page(load_run_files(root)))
        return out
    paths = find_runs(root)
    if not paths:
        raise UserError(f"run_dir: {root} holds no run (no summary.json, metrics.jsonl or checkpoint.pt in it or its sub-folders)")
    runs = [load_run_files(path) for path in paths]
    links = {}
    for run in runs:
        report = run.path / REPORT_FILE
        if run_reports:
            atomic_write_text(report, single_page(run))
        if report.is_file():
            links[run.path] = Path(os.path.relpath(report, out.absolute().parent)).as_posix()
    atomic_write_text(out, sweep_page(root, runs, links))
    return out
