"""Figure 2: attention maps of both layers on one prompt; in-context positions (label >= 2) marked.
Reads data/fig2_attention.csv and data/fig2_prompt.csv.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse, plt, read_table, save  # noqa: E402

NAME = "fig2_attention"


def main(argv=None):
    args = parse(argv, __doc__)
    cells = read_table(args.data, "fig2_attention")
    prompt = sorted(read_table(args.data, "fig2_prompt"), key=lambda r: r["t"])
    T = len(prompt)
    incontext = [r["t"] for r in prompt if r["label"] >= 2]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for ax, layer, title in ((axes[0], 1, "layer 1 (previous-token head)"), (axes[1], 2, "layer 2 (induction head)")):
        A = np.full((T, T), np.nan)
        for c in cells:
            if c["layer"] == layer:
                A[c["t"], c["s"]] = c["weight"]
        im = ax.imshow(A, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        # in-context positions: the target at t+1 is a trigger's repeat, i.e. the query at t is labelled >= 2
        ax.scatter([-1.5] * len(incontext), incontext, marker=">", color="red", s=10, clip_on=False)
        ax.set_xlim(-2, T - 0.5)
        ax.set_title(f"{title}\nred: in-context query positions ({len(incontext)})", fontsize=9)
        ax.set_xlabel("key position s")
        ax.set_ylabel("query position t")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"attention on one prompt of length {T} (seed {prompt[0]['seed']})", fontsize=10)
    return save(fig, args.out, NAME)


if __name__ == "__main__":
    main()
