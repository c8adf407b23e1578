"""Theory against the model: every prompt family through both, agreement figures, theory.json.

Figures (calculator.agreement): centred-logit R^2 pooled over rows (a row = one query
position's N logits, centred over j), its median per row, Pearson r, top-1 agreement;
attention agreement is 1 - mean total-variation distance between attention rows.
Rows: all positions for the length family (and its in-context positions separately), the
last position for the designed families.

Every family also hands its prompts to the calculator hierarchy (hierarchy.py): the Bayes rule,
the data bigram, the 9-number scalar calculator (fitted on the prompts of prompt seed + 1),
diagonal, full and full with uniform layer-2 attention, scored with counterfactual pairs. Its
in-context target o is the pair's output (compete: the output with more pairs, o1 on a tie),
its rival b* the pair's global favourite.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from toybigram.factory import as_container, make_chain, make_sampler
from toybigram.checkpoint import load_run
from toybigram.data import BigramChain, TriggerSampler
from toybigram.errors import ConfigError
from toybigram.hooks import circuit_pattern_hooks
from toybigram.runio import provenance, write_json
from toybigram.runtime import torch_threads
from toybigram.theory.baselines import make_process
from toybigram.theory.calculator import (Prediction, Strengths, agreement, attention_error, first_crossing,
                                         hijack_threshold, predict)
from toybigram.theory.hierarchy import FIT_SEED_OFFSET, Calculators, RowSet, add_counterfactuals, hierarchy, unuse_layer2
from toybigram.theory.plots import PLOT_FILES, write_plots
from toybigram.theory.prompts import COMPETE_COUNTS, FAMILIES, compete, dilution, hijack, length_prompts
from toybigram.theory.strengths import read_strengths

THEORY_NAME = "theory"  # the training job's analysis: theory.json and theory/*.png, quoted by summary.json
THEORY_FILE = f"{THEORY_NAME}.json"
HEADLINE_CALCULATORS = ("full", "scalar", "bayes_rule")  # the in-context R^2 the headline quotes, in this order
COUNTERFACTUAL_SEED = 10_000  # + the prompt seed: the fresh chain steps of the counterfactual prompts


class BothRuns(NamedTuple):
    """The model and the calculator on the same prompts: the model's logits and attention (float64, CPU)
    and the calculator's prediction. Unpacks as ``logits, a1, a2, prediction``."""

    logits: torch.Tensor
    a1: torch.Tensor
    a2: torch.Tensor
    prediction: Prediction


@torch.no_grad()
def run_both(model, strengths: Strengths, tokens: torch.Tensor, last_only: bool = False) -> BothRuns:
    """Model logits and attention, and the calculator's prediction (without a positional memory in layer 1,
    nope, the calculator takes the measured layer-1 attention)."""
    device = next(model.parameters()).device
    names = circuit_pattern_hooks(model.spec.n_layers)
    logits, cache = model.run_with_cache(tokens.to(device), names_filter=names)
    a1_model, a2_model = (cache[n].double().cpu() for n in names)
    a1 = None if model.positional.previous_token_memory else a1_model
    pred = predict(strengths, tokens.cpu(), a1=a1, last_only=last_only)
    if last_only:  # the model's last query position, as the calculator's
        logits, a2_model = logits[:, -1:], a2_model[:, -1:]
    return BothRuns(logits.double().cpu(), a1_model, a2_model, pred)


def _attention(a1m, a2m, pred, rows=None) -> dict:
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    return {"attn1_agreement": 1 - attention_error(pick(a1m), pick(pred.a1)),
            "attn2_agreement": 1 - attention_error(pick(a2m), pick(pred.a2))}


