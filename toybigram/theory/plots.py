"""Per-run theory plots (written beside theory.json): the model's centred logits against the
calculator's over every prompt family, and the hijack margin logit o - logit b* against the count c."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from toybigram.runio import atomic_write_bytes
from toybigram.theory.calculator import agreement

PLOT_FILES = ("logits_scatter.png", "hijack_margins.png")
# The font sizes of the paper figures (experiments/plotting.py STYLE), repeated so that a training run never imports the figure runner.
STYLE = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 8.5}
SCATTER_POINTS = 3000  # at most this many (calculator, model) pairs drawn; R^2 is over all of them


def write_plots(folder: Path, results: dict, pooled) -> list[str]:
    """The scatter of model against calculator logits (all families) and, when the hijack family ran,
    its margins against the count; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        _save(_logits_scatter(plt, pooled), folder / PLOT_FILES[0], plt)
        if "hijack" not in results:
            return [PLOT_FILES[0]]
        _save(_hijack_margins(plt, results["hijack"]), folder / PLOT_FILES[1], plt)
    return list(PLOT_FILES)


def _logits_scatter(plt, pooled):
    """Centred logits, model against calculator, on equal axes with y = x and the pooled R^2 in the title."""
    model = torch.cat([a for a, _ in pooled]).double()
    theory = torch.cat([b for _, b in pooled]).double()
    fit = agreement(model, theory)
    m = (model - model.mean(-1, keepdim=True)).flatten()
    t = (theory - theory.mean(-1, keepdim=True)).flatten()
    step = max(1, len(m) // SCATTER_POINTS)
    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    ax.scatter(t[::step], m[::step], s=4, alpha=0.3, lw=0, label=f"{len(m[::step])} of {len(m)} logits")
    lo, hi = min(t.min().item(), m.min().item()), max(t.max().item(), m.max().item())
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="y = x")
    ax.set_aspect("equal")
    ax.set_xlabel("calculator: centred logit")
    ax.set_ylabel("model: centred logit")
    ax.set_title(f"model vs calculator, all prompt families\ncentred-logit R² = {fit['r2_centered_logits']:.3f}, "
                 f"top-1 agreement {fit['top1_agreement']:.2f}")
    ax.legend(loc="upper left")
    return fig


def _hijack_margins(plt, hijack: dict):
    """Mean margin logit o - logit b* over the (q, o) pairs per count, with the pairs' range as a band."""
    counts = torch.as_tensor(hijack["counts"]).tolist()
    fig, ax = plt.subplots(figsize=(6, 4.6))
    for key, label, color, ls in (("margin_model", "model", "C0", "-"), ("margin_theory", "calculator", "C1", "--")):
        margins = torch.stack([torch.as_tensor(row[key], dtype=torch.float64) for row in hijack["pairs"]])
        ax.fill_between(counts, margins.min(0).values, margins.max(0).values, color=color, alpha=0.2, lw=0)
        ax.plot(counts, margins.mean(0), color=color, ls=ls, marker="o", ms=3, label=f"{label}: mean, band: min-max")
    ax.axhline(0, color="k", lw=0.8, label="tie: above, o beats b*")
    ax.set_xlabel(f"count c of the pair 'q o' in a prompt of length T={hijack['T']}")
    ax.set_ylabel("margin: logit o - logit b*")
    ax.set_title(f"knowledge hijack over {len(hijack['pairs'])} (q, o) pairs\n"
                 "b* = the bigram favourite after q; margin at the last position, mean over fillers")
    ax.legend()
    return fig


def _save(fig, path: Path, plt) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
