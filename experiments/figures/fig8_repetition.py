"""Figure 8: repetition neurons of SmolLM2-135M-Instruct. Deactivating K neurons while continuing held-out
looping texts: (a) share still looping for the top repetition neurons against uniform random, layer-matched
random and most-negative-delta neurons; (b) the perplexity cost of the same edits; (c) loops removed against
that cost, to compare the sets at equal damage; (d) where the top repetition neurons sit. Reads
data/fig8_repetition_{loops,perplexity,damage,layers,setting}.csv, written by
``python -m toybigram.repetition.export RUN_DIR`` from a repetition study (not from sweeps).
"""
from __future__ import annotations

from pathlib import Path

from experiments.figure import Figure
from experiments.plotting import caption as place_caption, plt
from experiments.tables import read_table
from toybigram.repetition.plots import draw_effect_vs_damage, draw_perplexity, draw_rates

NAME = "fig8_repetition"
EXPERIMENT = "deactivate"
TEXTS = {"python_docs": "CPython's reference prose", "shakespeare": "Shakespeare's plays"}


def caption(setting: dict) -> str:
    text = TEXTS.get(setting["ppl_text"], setting["ppl_text"])
    return (f"{setting['model']}; neurons ranked on {setting['n_rank']} looping texts; {setting['n_heldout']} held-out looping prompts "
            f"(cut before the loop's second copy) continued {setting['new_tokens']} greedy tokens with the K neurons set to 0; "
            f"K = 0 is the unedited model; random sets: {setting['random_draws']} draw(s) per K for loops, "
            f"{setting['ppl_draws']} for perplexity; perplexity on {setting['ppl_tokens']} tokens in windows spread over {text}; "
            f"bars: 95% paired bootstrap intervals over prompts (loops) and windows (perplexity).")


def plot(data: Path):
    loops = [r for r in read_table(data, f"{NAME}_loops") if r["experiment"] == EXPERIMENT]
    ppl = read_table(data, f"{NAME}_perplexity")
    damage = read_table(data, f"{NAME}_damage")
    layers = read_table(data, f"{NAME}_layers")
    setting = {r["key"]: r["value"] for r in read_table(data, f"{NAME}_setting")}
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.4))
    ax, bx, cx, dx = axes.flat
    draw_rates(ax, loops, EXPERIMENT)
    ax.set_title("(a) loops left after deactivating K neurons")
    ax.legend(loc="lower left")
    if ppl:
        draw_perplexity(bx, ppl, EXPERIMENT)
    bx.set_title("(b) perplexity cost of the same edits")
    if damage:
        draw_effect_vs_damage(cx, damage, EXPERIMENT)
    cx.set_title("(c) loops removed against perplexity cost (labels: K of the top set, from 250)")
    dx.bar([r["layer"] for r in layers], [r["count"] for r in layers], color="C3")
    dx.set_xlabel("layer")
    dx.set_ylabel(f"neurons in the top {100 * float(setting['top_fraction']):.1f}% by delta")
    dx.set_title("(d) where the top repetition neurons sit")
    place_caption(fig, caption(setting) + " Colours as in (a).", lines=3)
    return fig


FIGURE = Figure("fig8", NAME, plot)
