"""Figure 11: knowledge hijack on a real LM (top row) beside the toy (bottom row), with the same designed prompts.

Per row: the share of prompts where the in-context output o beats the model's own favourite b*(q) against the
count c of "q o" pairs, one line per prompt length T; the threshold c*(T) with query-bootstrap intervals (for
the toy also the law read from its weights; for the LM a prose filler and pairs held in one half of the prompt);
each curve's threshold against its pair's gap log p(b*|q) - log p(o|q); held-out flip accuracy of the threshold
law against rules with fewer numbers; and the hijack with the induction heads, or as many random heads, zeroed.
Reads data/fig11_hijack_lm_*.csv, written by ``python -m toybigram.hijack.export LM_RUN TOY_RUN``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.figure import Figure
from experiments.plotting import caption as place_caption, plt
from experiments.tables import read_table

NAME = "fig11_hijack_lm"
SIDES = {"lm": None, "toy": "toy"}
SERIES = {"random": ("random frequent words", "C0", "o-"), "prose": ("prose filler", "C1", "s-"),
          "law_from_weights": ("law read from the weights", "C3", "d--"),
          "early": ("pairs in the first half", "C2", "^"), "late": ("pairs in the second half", "C4", "v")}
RULES = {"first_sight": "o wins at first sight", "never": "b* always wins", "constant": "constant c*",
         "law_without_gap": "law, gap removed", "law_without_length": "law, T removed", "law": "law (gap, T)",
         "law_context_gap": "law, gap from c=0 prompt", "law_from_weights": "law read from weights"}
ABLATIONS = {"none": ("intact", "k"), "induction": ("induction heads zeroed", "C3"), "control": ("random other heads", "C7")}
BEYOND = "beyond grid"


def rows_of(table: list[dict], side: str, **match) -> list[dict]:
    return [r for r in table if r["side"] == side and all(r.get(k) == v for k, v in match.items())]


def draw_shares(ax, shares: list[dict], side: str) -> None:
    lengths = sorted({r["T"] for r in rows_of(shares, side, series="random")})
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(lengths)))
    for T, colour in zip(lengths, colours):
        rows = rows_of(shares, side, series="random", T=T)
        ax.plot([r["c"] for r in rows], [r["o_beats_b"] for r in rows], "o-", color=colour, ms=3, label=f"T={T}")
        law = rows_of(shares, side, series="law_from_weights", T=T)
        if law:
            ax.plot([r["c"] for r in law], [r["o_beats_b"] for r in law], "--", color=colour, lw=1)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("c, pairs 'q o' in the prompt")
    ax.set_ylabel("share of prompts: logit(o) > logit(b*)")
    note = " (dashed: law read from the weights)" if any(r["series"] == "law_from_weights" for r in rows_of(shares, side)) else ""
    ax.set_title(f"o overtakes the favourite{note}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=2)


def draw_thresholds(ax, thresholds: list[dict], side: str, top: float) -> None:
    for series, (label, colour, style) in SERIES.items():
        rows = rows_of(thresholds, side, series=series)
        if not rows:
            continue
        T = np.array([r["T"] for r in rows], dtype=float) * (1.04 if series in ("prose", "late") else 0.96 if series == "early" else 1)
        y = np.array([r["c_star"] if r["c_star"] is not None else top for r in rows], dtype=float)
        lo = np.array([r["lo"] if r["lo"] is not None else top for r in rows], dtype=float)
        hi = np.array([r["hi"] if r["hi"] is not None else top for r in rows], dtype=float)
        ax.errorbar(T, y, yerr=[np.maximum(y - lo, 0), np.maximum(hi - y, 0)], fmt=style, color=colour, ms=5, capsize=3, label=label)
    ax.axhline(top, color="0.7", lw=0.8, ls=":")
    ax.text(0.98, top, BEYOND, transform=ax.get_yaxis_transform(), fontsize=7, ha="right", va="bottom", color="0.4")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.3, top + 0.8)
    ax.set_xlabel("T, prompt length (tokens)")
    ax.set_ylabel("c*(T), median over (q, o) pairs")
    ax.set_title("threshold count (bars: 95% over queries)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")


def draw_gap(ax, curves: list[dict], side: str, top: float) -> None:
    lengths = sorted({r["T"] for r in rows_of(curves, side)})
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(lengths)))
    rng = np.random.default_rng(0)
    for T, colour in zip(lengths, colours):
        rows = rows_of(curves, side, T=T)
        y = np.array([r["c_star"] if r["c_star"] is not None else top for r in rows], dtype=float)
        ax.scatter([r["gap"] for r in rows], y + rng.uniform(-0.15, 0.15, len(y)), s=8, color=colour, alpha=0.7, label=f"T={T}")
    ax.axhline(top, color="0.7", lw=0.8, ls=":")
    ax.set_xlabel("gap log p(b*|q) - log p(o|q) (nats, the model's own bigram)")
    ax.set_ylabel("c* of one prompt series")
    ax.set_ylim(-0.5, top + 0.8)
    ax.set_title("threshold against the bigram gap", fontsize=10)
    ax.legend(fontsize=7, loc="center right")


def draw_rules(ax, rules: list[dict], side: str) -> None:
    rows = [r for name in RULES for r in rows_of(rules, side, rule=name)]
    y = np.arange(len(rows))
    colours = ["C3" if r["rule"].startswith("law") else "0.6" for r in rows]
    ax.barh(y, [r["accuracy_held_out"] for r in rows], color=colours)
    for i, r in enumerate(rows):
        ax.text(r["accuracy_held_out"] + 0.01, i, f"{r['accuracy_held_out']:.2f} ({r['numbers']} n.)", va="center", fontsize=7)
    ax.set_yticks(y, [RULES[r["rule"]] for r in rows], fontsize=8)
    ax.set_xlim(0, 1.18)
    ax.set_xlabel("held-out flip accuracy (queries not used to fit)")
    ax.set_title("predicting o vs b* per (pair, T, c); n. = fitted numbers", fontsize=10)


def draw_ablation(ax, ablation: list[dict], attention: list[dict], side: str) -> None:
    for name, (label, colour) in ABLATIONS.items():
        rows = rows_of(ablation, side, ablated=name)
        if not rows:
            continue
        remaining = rows[0]["gain_remaining"]
        extra = f" ({rows[0]['heads']})" if name != "none" else ""
        ax.plot([r["c"] for r in rows], [r["o_beats_b"] for r in rows], "o-", color=colour, ms=3,
                label=f"{label}{extra}: gain x{remaining:.2f}")
    T = next((r["T"] for r in rows_of(ablation, side)), None)
    looked = rows_of(attention, side)
    if looked:
        cells = "\n".join(f"c={r['c']}: {r['induction_mean']:.2f} / {r['other_mean']:.3f}" for r in looked if r["c"] in (1, 2, 8))
        ax.plot([], [], " ", label=f"final q's attention on the copied o's\n(T={looked[0]['T']}; induction heads / others)\n{cells}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("c, pairs 'q o' in the prompt")
    ax.set_ylabel("share: logit(o) > logit(b*)")
    ax.set_title(f"heads zeroed (T={T})" if T else "no induction head found", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def caption(setting: dict) -> str:
    return (f"Top: {setting['lm']} ({setting['lm_queries']} query words from {setting['lm_corpus']}, {setting['lm_pairs']} "
            f"(q, o) pairs, {setting['lm_heads']} induction heads); bottom: toy "
            f"({setting['toy_setting']}; {setting['toy_queries']} queries, {setting['toy_pairs']} pairs). quick profile: "
            f"T = {setting['lengths']}, c = {setting['counts']}, {setting['instances']} filler draw(s) per (q, o, T), "
            f"filler of random frequent words (prose filler at T = {setting['prose_lengths']}, halves at T = "
            f"{setting['recency_length']}, heads zeroed at T = {setting['ablation_length']}); b*(q) and the gap from the "
            f"model's own next-token distribution; the law's numbers fitted on {float(setting['fit_fraction']):.0%} of the "
            f"queries (seed {setting['seed']}), accuracy on the rest. Points at the dotted line: no flip within the grid. Gain: "
            f"the mean margin m(c) - m(0) over c >= 1, against the intact model's; the toy's one other head is layer 1's "
            f"previous-token head, which its induction head needs.")


def plot(data: Path):
    shares, thresholds = read_table(data, f"{NAME}_shares"), read_table(data, f"{NAME}_thresholds")
    curves, rules, ablation = read_table(data, f"{NAME}_curves"), read_table(data, f"{NAME}_rules"), read_table(data, f"{NAME}_ablation")
    attention = read_table(data, f"{NAME}_attention")
    setting = {r["key"]: r["value"] for r in read_table(data, f"{NAME}_setting")}
    top = max(float(c) for c in str(setting["counts"]).split()) + 1
    fig, axes = plt.subplots(2, 5, figsize=(25, 10))
    for row, side in enumerate(SIDES):
        label = setting["lm"] if side == "lm" else "toy model"
        draw_shares(axes[row, 0], shares, side)
        draw_thresholds(axes[row, 1], thresholds, side, top)
        draw_gap(axes[row, 2], curves, side, top)
        draw_rules(axes[row, 3], rules, side)
        draw_ablation(axes[row, 4], ablation, attention, side)
        axes[row, 0].annotate(label, xy=(-0.28, 0.5), xycoords="axes fraction", rotation=90, va="center", ha="center",
                              fontsize=13, fontweight="bold")
    place_caption(fig, caption(setting), lines=3)
    return fig


FIGURE = Figure("fig11", NAME, plot)
