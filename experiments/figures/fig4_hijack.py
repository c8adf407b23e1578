"""Figure 4: knowledge hijack phase diagram. Over in-context count c and prompt length T, the
share of designed prompts whose in-context token o beats the global favourite b*, for the model
and for the calculator, with the threshold c*(T): the closed form, the closed form with the
diluted previous-token head (toybigram/theory/threshold.py) and the model's. Tables fig4_hijack,
fig4_threshold and fig4_key_terms (the o-keys' layer-2 attention, measured against both laws, and
what makes it up: the layer-1 weight on the previous token, the effective key strength).
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
from toybigram.theory.calculator import first_crossing
from toybigram.theory.compare import hijack_pairs, run_both, trigger_queries
from toybigram.theory.prompts import hijack
from toybigram.theory.strengths import read_strengths
from toybigram.theory.threshold import ThresholdLaw, effective_key, measured_key_terms, pair_counts

JUDGES = ("model", "theory", "law")  # whose logits decide whether o beats b*: the model's, the calculator's, the law's


def share_crossing(cs: list[int], shares: list[float]) -> float:
    """Smallest c from which the share of pairs the output wins stays at or above one half; inf if never."""
    return first_crossing(torch.tensor(cs), torch.tensor([1.0 if s >= 0.5 else -1.0 for s in shares])).item()


def key_terms(law: ThresholdLaw, q: int, c: int, L: int, prompts, a1, a2_last) -> dict:
    """The o-keys' layer-2 attention at count c: the model's, the closed form's c E / (c E + L - c) with
    E = e^lambda_q, the law's with E_eff(L), and what makes up the model's (threshold.measured_key_terms)."""
    closed_E, law_E = math.exp(law.key[q].item()), effective_key(law.key[q], law.weights, L).exp().item()
    return {"T": L, "c": c, **measured_key_terms(prompts, a1, a2_last), "closed_form_E": closed_E, "law_E": law_E,
            "attention_closed_form": c * closed_E / (c * closed_E + L - c), "attention_law": c * law_E / (c * law_E + L - c)}


def _length_cells(model, chain, strengths, law: ThresholdLaw, pairs, L: int, cs: list[int], fillers: int,
                  gen) -> tuple[list, dict, list]:
    """At prompt length L: the closed-form threshold of each pair (calculator.hijack_threshold on the diagonal
    strengths), the share of (q, o) pairs whose o beats b* per count c and judge, and the key terms per pair and c >= 1."""
    wins = {judge: {c: [] for c in cs} for judge in JUDGES}
    closed, terms = [], []
    for q, o, b in pairs:
        prompts = torch.cat([hijack(chain, q, o, c, L, fillers, gen) for c in cs])
        m, a1, a2, p = run_both(model, strengths, prompts, last_only=True)
        for i, c in enumerate(cs):
            rows = slice(i * fillers, (i + 1) * fillers)
            if c > 0:
                terms.append(key_terms(law, q, c, L, prompts[rows], a1[rows], a2[rows, -1]))
        for judge, logits in zip(JUDGES, (m[:, -1], p.logits[:, -1], law.logits(prompts))):
            won = (logits[:, o] > logits[:, b]).double().view(len(cs), fillers).mean(1)
            for i, c in enumerate(cs):
                wins[judge][c].append(won[i].item())
        f_o, f_b = pair_counts(prompts, o, b, torch.tensor(cs).repeat_interleave(fillers))
        closed.append(law.thresholds(L, q, o, b, f_o, f_b)["closed_form"])
    return closed, {judge: [sum(w[c]) / len(pairs) for c in cs] for judge, w in wins.items()}, terms


@torch.no_grad()
def hijack_grid(run_dir, ratios=(0.25, 0.5, 1, 2, 4), counts=range(0, 9), n_outputs: int = 2, fillers: int = 8) -> dict:
    """Figure 4: over (c, T), the share of hijack prompts where the in-context token o beats the
    global favourite b* at the last position, for the model, the calculator (full strengths) and the
    diluted threshold law (threshold.law_logits, prompt by prompt), and the closed-form threshold
    c*(T) (calculator.hijack_threshold on the diagonal strengths, median over (q, o) pairs)."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T0 = int(cfg.data.seq_len)
    lengths = sorted({max(8, int(round(r * T0))) for r in ratios})
    strengths = read_strengths(model, max(lengths), "full")
    law = ThresholdLaw.from_model(model, max(lengths))
    pairs = hijack_pairs(strengths.bigram, trigger_queries(cfg, chain), n_outputs)
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    cells, thresholds, terms = [], [], []
    for L in lengths:
        cs = [c for c in counts if 2 * c + 2 <= L]
        closed, shares, length_terms = _length_cells(model, chain, strengths, law, pairs, L, cs, fillers, gen)
        cells += [{"T": L, "c": c, **{f"share_{judge}": shares[judge][i] for judge in JUDGES}} for i, c in enumerate(cs)]
        terms += length_terms
        thresholds.append({"T": L, "c_star_closed_form": sorted(closed)[len(closed) // 2],
                           **{f"c_star_{judge}": share_crossing(cs, shares[judge]) for judge in JUDGES}})
    return {"T_train": T0, "pairs": [list(p) for p in pairs], "cells": cells, "thresholds": thresholds, "key_terms": terms}


KEY_TERMS = ("attention_o_keys", "attention_closed_form", "attention_law", "previous_weight_o_keys", "effective_E",
             "closed_form_E", "law_E", "q_read_plain_key")


def tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    cells, thr, terms = [], [], []
    for run in c["fig4_hijack"].runs:
        cells += [{**x, "seed": run.seed, "T_train": run.result["T_train"]} for x in run.result["cells"]]
        thr += [{**x, "seed": run.seed} for x in run.result["thresholds"]]
        terms += [{**x, "seed": run.seed} for x in run.result.get("key_terms", [])]
    return {"fig4_hijack": summarise(cells, ["T", "c", "T_train"], [f"share_{judge}" for judge in JUDGES]),
            "fig4_threshold": summarise(thr, ["T"], ["c_star_closed_form", *(f"c_star_{judge}" for judge in JUDGES)]),
            "fig4_key_terms": summarise(terms, ["T", "c"], list(KEY_TERMS))}


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


THRESHOLD_LINES = (("c_star_model", "model (share crosses 1/2)", "orange", "o", -0.1),
                   ("c_star_closed_form", "closed form (exact previous-token head)", "k", "s", 0.0),
                   ("c_star_law", "closed form with the diluted previous-token head", "tab:green", "D", 0.1))


def _threshold_panel(ax, thr, Ts, cs):
    """(c) c*(T) for the model, the closed form and the corrected law: means over the seeds whose threshold
    lies on the grid, with 95% intervals; the seeds beyond it are counted beside the point."""
    seeds = max((r.get(f"{col}_n") or 0 for r in thr for col, *_ in THRESHOLD_LINES), default=0)
    for col, label, color, marker, shift in THRESHOLD_LINES:
        x = [i + shift for i in range(len(thr))]
        y = [r[f"{col}_mean"] if finite(r[f"{col}_mean"]) else math.nan for r in thr]
        err = [r[f"{col}_ci"] if finite(r.get(f"{col}_ci")) else 0.0 for r in thr]
        ax.errorbar(x, y, yerr=err, color=color, marker=marker, ms=5, capsize=3, label=label)
        for xi, yi, r in zip(x, y, thr):
            missing = seeds - int(r.get(f"{col}_n") or 0)
            if missing:
                ax.annotate(f"{missing} seed{'s' if missing > 1 else ''} beyond c={max(cs)}", (xi, yi if finite(yi) else max(cs)),
                            textcoords="offset points", xytext=(-6, 8), ha="right", fontsize=8, color=color)
    ax.set_xticks(range(len(Ts)))
    ax.set_xticklabels([str(t) for t in Ts])
    ax.set_xlabel("prompt length T")
    ax.set_ylabel("threshold count c*(T)")
    ax.set_ylim(0, max(cs) + 1)
    ax.set_title("(c) c*(T): model, closed form, corrected", pad=18)
    ax.legend(loc="upper left", fontsize=8)


def plot(data: Path):
    cells = read_table(data, "fig4_hijack")
    thr = sorted(read_table(data, "fig4_threshold"), key=lambda r: r["T"])
    Ts = sorted({r["T"] for r in cells})
    cs = sorted({r["c"] for r in cells})
    fig = plt.figure(figsize=(16, 5.4))
    heat = [fig.add_axes((0.05, 0.3, 0.25, 0.5)), fig.add_axes((0.32, 0.3, 0.25, 0.5))]
    for ax, judge, title in ((heat[0], "model", "(a) model"), (heat[1], "theory", "(b) calculator")):
        im = _phase(ax, cells, thr, judge, title, Ts, cs)
    heat[1].tick_params(labelleft=False)
    heat[0].set_ylabel("in-context count c of 'q o'")
    colorbar(fig, im, heat, "share of prompts where logit o > logit b*", fraction=0.03)
    _threshold_panel(fig.add_axes((0.7, 0.3, 0.28, 0.5)), thr, Ts, cs)
    T_train = cells[0]["T_train"] if cells else "?"
    fig.suptitle(f"knowledge hijack, RPE model trained at T={T_train}\n"
                 "c copies of the pair q o in a prompt of length T; b* = the bigram favourite after q")
    handles = {label: handle for ax in heat for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=2, bbox_to_anchor=(0.3, 0.07))
    seeds = seeds_note(cells, "share_model")
    caption(fig, run_caption(data, FIGURE.name, f"colour and thresholds: means over {seeds.removeprefix('n=')}; "
                             "white: no room for c pairs in T; thresholds beyond c=8 count as never"), layout=False)
    return fig


FIGURE = Figure("fig4", "fig4_hijack", plot, inputs=(Input("fig4_hijack", "hijack", hijack_grid),), tables=tables)
