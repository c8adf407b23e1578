"""The figure registry: for each figure, its sweeps, its post-run analysis and its tables.

Tables land in paper_figures/data/<table>.csv (mean, 95% CI half-width over seeds, n per point);
paper_figures/<figN>_<name>.py turns them into PNG and PDF. A figure's tables are built only
from a complete set of runs (``figure_tables``); with ``allow_missing``, from whatever is
usable as long as every point of every grid keeps at least one seed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from experiments import analysis
from experiments.aggregate import DIVERGED, EXTRA, FAILED, MISSING, Collected, Problem, Run, collect, report, summarise
from experiments.sweeps import ROOT, Sweep, experiment_name
from toybigram.errors import UserError

DATA_DIR = ROOT / "paper_figures" / "data"
FIGURES_DIR = ROOT / "paper_figures"
FIG1_METRICS = ["loss_global", "loss_first", "loss_incontext", "bayes_loss_global", "bayes_loss_first", "bayes_loss_incontext",
                "acc_incontext", "recall_prev_token", "recall_prev_token_first64", "recall_induction_key", "recall_copy", "bigram_kl"]
PROBES = ["recall_copy", "recall_induction_key", "recall_prev_token"]  # W_O^2, W_K^2, W_K^1
PROBE_MATRIX = {"recall_copy": "W_O2", "recall_induction_key": "W_K2", "recall_prev_token": "W_K1"}
# Ideal builds of Figure 5b, per profile: widths, vocabulary, prompt length, seeds.
WIDTHS = {"quick": dict(d=[64, 128, 256, 512, 1024, 2048], N=16, T=64, seeds=[0, 1, 2]),
          "paper": dict(d=[256, 512, 1024, 2048, 4096], N=65, T=128, seeds=[0, 1, 2])}
WIDTH_BUILDS = "fig5_width"


class IncompleteFigure(UserError):
    """A figure whose runs are not all usable: its tables are not written."""


@dataclass
class Setup:
    """Where a figure's sweeps live and which settings they ran with: profile, extra overrides, directory."""

    profile: str = "quick"
    overrides: tuple[str, ...] = ()
    sweeps_dir: Path | None = None  # None: each experiment config's hydra.sweep.dir
    _sweeps: dict[str, Sweep] = field(default_factory=dict, repr=False)

    def sweep(self, base: str) -> Sweep:
        """The sweep of an experiment base name in this profile (composed once)."""
        if base not in self._sweeps:
            self._sweeps[base] = Sweep.load(experiment_name(base, self.profile), self.overrides, self.sweeps_dir)
        return self._sweeps[base]

    @property
    def width_dir(self) -> Path:
        """Where the ideal builds of Figure 5b are written: beside the sweeps."""
        if self.sweeps_dir is not None:
            return Path(self.sweeps_dir) / WIDTH_BUILDS
        return ROOT / "outputs" / "experiments" / self.profile / WIDTH_BUILDS


@dataclass
class Figure:
    name: str  # paper_figures/<name>.py
    experiments: list[tuple[str, str | None]]  # (experiment base name, per-run result name or None)
    tables: Callable[[dict[str, Collected]], dict[str, list[dict]]]
    post: dict[str, Callable] = field(default_factory=dict)  # result name -> analysis(run_dir) -> dict
    builds: dict[str, Callable[[Setup], Collected]] = field(default_factory=dict)  # other inputs than sweeps

    @property
    def script(self) -> Path:
        return ROOT / "paper_figures" / f"{self.name}.py"


def collect_figure(fig: Figure, setup: Setup) -> dict[str, Collected]:
    """Every input of a figure: each sweep's runs checked against the experiment's settings, and its builds."""
    out = {}
    for base, result in fig.experiments:
        sweep = setup.sweep(base)
        out[base] = collect(sweep.sweep_dir, sweep.axes, sweep.name, result, expected=sweep.expected)
    for name, build in fig.builds.items():
        out[name] = build(setup)
    return out


def outcome(collected: dict[str, Collected]) -> str:
    """'2 of 27 runs failed, 1 missing: <the first problem>' for a figure with problems, '' without."""
    problems = [(c, p) for c in collected.values() for p in c.problems]
    if not problems:
        return ""
    total = sum(len(c.points) or len(c.runs) + len(c.problems) for c in collected.values())
    failed = sum(p.status in (FAILED, DIVERGED) for _, p in problems)
    stray = sum(p.status == EXTRA for _, p in problems)
    missing = len(problems) - failed - stray
    counts = [f"{failed} of {total} runs failed"] if failed else []
    if missing:
        counts.append(f"{missing} missing" if counts else f"{missing} of {total} runs missing")
    if stray:
        counts.append(f"{stray} off the grid")
    c, first = next(((c, p) for c, p in problems if p.status in (FAILED, DIVERGED)), problems[0])
    where = f"{c.experiment} " if len(collected) > 1 else ""
    more = f"; {len(problems) - 1} more above" if len(problems) > 1 else ""
    return f"{', '.join(counts)}: {where}{first.name}: {first.reason}{more}"


