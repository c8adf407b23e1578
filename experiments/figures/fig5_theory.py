"""Figure 5: theory against measurement. On Figure 1's runs, every registered prompt family
(toybigram.theory.families) through the model and the calculator hierarchy: (a) the full calculator's
centred logits against the model's; (b, c) each hierarchy row's in-context R^2 (prompt minus
counterfactual), centred R^2 and top-1 agreement against the numbers it uses, beside the Bayes rule
(0 numbers) and the readout floor (the full read with no induction); (d) the in-context R^2 per
family; (e) the calculator against ideal-memory builds as the width d grows; (f) the full
calculator's agreement per family. Tables fig5_r2, fig5_scatter, fig5_hierarchy,
fig5_hierarchy_by_family and fig5_width.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from experiments.figure import PROMPT_SEED, Build, Figure, Input
from experiments.plotting import UNIT, band, finish, finite, plt, seeds_note
from experiments.runs import MISSING, Collected, Problem, Run, lowest_seed
from experiments.sweeps import Setup
from experiments.tables import read_table, summarise
from toybigram.checkpoint import load_run
from toybigram.errors import UserError
from toybigram.runio import write_json
from toybigram.theory.calculator import Layer1, Strengths, agreement, attention_error, centred, predict, prev_table
from toybigram.theory.compare import StudySizes, run_analysis
from toybigram.theory.strengths import read_strengths
from toybigram.theory.width import ideal_build

WIDTH_BUILDS = "fig5_width"
# Ideal builds of Figure 5b, per profile: widths, vocabulary, prompt length, seeds.
WIDTHS = {"smoke": dict(d=[32, 64], N=8, T=16, seeds=[0]),
          "quick": dict(d=[64, 128, 256, 512, 1024, 2048], N=16, T=64, seeds=[0, 1, 2]),
          "paper": dict(d=[256, 512, 1024, 2048, 4096], N=65, T=128, seeds=[0, 1, 2])}
# The prompts of the per-run analysis: the quick analysis's families at half its fillers and outputs and
# counts 0..4, so that the analysis (and its fit on the next prompt seed) stays a few seconds a run.
PROMPTS = StudySizes(fillers=2, outputs=2, max_count=4, length_prompts=4)
HIERARCHY_METRICS = ["n_parameters", "r2_counterfactual", "r2_centred", "top1_contested", "top1"]
FLOOR = "full_uniform_layer2"  # the readout floor: the full read with no induction
BASELINE = "bayes_rule"


def _subsample(parts: list[tuple[torch.Tensor, torch.Tensor]], points: int, gen: torch.Generator) -> dict:
    """A family's agreement and a subsample of its (calculator, model) centred logits."""
    model, theory = torch.cat([m for m, _ in parts]), torch.cat([t for _, t in parts])
    fit = agreement(model, theory)
    x, y = centred(theory).flatten(), centred(model).flatten()
    keep = torch.randperm(len(x), generator=gen)[:points]
    return {"r2": fit["r2_centered_logits"], "top1": fit["top1_agreement"], "n_rows": fit["n"],
            "predicted": x[keep], "measured": y[keep]}


@torch.no_grad()
def theory_families(run_dir, points: int = 400) -> dict:
    """Figure 5: every registered prompt family (toybigram.theory.families) through the model and the
    calculator hierarchy (compare.run_analysis): the full calculator's agreement per family with a
    subsample of its (predicted, measured) centred logits, and every hierarchy row's metrics."""
    model, cfg = load_run(run_dir)
    done = run_analysis(model, cfg, quick=True, variant="full", seed=PROMPT_SEED, sizes=PROMPTS)
    gen = torch.Generator().manual_seed(0)
    return {"families": {name: _subsample(parts, points, gen) for name, parts in done.study.parts.items() if parts},
            "calculators": done.hierarchy["calculators"], "calculators_by_family": done.hierarchy["calculators_by_family"]}


@torch.no_grad()
def width_agreement(d: int, N: int, T: int, seed: int, prompts: int = 2, alpha: float = 12.0, lam: float = 10.0,
                    beta: float = 8.0) -> dict:
    """Figure 5b: the calculator against an ideal-memory build of width d.

    The build (float64) stores alpha, lambda, beta and g = centred log pi_b (toybigram.theory.ideal);
    prompts come from its trigger sampler. Two calculators: "idealised" (the strengths the build was
    made with, exact previous-token table) and "read" (strengths read back from the weights, full variant).
    """
    model, g, tokens, logits, a2 = ideal_build(d, N, seed, T=T, prompts=prompts, alpha=alpha, lam=lam, beta=beta)
    out = {"d": d, "N": N, "T": T, "seed": seed}
    calculators = {"idealised": Strengths(layer1=Layer1(pos=prev_table(alpha, T)), key=lam, copy=beta, bigram=g, vocab_size=N),
                   "read": read_strengths(model, T, "full")}
    for label, strengths in calculators.items():
        p = predict(strengths, tokens)
        fit = agreement(logits, p.logits)
        out.update({f"r2_{label}": fit["r2_centered_logits"], f"top1_{label}": fit["top1_agreement"],
                    f"attn2_error_{label}": attention_error(a2, p.a2)})
    return out


