"""Figure 5: theory against measurement. Predicted (calculator, strengths read from the weights)
against measured centred logits per prompt family of Figure 1's runs, with R^2; and the
calculator's agreement with ideal-memory builds as the width d grows. Tables fig5_r2, fig5_scatter
and fig5_width.
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
from toybigram.factory import make_chain, make_sampler
from toybigram.runio import write_json
from toybigram.theory.calculator import Layer1, Strengths, agreement, attention_error, centred, predict, prev_table
from toybigram.theory.compare import hijack_pairs, run_both, trigger_queries
from toybigram.theory.prompts import COMPETE_COUNTS, compete, dilution, hijack, length_prompts
from toybigram.theory.strengths import read_strengths
from toybigram.theory.width import ideal_build

FAMILIES = ["length", "hijack", "compete", "dilution"]
HIJACK_COUNTS = (0, 1, 2, 4, 6)
WIDTH_BUILDS = "fig5_width"
# Ideal builds of Figure 5b, per profile: widths, vocabulary, prompt length, seeds.
WIDTHS = {"smoke": dict(d=[32, 64], N=8, T=16, seeds=[0]),
          "quick": dict(d=[64, 128, 256, 512, 1024, 2048], N=16, T=64, seeds=[0, 1, 2]),
          "paper": dict(d=[256, 512, 1024, 2048, 4096], N=65, T=128, seeds=[0, 1, 2])}


def _designed_families(model, chain, strengths, pairs, T: int, gen) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """(model, calculator) logits at the last position of the hijack, dilution and compete prompts."""
    fam: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"hijack": [], "compete": [], "dilution": []}
    for q, o, _b in pairs:
        prompts = torch.cat([hijack(chain, q, o, c, T, 4, gen) for c in HIJACK_COUNTS])
        m, _, _, p = run_both(model, strengths, prompts, last_only=True)
        fam["hijack"].append((m[:, -1], p.logits[:, -1]))
        for L, prompts in dilution(chain, q, o, 2, [max(8, T // 4), T], 4, gen).items():
            m, _, _, p = run_both(model, strengths, prompts, last_only=True)
            fam["dilution"].append((m[:, -1], p.logits[:, -1]))
    for q in sorted({q for q, _, _ in pairs}):
        outs = [o for qq, o, _ in pairs if qq == q]
        if len(outs) < 2:
            continue
        prompts = torch.cat([compete(chain, q, outs[0], c1, outs[1], c2, T, 4, gen) for c1, c2 in COMPETE_COUNTS])
        m, _, _, p = run_both(model, strengths, prompts, last_only=True)
        fam["compete"].append((m[:, -1], p.logits[:, -1]))
    return fam


@torch.no_grad()
def theory_families(run_dir, points: int = 400) -> dict:
    """Figure 5: calculator (full strengths) against the model per prompt family: centred-logit
    R^2 and top-1 agreement, and a subsample of (predicted, measured) centred logits."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T = int(cfg.data.seq_len)
    strengths = read_strengths(model, T, "full")
    sampler = make_sampler(cfg.data, chain, torch.device("cpu"), PROMPT_SEED)
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    pairs = hijack_pairs(model, strengths, trigger_queries(cfg, chain), 2)
    batch = length_prompts(sampler, T, 8)
    m, _, _, p = run_both(model, strengths, batch.inputs)
    fam = {"length": [(m.flatten(0, 1), p.logits.flatten(0, 1))], **_designed_families(model, chain, strengths, pairs, T, gen)}
    out = {"families": {}}
    gen_pts = torch.Generator().manual_seed(0)
    for name in FAMILIES:
        parts = fam[name]
        if not parts:
            continue
        mm, tt = torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
        a = agreement(mm, tt)
        x, y = centred(tt).flatten(), centred(mm).flatten()
        keep = torch.randperm(len(x), generator=gen_pts)[:points]
        out["families"][name] = {"r2": a["r2_centered_logits"], "top1": a["top1_agreement"], "n_rows": a["n"],
                                 "predicted": x[keep], "measured": y[keep]}
    return out


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
    width = sorted((run.result for run in c[WIDTH_BUILDS].runs), key=lambda r: (r["d"], r["seed"]))
    return {"fig5_r2": summarise(r2, ["family"], ["r2", "top1"]),
            "fig5_scatter": scatter,
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
    ax.set_title(f"(e) agreement vs width d (N={N}, T={T}, {seeds_note(width, 'r2_idealised')})\n"
                 "idealised: the strengths built in; read: read back from the weights")
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom - 0.2 * (top - bottom), top)  # room for the legend under the curves
    ax.legend(fontsize=8, loc="lower center", ncol=2)


def _scatter(ax, pts, stats, label):
    """Calculator against model centred logits of one family, on equal axes with the line y = x."""
    x, y = [p["predicted"] for p in pts], [p["measured"] for p in pts]
    ax.scatter(x, y, s=5, alpha=0.35, lw=0)
    lo, hi = (min(x + y), max(x + y)) if x else (-1.0, 1.0)
    pad = 0.05 * (hi - lo)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=0.8, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_title(f"{label}: R² = {stats['r2_mean']:.2f} ± {stats['r2_ci']:.2f}, top-1 {stats['top1_mean']:.2f}")
    ax.set_xlabel("calculator (centred logit)")
    ax.set_ylabel("model (centred logit)")
    ax.legend(loc="upper left")


def _by_family(ax, r2, fams):
    """R² and top-1 agreement per family (mean over seeds, 95% interval clipped to the range)."""
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
    ax.set_title(f"(f) agreement by prompt family ({seeds_note(list(r2.values()), 'r2')})")
    ax.legend(loc="upper center", ncol=2)


def plot(data: Path):
    scatter = read_table(data, "fig5_scatter")
    r2 = {r["family"]: r for r in read_table(data, "fig5_r2")}
    width = sorted(read_table(data, "fig5_width"), key=lambda r: r["d"])
    fams = [f for f in FAMILIES if f in r2]
    fig, axes = plt.subplots(2, 3, figsize=(14, 9.5))
    for ax, fam, letter in zip(axes.flat, fams, "abcd"):
        _scatter(ax, [r for r in scatter if r["family"] == fam], r2[fam], f"({letter}) {fam}")
    for ax in list(axes.flat)[len(fams):4]:
        ax.axis("off")
    _agreement_by_width(axes.flat[4], width)
    _by_family(axes.flat[5], r2, fams)
    return finish(fig, data, FIGURE.name, "scatters: a subsample of the lowest seed's rows; R² and top-1: mean ± 95% t-interval over seeds")


FIGURE = Figure("fig5", "fig5_theory", plot, inputs=(Input("fig1_dynamics", "theory", theory_families),), tables=tables,
                builds=(Build(WIDTH_BUILDS, make_widths, collect_widths, kind="ideal-memory builds"),))
