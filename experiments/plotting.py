"""Drawing helpers shared by the figures: one style, confidence bands, labelled colorbars, the caption
line saying which runs made a figure, PNG + PDF written atomically.

A figure's plot reads only its tables (experiments.tables.read_table); it never trains or loads a model.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.tables import read_table  # noqa: E402
from toybigram.runio import atomic_write_bytes  # noqa: E402

__all__ = ["UNIT", "band", "caption", "colorbar", "finish", "finite", "plt", "run_caption", "save", "seeds_note"]

# One style for every figure: text readable at 100% zoom in a PNG of 150 dpi.
STYLE = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 8.5, "legend.framealpha": 0.85, "figure.titlesize": 11, "axes.titlepad": 5,
         "lines.linewidth": 1.5, "savefig.facecolor": "white"}
plt.rcParams.update(STYLE)
CAPTION_SIZE = 8.5
UNIT = (0.0, 1.0)  # the range of recalls, accuracies, shares and attention weights

# The columns of a figure's runs table (experiments.figure.runs_table) in the order the caption says them.
SOURCE_NAMES = {"dirichlet": "synthetic chain", "shakespeare": "Shakespeare bigrams"}
CAPTION_FORMATS = (("source", "{}"), ("N", "N={}"), ("d", "d={}"), ("T", "T={}"), ("pos", "{}"), ("layers", "{} layers"),
                   ("freeze", "freeze_until {}"), ("steps", "{} steps"), ("seeds", "{} seeds"))


def finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def band(ax, x, rows, key, label=None, color=None, ls="-", limits: tuple[float, float] | None = None):
    """Mean line with its 95% confidence band (over seeds) from <key>_mean / <key>_ci columns;
    ``limits``: the range of a bounded quantity, to which the band is clipped."""
    mean = [r[f"{key}_mean"] if finite(r[f"{key}_mean"]) else math.nan for r in rows]
    ci = [r[f"{key}_ci"] if finite(r[f"{key}_ci"]) else 0.0 for r in rows]
    low, high = [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)]
    if limits is not None:
        low, high = [max(v, limits[0]) for v in low], [min(v, limits[1]) for v in high]
    (line,) = ax.plot(x, mean, label=label, color=color, ls=ls)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, lw=0)
    return line


def seeds_note(rows: list[dict], key: str) -> str:
    """'n=3 seeds' ('n=1 seed'), or 'n=2-3 seeds' when some points have fewer usable seeds."""
    ns = [r[f"{key}_n"] for r in rows if finite(r.get(f"{key}_n"))]
    if not ns:
        return ""
    return f"n={min(ns)}-{max(ns)} seeds" if min(ns) != max(ns) else f"n={ns[0]} seed{'s' if ns[0] != 1 else ''}"


def colorbar(fig, image, ax, label: str, **kwargs):
    """A colorbar that says what its colour means."""
    bar = fig.colorbar(image, ax=ax, **kwargs)
    bar.set_label(label)
    return bar


def _describe(row: dict, keys: list[str]) -> str:
    parts = []
    for key, form in CAPTION_FORMATS:
        value = row.get(key)
        if key in keys and value not in (None, ""):
            value = SOURCE_NAMES.get(value, value) if key == "source" else value
            parts.append(("1 seed" if value == 1 else form.format(value)) if key == "seeds" else form.format(value))
    return ", ".join(parts)


def caption_text(rows: list[dict], note: str = "") -> str:
    """'quick profile: synthetic chain, N=16, d=64, T=128, 300 steps, 3 seeds. Note' from a runs table:
    the settings all inputs share first, then what each input has of its own."""
    if not rows:
        return note
    keys = [k for k, _ in CAPTION_FORMATS]
    shared = [k for k in keys if len({str(r.get(k)) for r in rows}) == 1]
    text = f"{rows[0]['profile']} profile: {_describe(rows[0], shared)}"
    own = [(r["input"], _describe(r, [k for k in keys if k not in shared])) for r in rows] if len(rows) > 1 else []
    text += "".join(f"; {name}: {what}" for name, what in own if what)
    return text + (f". {note[:1].upper()}{note[1:]}" if note else "")


def run_caption(data: Path, name: str, note: str = "") -> str:
    """The caption of figure ``name`` from its runs table <data>/<name>_runs.csv (experiments.figure.runs_table)."""
    return caption_text(read_table(data, f"{name}_runs"), note)


def caption(fig, text: str, lines: int = 2, layout: bool = True) -> None:
    """The caption line at the bottom of the figure; with ``layout`` the axes are laid out above it
    (room for ``lines`` lines of text), without it the figure's own layout must leave that room."""
    if layout:
        height = (lines * CAPTION_SIZE * 1.45 + 6) / 72 / fig.get_figheight()
        fig.tight_layout(rect=(0, height, 1, 1))
    fig.text(0.01, 0.006, text, fontsize=CAPTION_SIZE, ha="left", va="bottom", wrap=True, color="0.2")


def finish(fig, data: Path, name: str, note: str = "", lines: int = 2):
    """Lay the figure out with its caption (from its runs table) and return it."""
    caption(fig, run_caption(data, name, note), lines)
    return fig


def save(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Write <out_dir>/<name>.png (150 dpi) and .pdf (no creation date, so a redraw gives the same bytes); returns both paths."""
    paths = []
    for fmt in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        path = Path(out_dir) / f"{name}.{fmt}"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths
