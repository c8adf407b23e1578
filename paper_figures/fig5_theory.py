"""Figure 5: theory against measurement. Predicted (calculator, strengths read from the weights)
against measured centred logits per prompt family with R^2; and the calculator's agreement with
ideal-memory builds as the width d grows. Reads data/fig5_scatter.csv, data/fig5_r2.csv, data/fig5_width.csv.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import band, parse, plt, read_table, save, seeds_note  # noqa: E402

NAME = "fig5_theory"
FAMILIES = ["length", "hijack", "compete", "dilution"]


def main(argv=None):
    args = parse(argv, __doc__)
    scatter = read_table(args.data, "fig5_scatter")
    r2 = {r["family"]: r for r in read_table(args.data, "fig5_r2")}
    width = sorted(read_table(args.data, "fig5_width"), key=lambda r: r["d"])
    fams = [f for f in FAMILIES if f in r2]
    fig, axes = plt.subplots(1, len(fams) + 1, figsize=(3.2 * (len(fams) + 1), 3.4))
    for ax, fam in zip(axes, fams):
        pts = [r for r in scatter if r["family"] == fam]
        x, y = [p["predicted"] for p in pts], [p["measured"] for p in pts]
        ax.scatter(x, y, s=3, alpha=0.35)
        if x:
            lo, hi = min(x + y), max(x + y)
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.6)
        s = r2[fam]
        ax.set_title(f"{fam}: R^2 = {s['r2_mean']:.2f} +/- {s['r2_ci']:.2f}\ntop-1 {s['top1_mean']:.2f} ({seeds_note([s], 'r2')})", fontsize=8)
        ax.set_xlabel("calculator (centred logit)")
    axes[0].set_ylabel("model (centred logit)")
    ax = axes[-1]
    d = [r["d"] for r in width]
    band(ax, d, width, "r2_idealised", label="idealised calculator", color="C0")
    band(ax, d, width, "r2_read", label="strengths read from the weights", color="C2")
    band(ax, d, width, "top1_idealised", label="top-1 agreement (idealised)", color="C0", ls="--")
    band(ax, d, width, "top1_read", label="top-1 agreement (read)", color="C2", ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width d (ideal builds)")
    ax.set_ylabel("centred-logit R^2 / top-1 agreement")
    N = width[0]["N"] if width else "?"
    ax.set_title(f"agreement vs d, N={N} ({seeds_note(width, 'r2_idealised')})", fontsize=8)
    ax.legend(fontsize=6)
    return save(fig, args.out, NAME)


if __name__ == "__main__":
    main()
