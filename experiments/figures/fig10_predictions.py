"""Figure 10: predictions written before the model is measured. The threshold law's numbers are read
from the seed-0 run (toybigram.theory.predict) and its predictions scored on the other seeds
(toybigram.theory.score) at prompt lengths T0/4 .. 8 T0: the hijack threshold c*(T) predicted
against measured, beside the closed form and the Bayes rule, per (q, o) pair, and compete winners.
Tables fig10_thresholds, fig10_pairs, fig10_compete and fig10_scores.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from experiments.figure import PROMPT_SEED, Figure, Input
from experiments.plotting import caption, finite, plt, run_caption
from experiments.runs import Collected
from experiments.tables import read_table, summarise
from toybigram.checkpoint import load_run
from toybigram.factory import make_chain
from toybigram.theory.predict import SETTINGS, chosen_lengths, make_predictions, source_record
from toybigram.theory.score import compare, measure
from toybigram.theory.threshold import ThresholdLaw

FIT_SEED = 0  # the run whose weights give the law's numbers; every other seed is scored
MAX_COUNT = 16
PREDICTOR_STYLE = {"measured": ("model (measured)", "orange", "o"), "law": ("law, numbers from seed 0", "tab:green", "D"),
                   "closed_form": ("closed form", "k", "s"), "bayes": ("Bayes rule (c* = 1)", "tab:blue", "v")}


def prediction_record(run_dir) -> dict:
    """Per run: the predictions its weights give (used when it is the fit run) and, for every other
    run, the model's measurements on the same prompt sets (which depend on the data alone)."""
    model, cfg = load_run(run_dir)
    settings = SimpleNamespace(**{**SETTINGS, "max_count": MAX_COUNT, "prompt_seed": PROMPT_SEED})
    lengths = chosen_lengths(settings, int(cfg.data.seq_len), model.positional.max_length(model.spec))
    law = ThresholdLaw.from_model(model, max(lengths), source_record(Path(run_dir), cfg))
    predictions = make_predictions(law, cfg, settings, lengths)
    record = {"seed": int(cfg.seed), "predictions": predictions}
    if int(cfg.seed) != FIT_SEED:
        record["measured"] = measure(model, make_chain(cfg.data), predictions)
    return record


