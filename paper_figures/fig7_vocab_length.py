"""Figure 7: sweep over vocabulary size N x prompt length T (dirichlet source): in-context accuracy,
steps until the induction head forms (first evaluation with in-context accuracy >= 0.5), and the
calculator's top-1 agreement with the model, as heatmaps (means over seeds). Reads data/fig7_grid.csv.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finite, parse, plt, read_table, save  # noqa: E402

NAME = "fig7_vocab_length"
PANELS = [("acc_incontext", "in-context accuracy", "viridis", (0, 1)),
          ("formation_step", "steps until the induction head forms", "magma_r", None),
          ("top1_agreement", "calculator top-1 agreement", "viridis", (0, 1))]


def main(argv=None):
    args = parse(argv, __doc__)
    rows = read_table(args.data, "fig7_grid")
    Ns, Ts = sorted({r["N"] for r in rows}), sorted({r["T"] for r in rows})
    steps = max((r["steps"] for r in rows), default=0)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, title, cmap, lim) in zip(axes, PANELS):
        M = np.full((len(Ns), len(Ts)), np.nan)
        for r in rows:
            M[Ns.index(r["N"]), Ts.index(r["T"])] = r[f"{key}_mean"] if finite(r[f"{key}_mean"]) else np.nan
        im = ax.imshow(M, origin="lower", cmap=cmap, vmin=lim[0] if lim else None, vmax=lim[1] if lim else None, aspect="auto")
        for r in rows:
            i, j = Ns.index(r["N"]), Ts.index(r["T"])
            mean, ci, n = r[f"{key}_mean"], r[f"{key}_ci"], r[f"{key}_n"]
            seeds = r["acc_incontext_n"]
            text = "never" if not finite(mean) else (f"{mean:.0f}" if key == "formation_step" else f"{mean:.2f}")
            if finite(mean) and finite(ci):
                text += f"\n+/-{ci:.0f}" if key == "formation_step" else f"\n+/-{ci:.2f}"
            if key == "formation_step" and n < seeds:
                text += f"\n({n}/{seeds} formed)"
            shade = im.cmap(im.norm(mean)) if finite(mean) else (1, 1, 1, 1)
            dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w" if dark else "k")
        ax.set_xticks(range(len(Ts)))
        ax.set_xticklabels(Ts)
        ax.set_yticks(range(len(Ns)))
        ax.set_yticklabels(Ns)
        ax.set_xlabel("prompt length T")
        ax.set_ylabel("vocabulary size N")
        ax.set_title(title + (f" (of {steps})" if key == "formation_step" else ""), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return save(fig, args.out, NAME)


if __name__ == "__main__":
    main()