def _pool(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    return agreement(torch.cat([m for m, _ in parts]), torch.cat([t for _, t in parts]))


def designed_rows(family: str, prompts: torch.Tensor, q: int, target, rival: int, logits: torch.Tensor) -> RowSet:
    """Designed prompts of query q as the hierarchy scores them: target o (one, or one per prompt), rival b*,
    the model's last-position logits (B,N)."""
    n = len(prompts)
    return RowSet(family, prompts, query=q, target=torch.as_tensor(target).expand(n).clone(),
                  rival=torch.full((n,), rival), logits=logits)


def hijack_pairs(model, strengths, triggers: list[int], n_outputs: int) -> list[tuple[int, int, int]]:
    """(q, o, b*): b* the calculator's global favourite for q (argmax of g(.|q) read from the weights);
    the outputs o at evenly spaced ranks of g(.|q) below b*, down to the least favoured, so the gaps
    g(b*|q) - g(o|q) the in-context term must beat range from small to the largest."""
    out = []
    for q in triggers:
        ranked = [j for j in strengths.bigram[q].argsort(descending=True).tolist() if j != q]
        b, rest = ranked[0], ranked[1:]
        picks = torch.linspace(len(rest) - 1, 0, n_outputs + 1)[:-1].round().long().tolist() if n_outputs > 1 else [len(rest) - 1]
        out.extend((q, rest[i], b) for i in dict.fromkeys(picks))
    return out


def trigger_queries(cfg, chain) -> list[int]:
    """The queries of the hijack family: the run's fixed triggers, else the most frequent tokens."""
    if cfg.data.triggers == "fixed":
        return make_sampler(cfg.data, chain, torch.device("cpu"), 0).fixed_triggers.tolist()
    return torch.tensor(chain.unigram).argsort(descending=True)[: max(1, cfg.data.n_triggers)].tolist()


def hijack_prompts(chain, q: int, o: int, counts: torch.Tensor, T: int, n_fill: int, gen: torch.Generator) -> torch.Tensor:
    """hijack(q, o, c, T) for each count c in turn, n_fill prompts each: (len(counts) * n_fill, T)."""
    return torch.cat([hijack(chain, q, o, int(c), T, n_fill, gen) for c in counts])


def hijack_study(model, strengths, pairs, *, chain, counts, T, n_fill, gen, diag, collect: list | None = None,
                 family: str = "hijack") -> dict:
    """hijack(q, o, c, T) for each (q, o, b*) and count c: agreement, and the crossing counts c* of the
    margin logit_o - logit_b* (mean over fillers) for model, calculator and closed form (diagonal).
    ``collect`` receives the prompts as RowSets of ``family`` (the calculator hierarchy's rows)."""
    rows, parts, table = [], [], []
    for q, o, b in pairs:
        prompts = hijack_prompts(chain, q, o, counts, T, n_fill, gen)
        m, a1m, a2m, p = run_both(model, strengths, prompts, last_only=True)
        m, th = m[:, -1], p.logits[:, -1]
        if collect is not None:
            collect.append(designed_rows(family, prompts, q, o, b, m))
        parts.append((m, th))
        margin_m = (m[:, o] - m[:, b]).view(len(counts), n_fill).mean(1)
        margin_t = (th[:, o] - th[:, b]).view(len(counts), n_fill).mean(1)
        f_o = ((prompts == o).sum(1) - counts.repeat_interleave(n_fill)).double().mean()
        f_b = (prompts == b).sum(1).double().mean()
        gap = strengths.bigram[q, b] - strengths.bigram[q, o]
        closed = hijack_threshold(T, diag.key[q], diag.copy[o], diag.copy[b], diag.bigram[q, b] - diag.bigram[q, o], f_o, f_b)
        symbol = (lambda k: chain.alphabet[k]) if chain.alphabet else (lambda k: None)
        top_m = m.argmax(-1).view(len(counts), n_fill)
        table.append({"q": q, "o": o, "b_star": b, "q_symbol": symbol(q), "o_symbol": symbol(o), "b_star_symbol": symbol(b),
                      "global_gap": gap.item(),
                      "c_star_measured": first_crossing(counts, margin_m).item(),
                      "c_star_predicted": first_crossing(counts, margin_t).item(),
                      "c_star_closed_form": closed.item(),
                      "margin_model": margin_m, "margin_theory": margin_t,
                      "model_top1_is_o": (top_m == o).double().mean(1), "model_top1_is_b_star": (top_m == b).double().mean(1),
                      "top1_agreement": (m.argmax(-1) == th.argmax(-1)).double().mean().item()})
        rows.append({"attn1_agreement": 1 - attention_error(a1m[:, -1], p.a1[:, -1]),
                     "attn2_agreement": 1 - attention_error(a2m[:, -1], p.a2[:, -1])})
    # both infinite (no count in the sweep flips the top-1) counts as agreement
    within = [r["c_star_measured"] == r["c_star_predicted"] or abs(r["c_star_measured"] - r["c_star_predicted"]) <= 1
              for r in table]
    return {**_pool(parts), "T": T, "counts": counts, "fillers_per_count": n_fill,
            "attn1_agreement": sum(r["attn1_agreement"] for r in rows) / len(rows),
            "attn2_agreement": sum(r["attn2_agreement"] for r in rows) / len(rows),
            "threshold_within_one": sum(within) / max(1, len(within)),
            "model_top1_is_b_star": sum(r["model_top1_is_b_star"].mean().item() for r in table) / len(table),
            "model_top1_is_o": sum(r["model_top1_is_o"].mean().item() for r in table) / len(table),
            "pairs": table, "parts": parts}


@dataclass
class Study:
    """What the prompt families of one analysis share: the model, its strengths and the prompt sources;
    ``rows`` collects every family's prompts for the calculator hierarchy."""

    model: torch.nn.Module
    cfg: object
    chain: BigramChain
    strengths: Strengths  # the variant's, covering the longest prompt
    diag: Strengths  # the diagonal read at the training length (closed-form thresholds)
    gen: torch.Generator  # designed prompts
    sampler: TriggerSampler  # prompts from the training distribution
    triggers: list[int]
    T: int
    quick: bool
    longest: int  # the longest prompt the model takes (or 8 T)
    rows: list = field(default_factory=list)

    @property
    def n_fill(self) -> int:
        return 4 if self.quick else 16

    @property
    def n_outputs(self) -> int:
        return 3 if self.quick else 8


def length_family(study: Study, lengths: list[int], pooled: list) -> dict:
    """Prompts from the training distribution at each length: agreement at all positions and in-context ones."""
    per_T, parts = {}, []
    for L in lengths:
        batch = length_prompts(study.sampler, L, 8 if study.quick else 32)
        m, a1m, a2m, p = run_both(study.model, study.strengths, batch.inputs)
        study.rows.append(RowSet("length", batch.inputs, last_only=False, logits=m.flatten(0, 1),
                                 is_trigger=(batch.inputs[..., None] == batch.triggers[:, None, :]).any(-1)))
        ic = batch.labels >= 2
        per_T[str(L)] = {**agreement(m, p.logits), **_attention(a1m, a2m, p),
                         "incontext": {**agreement(m[ic], p.logits[ic]), **_attention(a1m, a2m, p, ic)} if ic.any() else None}
        parts.append((m.flatten(0, 1), p.logits.flatten(0, 1)))
    pooled.extend(parts)
    return {"by_T": per_T, **_pool(parts)}


def hijack_family(study: Study, pairs, variant: str, pooled: list) -> dict:
    """hijack(q, o, c, T) for the trigger pairs, and (fixed triggers) for as many non-trigger queries."""
    model, strengths = study.model, study.strengths
    counts = torch.arange(0, (6 if study.quick else 12) + 1)
    prompts = dict(chain=study.chain, counts=counts, T=study.T, n_fill=study.n_fill, gen=study.gen, diag=study.diag)
    result = {**hijack_study(model, strengths, pairs, **prompts, collect=study.rows),
              "b_star_source": f"argmax_j of g(j|q) read from the weights ({variant} variant)"}
    pooled.extend(result.pop("parts"))
    if study.cfg.data.triggers == "fixed":  # queries without a trained induction key: the global term should win
        by_frequency = torch.tensor(study.chain.unigram).argsort(descending=True).tolist()
        others = [q for q in by_frequency if q not in study.triggers][:len(study.triggers)]
        non_trigger = hijack_study(model, strengths, hijack_pairs(model, strengths, others, study.n_outputs), **prompts,
                                   collect=study.rows, family="hijack_non_trigger")
        non_trigger.pop("parts")
        result["non_trigger"] = non_trigger
    return result


def compete_family(study: Study, pairs, pooled: list) -> dict:
    """compete(q, o1, c1, o2, c2, T) over a grid of counts: does the calculator pick the model's winner?"""
    parts, wins = [], []
    for q, o1, b in pairs[:: max(1, len(pairs) // 5)]:
        o2 = next(o for qq, o, _ in pairs if qq == q and o != o1)
        prompts = torch.cat([compete(study.chain, q, o1, c1, o2, c2, study.T, study.n_fill, study.gen) for c1, c2 in COMPETE_COUNTS])
        targets = torch.tensor([o1 if c1 >= c2 else o2 for c1, c2 in COMPETE_COUNTS]).repeat_interleave(study.n_fill)
        m, _, _, p = run_both(study.model, study.strengths, prompts, last_only=True)
        study.rows.append(designed_rows("compete", prompts, q, targets, b, m[:, -1]))
        m, th = m[:, -1], p.logits[:, -1]
        parts.append((m, th))
        wins.append(((m[:, o1] > m[:, o2]) == (th[:, o1] > th[:, o2])).double().mean().item())
    pooled.extend(parts)
    return {**_pool(parts), "grid_c1_c2": list(COMPETE_COUNTS), "o1_vs_o2_agreement": sum(wins) / len(wins)}


def dilution_family(study: Study, pairs, pooled: list) -> dict:
    """A count of two "q o" pairs while filler makes the prompt longer."""
    T = study.T
    lengths = [L for L in ([T // 4, T // 2, T] if study.quick else [T // 4, T // 2, T, 2 * T, 4 * T]) if 8 <= L <= study.longest]
    by_T, parts = {}, []
    for q, o, b in pairs[:: max(1, len(pairs) // 5)]:
        for L, prompts in dilution(study.chain, q, o, 2, lengths, study.n_fill, study.gen).items():
            m, _, _, p = run_both(study.model, study.strengths, prompts, last_only=True)
            study.rows.append(designed_rows("dilution", prompts, q, o, b, m[:, -1]))
            parts.append((m[:, -1], p.logits[:, -1]))
            by_T.setdefault(str(L), []).append(parts[-1])
    pooled.extend(parts)
    return {**_pool(parts), "count": 2, "by_T": {L: _pool(v) for L, v in by_T.items()}}


def headline_figures(overall: dict, results: dict, calculators: dict) -> dict:
    """The agreement figures summary.json quotes: overall, beside the baselines and the readout floor of the
    calculator hierarchy, and the hijack family's when it ran."""
    headline = {"top1_agreement": overall["top1_agreement"], "r2_centered_logits": overall["r2_centered_logits"],
                "bayes_rule_top1_agreement": calculators["bayes_rule"]["top1"],
                "scalar_top1_agreement": calculators["scalar"]["top1"],
                "scalar_n_parameters": calculators["scalar"]["n_parameters"],
                "readout_floor_r2_centered_logits": calculators["full_uniform_layer2"]["r2_centred"],
                **{f"r2_counterfactual_{name}": calculators[name]["r2_counterfactual"] for name in HEADLINE_CALCULATORS}}
    if "hijack" in results:
        hijacked = results["hijack"]
        headline.update({"hijack_top1_agreement": hijacked["top1_agreement"],
                         "hijack_r2_centered_logits": hijacked["r2_centered_logits"],
                         "hijack_threshold_within_one": hijacked["threshold_within_one"]})
        if "non_trigger" in hijacked:
            headline.update({"hijack_non_trigger_top1_agreement": hijacked["non_trigger"]["top1_agreement"],
                             "hijack_non_trigger_model_top1_is_b_star": hijacked["non_trigger"]["model_top1_is_b_star"]})
    return headline


def _check_families(families) -> None:
    for family in families:
        if family not in FAMILIES:
            raise ConfigError(f"theory.families: unknown family {family!r} (choose {', '.join(FAMILIES)})")


def make_study(model, cfg, chain, *, quick: bool, seed: int, strengths: Strengths, diag: Strengths) -> Study:
    """The prompt sources of one analysis (designed prompts and the sampler seeded by ``seed``)."""
    T = int(cfg.data.seq_len)
    return Study(model=model, cfg=cfg, chain=chain, strengths=strengths, diag=diag, gen=torch.Generator().manual_seed(seed),
                 sampler=make_sampler(cfg.data, chain, torch.device("cpu"), seed), triggers=trigger_queries(cfg, chain),
                 T=T, quick=quick, longest=model.positional.max_length(model.spec) or 8 * T)


def family_lengths(T: int, longest: int, quick: bool) -> list[int]:
    """The length family's prompt lengths: T/2 and T (quick), up to 8 T otherwise, as far as the model takes."""
    return [L for L in ([T // 2, T] if quick else [T // 2, T, 2 * T, 4 * T, 8 * T]) if 2 <= L <= longest]


def run_families(study: Study, families, variant: str) -> tuple[dict, list]:
    """Every chosen family through model and calculator: (per-family results, pooled logits)."""
    results, pooled = {}, []
    if "length" in families:
        results["length"] = length_family(study, family_lengths(study.T, study.longest, study.quick), pooled)
    if {"hijack", "compete", "dilution"} & set(families):
        pairs = hijack_pairs(study.model, study.strengths, study.triggers, study.n_outputs)
    if "hijack" in families:
        results["hijack"] = hijack_family(study, pairs, variant, pooled)
    if "compete" in families:
        results["compete"] = compete_family(study, pairs, pooled)
    if "dilution" in families:
        results["dilution"] = dilution_family(study, pairs, pooled)
    return results, pooled


def calculator_hierarchy(study: Study, families, variant: str, seed: int, cover: int) -> dict:
    """The calculator hierarchy (hierarchy.py) scored on ``study``'s prompts, its numbers fitted on the
    quick families' prompts of prompt seed ``seed + FIT_SEED_OFFSET``; weights read for prompts up to ``cover``."""
    model, cfg = study.model, study.cfg
    full = study.strengths if variant == "full" else read_strengths(model, cover, "full")
    calculators = Calculators(make_process(study.chain.transition, study.triggers, cfg.data.outputs,
                                           cfg.data.exclude_trigger_output),
                              {"diagonal": read_strengths(model, cover, "diagonal"), "full": full,
                               "full_uniform_layer2": unuse_layer2(full)})
    fit_seed = seed + FIT_SEED_OFFSET
    fit_study = make_study(model, cfg, study.chain, quick=True, seed=fit_seed, strengths=study.strengths, diag=study.diag)
    run_families(fit_study, families, variant)
    add_counterfactuals(study.chain, study.rows, torch.Generator().manual_seed(COUNTERFACTUAL_SEED + seed))
    add_counterfactuals(study.chain, fit_study.rows, torch.Generator().manual_seed(COUNTERFACTUAL_SEED + fit_seed))
    return hierarchy(model, calculators, study.rows, fit_study.rows, seed=seed, fit_seed=fit_seed,
                     overall_families=[f for f in FAMILIES if f in families])


def analyze(model, cfg, *, quick: bool = True, variant: str = "full", seed: int = 0,
            families=FAMILIES) -> tuple[dict, dict, list]:
    """Run the prompt families through model and calculator: ``(record, per-family results, pooled logits)``."""
    start = time.perf_counter()
    _check_families(families)
    model.eval()
    T = int(cfg.data.seq_len)
    lengths = family_lengths(T, model.positional.max_length(model.spec) or 8 * T, quick)
    cover = max(lengths + [T])
    study = make_study(model, cfg, make_chain(cfg.data), quick=quick, seed=seed,
                       strengths=read_strengths(model, cover, variant), diag=read_strengths(model, T, "diagonal"))
    results, pooled = run_families(study, families, variant)
    overall = _pool(pooled)
    ladder = calculator_hierarchy(study, families, variant, seed, cover)
    diag = study.diag
    out = {
        **headline_figures(overall, results, ladder["calculators"]),
        "overall": overall,
        "families": results,
        "top1_agreement_by_family": {k: v["top1_agreement"] for k, v in results.items()},
        "r2_centered_logits_by_family": {k: v["r2_centered_logits"] for k, v in results.items()},
        **ladder,
        "strengths": {"variant": variant, "alpha_t": diag.layer1.pos.diagonal(-1) if diag.layer1.pos is not None else None,
                      "lambda_triggers": diag.key[study.triggers], "beta": diag.copy, "triggers": study.triggers},
        "settings": {"quick": quick, "variant": variant, "seed": seed, "families": list(families), "lengths": lengths},
        "config": cfg if isinstance(cfg, dict) else as_container(cfg),
        "wall_seconds": time.perf_counter() - start,
        **provenance(next(model.parameters()).device, "float64 (calculator); model " + str(next(model.parameters()).dtype)),
    }
    return out, results, pooled


def output_paths(out_dir: str | Path, name: str = THEORY_NAME) -> tuple[Path, Path]:
    """The JSON file and the plot folder of the analysis called ``name``."""
    return Path(out_dir) / f"{name}.json", Path(out_dir) / name


def write_analysis(out_dir: Path, name: str, record: dict, results: dict, pooled: list | None) -> Path:
    """Plots (none when ``pooled`` is None), stale plots of an earlier analysis removed, then the JSON, last."""
    json_path, folder = output_paths(out_dir, name)
    written = write_plots(folder, results, pooled) if pooled is not None else []
    for stale in set(PLOT_FILES) - set(written):
        (folder / stale).unlink(missing_ok=True)
    write_json(json_path, record)
    return json_path


def _figure(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def headline(head: dict, run_dir: Path, json_name: str = THEORY_FILE) -> str:
    """The agreement figures beside the baselines (two lines; one for an older analysis), ending with the JSON file."""
    line = f"theory: top-1 agreement {head['top1_agreement']:.3f}"
    if "bayes_rule_top1_agreement" in head:
        line += (f" (bayes rule {_figure(head['bayes_rule_top1_agreement'])}, scalar "
                 f"{_figure(head['scalar_top1_agreement'])} with {head['scalar_n_parameters']} numbers)")
    line += f"  centred-logit R^2 {head['r2_centered_logits']:.3f}"
    if "readout_floor_r2_centered_logits" in head:
        line += f" (readout floor {_figure(head['readout_floor_r2_centered_logits'])})"
    if any(head.get(f"r2_counterfactual_{name}") is not None for name in HEADLINE_CALCULATORS):
        line += "\n    in-context R^2 (prompt - counterfactual) " + " / ".join(
            f"{name.replace('_', ' ')} {_figure(head.get(f'r2_counterfactual_{name}'))}" for name in HEADLINE_CALCULATORS)
    if "hijack_top1_agreement" in head:
        line += (f"  | hijack top-1 {head['hijack_top1_agreement']:.3f}  R^2 {head['hijack_r2_centered_logits']:.3f}"
                 f"  threshold within one {head['hijack_threshold_within_one']:.2f}")
    return line + f"  ({Path(run_dir) / json_name})"


HEADLINE_KEYS = ("top1_agreement", "r2_centered_logits", "hijack_top1_agreement", "hijack_r2_centered_logits",
                 "hijack_threshold_within_one", "bayes_rule_top1_agreement", "scalar_top1_agreement",
                 "scalar_n_parameters", "readout_floor_r2_centered_logits",
                 *(f"r2_counterfactual_{name}" for name in HEADLINE_CALCULATORS), "wall_seconds")


def analyze_run(run_dir, model=None, cfg=None, *, quick: bool = True, variant: str = "full", seed: int = 0,
                families=FAMILIES, plots: bool = True, out_dir=None, name: str = THEORY_NAME, threads: int = 1) -> dict:
    """Analyse a run: writes ``<out_dir>/<name>.json`` (+ ``<name>/*.png``) and returns the headline.

    The defaults are the training job's own analysis: theory.json and theory/ in the run
    directory, the files whose headline summary.json quotes. ``model``/``cfg`` default to
    the run's checkpoint (toybigram.checkpoint.load_run). ``threads``: torch threads while
    it runs (few suit its small tables).
    """
    run_dir = Path(run_dir)
    if model is None or cfg is None:
        model, cfg = load_run(run_dir)
    with torch_threads(threads):
        record, results, pooled = analyze(model, cfg, quick=quick, variant=variant, seed=seed, families=families)
    record["settings"] = {**record["settings"], "run_dir": str(run_dir), "output": name}
    write_analysis(Path(out_dir) if out_dir is not None else run_dir, name, record, results, pooled if plots else None)
    return {k: record[k] for k in HEADLINE_KEYS if k in record}
