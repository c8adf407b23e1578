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
from experiments.plotting import colorbar, finish, finite, plt, seeds_note
from experiments.runs import Collected
from experiments.tables import read_table, summarise
from toybigram.checkpoint import load_run
from toybigram.factory import make_chain, make_sampler
from toybigram.theory.calculator import agreement
from toybigram.theory.compare import run_both
from toybigram.theory.prompts import length_prompts
from toybigram.theory.strengths import read_strengths

FORMATION_ACC = 0.5  # the induction head "forms" at the first evaluation with in-context accuracy >= this
PANELS = [("acc_incontext", "(a) in-context accuracy", "viridis", (0, 1)),
          ("formation_step", "(b) steps until the induction head forms", "magma_r", None),
          ("top1_agreement", "(c) calculator top-1 agreement", "viridis", (0, 1))]
COLOUR_LABELS = {"acc_incontext": "in-context accuracy", "formation_step": "formation step",
                 "top1_agreement": "top-1 agreement with the model"}


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


def _cell_text(r: dict, key: str, lim: tuple[float, float]) -> str:
    """'0.93\\n0.88-0.98': the mean and its 95% interval over seeds clipped to the metric's range; steps as whole
    numbers, 'never' when no seed formed, '(2/3 formed)' when some did."""
    mean, ci, n = r[f"{key}_mean"], r[f"{key}_ci"], r[f"{key}_n"]
    seeds = r["acc_incontext_n"]
    form = "{:.0f}" if key == "formation_step" else "{:.2f}"
    text = form.format(mean) if finite(mean) else "never"
    if finite(mean) and finite(ci):
        text += "\n" + form.format(max(mean - ci, lim[0])) + "-" + form.format(min(mean + ci, lim[1]))
    if key == "formation_step" and n < seeds:
        text += f"\n({n}/{seeds} formed)"
    return text


def _panel(fig, ax, rows, Ns, Ts, panel, steps):
    key, title, cmap, lim = panel
    M = np.full((len(Ns), len(Ts)), np.nan)
    for r in rows:
        M[Ns.index(r["N"]), Ts.index(r["T"])] = r[f"{key}_mean"] if finite(r[f"{key}_mean"]) else np.nan
    im = ax.imshow(M, origin="lower", cmap=cmap, vmin=lim[0] if lim else 0, vmax=lim[1] if lim else steps, aspect="auto")
    for r in rows:
        mean = r[f"{key}_mean"]
        shade = im.cmap(im.norm(mean)) if finite(mean) else (1, 1, 1, 1)
        dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
        ax.text(Ts.index(r["T"]), Ns.index(r["N"]), _cell_text(r, key, lim or (0, steps)), ha="center", va="center",
                fontsize=8, color="w" if dark else "k")
    ax.set_xticks(range(len(Ts)), Ts)
    ax.set_yticks(range(len(Ns)), Ns)
    ax.set_xlabel("prompt length T")
    ax.set_ylabel("vocabulary size N")
    ax.set_title(title + (f" (of {steps})" if key == "formation_step" else ""))
    colorbar(fig, im, ax, f"{COLOUR_LABELS[key]}, mean over seeds", fraction=0.046)


def plot(data: Path):
    rows = read_table(data, "fig7_grid")
    Ns, Ts = sorted({r["N"] for r in rows}), sorted({r["T"] for r in rows})
    steps = max((r["steps"] for r in rows), default=0)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for ax, panel in zip(axes, PANELS):
        _panel(fig, ax, rows, Ns, Ts, panel, steps)
    note = f"cells: mean over seeds and its 95% t-interval ({seeds_note(rows, 'acc_incontext')}) clipped to the metric's range"
    return finish(fig, data, FIGURE.name, note)


FIGURE = Figure("fig7", "fig7_vocab_length", plot, inputs=(Input("fig7_vocab_length", "agreement", length_agreement),), tables=tables)
