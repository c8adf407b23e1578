"""Figure 4: knowledge hijack phase diagram. Over in-context count c and prompt length T, the
share of designed prompts whose in-context token o beats the global favourite b*, for the model
and for the calculator, with the threshold c*(T). Tables fig4_hijack and fig4_threshold.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from experiments.figure import PROMPT_SEED, Figure, Input
from experiments.plotting import caption, colorbar, finite, plt, run_caption, seeds_note
from experiments.runs import Collected
from experiments.tables import read_table, summarise
from toybigram.checkpoint import load_run
from toybigram.factory import make_chain
from toybigram.theory.calculator import first_crossing, hijack_threshold
from toybigram.theory.compare import hijack_pairs, run_both, trigger_queries
from toybigram.theory.prompts import hijack
from toybigram.theory.strengths import read_strengths

JUDGES = ("model", "theory")  # whose logits decide whether o beats b*: the model's or the calculator's


def share_crossing(cs: list[int], shares: list[float]) -> float:
    """Smallest c from which the share of pairs the output wins stays at or above one half; inf if never."""
    return first_crossing(torch.tensor(cs), torch.tensor([1.0 if s >= 0.5 else -1.0 for s in shares])).item()


def _length_cells(model, chain, strengths, diag, pairs, L: int, cs: list[int], fillers: int, gen) -> tuple[list, dict]:
    """At prompt length L: the share of (q, o) pairs whose o beats b* per count c and judge, and the
    closed-form threshold of each pair."""
    wins = {judge: {c: [] for c in cs} for judge in JUDGES}
    closed = []
    for q, o, b in pairs:
        prompts = torch.cat([hijack(chain, q, o, c, L, fillers, gen) for c in cs])
        m, _, _, p = run_both(model, strengths, prompts, last_only=True)
        m, th = m[:, -1], p.logits[:, -1]
        for judge, logits in zip(JUDGES, (m, th)):
            won = (logits[:, o] > logits[:, b]).double().view(len(cs), fillers).mean(1)
            for i, c in enumerate(cs):
                wins[judge][c].append(won[i].item())
        counts_t = torch.tensor(cs).repeat_interleave(fillers)
        f_o = ((prompts == o).sum(1) - counts_t).double().mean()
        f_b = (prompts == b).sum(1).double().mean()
        gap = diag.bigram[q, b] - diag.bigram[q, o]
        closed.append(hijack_threshold(L, diag.key[q], diag.copy[o], diag.copy[b], gap, f_o, f_b).item())
    return closed, {judge: [sum(w[c]) / len(pairs) for c in cs] for judge, w in wins.items()}


@torch.no_grad()
def hijack_grid(run_dir, ratios=(0.25, 0.5, 1, 2, 4), counts=range(0, 9), n_outputs: int = 2, fillers: int = 8) -> dict:
    """Figure 4: over (c, T), the share of hijack prompts where the in-context token o beats the
    global favourite b* at the last position, for the model and the calculator (full strengths),
    and the closed-form threshold c*(T) (calculator.hijack_threshold on the diagonal strengths,
    median over (q, o) pairs)."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T0 = int(cfg.data.seq_len)
    lengths = sorted({max(8, int(round(r * T0))) for r in ratios})
    strengths = read_strengths(model, max(lengths), "full")
    diag = read_strengths(model, T0, "diagonal")
    pairs = hijack_pairs(model, strengths, trigger_queries(cfg, chain), n_outputs)
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    cells, thresholds = [], []
    for L in lengths:
        cs = [c for c in counts if 2 * c + 2 <= L]
        closed, shares = _length_cells(model, chain, strengths, diag, pairs, L, cs, fillers, gen)
        cells += [{"T": L, "c": c, "share_model": shares["model"][i], "share_theory": shares["theory"][i]} for i, c in enumerate(cs)]
        thresholds.append({"T": L, "c_star_closed_form": sorted(closed)[len(closed) // 2],
                           **{f"c_star_{judge}": share_crossing(cs, shares[judge]) for judge in JUDGES}})
    return {"T_train": T0, "pairs": [list(p) for p in pairs], "cells": cells, "thresholds": thresholds}


def tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    cells, thr = [], []
    for run in c["fig4_hijack"].runs:
        cells += [{**x, "seed": run.seed, "T_train": run.result["T_train"]} for x in run.result["cells"]]
        thr += [{**x, "seed": run.seed} for x in run.result["thresholds"]]
    return {"fig4_hijack": summarise(cells, ["T", "c", "T_train"], ["share_model", "share_theory"]),
            "fig4_threshold": summarise(thr, ["T"], ["c_star_closed_form", "c_star_model", "c_star_theory"])}


def _thresholds(ax, thr, judge, cs):
    """The closed-form and the 50%-crossing thresholds c*(T); a triangle above the grid where a threshold is off it."""
    x = list(range(len(thr)))
    for col, lab, ls, color, shift in (("c_star_closed_form", "c*(T) closed form", "-", "k", -0.12),
                                       (f"c_star_{judge}", "c*(T) where the share crosses 1/2", "--", "orange", 0.12)):
        y = [r[f"{col}_mean"] if finite(r[f"{col}_mean"]) else math.nan for r in thr]
        ax.plot(x, y, ls=ls, color=color, marker="o", ms=4, label=lab)
        off = [i for i, v in zip(x, y) if not finite(v)]
        if off:
            ax.scatter([i + shift for i in off], [max(cs) + 0.95] * len(off), marker="^", color=color, s=45, clip_on=False,
                       label=f"{lab.split(' ', 1)[1]}: above the grid or never")


def _phase(ax, cells, thr, judge, title, Ts, cs):
    """One judge's share as a heatmap over (T, c), with the closed-form and the 50%-crossing thresholds."""
    M = np.full((len(cs), len(Ts)), np.nan)
    for r in cells:
        M[cs.index(r["c"]), Ts.index(r["T"])] = r[f"share_{judge}_mean"]
    im = ax.imshow(M, origin="lower", aspect="auto", cmap="RdBu_r", vmin=0, vmax=1,
                   extent=(-0.5, len(Ts) - 0.5, min(cs) - 0.5, max(cs) + 0.5))
    _thresholds(ax, thr, judge, cs)
    ax.set_ylim(min(cs) - 0.5, max(cs) + 0.5)  # the triangles sit above the grid, outside the axes
    ax.set_xticks(range(len(Ts)))
    ax.set_xticklabels([str(t) for t in Ts])
    ax.set_xlabel("prompt length T")
    ax.set_title(f"{title}: does o beat b*?", pad=18)
    return im


def plot(data: Path):
    cells = read_table(data, "fig4_hijack")
    thr = sorted(read_table(data, "fig4_threshold"), key=lambda r: r["T"])
    Ts = sorted({r["T"] for r in cells})
    cs = sorted({r["c"] for r in cells})
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharey=True)
    for ax, judge, title in ((axes[0], "model", "(a) model"), (axes[1], "theory", "(b) calculator")):
        im = _phase(ax, cells, thr, judge, title, Ts, cs)
    axes[0].set_ylabel("in-context count c of 'q o'")
    T_train = cells[0]["T_train"] if cells else "?"
    fig.suptitle(f"knowledge hijack, RPE model trained at T={T_train}\n"
                 "c copies of the pair q o in a prompt of length T; b* = the bigram favourite after q")
    fig.subplots_adjust(left=0.07, right=0.87, bottom=0.3, top=0.8, wspace=0.08)  # manual: the colorbar spans both axes
    colorbar(fig, im, axes, "share of prompts where logit o > logit b*", fraction=0.03)
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=2, bbox_to_anchor=(0.47, 0.07))
    seeds = seeds_note(cells, "share_model")
    caption(fig, run_caption(data, FIGURE.name, f"colour and thresholds: means over {seeds.removeprefix('n=')}; white: no room for c pairs in T"), layout=False)
    return fig


FIGURE = Figure("fig4", "fig4_hijack", plot, inputs=(Input("fig4_hijack", "hijack", hijack_grid),), tables=tables)