def _widths(setup: Setup) -> dict:
    if setup.profile not in WIDTHS:
        raise UserError(f"{WIDTH_BUILDS}: no ideal-build sizes for profile {setup.profile!r} (fig5_theory.WIDTHS has {', '.join(WIDTHS)})")
    return WIDTHS[setup.profile]


def width_file(folder: Path, d: int, seed: int) -> Path:
    return Path(folder) / f"d{d}_s{seed}.json"


def make_widths(setup: Setup, log) -> None:
    """The ideal builds of Figure 5b, one JSON file per width and seed."""
    w = _widths(setup)
    start = time.perf_counter()
    for d in w["d"]:
        for seed in w["seeds"]:
            write_json(width_file(setup.build_dir(WIDTH_BUILDS), d, seed), width_agreement(d, w["N"], w["T"], seed))
    log(f"[{WIDTH_BUILDS}] {len(w['d']) * len(w['seeds'])} ideal builds in {time.perf_counter() - start:.0f} s")


def collect_widths(setup: Setup) -> Collected:
    """The ideal builds of Figure 5b (one JSON file per width and seed) as a grid of runs."""
    w = _widths(setup)
    out = Collected(WIDTH_BUILDS, axes={"d": [str(d) for d in w["d"]], "seed": [str(s) for s in w["seeds"]]})
    for d in w["d"]:
        for seed in w["seeds"]:
            file, values = width_file(setup.build_dir(WIDTH_BUILDS), d, seed), {"d": str(d), "seed": str(seed)}
            name = f"d={d},seed={seed}"
            if file.is_file():
                out.runs.append(Run(name, file, values, {"seed": seed}, {}, json.loads(file.read_text())))
            else:
                out.problems.append(Problem(name, None, MISSING, f"no {file}"))
    return out


def _hierarchy_rows(runs: list[Run]) -> tuple[list[dict], list[dict]]:
    """Per run and hierarchy row: the overall metrics, and r2_counterfactual / top1 per family (rows in the runs' order)."""
    overall, by_family = [], []
    for run in runs:
        for order, (name, row) in enumerate(run.result["calculators"].items()):
            overall.append({"calculator": name, "order": order, "seed": run.seed, **{k: row[k] for k in HIERARCHY_METRICS}})
        for family, table in run.result["calculators_by_family"].items():
            by_family += [{"calculator": name, "family": family, "seed": run.seed, "r2_counterfactual": row["r2_counterfactual"],
                           "top1": row["top1"]} for name, row in table.items()]
    return overall, by_family


def tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    r2, scatter = [], []
    runs = c["fig1_dynamics"].runs
    for run in runs:
        for fam, v in run.result["families"].items():
            r2.append({"family": fam, "seed": run.seed, "r2": v["r2"], "top1": v["top1"]})
    first = lowest_seed(runs)
    if first is not None:
        for fam, v in first.result["families"].items():
            scatter += [{"family": fam, "predicted": x, "measured": y, "r2_seed": v["r2"]} for x, y in zip(v["predicted"], v["measured"])]
    overall, by_family = _hierarchy_rows(runs)
    width = sorted((run.result for run in c[WIDTH_BUILDS].runs), key=lambda r: (r["d"], r["seed"]))
    return {"fig5_r2": summarise(r2, ["family"], ["r2", "top1"]),
            "fig5_scatter": scatter,
            "fig5_hierarchy": summarise(sorted(overall, key=lambda r: r["order"]), ["calculator"], HIERARCHY_METRICS),
            "fig5_hierarchy_by_family": summarise(by_family, ["calculator", "family"], ["r2_counterfactual", "top1"]),
            "fig5_width": summarise(width, ["d", "N", "T"], ["r2_idealised", "r2_read", "top1_idealised", "top1_read", "attn2_error_idealised"])}


