"""Drawing helpers shared by the figures: confidence bands, seed counts, PNG + PDF written atomically.

A figure's plot reads only its tables (experiments.tables.read_table); it never trains or loads a model.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from toybigram.runio import atomic_write_bytes  # noqa: E402

__all__ = ["band", "finite", "plt", "save", "seeds_note"]


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
    """'n=3 seeds', or 'n=2-3 seeds' when some points have fewer usable seeds."""
    ns = [r[f"{key}_n"] for r in rows if finite(r.get(f"{key}_n"))]
    return f"n={min(ns)}-{max(ns)} seeds" if ns and min(ns) != max(ns) else (f"n={ns[0]} seeds" if ns else "")


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
