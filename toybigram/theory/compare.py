"""Theory against the model: every chosen prompt family (families.py) through both, and the calculator hierarchy.

Rows: all positions for the length family (and its in-context positions separately), the last
position for the designed families. Every family also hands its prompts to the calculator
hierarchy (hierarchy.py): the Bayes rule, the data bigram, the scalar calculator (fitted on the
prompts of prompt seed + 1), diagonal, full and full with uniform layer-2 attention, scored with
counterfactual pairs. Each family's in-context target is its registry entry's ``target``.

Pure: the functions return dicts and tensors; report.py writes theory.json, the plots and the
headline. The shared pieces (``run_both``, ``hijack_pairs``, ``hijack_study``, ``Study``, ...) live in
study.py and are importable from here too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from toybigram.factory import as_container, make_chain
from toybigram.runio import provenance
from toybigram.theory.baselines import make_process
from toybigram.theory.families import FAMILIES, chosen
from toybigram.theory.hierarchy import FIT_SEED_OFFSET, Calculators, add_counterfactuals, hierarchy, unuse_layer2
from toybigram.theory.strengths import read_strengths
from toybigram.theory.study import (FULL_SIZES, QUICK_SIZES, BothRuns, Study, StudySizes, designed_rows, family_lengths,
                                    hijack_pairs, hijack_prompts, hijack_study, make_study, pool, run_both, trigger_queries)

__all__ = ["FULL_SIZES", "QUICK_SIZES", "Analysis", "BothRuns", "Study", "StudySizes", "analyze", "calculator_hierarchy",
           "designed_rows", "family_lengths", "hijack_pairs", "hijack_prompts", "hijack_study", "make_study", "run_analysis",
           "run_both", "run_families", "trigger_queries"]

COUNTERFACTUAL_SEED = 10_000  # + the prompt seed: the fresh chain steps of the counterfactual prompts


def run_families(study: Study, families) -> tuple[dict, list]:
    """Every chosen family through model and calculator, in the registry's order: (per-family results,
    pooled logits); each family's logits also land in ``study.parts[name]``."""
    results, pooled = {}, []
    for name in chosen(families, "theory.families"):
        parts = study.parts.setdefault(name, [])
        results[name] = FAMILIES[name].run(study, parts)
        pooled.extend(parts)
    return results, pooled


def calculator_hierarchy(study: Study, families, seed: int, cover: int, fit_sizes: StudySizes = QUICK_SIZES) -> dict:
    """The calculator hierarchy (hierarchy.py) scored on ``study``'s prompts, its numbers fitted on the
    families' prompts (``fit_sizes``) of prompt seed ``seed + FIT_SEED_OFFSET``; weights read for prompts up to ``cover``."""
    model, cfg = study.model, study.cfg
    full = study.strengths if study.variant == "full" else read_strengths(model, cover, "full")
    calculators = Calculators(make_process(study.chain.transition, study.triggers, cfg.data.outputs,
                                           cfg.data.exclude_trigger_output),
                              {"diagonal": read_strengths(model, cover, "diagonal"), "full": full,
                               "full_uniform_layer2": unuse_layer2(full)})
    fit_seed = seed + FIT_SEED_OFFSET
    fit_study = make_study(model, cfg, study.chain, quick=True, seed=fit_seed, strengths=study.strengths, diag=study.diag,
                           variant=study.variant, sizes=fit_sizes)
    run_families(fit_study, families)
    add_counterfactuals(study.chain, study.rows, torch.Generator().manual_seed(COUNTERFACTUAL_SEED + seed))
    add_counterfactuals(study.chain, fit_study.rows, torch.Generator().manual_seed(COUNTERFACTUAL_SEED + fit_seed))
    return hierarchy(model, calculators, study.rows, fit_study.rows, seed=seed, fit_seed=fit_seed,
                     overall_families=chosen(families, "theory.families"))


@dataclass
class Analysis:
    """One analysis, before it becomes theory.json: the study (its per-family logits in ``study.parts``),
    the families' results, the pooled logits, the hierarchy's keys, the length family's lengths."""

    study: Study
    results: dict
    pooled: list
    hierarchy: dict
    lengths: list[int]
    seconds: float


def run_analysis(model, cfg, *, quick: bool = True, variant: str = "full", seed: int = 0, families=None,
                 sizes: StudySizes | None = None) -> Analysis:
    """The chosen families through model and calculator, and the hierarchy scored on them. ``sizes``: how
    many prompts (default: the quick or full analysis's; the fit then draws as many); ``families``
    None: every registered family."""
    start = time.perf_counter()
    families = chosen(families, "theory.families")
    model.eval()
    T = int(cfg.data.seq_len)
    lengths = family_lengths(T, model.positional.max_length(model.spec) or 8 * T, quick)
    cover = max(lengths + [T])
    study = make_study(model, cfg, make_chain(cfg.data), quick=quick, seed=seed, strengths=read_strengths(model, cover, variant),
                       diag=read_strengths(model, T, "diagonal"), variant=variant, sizes=sizes)
    results, pooled = run_families(study, families)
    ladder = calculator_hierarchy(study, families, seed, cover, fit_sizes=sizes or QUICK_SIZES)
    return Analysis(study, results, pooled, ladder, lengths, time.perf_counter() - start)


def strengths_record(study: Study) -> dict:
    """The diagonal strengths theory.json quotes (alpha_t, lambda at the triggers, beta)."""
    diag = study.diag
    return {"variant": study.variant, "alpha_t": diag.layer1.pos.diagonal(-1) if diag.layer1.pos is not None else None,
            "lambda_triggers": diag.key[study.triggers], "beta": diag.copy, "triggers": study.triggers}


def analyze(model, cfg, *, quick: bool = True, variant: str = "full", seed: int = 0,
            families=None) -> tuple[dict, dict, list]:
    """Run the prompt families through model and calculator: ``(record, per-family results, pooled logits)``;
    the record is theory.json less its headline figures (report.headline_figures)."""
    done = run_analysis(model, cfg, quick=quick, variant=variant, seed=seed, families=families)
    results, chosen_families = done.results, chosen(families, "theory.families")
    record = {
        "overall": pool(done.pooled),
        "families": results,
        "top1_agreement_by_family": {k: v["top1_agreement"] for k, v in results.items()},
        "r2_centered_logits_by_family": {k: v["r2_centered_logits"] for k, v in results.items()},
        **done.hierarchy,
        "prompt_families": {name: FAMILIES[name].describe() for name in chosen_families},
        "strengths": strengths_record(done.study),
        "settings": {"quick": quick, "variant": variant, "seed": seed, "families": chosen_families, "lengths": done.lengths},
        "config": cfg if isinstance(cfg, dict) else as_container(cfg),
        "wall_seconds": done.seconds,
        **provenance(next(model.parameters()).device, "float64 (calculator); model " + str(next(model.parameters()).dtype)),
    }
    return record, results, done.pooled
