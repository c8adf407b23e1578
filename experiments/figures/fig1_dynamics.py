"""Figure 1: training dynamics. Loss by label class against the Bayes floors; the memory-recall
probes over steps; the freeze_until variant (top-down order); previous-token recall, first 64
positions against all. Tables fig1_dynamics (per step) and fig1_order (the step each probe rises).
"""
from __future__ import annotations

import math
from pathlib import Path

from experiments.figure import Figure, Input
from experiments.plotting import UNIT, band, finish, finite, plt, seeds_note
from experiments.runs import Collected
from experiments.tables import read_table, summarise

METRICS = ["loss_global", "loss_first", "loss_incontext", "bayes_loss_global", "bayes_loss_first", "bayes_loss_incontext",
           "acc_incontext", "recall_prev_token", "recall_prev_token_first64", "recall_induction_key", "recall_copy", "bigram_kl"]
# The recall probes of W_O^2, W_K^2 and W_K^1: the matrix each reads, and its label in the plot.
PROBE_MATRIX = {"recall_copy": "W_O2", "recall_induction_key": "W_K2", "recall_prev_token": "W_K1"}
PROBE_LABEL = {"recall_copy": "copy W_O^2", "recall_induction_key": "induction key W_K^2", "recall_prev_token": "previous token W_K^1"}
CLASSES = [("global", "global (label 0)"), ("first", "first occurrence (1)"), ("incontext", "in-context (>= 2)")]
NON_NEGATIVE = (0.0, math.inf)  # losses and KL divergences
VARIANTS = (("free", "fig1_dynamics"), ("freeze", "fig1_freeze"))  # variant -> experiment config


def rise_step(metrics: list[dict], probe: str) -> float:
    """First evaluation step at which a probe reaches half its final value; inf if it never does."""
    final = metrics[-1].get(probe) or 0.0
    return float(next((m["step"] for m in metrics if (m.get(probe) or 0.0) >= 0.5 * final and final > 0), math.inf))


def tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    rows, order = [], []
    for variant, experiment in VARIANTS:
        for run in c[experiment].runs:
            metrics = run.metrics()
            for m in metrics:
                rows.append({"variant": variant, "step": m["step"], "seed": run.seed, **{k: m.get(k) for k in METRICS}})
            release = run.config.get("train", {}).get("freeze_until") or {}
            for probe, matrix in PROBE_MATRIX.items():
                order.append({"variant": variant, "probe": probe, "matrix": matrix, "seed": run.seed,
                              "release_step": float(release.get(matrix, 0)), "rise_step": rise_step(metrics, probe)})
    return {"fig1_dynamics": summarise(rows, ["variant", "step"], METRICS),
            "fig1_order": summarise(order, ["variant", "probe", "matrix"], ["release_step", "rise_step"])}


def _probes(ax, rows, title, releases=None):
    """The three recall probes (left axis, in [0, 1]) and the bigram KL (right axis) over steps; one legend for both."""
    steps = [r["step"] for r in rows]
    lines = [band(ax, steps, rows, key, label=label, color=f"C{i}", limits=UNIT) for i, (key, label) in enumerate(PROBE_LABEL.items())]
    ax2 = ax.twinx()
    lines.append(band(ax2, steps, rows, "bigram_kl", label="bigram KL (right axis)", color="C3", ls="--", limits=NON_NEGATIVE))
    ax2.set_ylabel("bigram KL to the chain (nats)", color="C3")
    for key, step in (releases or {}).items():
        if step > 0:
            ax.axvline(step, color="0.35", ls="--", lw=0.9)
            ax.text(step, 0.45, f"{PROBE_LABEL[key].split()[-1]} released ", fontsize=8, color="0.25", rotation=90, ha="right", va="center")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("recall")
    ax.set_title(title)
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")


def _order(order: list[dict], variant: str) -> str:
    """'W_O2 @20 < W_K2 @33 < W_K1 @100': the mean step at which each probe of a variant reaches half its final value."""
    rows = sorted((r for r in order if r["variant"] == variant and finite(r["rise_step_mean"])), key=lambda r: r["rise_step_mean"])
    return " < ".join(f"{r['matrix']} @{r['rise_step_mean']:.0f}" for r in rows)


def _losses(ax, free):
    steps = [r["step"] for r in free]
    for i, (cls, label) in enumerate(CLASSES):
        band(ax, steps, free, f"loss_{cls}", label=label, color=f"C{i}", limits=NON_NEGATIVE)
        ax.plot(steps, [r[f"bayes_loss_{cls}_mean"] for r in free], color=f"C{i}", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats); dotted: Bayes floor")
    ax.set_title(f"(a) loss by label class ({seeds_note(free, 'loss_global')})")
    ax.legend()


def _first_positions(ax, free, frozen):
    for variant, data, ls in (("free", free, "-"), ("freeze", frozen, "--")):
        s = [r["step"] for r in data]
        band(ax, s, data, "recall_prev_token_first64", label=f"first 64 positions ({variant})", color="C0", ls=ls, limits=UNIT)
        band(ax, s, data, "recall_prev_token", label=f"all positions ({variant})", color="C1", ls=ls, limits=UNIT)
    ax.set_xlabel("step")
    ax.set_ylabel("previous-token recall")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("(d) previous-token memory: early positions are stored first")
    ax.legend()


def plot(data: Path):
    rows = read_table(data, "fig1_dynamics")
    order = read_table(data, "fig1_order")
    free = sorted((r for r in rows if r["variant"] == "free"), key=lambda r: r["step"])
    frozen = sorted((r for r in rows if r["variant"] == "freeze"), key=lambda r: r["step"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    _losses(axes[0, 0], free)
    _probes(axes[0, 1], free, "(b) memory-recall probes, free training\nstep at half of final recall: " + _order(order, "free"))
    rise = {r["probe"]: r for r in order if r["variant"] == "freeze"}
    releases = {p: rise[p]["release_step_mean"] for p in PROBE_LABEL if p in rise and finite(rise[p]["release_step_mean"])}
    _probes(axes[1, 0], frozen, "(c) freeze_until variant: W_K^2, then W_K^1 released late\nstep at half of final recall: "
            + _order(order, "freeze"), releases)
    _first_positions(axes[1, 1], free, frozen)
    return finish(fig, data, FIGURE.name, "mean over seeds; bands: 95% t-interval over seeds, clipped to the quantity's range")


FIGURE = Figure("fig1", "fig1_dynamics", plot, inputs=(Input("fig1_dynamics"), Input("fig1_freeze")), tables=tables)
