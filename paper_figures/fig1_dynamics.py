"""Figure 1: training dynamics. Loss by label class against the Bayes floors; the four memory-recall
probes over steps; the freeze_until variant (top-down order); previous-token recall, first 64
positions against all. Reads data/fig1_dynamics.csv and data/fig1_order.csv.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import band, finite, parse, plt, read_table, save, seeds_note  # noqa: E402

NAME = "fig1_dynamics"
CLASSES = [("global", "global (label 0)"), ("first", "first occurrence (1)"), ("incontext", "in-context (>= 2)")]
PROBES = [("recall_copy", "copy W_O^2"), ("recall_induction_key", "induction key W_K^2"), ("recall_prev_token", "previous token W_K^1")]


def _probes(ax, rows, title, releases=None):
    steps = [r["step"] for r in rows]
    for i, (key, label) in enumerate(PROBES):
        band(ax, steps, rows, key, label=label, color=f"C{i}")
    ax2 = ax.twinx()
    band(ax2, steps, rows, "bigram_kl", label="bigram KL (right)", color="C3", ls="--")
    ax2.set_ylabel("bigram KL (nats)", color="C3")
    names = {"recall_copy": "W_O^2", "recall_induction_key": "W_K^2", "recall_prev_token": "W_K^1"}
    for key, step in (releases or {}).items():
        if step > 0:
            ax.axvline(step, color="0.35", ls="--", lw=0.9)
            ax.text(step, 0.45, f"{names[key]} released ", fontsize=7, color="0.25", rotation=90, ha="right", va="center")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("recall")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="center right")


def main(argv=None):
    args = parse(argv, __doc__)
    rows = read_table(args.data, "fig1_dynamics")
    order = read_table(args.data, "fig1_order")
    free = sorted((r for r in rows if r["variant"] == "free"), key=lambda r: r["step"])
    frozen = sorted((r for r in rows if r["variant"] == "freeze"), key=lambda r: r["step"])
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))

    ax = axes[0, 0]
    steps = [r["step"] for r in free]
    for i, (cls, label) in enumerate(CLASSES):
        band(ax, steps, free, f"loss_{cls}", label=label, color=f"C{i}")
        ax.plot(steps, [r[f"bayes_loss_{cls}_mean"] for r in free], color=f"C{i}", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats); dotted: Bayes floor")
    ax.set_title(f"(a) loss by label class ({seeds_note(free, 'loss_global')}, 95% CI)", fontsize=9)
    ax.legend(fontsize=7)

    _probes(axes[0, 1], free, "(b) memory-recall probes")
    rise = {r["probe"]: r for r in order if r["variant"] == "freeze"}
    releases = {p: rise[p]["release_step_mean"] for p, _ in PROBES if p in rise and finite(rise[p]["release_step_mean"])}
    order_text = " < ".join(f"{r['matrix']} @{r['rise_step_mean']:.0f}" for r in sorted(
        (r for r in order if r["variant"] == "free" and finite(r["rise_step_mean"])), key=lambda r: r["rise_step_mean"]))
    _probes(axes[1, 0], frozen, "(c) freeze_until variant\nfree run, step at half of final recall: " + order_text, releases)

    ax = axes[1, 1]
    for variant, data, ls in (("free", free, "-"), ("freeze", frozen, "--")):
        s = [r["step"] for r in data]
        band(ax, s, data, "recall_prev_token_first64", label=f"first 64 positions ({variant})", color="C0", ls=ls)
        band(ax, s, data, "recall_prev_token", label=f"all positions ({variant})", color="C1", ls=ls)
    ax.set_xlabel("step")
    ax.set_ylabel("previous-token recall")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("(d) previous-token memory: early positions are stored first", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, args.out, NAME)


if __name__ == "__main__":
    main()
