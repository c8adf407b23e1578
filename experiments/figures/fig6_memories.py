"""Figure 6: learned memories against the ideal ones. Induction-key lambda and copy beta matrices
(ideal: diagonal), the learned global map g against log pi_b, and the previous-token strength
alpha_t by position (APE, Figure 1's runs) and per offset (RPE, Figure 4's runs). Tables fig6_*.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from experiments.figure import Figure, Input
from experiments.plotting import band, colorbar, finish, finite, plt, seeds_note
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


def _memory(fig, ax, mats, name, s, what):
    """Heatmap of one learned memory matrix, with its diagonal-minus-off-diagonal statistic in the title."""
    if not any(r["matrix"] == name for r in mats):
        ax.text(0.5, 0.5, "no runs", ha="center", transform=ax.transAxes)
        return
    M = _matrix(mats, name)
    lim = np.abs(M).max() or 1.0
    im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
    key = f"{name}_diag_minus_off"
    title, rows, cols, value = what
    ax.set_title(title + (f"\ndiagonal - off-diagonal = {s[key + '_mean']:.2f} ± {s[key + '_ci']:.2f}" if s else "") + " (ideal: diagonal)")
    ax.set_ylabel(rows)
    ax.set_xlabel(cols)
    colorbar(fig, im, ax, value, fraction=0.046)


def _alpha(ax, alpha, pos, kind, xlabel):
    """Previous-token strength by position (ape) or by offset (rpe)."""
    rows = sorted((r for r in alpha if r["pos"] == pos), key=lambda r: r["index"])
    if kind == "offset":
        rows = rows[: min(len(rows), 16)]
    band(ax, [r["index"] for r in rows], rows, "alpha", color="C0", label="learned (mean over seeds)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("alpha (score of s = t-1 over the others)" if kind == "position" else "score relative to the mean")
    ax.set_title(f"({'d' if kind == 'position' else 'e'}) {pos.upper()}: previous-token strength by {kind}"
                 + ("\n(ideal: one peak at offset 1)" if kind == "offset" else "\n(ideal: at least about log t)"))
    if kind == "position" and rows:
        t = np.arange(1, len(rows))
        ax.plot(t, np.log(t), color="k", ls=":", lw=1, label="log t")
    ax.legend()


def _bigram(ax, bigram, s):
    """The learned global map against the ideal one, on equal axes with y = x."""
    x, y = [r["log_pi"] for r in bigram], [r["g"] for r in bigram]
    ax.scatter(x, y, s=6, alpha=0.5, lw=0)
    lo, hi = (min(x + y), max(x + y)) if x else (-1.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="y = x (ideal)")
    ax.set_aspect("equal")
    ax.set_title("(c) global map g against log pi_b (both centred)" + (f"\nPearson r = {s['g_pearson_mean']:.2f} ± {s['g_pearson_ci']:.2f}" if s else ""))
    ax.set_xlabel("log pi_b(j|i), ideal")
    ax.set_ylabel("learned g(j|i)")
    ax.legend(loc="upper left")


def _diagonality(ax, stats):
    """How diagonal each memory is, per position scheme: mean diagonal minus mean off-diagonal entry."""
    schemes = sorted(stats)
    x = np.arange(len(schemes))
    for shift, key, label in ((-0.2, "lambda", "induction key lambda"), (0.2, "beta", "copy beta")):
        mean = [stats[p][f"{key}_diag_minus_off_mean"] for p in schemes]
        ci = [stats[p][f"{key}_diag_minus_off_ci"] if finite(stats[p][f"{key}_diag_minus_off_ci"]) else 0.0 for p in schemes]
        ax.bar(x + shift, mean, width=0.4, yerr=ci, capsize=3, label=label)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, [p.upper() for p in schemes])
    ax.set_ylabel("mean diagonal - mean off-diagonal")
    ax.set_title(f"(f) diagonality of the memories ({seeds_note(list(stats.values()), 'lambda_diag_minus_off')})\n0: no diagonal structure")
    ax.legend()


def plot(data: Path):
    mats = read_table(data, "fig6_matrices")
    bigram = read_table(data, "fig6_bigram")
    alpha = read_table(data, "fig6_alpha")
    stats = {r["pos"]: r for r in read_table(data, "fig6_stats")}
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    s = stats.get("ape")
    _memory(fig, axes[0, 0], mats, "lambda", s, ("(a) induction key lambda[k, j]", "query token k", "previous token j", "lambda[k, j]"))
    _memory(fig, axes[0, 1], mats, "beta", s, ("(b) copy beta[j, k]", "output token j", "attended token k", "beta[j, k]"))
    _bigram(axes[0, 2], bigram, s)
    _alpha(axes[1, 0], alpha, "ape", "position", "position t")
    _alpha(axes[1, 1], alpha, "rpe", "offset", "offset t - s")
    _diagonality(axes[1, 2], stats)
    return finish(fig, data, FIGURE.name, "(a)-(c): the lowest seed of the APE runs; statistics and curves: mean ± 95% t-interval over seeds")


FIGURE = Figure("fig6", "fig6_memories", plot, tables=tables,
                inputs=(Input("fig1_dynamics", "memories", memories), Input("fig4_hijack", "memories", memories)))