def figure_tables(name: str, setup: Setup, allow_missing: bool = False) -> tuple[dict[str, list[dict]], str]:
    """The rows of each table of a figure and what was left out ('' when nothing); IncompleteFigure
    when runs failed or are missing.

    ``allow_missing``: build from the usable runs, as long as each point (seeds aside) of every
    grid has at least one; the problems are still reported.
    """
    fig = FIGURES[name]
    collected = collect_figure(fig, setup)
    report(list(collected.values()))
    problems = outcome(collected)
    if problems and not allow_missing:
        raise IncompleteFigure(problems)
    uncovered = [f"{c.experiment} {point}" for c in collected.values() for point in c.uncovered()]
    if uncovered:
        more = f" and {len(uncovered) - 5} more" if len(uncovered) > 5 else ""
        raise IncompleteFigure(f"no usable run at {', '.join(uncovered[:5])}{more} ({problems})")
    return fig.tables(collected), problems


def _lowest_seed(runs):
    return min(runs, key=lambda r: r.seed) if runs else None


# -- table builders ------------------------------------------------------------------------
def fig1_tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    rows, order = [], []
    for variant, base in (("free", "fig1_dynamics"), ("freeze", "fig1_freeze")):
        for run in c[base].runs:
            metrics = run.metrics()
            for m in metrics:
                rows.append({"variant": variant, "step": m["step"], "seed": run.seed, **{k: m.get(k) for k in FIG1_METRICS}})
            release = run.config.get("train", {}).get("freeze_until") or {}
            for probe in PROBES:
                final = metrics[-1].get(probe) or 0.0
                rise = next((m["step"] for m in metrics if (m.get(probe) or 0.0) >= 0.5 * final and final > 0), math.inf)
                order.append({"variant": variant, "probe": probe, "matrix": PROBE_MATRIX[probe], "seed": run.seed,
                              "release_step": float(release.get(PROBE_MATRIX[probe], 0)), "rise_step": float(rise)})
    return {"fig1_dynamics": summarise(rows, ["variant", "step"], FIG1_METRICS),
            "fig1_order": summarise(order, ["variant", "probe", "matrix"], ["release_step", "rise_step"])}


def fig2_tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    run = _lowest_seed(c["fig2_attention"].runs)
    if run is None:
        return {"fig2_attention": [], "fig2_prompt": []}
    r = run.result
    cells = [{"layer": layer, "t": t, "s": s, "weight": r[key][t][s]}
             for layer, key in ((1, "layer1"), (2, "layer2")) for t in range(r["T"]) for s in range(t + 1)]
    prompt = [{"t": t, "token": r["tokens"][t], "label": r["labels"][t], "seed": run.seed} for t in range(r["T"])]
    return {"fig2_attention": cells, "fig2_prompt": prompt}


def fig3_tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    acc, attn = [], []
    for base in ("fig3_length", "fig3_length_nope"):
        for run in c[base].runs:
            r = run.result
            for row in r["by_ratio"]:
                acc.append({"pos": r["pos"], "ratio": row["ratio"], "T_test": row["T_test"], "T_train": r["T_train"],
                            "seed": run.seed, "acc_incontext": row["acc_incontext"]})
            longest = max(r["by_ratio"], key=lambda x: x["T_test"])
            for t, a in enumerate(longest["attn_prev_by_position"], start=1):
                attn.append({"pos": r["pos"], "T_test": longest["T_test"], "T_train": r["T_train"], "position": t,
                             "seed": run.seed, "attn_prev": a})
    return {"fig3_length_acc": summarise(acc, ["pos", "ratio", "T_test", "T_train"], ["acc_incontext"]),
            "fig3_length_attn": summarise(attn, ["pos", "T_test", "T_train", "position"], ["attn_prev"])}


def fig4_tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    cells, thr = [], []
    for run in c["fig4_hijack"].runs:
        cells += [{**x, "seed": run.seed, "T_train": run.result["T_train"]} for x in run.result["cells"]]
        thr += [{**x, "seed": run.seed} for x in run.result["thresholds"]]
    return {"fig4_hijack": summarise(cells, ["T", "c", "T_train"], ["share_model", "share_theory"]),
            "fig4_threshold": summarise(thr, ["T"], ["c_star_closed_form", "c_star_model", "c_star_theory"])}


def fig5_tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    r2, scatter = [], []
    runs = c["fig5_theory"].runs
    for run in runs:
        for fam, v in run.result["families"].items():
            r2.append({"family": fam, "seed": run.seed, "r2": v["r2"], "top1": v["top1"]})
    first = _lowest_seed(runs)
    if first is not None:
        for fam, v in first.result["families"].items():
            scatter += [{"family": fam, "predicted": x, "measured": y, "r2_seed": v["r2"]} for x, y in zip(v["predicted"], v["measured"])]
    width = sorted((run.result for run in c[WIDTH_BUILDS].runs), key=lambda r: (r["d"], r["seed"]))
    return {"fig5_r2": summarise(r2, ["family"], ["r2", "top1"]),
            "fig5_scatter": scatter,
            "fig5_width": summarise(width, ["d", "N", "T"], ["r2_idealised", "r2_read", "top1_idealised", "top1_read", "attn2_error_idealised"])}


