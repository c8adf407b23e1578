"""Figure 7: sweep over vocabulary size N x prompt length T (dirichlet source): in-context accuracy,
steps until the induction head forms (first evaluation with in-context accuracy >= 0.5), and the
calculator's top-1 agreement with the model, as heatmaps (means over seeds). Table fig7_grid.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from experiments.figure import PROMPT_SEED, Figure, Input
from experiments.plotting import finite, plt
from experiments.runs import Collected
from experiments.tables import read_table, summarise
from toybigram.checkpoint import load_run
from toybigram.factory import make_chain, make_sampler
from toybigram.theory.calculator import agreement
from toybigram.theory.compare import run_both
from toybigram.theory.prompts import length_prompts
from toybigram.theory.strengths import read_strengths

FORMATION_ACC = 0.5  # the induction head "forms" at the first evaluation with in-context accuracy >= this
PANELS = [("acc_incontext", "in-context accuracy", "viridis", (0, 1)),
          ("formation_step", "steps until the induction head forms", "magma_r", None),
          ("top1_agreement", "calculator top-1 agreement", "viridis", (0, 1))]


@torch.no_grad()
def length_agreement(run_dir, prompts: int = 8) -> dict:
    """Figure 7: calculator (full strengths) against the model on prompts from the training
    distribution, all positions: top-1 agreement and centred-logit R^2."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T = int(cfg.data.seq_len)
    strengths = read_strengths(model, T, "full")
    batch = length_prompts(make_sampler(cfg.data, chain, torch.device("cpu"), PROMPT_SEED), T, prompts)
    m, _, _, p = run_both(model, strengths, batch.inputs)
    a = agreement(m, p.logits)
    return {"top1_agreement": a["top1_agreement"], "r2_centered_logits": a["r2_centered_logits"]}


def tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    rows = []
    for run in c["fig7_vocab_length"].runs:
        metrics = run.metrics()
        formed = next((m["step"] for m in metrics if (m.get("acc_incontext") or 0.0) >= FORMATION_ACC), math.inf)
        rows.append({"N": int(run.config["data"]["vocab_size"]), "T": int(run.config["data"]["seq_len"]), "seed": run.seed,
                     "acc_incontext": run.summary.get("acc_incontext"), "formation_step": float(formed),
                     "steps": run.summary.get("steps"), "top1_agreement": run.result["top1_agreement"],
                     "r2_centered_logits": run.result["r2_centered_logits"]})
    return {"fig7_grid": summarise(rows, ["N", "T", "steps"], ["acc_incontext", "formation_step", "top1_agreement", "r2_centered_logits"])}


def _cell_text(r: dict, key: str) -> str:
    """'0.93\\n+/-0.02'; steps as whole numbers, 'never' when no seed formed, '(2/3 formed)' when some did."""
    mean, ci, n = r[f"{key}_mean"], r[f"{key}_ci"], r[f"{key}_n"]
    seeds = r["acc_incontext_n"]
    text = "never" if not finite(mean) else (f"{mean:.0f}" if key == "formation_step" else f"{mean:.2f}")
    if finite(mean) and finite(ci):
        text += f"\n+/-{ci:.0f}" if key == "formation_step" else f"\n+/-{ci:.2f}"
    if key == "formation_step" and n < seeds:
        text += f"\n({n}/{seeds} formed)"
    return text


def _panel(fig, ax, rows, Ns, Ts, key, cmap, lim):
    M = np.full((len(Ns), len(Ts)), np.nan)
    for r in rows:
        M[Ns.index(r["N"]), Ts.index(r["T"])] = r[f"{key}_mean"] if finite(r[f"{key}_mean"]) else np.nan
    im = ax.imshow(M, origin="lower", cmap=cmap, vmin=lim[0] if lim else None, vmax=lim[1] if lim else None, aspect="auto")
    for r in rows:
        mean = r[f"{key}_mean"]
        shade = im.cmap(im.norm(mean)) if finite(mean) else (1, 1, 1, 1)
        dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
        ax.text(Ts.index(r["T"]), Ns.index(r["N"]), _cell_text(r, key), ha="center", va="center", fontsize=7, color="w" if dark else "k")
    ax.set_xticks(range(len(Ts)))
    ax.set_xticklabels(Ts)
    ax.set_yticks(range(len(Ns)))
    ax.set_yticklabels(Ns)
    ax.set_xlabel("prompt length T")
    ax.set_ylabel("vocabulary size N")
    fig.colorbar(im, ax=ax, fraction=0.046)


def plot(data: Path):
    rows = read_table(data, "fig7_grid")
    Ns, Ts = sorted({r["N"] for r in rows}), sorted({r["T"] for r in rows})
    steps = max((r["steps"] for r in rows), default=0)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, title, cmap, lim) in zip(axes, PANELS):
        _panel(fig, ax, rows, Ns, Ts, key, cmap, lim)
        ax.set_title(title + (f" (of {steps})" if key == "formation_step" else ""), fontsize=9)
    fig.tight_layout()
    return fig


FIGURE = Figure("fig7", "fig7_vocab_length", plot, inputs=(Input("fig7_vocab_length", "agreement", length_agreement),), tables=tables)
