"""Figure 3: length generalisation of APE, RPE, RoPE and three-layer NoPE trained at one length T
and tested at T/2..8T: in-context accuracy, and previous-token attention a1(t, t-1) by position at
the longest test length. Reads data/fig3_length_acc.csv and data/fig3_length_attn.csv.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import band, parse, plt, read_table, save, seeds_note  # noqa: E402

NAME = "fig3_length"
ORDER = ["ape", "rpe", "rope", "nope"]


def main(argv=None):
    args = parse(argv, __doc__)
    acc = read_table(args.data, "fig3_length_acc")
    attn = read_table(args.data, "fig3_length_attn")
    variants = [p for p in ORDER if any(r["pos"] == p for r in acc)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    for i, pos in enumerate(variants):
        rows = sorted((r for r in acc if r["pos"] == pos), key=lambda r: r["ratio"])
        band(ax, [r["ratio"] for r in rows], rows, "acc_incontext", label=pos if pos != "nope" else "nope (3 layers)", color=f"C{i}")
        ax.scatter([r["ratio"] for r in rows], [r["acc_incontext_mean"] for r in rows], color=f"C{i}", s=12)
    ax.set_xscale("log", base=2)
    ax.axvline(1, color="k", lw=0.6, ls=":")
    T_train = acc[0]["T_train"] if acc else "?"
    ax.set_xlabel(f"test length / training length (T_train = {T_train})")
    ax.set_ylabel("in-context accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"(a) in-context accuracy ({seeds_note(acc, 'acc_incontext')}, 95% CI)", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1]
    for i, pos in enumerate(variants):
        rows = sorted((r for r in attn if r["pos"] == pos), key=lambda r: r["position"])
        if rows:
            band(ax, [r["position"] for r in rows], rows, "attn_prev", label=pos, color=f"C{i}")
    if attn:
        ax.axvline(attn[0]["T_train"], color="k", lw=0.6, ls=":")
        ax.set_title(f"(b) layer-1 attention on the previous token, prompts of length {attn[0]['T_test']}", fontsize=9)
    ax.set_xlabel("query position t (dotted: training length)")
    ax.set_ylabel("a1(t, t-1)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return save(fig, args.out, NAME)


if __name__ == "__main__":
    main()
