"""Figure 6: learned memories against the ideal ones. Induction-key lambda and copy beta matrices
(ideal: diagonal), the learned global map g against log pi_b, and the previous-token strength
alpha_t by position (APE, Figure 1's runs) and per offset (RPE, Figure 4's runs). Tables fig6_*.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from experiments.figure import Figure, Input
from experiments.plotting import band, plt
from experiments.runs import Collected, lowest_seed
from experiments.tables import read_table, summarise
from toybigram.checkpoint import load_run
from toybigram.factory import make_chain
from toybigram.probes import bigram_memory, copy_memory, induction_key_memory, position_profile
from toybigram.theory.calculator import centred
from toybigram.theory.compare import trigger_queries
from toybigram.theory.ideal import log_bigram


@torch.no_grad()
def memories(run_dir) -> dict:
    """Figure 6: learned memories against the ideal ones."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T = int(cfg.data.seq_len)
    lam = induction_key_memory(model).double()
    beta = copy_memory(model).double()
    g = bigram_memory(model)
    ideal_g = log_bigram(chain.transition)
    out = {"pos": cfg.model.pos, "T": T, "lambda": lam, "beta": beta, "triggers": trigger_queries(cfg, chain)}
    if g is not None:
        out["g_centred"] = centred(g.double())
        out["log_pi_centred"] = ideal_g
        x, y = ideal_g.flatten(), out["g_centred"].flatten()
        out["g_pearson"] = torch.corrcoef(torch.stack([x, y]))[0, 1].item()
    out.update(position_profile(model, T))
    return out


def diag_minus_off(M: list[list[float]]) -> float:
    """Mean diagonal entry minus mean off-diagonal entry of a square matrix: how diagonal a memory is."""
    n = len(M)
    diag = sum(M[k][k] for k in range(n)) / n
    off = sum(M[i][j] for i in range(n) for j in range(n) if i != j) / (n * n - n)
    return diag - off


def _shown_run(r: dict) -> tuple[list[dict], list[dict]]:
    """The matrices and the bigram map of one run, cell by cell."""
    mats = [{"matrix": name, "row": i, "col": j, "value": v}
            for name in ("lambda", "beta") for i, row in enumerate(r[name]) for j, v in enumerate(row)]
    bigram = []
    if "g_centred" in r:
        bigram = [{"i": i, "j": j, "g": r["g_centred"][i][j], "log_pi": r["log_pi_centred"][i][j]}
                  for i in range(len(r["g_centred"])) for j in range(len(r["g_centred"]))]
    return mats, bigram


def tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    ape, rpe = c["fig1_dynamics"].runs, c["fig4_hijack"].runs
    first = lowest_seed(ape)
    mats, bigram = _shown_run(first.result) if first is not None else ([], [])
    alpha, stats = [], []
    for run in ape + rpe:
        r = run.result
        by_position = "alpha" in r
        series = r["alpha"] if by_position else r.get("alpha_by_offset")
        for i, v in enumerate(series or []):
            alpha.append({"pos": r["pos"], "index": i, "kind": "position" if by_position else "offset", "seed": run.seed, "alpha": v})
        stats.append({"pos": r["pos"], "seed": run.seed, "g_pearson": r.get("g_pearson"),
                      "lambda_diag_minus_off": diag_minus_off(r["lambda"]), "beta_diag_minus_off": diag_minus_off(r["beta"])})
    return {"fig6_matrices": mats, "fig6_bigram": bigram,
            "fig6_alpha": summarise(alpha, ["pos", "kind", "index"], ["alpha"]),
            "fig6_stats": summarise(stats, ["pos"], ["g_pearson", "lambda_diag_minus_off", "beta_diag_minus_off"])}


def _matrix(rows, name):
    cells = [r for r in rows if r["matrix"] == name]
    n = max(r["row"] for r in cells) + 1
    M = np.zeros((n, n))
    for r in cells:
        M[r["row"], r["col"]] = r["value"]
    return M


def _memory(fig, ax, mats, name, label, s):
    """Heatmap of one learned memory matrix, with its diagonal-minus-off-diagonal statistic."""
    if not any(r["matrix"] == name for r in mats):
        ax.text(0.5, 0.5, "no runs", ha="center", transform=ax.transAxes)
        return
    M = _matrix(mats, name)
    lim = np.abs(M).max() or 1.0
    im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
    key = f"{name}_diag_minus_off"
    extra = f"\ndiag - off-diag = {s[key + '_mean']:.2f} +/- {s[key + '_ci']:.2f}" if s else ""
    ax.set_title(f"{label} (ideal: diagonal){extra}", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)


def _alpha(ax, alpha, pos, kind, xlabel):
    """Previous-token strength by position (ape) or by offset (rpe)."""
    rows = sorted((r for r in alpha if r["pos"] == pos), key=lambda r: r["index"])
    if kind == "offset":
        rows = rows[: min(len(rows), 16)]
    band(ax, [r["index"] for r in rows], rows, "alpha", color="C0")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("alpha (score of s = t-1 over the others)" if kind == "position" else "score relative to the mean")
    ax.set_title(f"{pos}: previous-token strength by {kind}" + ("\n(ideal: one peak at offset 1)" if kind == "offset" else "\n(ideal: >~ log t)"), fontsize=8)
    if kind == "position" and rows:
        t = np.arange(1, len(rows))
        ax.plot(t, np.log(t), color="k", ls=":", lw=1, label="log t")
        ax.legend(fontsize=7)


def plot(data: Path):
    mats = read_table(data, "fig6_matrices")
    bigram = read_table(data, "fig6_bigram")
    alpha = read_table(data, "fig6_alpha")
    stats = {r["pos"]: r for r in read_table(data, "fig6_stats")}
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.6))
    s = stats.get("ape")
    _memory(fig, axes[0], mats, "lambda", "induction key lambda[k, j]\n(query k, previous token j)", s)
    _memory(fig, axes[1], mats, "beta", "copy beta[j, k]\n(output j, attended k)", s)
    ax = axes[2]
    ax.scatter([r["log_pi"] for r in bigram], [r["g"] for r in bigram], s=4, alpha=0.5)
    ax.set_title(f"global map g vs log pi_b (centred)\nPearson r = {s['g_pearson_mean']:.2f} +/- {s['g_pearson_ci']:.2f}" if s else "g vs log pi_b", fontsize=8)
    ax.set_xlabel("log pi_b(j|i) (ideal)")
    ax.set_ylabel("learned g(j|i)")
    _alpha(axes[3], alpha, "ape", "position", "position t")
    _alpha(axes[4], alpha, "rpe", "offset", "offset t - s")
    fig.tight_layout()
    return fig


FIGURE = Figure("fig6", "fig6_memories", plot, tables=tables,
                inputs=(Input("fig1_dynamics", "memories", memories), Input("fig4_hijack", "memories", memories)))