def _agreement_by_width(ax, width):
    d = [r["d"] for r in width]
    band(ax, d, width, "r2_idealised", label="R², idealised", color="C0", limits=(-math.inf, 1.0))
    band(ax, d, width, "r2_read", label="R², read", color="C2", limits=(-math.inf, 1.0))
    band(ax, d, width, "top1_idealised", label="top-1, idealised", color="C0", ls="--", limits=UNIT)
    band(ax, d, width, "top1_read", label="top-1, read", color="C2", ls="--", limits=UNIT)
    ax.set_xscale("log", base=2)
    ax.set_xticks(d, [str(x) for x in d])
    ax.minorticks_off()
    ax.set_xlabel("width d (ideal-memory builds)")
    ax.set_ylabel("centred-logit R² / top-1 agreement")
    N, T = (width[0]["N"], width[0]["T"]) if width else ("?", "?")
    ax.set_title(f"(e) full read vs width d (N={N}, T={T}, {seeds_note(width, 'r2_idealised')})\n"
                 "idealised: the strengths built in; read: read back from the weights")
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom - 0.2 * (top - bottom), top)  # room for the legend under the curves
    ax.legend(fontsize=8, loc="lower center", ncol=2)


def _scatter(ax, scatter: list[dict], r2: dict, families: list[str]):
    """Calculator against model centred logits, every family in its colour, on equal axes with y = x."""
    values = [p["predicted"] for p in scatter] + [p["measured"] for p in scatter]
    lo, hi = (min(values), max(values)) if values else (-1.0, 1.0)
    pad = 0.05 * (hi - lo)
    for i, fam in enumerate(families):
        pts = [p for p in scatter if p["family"] == fam]
        ax.scatter([p["predicted"] for p in pts], [p["measured"] for p in pts], s=5, alpha=0.35, lw=0, color=f"C{i}",
                   label=f"{fam}: R² {r2[fam]['r2_mean']:.2f}")
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=0.8, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_title("(a) full calculator against the model, by prompt family\n(lowest seed's rows; R²: mean over seeds)")
    ax.set_xlabel("calculator (centred logit)")
    ax.set_ylabel("model (centred logit)")
    ax.legend(loc="upper left", markerscale=3)


def _errorbar(ax, rows: list[dict], key: str, filled: bool, label: str | None) -> None:
    """Each hierarchy row at its parameter count: mean of ``key`` with its 95% interval over seeds."""
    for i, row in enumerate(rows):
        ci = row[f"{key}_ci"] if finite(row[f"{key}_ci"]) else 0.0
        ax.errorbar(row["n_parameters_mean"], row[f"{key}_mean"], yerr=ci, fmt="o" if filled else "s", ms=6, capsize=3,
                    color=f"C{i}", mfc=f"C{i}" if filled else "white", label=label if i == 0 else None)


def _parameter_axis(ax, rows: list[dict], names: bool = True) -> None:
    """A symmetric-log x axis of parameter counts (0 included), with ``names`` each row named above the axis."""
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(-0.5, 10 ** math.ceil(math.log10(max(max(r["n_parameters_mean"] for r in rows), 10)) + 0.3))
    ax.set_xlabel("numbers the calculator uses (read from the weights or fitted)")
    for i, row in enumerate(rows if names else []):
        ax.annotate(row["calculator"].replace("_", " "), (row["n_parameters_mean"], 0), xycoords=("data", "axes fraction"),
                    xytext=(0, 16), textcoords="offset points", rotation=90, fontsize=8, color=f"C{i}", ha="center", va="bottom")


def _reference(ax, rows: list[dict], name: str, key: str, ls: str, text: str) -> None:
    """A horizontal line at row ``name``'s mean ``key``: a baseline the other rows are read against."""
    row = next((r for r in rows if r["calculator"] == name), None)
    if row is not None:
        ax.axhline(row[f"{key}_mean"], color="0.4", ls=ls, lw=1, label=f"{text} ({row[f'{key}_mean']:.2f})")


def _hierarchy_r2(ax, rows: list[dict]) -> None:
    """(b) In-context R² (prompt minus counterfactual) and centred-logit R² against the parameter count."""
    _errorbar(ax, rows, "r2_counterfactual", True, "R² of the logit change, prompt - counterfactual")
    _errorbar(ax, rows, "r2_centred", False, "centred-logit R²")
    _reference(ax, rows, FLOOR, "r2_centred", "--", "readout floor: centred R² with no induction")
    ax.axhline(0, color="k", lw=0.6)
    lows = [r["r2_counterfactual_mean"] for r in rows if finite(r["r2_counterfactual_mean"])]
    ax.set_ylim(max(-1.0, min(lows + [0.0]) - 0.1), 1.3)
    ax.set_ylabel("R² with the model (mean, 95% interval)")
    _parameter_axis(ax, rows)
    ax.set_title(f"(b) how many numbers buy how much R² ({seeds_note(rows, 'r2_counterfactual')})\n"
                 "a mean below -1: a triangle on the lower edge, with its value")
    ax.legend(loc="upper left", fontsize=8)
    for i, row in enumerate(rows):  # off-scale means: a marker on the lower edge, with their value
        if finite(row["r2_counterfactual_mean"]) and row["r2_counterfactual_mean"] < -1:
            ax.plot(row["n_parameters_mean"], -0.97, marker="v", ms=7, color=f"C{i}", clip_on=False)
            ax.annotate(f"{row['r2_counterfactual_mean']:.1f}", (row["n_parameters_mean"], -0.97), fontsize=8,
                        xytext=(6, -3), textcoords="offset points", color=f"C{i}")


