"""Figure 8: repetition neurons of SmolLM2-135M-Instruct. Top row, deactivating K neurons (set to 0) while
continuing held-out looping texts; middle row, activating them (+1) while continuing plain prompts. Per row:
the share of outputs that loop for the top repetition neurons against uniform random, layer-matched random and
most-negative-delta neurons; the perplexity cost of the same edits; the effect on loops against that cost, to
compare the sets at equal damage. Bottom: where the top repetition neurons sit. Reads
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
EXPERIMENTS = {"deactivate": "deactivating K neurons (set to 0)", "activate": "activating K neurons (+1)"}
TEXTS = {"python_docs": "CPython's reference prose", "shakespeare": "Shakespeare's plays"}


def caption(setting: dict, experiments: list[str]) -> str:
    text = TEXTS.get(setting["ppl_text"], setting["ppl_text"])
    edits = [f"{setting['n_heldout']} held-out looping prompts (cut before the loop's second copy), neurons set to 0"]
    if "activate" in experiments:
        edits.append(f"{setting['n_plain']} plain prompts (first {setting.get('activate_prompt_len', 50)} tokens), "
                     f"neurons +{setting.get('activate_value', 1.0):g}")
    windows = f" in {setting['ppl_windows']} windows" if setting.get("ppl_windows") else " in windows"
    return (f"{setting['model']}; neurons ranked on {setting['n_rank']} looping texts; "
            f"{'; '.join(edits)}; {setting['new_tokens']} greedy tokens; K = 0 is the unedited model; "
            f"random sets: {setting['random_draws']} draw(s) per K for loops, {setting['ppl_draws']} for perplexity "
            f"(shaded: range over draws); perplexity on {setting['ppl_tokens']} tokens{windows} spread over {text}; "
            f"bars: 95% paired bootstrap intervals over prompts (loops) and windows (perplexity).")


def draw_experiment(axes, experiment: str, loops, ppl, damage) -> None:
    """One row: loop rate, perplexity cost and effect against cost for one kind of edit."""
    ax, bx, cx = axes
    what = EXPERIMENTS[experiment]
    draw_rates(ax, [r for r in loops if r["experiment"] == experiment], experiment)
    ax.set_title(f"{what}: outputs that loop")
    if ppl:
        draw_perplexity(bx, ppl, experiment)
    bx.set_title(f"{what}: perplexity cost")
    if damage:
        draw_effect_vs_damage(cx, damage, experiment)
    cx.set_title(f"loops {'removed' if experiment == 'deactivate' else 'added'} against cost (labels: K of the top set)",
                 fontsize=10)


def plot(data: Path):
    loops = read_table(data, f"{NAME}_loops")
    ppl = read_table(data, f"{NAME}_perplexity")
    damage = read_table(data, f"{NAME}_damage")
    layers = read_table(data, f"{NAME}_layers")
    setting = {r["key"]: r["value"] for r in read_table(data, f"{NAME}_setting")}
    experiments = [e for e in EXPERIMENTS if any(r["experiment"] == e for r in loops)]
    fig = plt.figure(figsize=(16, 5.2 * len(experiments) + 3.6))
    grid = fig.add_gridspec(len(experiments) + 1, 3, height_ratios=[1] * len(experiments) + [0.6])
    for row, experiment in enumerate(experiments):
        draw_experiment([fig.add_subplot(grid[row, col]) for col in range(3)], experiment, loops, ppl, damage)
    fig.axes[0].legend(loc="lower left")
    dx = fig.add_subplot(grid[-1, :])
    dx.bar([r["layer"] for r in layers], [r["count"] for r in layers], color="C3")
    dx.set_xlabel("layer")
    dx.set_ylabel(f"neurons in the top {100 * float(setting['top_fraction']):.1f}%\nby delta")
    dx.set_title("where the top repetition neurons sit")
    place_caption(fig, caption(setting, experiments) + " Colours as in the first panel.", lines=3)
    return fig


FIGURE = Figure("fig8", NAME, plot)
