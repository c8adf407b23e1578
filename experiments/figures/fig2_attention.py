"""Figure 2: attention maps of both layers on one prompt of Figure 1's runs (the lowest seed);
in-context positions (label >= 2) marked. Tables fig2_attention (the weights) and fig2_prompt.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from experiments.figure import PROMPT_SEED, Figure, Input
from experiments.plotting import colorbar, finish, plt
from experiments.runs import Collected, lowest_seed
from experiments.tables import read_table
from toybigram.checkpoint import load_run
from toybigram.factory import make_chain, make_sampler
from toybigram.hooks import circuit_pattern_hooks
from toybigram.theory.prompts import length_prompts


@torch.no_grad()
def attention_map(run_dir, length: int = 64) -> dict:
    """Figure 2: both layers' attention on one prompt from the training distribution."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T = min(length, int(cfg.data.seq_len))
    batch = length_prompts(make_sampler(cfg.data, chain, torch.device("cpu"), PROMPT_SEED), T, 16)
    # the prompt of the batch with the most in-context positions, so the marks have something to mark
    pick = int((batch.labels >= 2).sum(1).argmax())
    names = circuit_pattern_hooks(model.spec.n_layers)
    _, cache = model.run_with_cache(batch.inputs[pick:pick + 1], names_filter=list(names))
    return {"T": T, "tokens": batch.inputs[pick], "labels": batch.labels[pick],
            "layer1": cache[names[0]][0], "layer2": cache[names[1]][0]}


def tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    run = lowest_seed(c["fig1_dynamics"].runs)
    if run is None:
        return {"fig2_attention": [], "fig2_prompt": []}
    r = run.result
    cells = [{"layer": layer, "t": t, "s": s, "weight": r[key][t][s]}
             for layer, key in ((1, "layer1"), (2, "layer2")) for t in range(r["T"]) for s in range(t + 1)]
    prompt = [{"t": t, "token": r["tokens"][t], "label": r["labels"][t], "seed": run.seed} for t in range(r["T"])]
    return {"fig2_attention": cells, "fig2_prompt": prompt}


def plot(data: Path):
    cells = read_table(data, "fig2_attention")
    prompt = sorted(read_table(data, "fig2_prompt"), key=lambda r: r["t"])
    T = len(prompt)
    incontext = [r["t"] for r in prompt if r["label"] >= 2]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4))
    for ax, layer, title in ((axes[0], 1, "layer 1 (previous-token head)"), (axes[1], 2, "layer 2 (induction head)")):
        A = np.full((T, T), np.nan)
        for c in cells:
            if c["layer"] == layer:
                A[c["t"], c["s"]] = c["weight"]
        im = ax.imshow(A, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        # in-context positions: the target at t+1 is a trigger's repeat, i.e. the query at t is labelled >= 2
        margin = max(1.5, T / 25)
        ax.scatter([-margin] * len(incontext), incontext, marker=">", color="red", s=28, clip_on=False, zorder=3)
        ax.set_xlim(-margin - 1, T - 0.5)
        ax.set_title(f"{title}\nred arrows: in-context query positions ({len(incontext)})")
        ax.set_xlabel("key position s")
        ax.set_ylabel("query position t")
        colorbar(fig, im, ax, "attention weight a(t, s)", fraction=0.046)
    fig.suptitle(f"attention of both layers on one prompt of length {T} (seed {prompt[0]['seed']})")
    return finish(fig, data, FIGURE.name, f"shown: seed {prompt[0]['seed']}, the prompt of 16 from the training distribution with the most in-context positions")


FIGURE = Figure("fig2", "fig2_attention", plot, inputs=(Input("fig1_dynamics", "attention", attention_map),), tables=tables)