def width_file(folder: Path, d: int, seed: int) -> Path:
    return Path(folder) / f"d{d}_s{seed}.json"


def collect_widths(setup: Setup) -> Collected:
    """The ideal builds of Figure 5b (one JSON file per width and seed) as a grid of runs."""
    w = WIDTHS[setup.profile]
    out = Collected(WIDTH_BUILDS, axes={"d": [str(d) for d in w["d"]], "seed": [str(s) for s in w["seeds"]]})
    for d in w["d"]:
        for seed in w["seeds"]:
            file, values = width_file(setup.width_dir, d, seed), {"d": str(d), "seed": str(seed)}
            name = f"d={d},seed={seed}"
            if file.is_file():
                out.runs.append(Run(name, file, values, {"seed": seed}, {}, json.loads(file.read_text())))
            else:
                out.problems.append(Problem(name, None, MISSING, f"no {file}"))
    return out


def fig6_tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    ape, rpe = c["fig6_memories"].runs, c["fig4_hijack"].runs
    mats, bigram, alpha, stats = [], [], [], []
    first = _lowest_seed(ape)
    if first is not None:
        r = first.result
        for name in ("lambda", "beta"):
            mats += [{"matrix": name, "row": i, "col": j, "value": v} for i, row in enumerate(r[name]) for j, v in enumerate(row)]
        if "g_centred" in r:
            bigram = [{"i": i, "j": j, "g": r["g_centred"][i][j], "log_pi": r["log_pi_centred"][i][j]}
                      for i in range(len(r["g_centred"])) for j in range(len(r["g_centred"]))]
    for run in ape + rpe:
        r = run.result
        series = r.get("alpha") if r["pos"] == "ape" else r.get("alpha_by_offset")
        for i, v in enumerate(series or []):
            alpha.append({"pos": r["pos"], "index": i, "kind": "position" if r["pos"] == "ape" else "offset", "seed": run.seed, "alpha": v})
        n = len(r["lambda"])
        diag_l = sum(r["lambda"][k][k] for k in range(n)) / n
        off_l = sum(r["lambda"][i][j] for i in range(n) for j in range(n) if i != j) / (n * n - n)
        diag_b = sum(r["beta"][k][k] for k in range(n)) / n
        off_b = sum(r["beta"][i][j] for i in range(n) for j in range(n) if i != j) / (n * n - n)
        stats.append({"pos": r["pos"], "seed": run.seed, "g_pearson": r.get("g_pearson"),
                      "lambda_diag_minus_off": diag_l - off_l, "beta_diag_minus_off": diag_b - off_b})
    return {"fig6_matrices": mats, "fig6_bigram": bigram,
            "fig6_alpha": summarise(alpha, ["pos", "kind", "index"], ["alpha"]),
            "fig6_stats": summarise(stats, ["pos"], ["g_pearson", "lambda_diag_minus_off", "beta_diag_minus_off"])}


FORMATION_ACC = 0.5  # the induction head "forms" at the first evaluation with in-context accuracy >= this


def fig7_tables(c: dict[str, Collected]) -> dict[str, list[dict]]:
    rows = []
    for run in c["fig7_vocab_length"].runs:
        metrics = run.metrics()
        formed = next((m["step"] for m in metrics if (m.get("acc_incontext") or 0.0) >= FORMATION_ACC), math.inf)
        rows.append({"N": int(run.config["data"]["vocab_size"]), "T": int(run.config["data"]["seq_len"]), "seed": run.seed,
                     "acc_incontext": run.summary.get("acc_incontext"), "formation_step": float(formed),
                     "steps": run.summary.get("steps"), "top1_agreement": run.result["top1_agreement"],
                     "r2_centered_logits": run.result["r2_centered_logits"]})
    return {"fig7_grid": summarise(rows, ["N", "T", "steps"], ["acc_incontext", "formation_step", "top1_agreement", "r2_centered_logits"])}


FIGURES: dict[str, Figure] = {
    "fig1": Figure("fig1_dynamics", [("fig1_dynamics", None), ("fig1_freeze", None)], fig1_tables),
    "fig2": Figure("fig2_attention", [("fig2_attention", "attention")], fig2_tables, {"attention": analysis.attention_map}),
    "fig3": Figure("fig3_length", [("fig3_length", "length"), ("fig3_length_nope", "length")], fig3_tables,
                   {"length": analysis.length_generalisation}),
    "fig4": Figure("fig4_hijack", [("fig4_hijack", "hijack")], fig4_tables, {"hijack": analysis.hijack_grid}),
    "fig5": Figure("fig5_theory", [("fig5_theory", "theory")], fig5_tables, {"theory": analysis.theory_families},
                   {WIDTH_BUILDS: collect_widths}),
    "fig6": Figure("fig6_memories", [("fig6_memories", "memories"), ("fig4_hijack", "memories")], fig6_tables,
                   {"memories": analysis.memories}),
    "fig7": Figure("fig7_vocab_length", [("fig7_vocab_length", "agreement")], fig7_tables, {"agreement": analysis.length_agreement}),
}