def _hierarchy_top1(ax, rows: list[dict]) -> None:
    """(c) Top-1 agreement on contested rows (evidence against the stored bigram) and on all rows."""
    _errorbar(ax, rows, "top1_contested", True, "top-1 on contested rows")
    _errorbar(ax, rows, "top1", False, "top-1 on all rows")
    _reference(ax, rows, BASELINE, "top1_contested", ":", "Bayes rule (0 numbers), contested")
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("top-1 agreement with the model")
    _parameter_axis(ax, rows, names=False)
    ax.set_title("(c) which token wins (calculators coloured as in b)\n"
                 "contested rows: the Bayes rule's favourite is not the bigram's")
    ax.legend(loc="upper left", fontsize=8)


def _counterfactual_by_family(ax, by_family: list[dict], calculators: list[str]) -> None:
    """(d) R² of the logit change per designed family and hierarchy row: where each calculator fails."""
    fams = list(dict.fromkeys(r["family"] for r in by_family if finite(r["r2_counterfactual_mean"])))
    width = 0.8 / max(1, len(calculators))
    for i, name in enumerate(calculators):
        cells = {r["family"]: r for r in by_family if r["calculator"] == name}
        means = [cells[f]["r2_counterfactual_mean"] if f in cells and finite(cells[f]["r2_counterfactual_mean"]) else math.nan
                 for f in fams]
        x = np.arange(len(fams)) + (i - (len(calculators) - 1) / 2) * width
        ax.bar(x, np.clip(means, -1, None), width=width, color=f"C{i}", label=name.replace("_", " "))
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(np.arange(len(fams)), [f.replace("_", "\n") for f in fams])
    ax.set_ylim(-1.0, 1.45)
    ax.set_yticks([-1, -0.5, 0, 0.5, 1.0])
    ax.set_ylabel("R² of the logit change (mean over seeds)")
    ax.set_title("(d) in-context R² by family (bars below -1 cut at -1)")
    ax.legend(loc="upper center", ncol=3, fontsize=7.5)


def _by_family(ax, r2, fams):
    """R² and top-1 agreement of the full calculator per family (mean over seeds, 95% interval clipped to the range)."""
    x = np.arange(len(fams))
    for shift, key, label in ((-0.2, "r2", "centred-logit R²"), (0.2, "top1", "top-1 agreement")):
        mean = [r2[f][f"{key}_mean"] for f in fams]
        ci = [r2[f][f"{key}_ci"] if finite(r2[f][f"{key}_ci"]) else 0.0 for f in fams]
        low = [m - max(m - c, -math.inf if key == "r2" else 0.0) for m, c in zip(mean, ci)]
        high = [min(m + c, 1.0) - m for m, c in zip(mean, ci)]
        ax.bar(x + shift, mean, width=0.4, yerr=[low, high], capsize=3, label=label)
    ax.set_xticks(x, fams)
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("agreement with the model")
    ax.set_title(f"(f) full calculator by prompt family ({seeds_note(list(r2.values()), 'r2')})")
    ax.legend(loc="upper center", ncol=2)


def plot(data: Path):
    r2 = {r["family"]: r for r in read_table(data, "fig5_r2")}
    hierarchy = read_table(data, "fig5_hierarchy")
    width = sorted(read_table(data, "fig5_width"), key=lambda r: r["d"])
    fams = list(r2)
    fig, axes = plt.subplots(2, 3, figsize=(15, 10))
    _scatter(axes.flat[0], read_table(data, "fig5_scatter"), r2, fams)
    _hierarchy_r2(axes.flat[1], hierarchy)
    _hierarchy_top1(axes.flat[2], hierarchy)
    _counterfactual_by_family(axes.flat[3], read_table(data, "fig5_hierarchy_by_family"), [r["calculator"] for r in hierarchy])
    _agreement_by_width(axes.flat[4], width)
    _by_family(axes.flat[5], r2, fams)
    return finish(fig, data, FIGURE.name, "calculator rows and families as registered (toybigram.theory.families); "
                  "scalar fitted on prompt seed + 1, scored on another; mean ± 95% t-interval over seeds")


FIGURE = Figure("fig5", "fig5_theory", plot, inputs=(Input("fig1_dynamics", "theory", theory_families),), tables=tables,
                builds=(Build(WIDTH_BUILDS, make_widths, collect_widths, kind="ideal-memory builds"),))
