"""Figure 4: knowledge hijack phase diagram. Over in-context count c and prompt length T, the
share of designed prompts whose in-context token o beats the global favourite b*, for the model
and for the calculator, with the threshold c*(T). Reads data/fig4_hijack.csv, data/fig4_threshold.csv.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finite, parse, plt, read_table, save  # noqa: E402

NAME = "fig4_hijack"


def main(argv=None):
    args = parse(argv, __doc__)
    cells = read_table(args.data, "fig4_hijack")
    thr = sorted(read_table(args.data, "fig4_threshold"), key=lambda r: r["T"])
    Ts = sorted({r["T"] for r in cells})
    cs = sorted({r["c"] for r in cells})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, key, title in ((axes[0], "share_model", "model"), (axes[1], "share_theory", "calculator")):
        M = np.full((len(cs), len(Ts)), np.nan)
        for r in cells:
            M[cs.index(r["c"]), Ts.index(r["T"])] = r[f"{key}_mean"]
        im = ax.imshow(M, origin="lower", aspect="auto", cmap="RdBu_r", vmin=0, vmax=1,
                       extent=(-0.5, len(Ts) - 0.5, min(cs) - 0.5, max(cs) + 0.5))
        x = list(range(len(Ts)))
        for col, lab, ls, color in (("c_star_closed_form", "c*(T) closed form", "-", "k"),
                                    (f"c_star_{'model' if key == 'share_model' else 'theory'}", "c*(T) 50% crossing", "--", "orange")):
            y = [r[f"{col}_mean"] if finite(r[f"{col}_mean"]) else math.nan for r in thr]
            ax.plot(x, y, ls=ls, color=color, marker="o", ms=3, label=lab)
            off = [i for i, v in zip(x, y) if not finite(v)]
            if off:
                ax.scatter(off, [max(cs) + 0.3] * len(off), marker="^", color=color, s=25, clip_on=False)
        ax.set_xticks(x)
        ax.set_xticklabels([str(t) for t in Ts])
        ax.set_xlabel("prompt length T")
        ax.set_title(f"{title}: share of prompts where o beats b*", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("in-context count c of 'q o'")
    fig.colorbar(im, ax=axes, fraction=0.03)
    T_train = cells[0]["T_train"] if cells else "?"
    fig.suptitle(f"knowledge hijack (rpe, trained at T={T_train}); triangles: threshold above the grid or none", fontsize=10)
    fig.tight_layout = lambda *a, **k: None  # colorbar over both axes: keep the manual layout
    fig.subplots_adjust(left=0.07, right=0.88, bottom=0.13, top=0.86, wspace=0.08)
    return save(fig, args.out, NAME)


if __name__ == "__main__":
    main()
