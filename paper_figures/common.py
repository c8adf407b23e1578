"""Shared by the figure scripts: read an aggregated table, save PNG + PDF atomically.

Figure scripts only read tables in paper_figures/data/ (written by experiments/aggregate.py);
they never train or load a model.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


class MissingTable(FileNotFoundError):
    pass


def _value(text: str):
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() and text not in ("inf", "nan") else number


def read_table(data_dir: str | Path, name: str) -> list[dict]:
    path = Path(data_dir) / f"{name}.csv"
    if not path.is_file():
        raise MissingTable(f"no table {path}; run `python experiments/run.py <figure>` (or `make figures`) first")
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def column(rows: list[dict], key: str) -> list:
    return [r[key] for r in rows]


def finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def band(ax, x, rows, key, label=None, color=None, ls="-"):
    """Mean line with its 95% confidence band (over seeds) from <key>_mean / <key>_ci columns."""
    mean = [r[f"{key}_mean"] if finite(r[f"{key}_mean"]) else math.nan for r in rows]
    ci = [r[f"{key}_ci"] if finite(r[f"{key}_ci"]) else 0.0 for r in rows]
    (line,) = ax.plot(x, mean, label=label, color=color, ls=ls, lw=1.4)
    ax.fill_between(x, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], color=line.get_color(), alpha=0.2, lw=0)
    return line


def seeds_note(rows: list[dict], key: str) -> str:
    ns = [r[f"{key}_n"] for r in rows if finite(r.get(f"{key}_n"))]
    return f"n={min(ns)}-{max(ns)} seeds" if ns and min(ns) != max(ns) else (f"n={ns[0]} seeds" if ns else "")


def _atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so readers see the old file or the whole new one, with a plain file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Write <out_dir>/<name>.png (150 dpi) and .pdf; returns both paths."""
    fig.tight_layout()
    paths = []
    for fmt in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        path = Path(out_dir) / f"{name}.{fmt}"
        _atomic(path, buffer.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def parse(argv, doc: str):
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="folder of the aggregated tables")
    parser.add_argument("--out", default=str(HERE), help="folder for the PNG and PDF")
    return parser.parse_args(argv)
