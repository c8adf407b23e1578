"""Figure 9: where the theory holds. On models of growing width d, the scalar calculator's ladder of named
terms (toybigram.theory.baselines.TERMS, fitted on one prompt seed and scored on another): (a) the
in-context R^2 (prompt minus counterfactual) against the numbers each rung uses, one line per width;
(b) the in-context R^2 of the scalar calculator (the ladder's last rung) and of the full read against d,
with the fitted law for the scalar calculator's gap and the 0.9 line. Trained models are filled
markers; ideal-memory builds (strengths built in, float64) open ones. Tables fig9_ladder, fig9_width
and fig9_law.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from experiments.figure import PROMPT_SEED, Build, Figure, Input
from experiments.plotting import finish, finite, plt, seeds_note
from experiments.runs import MISSING, Collected, Problem, Run
from experiments.sweeps import Setup
from experiments.tables import read_table, summarise
from toybigram.checkpoint import load_run
from toybigram.errors import UserError
from toybigram.runio import write_json
from toybigram.theory.ladder import TARGET_R2, fit_gap_law, ideal_ladder, ladder_record, law_gap

EXPERIMENT = "fig9_width"
IDEAL_BUILDS = "fig9_ideal"
IDEAL_WIDTHS = {"smoke": [64], "quick": [512], "paper": [2048, 4096]}  # ideal builds beyond the trained widths
METRICS = ["n_parameters", "r2_counterfactual", "top1_contested"]
WIDTH_ROWS = ("scalar", "full", "bayes_rule")  # (b): the in-context R^2 of these against d
SCALAR = "shared_vector"                       # the ladder's last rung: the hierarchy's scalar row
ZERO_AT = 0.4                                  # where 0 numbers sits on the logarithmic axis of (a)
FLOOR = "full_uniform_layer2"                 # the readout floor: drawn apart from the ladder's line
LOW = -1.0                                     # the lower edge of the R^2 axes: values below it sit on it, marked


def _curve(ax, x, y, color, values: bool = True, **style) -> None:
    """A line of R^2 values; a value below LOW is drawn on the lower edge as a triangle (with its value)."""
    ax.plot(x, [max(v, LOW) for v in y], color=color, **style)
    for xi, yi in zip(x, y):
        if yi < LOW:
            ax.plot(xi, LOW + 0.03, marker="v", ms=8, color=color, clip_on=False)
            if values:
                ax.annotate(f"{yi:.1f}", (xi, LOW + 0.03), xytext=(5, 4), textcoords="offset points", fontsize=8, color=color)


def _r2_axis(ax) -> None:
    ax.set_ylim(LOW, 1.05)
    ax.axhline(TARGET_R2, color="0.4", ls="--", lw=1, label=f"R² = {TARGET_R2}")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("in-context R² (prompt - counterfactual)")


def ladder_analysis(run_dir) -> dict:
    """Figure 9: the ladder of one trained run (toybigram.theory.ladder)."""
    return ladder_record(*load_run(run_dir), seed=PROMPT_SEED)


def _ideal_file(setup: Setup, d: int) -> Path:
    return setup.build_dir(IDEAL_BUILDS) / f"d{d}.json"


def _ideal_widths(setup: Setup) -> list[int]:
    if setup.profile not in IDEAL_WIDTHS:
        raise UserError(f"{IDEAL_BUILDS}: no ideal-build widths for profile {setup.profile!r}")
    return IDEAL_WIDTHS[setup.profile]


def make_ideal(setup: Setup, log) -> None:
    """The ideal builds of Figure 9 (the sweep's settings at a larger width), one JSON file per width."""
    start = time.perf_counter()
    sweep = setup.sweep(EXPERIMENT)
    for d in _ideal_widths(setup):
        cfg = sweep.point_config({"seed": "0", "model.d_model": str(d)})
        write_json(_ideal_file(setup, d), ideal_ladder(cfg, seed=PROMPT_SEED))
    log(f"[{IDEAL_BUILDS}] {len(_ideal_widths(setup))} ideal builds in {time.perf_counter() - start:.0f} s")


def collect_ideal(setup: Setup) -> Collected:
    """The ideal builds of Figure 9 as a grid of runs."""
    widths = _ideal_widths(setup)
    out = Collected(IDEAL_BUILDS, axes={"d": [str(d) for d in widths]})
    for d in widths:
        file = _ideal_file(setup, d)
        if file.is_file():
            out.runs.append(Run(f"d={d}", file, {"d": str(d)}, {"seed": 0}, {}, json.loads(file.read_text())))
        else:
            out.problems.append(Problem(f"d={d}", None, MISSING, f"no {file}"))
    return out


def _rows(result: dict, kind: str, seed) -> tuple[list[dict], dict]:
    """One run's ladder rows, and its row of the width table."""
    where = {"kind": kind, "N": result["N"], "T": result["T"], "d": result["d"], "seed": seed}
    ladder = [{**where, "name": r["name"], "order": i, **{k: r[k] for k in METRICS}} for i, r in enumerate(result["ladder"])]
    by_name = {r["name"]: r for r in result["ladder"]}
    by_name["scalar"] = by_name[SCALAR]
    width = {**where, **{f"r2_counterfactual_{n}": by_name[n]["r2_counterfactual"] for n in WIDTH_ROWS},
             **{f"top1_contested_{n}": by_name[n]["top1_contested"] for n in WIDTH_ROWS}}
    width["scalar_minus_bayes_top1_contested"] = width["top1_contested_scalar"] - width["top1_contested_bayes_rule"]
    return ladder, width


def law_rows(widths: list[dict]) -> list[dict]:
    """Per N: the gap laws fitted on the trained widths but the largest, checked on the largest, and fitted on all."""
    out = []
    for N in sorted({r["N"] for r in widths if r["kind"] == "trained"}):
        rows = sorted([r for r in widths if r["kind"] == "trained" and r["N"] == N], key=lambda r: r["d"])
        d = [r["d"] for r in rows]
        gap = [1 - r["r2_counterfactual_scalar_mean"] for r in rows]
        if len(d) < 3:
            continue
        held = fit_gap_law(d[:-1], gap[:-1], N, rows[0]["T"])
        every = fit_gap_law(d, gap, N, rows[0]["T"])
        for kind in ("sqrt", "power"):
            out.append({"N": N, "T": rows[0]["T"], "law": kind, **{k: v for k, v in every[kind].items()},
                        "held_out_d": d[-1], "held_out_gap": gap[-1], "held_out_predicted": float(law_gap(held, kind, d[-1])),
                        "fitted_on": " ".join(str(x) for x in d)})
    return out


def tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    ladder, widths = [], []
    for kind, runs in (("trained", c[EXPERIMENT].runs), ("ideal", c[IDEAL_BUILDS].runs)):
        for run in runs:
            rows, width = _rows(run.result, kind, run.seed)
            ladder += rows
            widths.append(width)
    width_values = [k for k in widths[0] if k.startswith(("r2_", "top1_", "scalar_"))] if widths else []
    summary = summarise(widths, ["kind", "N", "T", "d"], width_values)
    return {"fig9_ladder": summarise(ladder, ["kind", "N", "d", "name", "order"], METRICS),
            "fig9_width": summary, "fig9_law": law_rows(summary)}


def _ladder_panel(ax, ladder: list[dict]) -> None:
    """(a) in-context R^2 against the numbers each rung uses, a line per width."""
    keys = sorted({(r["kind"], r["N"], r["d"]) for r in ladder}, key=lambda k: (k[0] != "trained", k[2]))
    for i, (kind, N, d) in enumerate(keys):
        rows = sorted([r for r in ladder if (r["kind"], r["N"], r["d"]) == (kind, N, d)], key=lambda r: r["order"])
        rows = [r for r in rows if finite(r["r2_counterfactual_mean"])]
        floor = [r for r in rows if r["name"] == FLOOR]
        rows = [r for r in rows if r["name"] != FLOOR]
        ax.plot([r["n_parameters_mean"] for r in floor], [max(r["r2_counterfactual_mean"], LOW) for r in floor], "x",
                color=f"C{i}", ms=8, label="readout floor (full read, no induction)" if i == 0 else None)
        x = [max(r["n_parameters_mean"], ZERO_AT) for r in rows]
        _curve(ax, x, [r["r2_counterfactual_mean"] for r in rows], f"C{i}", False, marker="o" if kind == "trained" else "D",
               mfc=None if kind == "trained" else "white", ls="-" if kind == "trained" else "--",
               label=f"d={d}, N={N}" + (" (ideal build)" if kind == "ideal" else ""))
    ax.set_xscale("log")
    ticks = [ZERO_AT, 1, 10, 100, 1000, 10000]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0", "1", "10", "100", "1k", "10k"])
    _r2_axis(ax)
    ax.set_xlabel("numbers the calculator uses\n(0: Bayes rule; 1: data bigram; 3-17: scalar rungs; then tables read from the weights)")
    ax.set_title("(a) the ladder: how many numbers buy how much in-context R²\n(below -1: a triangle on the lower edge)")
    ax.legend(fontsize=8, loc="lower right")


def _width_panel(ax, widths: list[dict], laws: list[dict]) -> None:
    """(b) in-context R^2 of the scalar calculator, the full read and the Bayes rule against d, with the gap law."""
    styles = {"scalar": ("C0", "o"), "full": ("C3", "s"), "bayes_rule": ("0.4", "^")}
    for N in sorted({r["N"] for r in widths}):
        for name, (color, marker) in styles.items():
            for kind in ("trained", "ideal"):
                rows = sorted([r for r in widths if r["N"] == N and r["kind"] == kind], key=lambda r: r["d"])
                if rows:
                    _curve(ax, [r["d"] for r in rows], [r[f"r2_counterfactual_{name}_mean"] for r in rows], color,
                           marker=marker, mfc=color if kind == "trained" else "white", ls="-" if kind == "trained" else "none",
                           label=f"{name.replace('_', ' ')}, N={N}" + (" (ideal builds)" if kind == "ideal" else ""))
        law = next((law for law in laws if law["N"] == N and law["law"] == "sqrt"), None)
        if law:
            grid = np.geomspace(min(r["d"] for r in widths), 1e5, 100)
            curve = {"sqrt": {"a": law["a"], "b": law["b"]}, "N": N, "T": law["T"]}
            ax.plot(grid, 1 - law_gap(curve, "sqrt", grid), color="C0", ls=":", lw=1,
                    label=f"scalar law N={N}: 1 - R² = {law['a']:.2f} + {law['b']:.2f} sqrt((N+T)/d)")
    _r2_axis(ax)
    ax.set_xscale("log")
    ticks = sorted({r["d"] for r in widths}) + ([10 ** 4, 10 ** 5] if laws else [])
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("width d")
    ax.set_title("(b) the scalar calculator and the full read against width\n(below -1: a triangle on the lower edge, with its value)")
    ax.legend(fontsize=7, loc="lower right")


def plot(data: Path):
    ladder, widths, laws = (read_table(data, name) for name in ("fig9_ladder", "fig9_width", "fig9_law"))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.8))
    _ladder_panel(axes[0], ladder)
    _width_panel(axes[1], widths, laws)
    trained = [r for r in widths if r["kind"] == "trained"]
    reach = "; ".join(f"N={law['N']}: R² {TARGET_R2} at d ≈ {law['width_at_target']:.3g}" if finite(law["width_at_target"])
                      else f"N={law['N']}: the law never reaches {TARGET_R2}" for law in laws if law["law"] == "sqrt")
    note = (f"trained models: {seeds_note(trained, 'r2_counterfactual_scalar')}, means; ideal builds: one each. "
            f"Constants fitted on prompt seed {PROMPT_SEED + 1}, scored on {PROMPT_SEED}. {reach}")
    return finish(fig, data, FIGURE.name, note)


FIGURE = Figure("fig9", "fig9_width", plot, inputs=(Input(EXPERIMENT, "ladder", ladder_analysis),), tables=tables,
                builds=(Build(IDEAL_BUILDS, make_ideal, collect_ideal, kind="ideal-memory builds"),))