def _closed_form_by_length(predictions: dict) -> dict[int, float]:
    """The closed form's c*(T): the median over the hijack pairs (as figure 4)."""
    by_T: dict[int, list[float]] = {}
    for row in predictions["thresholds"]:
        if row["family"] == "hijack":
            by_T.setdefault(row["T"], []).append(math.inf if row["c_star_closed_form"] is None else row["c_star_closed_form"])
    return {T: sorted(v)[len(v) // 2] for T, v in by_T.items()}


def _scored_rows(seed: int, score: dict, closed: dict[int, float]) -> dict[str, list[dict]]:
    """One scored seed's rows of every table."""
    thr = [{"seed": seed, "T": r["T"], "c_star_measured": r["c_star_measured"], "c_star_law": r["c_star_law"],
            "c_star_closed_form": closed[r["T"]], "c_star_bayes": r["c_star_bayes"]}
           for r in score["aggregate"] if r["family"] == "hijack"]
    pairs = [{"seed": seed, **{k: r[k] for k in ("family", "T", "q", "o", "b", "c_star_measured", "c_star_law",
                                                   "c_star_closed_form", "c_star_bayes")}} for r in score["thresholds"]]
    compete = [{"seed": seed, **r} for r in score["compete"]["by_length"]]
    scores = [{"seed": seed, "family": family, "predictor": name, **m}
              for family, metrics in score["threshold_metrics"].items() for name, m in metrics.items()]
    return {"thresholds": thr, "pairs": pairs, "compete": compete, "scores": scores}


def tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    runs = {run.result["seed"]: run.result for run in c["fig10_predictions"].runs}
    fit = runs[FIT_SEED]["predictions"]
    closed = _closed_form_by_length(fit)
    rows: dict[str, list[dict]] = {"thresholds": [], "pairs": [], "compete": [], "scores": []}
    for seed, record in sorted(runs.items()):
        if seed == FIT_SEED:
            continue
        for name, part in _scored_rows(seed, compare(fit, record["measured"]), closed).items():
            rows[name] += part
    columns = [f"c_star_{k}" for k in PREDICTOR_STYLE]
    return {"fig10_thresholds": summarise(rows["thresholds"], ["T"], columns),
            "fig10_pairs": rows["pairs"],
            "fig10_compete": summarise(rows["compete"], ["T"], ["law_agreement", "bayes_agreement", "model_majority_share"]),
            "fig10_scores": summarise(rows["scores"], ["family", "predictor"], ["within_one", "mae_log"])}


def _thresholds_panel(ax, thr, cap: int):
    """(a) c*(T) measured against predicted: means over the scored seeds with 95% intervals."""
    x = np.arange(len(thr))
    for i, (key, (label, color, marker)) in enumerate(PREDICTOR_STYLE.items()):
        col = f"c_star_{key}"
        y = [r[f"{col}_mean"] if finite(r[f"{col}_mean"]) else math.nan for r in thr]
        err = [r[f"{col}_ci"] if finite(r.get(f"{col}_ci")) else 0.0 for r in thr]
        ax.errorbar(x + 0.08 * (i - 1.5), y, yerr=err, color=color, marker=marker, ms=5, capsize=3, label=label)
        seeds = max(int(r.get(f"{col}_n") or 0) for r in thr)
        for xi, r in zip(x, thr):
            if int(r.get(f"{col}_n") or 0) < seeds or not finite(r[f"{col}_mean"]):
                ax.scatter([xi + 0.08 * (i - 1.5)], [cap + 1], marker="^", color=color, s=40)
    ax.set_xticks(x)
    ax.set_xticklabels([str(r["T"]) for r in thr])
    ax.set_xlabel("prompt length T")
    ax.set_ylabel("threshold count c*(T)")
    ax.set_ylim(0, cap + 1.6)
    ax.set_title(f"(a) hijack threshold: predicted vs measured\n(triangle: beyond c = {cap} for a scored seed)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")


def _pairs_panel(ax, pairs, scores, cap: int):
    """(b) per (q, o) pair and length: the law's c* against the measured one; the title scores every predictor."""
    hijack = [r for r in pairs if r["family"] == "hijack"]

    def capped(value):
        return min(value if finite(value) else cap + 1, cap + 1)

    rng = np.random.default_rng(0)
    Ts = sorted({r["T"] for r in hijack})
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(Ts)))
    for T, color in zip(Ts, colors):
        rows = [r for r in hijack if r["T"] == T]
        m = np.array([capped(r["c_star_measured"]) for r in rows]) + rng.uniform(-0.15, 0.15, len(rows))
        ax.scatter(m, [capped(r["c_star_law"]) for r in rows], color=color, s=18, label=f"T={T}")
    ax.plot([0, cap + 1], [0, cap + 1], color="0.4", lw=1)
    ax.fill_between([0, cap + 1], [-1, cap], [1, cap + 2], color="0.85", zorder=0, label="within one count")
    ax.set_xlim(-0.5, cap + 1.5)
    ax.set_ylim(-0.5, cap + 1.5)
    ax.set_xlabel(f"measured c* of the pair (c = {cap + 1}: beyond the grid)")
    ax.set_ylabel("law's predicted c*")
    note = ", ".join(f"{PREDICTOR_STYLE[r['predictor']][0].split(',')[0]}: {r['within_one_mean']:.2f} / {r['mae_log_mean']:.2f}"
                     for r in scores if r["family"] == "hijack" and r["predictor"] in PREDICTOR_STYLE)
    ax.set_title("(b) per pair: within one count / mean |log(1+c*) error|\n" + note, fontsize=9)
    ax.legend(fontsize=7, loc="lower right", ncol=2)


def _compete_panel(ax, compete):
    """(c) compete prompts (o1 the majority, o2's pair last): how often each rule names the model's winner."""
    x = np.arange(len(compete))
    for shift, col, label, color in ((-0.2, "law_agreement", "law", "tab:green"),
                                     (0.2, "bayes_agreement", "Bayes rule (majority)", "tab:blue")):
        ax.bar(x + shift, [r[f"{col}_mean"] for r in compete], width=0.4, color=color, label=label,
               yerr=[r[f"{col}_ci"] if finite(r[f"{col}_ci"]) else 0 for r in compete], capsize=2,
               error_kw={"ecolor": "0.45", "lw": 0.8})
    ax.set_xticks(x)
    ax.set_xticklabels([str(r["T"]) for r in compete])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("prompt length T")
    ax.set_ylabel("share of prompts whose winner (o1 or o2) it names")
    ax.set_title("(c) compete: o1 two or three times, o2 once as the last pair\n(95% intervals over the scored seeds)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")


def plot(data: Path):
    thr = sorted(read_table(data, "fig10_thresholds"), key=lambda r: r["T"])
    pairs = read_table(data, "fig10_pairs")
    compete = sorted(read_table(data, "fig10_compete"), key=lambda r: r["T"])
    scores = read_table(data, "fig10_scores")
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
    _thresholds_panel(axes[0], thr, MAX_COUNT)
    _pairs_panel(axes[1], pairs, scores, MAX_COUNT)
    _compete_panel(axes[2], compete)
    fig.suptitle("predictions written before the model is measured: threshold law read from seed 0, scored on the other seeds")
    seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in pairs}))
    caption(fig, run_caption(data, FIGURE.name, f"law read from seed {FIT_SEED}, scored on seeds {seeds}; thresholds beyond "
                             f"c={MAX_COUNT} drawn at {MAX_COUNT + 1} (b) or left out of the mean (a)"))
    return fig


FIGURE = Figure("fig10", "fig10_predictions", plot, inputs=(Input("fig10_predictions", "predictions", prediction_record),),
                tables=tables)
