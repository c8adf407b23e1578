"""Figure 6: learned memories against the ideal ones. Induction-key lambda and copy beta matrices
(ideal: diagonal), the learned global map g against log pi_b, and the previous-token strength
alpha_t by position (APE) and per offset (RPE). Reads data/fig6_*.csv.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import band, parse, plt, read_table, save  # noqa: E402

NAME = "fig6_memories"


def _matrix(rows, name):
    cells = [r for r in rows if r["matrix"] == name]
    n = max(r["row"] for r in cells) + 1
    M = np.zeros((n, n))
    for r in cells:
        M[r["row"], r["col"]] = r["value"]
    return M


def main(argv=None):
    args = parse(argv, __doc__)
    mats = read_table(args.data, "fig6_matrices")
    bigram = read_table(args.data, "fig6_bigram")
    alpha = read_table(args.data, "fig6_alpha")
    stats = {r["pos"]: r for r in read_table(args.data, "fig6_stats")}
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.6))
    for ax, name, label in ((axes[0], "lambda", "induction key lambda[k, j]\n(query k, previous token j)"),
                            (axes[1], "beta", "copy beta[j, k]\n(output j, attended k)")):
        if not any(r["matrix"] == name for r in mats):
            ax.text(0.5, 0.5, "no runs", ha="center", transform=ax.transAxes)
            continue
        M = _matrix(mats, name)
        lim = np.abs(M).max() or 1.0
        im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
        key = f"{name}_diag_minus_off"
        s = stats.get("ape")
        extra = f"\ndiag - off-diag = {s[key + '_mean']:.2f} +/- {s[key + '_ci']:.2f}" if s else ""
        ax.set_title(f"{label} (ideal: diagonal){extra}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[2]
    ax.scatter([r["log_pi"] for r in bigram], [r["g"] for r in bigram], s=4, alpha=0.5)
    s = stats.get("ape")
    ax.set_title(f"global map g vs log pi_b (centred)\nPearson r = {s['g_pearson_mean']:.2f} +/- {s['g_pearson_ci']:.2f}" if s else "g vs log pi_b", fontsize=8)
    ax.set_xlabel("log pi_b(j|i) (ideal)")
    ax.set_ylabel("learned g(j|i)")
    for ax, pos, kind, xlabel in ((axes[3], "ape", "position", "position t"), (axes[4], "rpe", "offset", "offset t - s")):
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
    return save(fig, args.out, NAME)


if __name__ == "__main__":
    main()
