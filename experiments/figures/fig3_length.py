"""Figure 3: length generalisation of APE, RPE, RoPE and three-layer NoPE trained at one length T
and tested at T/2..8T: in-context accuracy, and previous-token attention a1(t, t-1) by position at
the longest test length. Tables fig3_length_acc and fig3_length_attn.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from experiments.figure import PROMPT_SEED, Figure, Input
from experiments.plotting import UNIT, band, finish, plt, seeds_note
from experiments.runs import Collected
from experiments.tables import read_table, summarise
from toybigram.checkpoint import load_run
from toybigram.factory import make_chain, make_sampler
from toybigram.hooks import circuit_pattern_hooks
from toybigram.theory.prompts import length_prompts

EXPERIMENTS = ("fig3_length", "fig3_length_nope")
ORDER = ["ape", "rpe", "rope", "nope"]
LABELS = {"ape": "APE", "rpe": "RPE", "rope": "RoPE", "nope": "NoPE (3 layers)"}  # the same names in both panels


@torch.no_grad()
def length_generalisation(run_dir, ratios=(0.5, 1, 2, 4, 8), batch: int = 32) -> dict:
    """Figure 3: in-context accuracy and previous-token attention by position at T_test = ratio * T."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T = int(cfg.data.seq_len)
    sampler = make_sampler(cfg.data, chain, torch.device("cpu"), PROMPT_SEED)
    prev = circuit_pattern_hooks(model.spec.n_layers)[0]
    out = {"T_train": T, "pos": cfg.model.pos, "by_ratio": []}
    for ratio in ratios:
        L = max(2, int(round(ratio * T)))
        b = length_prompts(sampler, L, batch)
        logits, cache = model.run_with_cache(b.inputs, names_filter=[prev])
        ic = b.labels >= 2
        acc = (logits.argmax(-1) == b.targets)[ic].double().mean().item() if ic.any() else math.nan
        attn = cache[prev].diagonal(offset=-1, dim1=-2, dim2=-1).mean(0)  # a1(t, t-1) for t = 1..L-1
        out["by_ratio"].append({"ratio": ratio, "T_test": L, "acc_incontext": acc, "n_incontext": int(ic.sum()),
                                "attn_prev_by_position": attn})
    return out


def tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    acc, attn = [], []
    for experiment in EXPERIMENTS:
        for run in c[experiment].runs:
            r = run.result
            for row in r["by_ratio"]:
                acc.append({"pos": r["pos"], "ratio": row["ratio"], "T_test": row["T_test"], "T_train": r["T_train"],
                            "seed": run.seed, "acc_incontext": row["acc_incontext"]})
            longest = max(r["by_ratio"], key=lambda x: x["T_test"])
            for t, a in enumerate(longest["attn_prev_by_position"], start=1):
                attn.append({"pos": r["pos"], "T_test": longest["T_test"], "T_train": r["T_train"], "position": t,
                             "seed": run.seed, "attn_prev": a})
    return {"fig3_length_acc": summarise(acc, ["pos", "ratio", "T_test", "T_train"], ["acc_incontext"]),
            "fig3_length_attn": summarise(attn, ["pos", "T_test", "T_train", "position"], ["attn_prev"])}


def _accuracy(ax, acc, variants):
    for i, pos in enumerate(variants):
        rows = sorted((r for r in acc if r["pos"] == pos), key=lambda r: r["ratio"])
        band(ax, [r["ratio"] for r in rows], rows, "acc_incontext", label=LABELS[pos], color=f"C{i}", limits=UNIT)
        ax.scatter([r["ratio"] for r in rows], [r["acc_incontext_mean"] for r in rows], color=f"C{i}", s=12)
    ax.set_xscale("log", base=2)
    ratios = sorted({r["ratio"] for r in acc})
    ax.set_xticks(ratios, [f"{x:g}" for x in ratios])
    ax.minorticks_off()
    ax.axvline(1, color="k", lw=0.6, ls=":")
    T_train = acc[0]["T_train"] if acc else "?"
    ax.set_xlabel(f"test length / training length (T_train = {T_train})")
    ax.set_ylabel("in-context accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"(a) in-context accuracy by test length ({seeds_note(acc, 'acc_incontext')})")
    ax.legend()


def _previous_token(ax, attn, variants):
    for i, pos in enumerate(variants):
        rows = sorted((r for r in attn if r["pos"] == pos), key=lambda r: r["position"])
        if rows:
            band(ax, [r["position"] for r in rows], rows, "attn_prev", label=LABELS[pos], color=f"C{i}", limits=UNIT)
    if attn:
        ax.axvline(attn[0]["T_train"], color="k", lw=0.6, ls=":")
        ax.set_title(f"(b) layer-1 attention on the previous token\nprompts of length {attn[0]['T_test']}")
    ax.set_xlabel("query position t (dotted: training length)")
    ax.set_ylabel("a1(t, t-1)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()


def plot(data: Path):
    acc = read_table(data, "fig3_length_acc")
    attn = read_table(data, "fig3_length_attn")
    variants = [p for p in ORDER if any(r["pos"] == p for r in acc)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    _accuracy(axes[0], acc, variants)
    _previous_token(axes[1], attn, variants)
    return finish(fig, data, FIGURE.name, "bands: 95% t-interval over seeds, clipped to [0, 1]")


FIGURE = Figure("fig3", "fig3_length", plot, tables=tables,
                inputs=tuple(Input(experiment, "length", length_generalisation) for experiment in EXPERIMENTS))
