"""What every prompt family shares: the model and the calculator on the same prompts, the (q, o, b*)
pairs of the designed families, the hijack study, and the ``Study`` that carries one analysis's
model, strengths and prompt sources (families.py runs the families on it, compare.py scores them).

Figures (calculator.agreement): centred-logit R^2 pooled over rows (a row = one query position's
N logits, centred over j), its median per row, Pearson r, top-1 agreement; attention agreement is
1 - mean total-variation distance between attention rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import torch

from toybigram.data import BigramChain, TriggerSampler
from toybigram.factory import make_sampler
from toybigram.hooks import circuit_pattern_hooks
from toybigram.theory.calculator import (Prediction, Strengths, agreement, attention_error, first_crossing,
                                         hijack_threshold, predict)
from toybigram.theory.hierarchy import RowSet
from toybigram.theory.prompts import hijack


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


def attention_figures(a1m, a2m, pred, rows=None) -> dict:
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    return {"attn1_agreement": 1 - attention_error(pick(a1m), pick(pred.a1)),
            "attn2_agreement": 1 - attention_error(pick(a2m), pick(pred.a2))}


def pool(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    return agreement(torch.cat([m for m, _ in parts]), torch.cat([t for _, t in parts]))


def designed_rows(family: str, prompts: torch.Tensor, q: int, target, rival: int, logits: torch.Tensor) -> RowSet:
    """Designed prompts of query q as the hierarchy scores them: target o (one, or one per prompt), rival b*,
    the model's last-position logits (B,N)."""
    n = len(prompts)
    return RowSet(family, prompts, query=q, target=torch.as_tensor(target).expand(n).clone(),
                  rival=torch.full((n,), rival), logits=logits)


def hijack_pairs(bigram: torch.Tensor, triggers: list[int], n_outputs: int) -> list[tuple[int, int, int]]:
    """(q, o, b*) from a global map ``bigram`` (N,N), scores g(.|q) by row (the weights' g, or the data's
    log pi_b): b* the favourite after q; the outputs o at evenly spaced ranks of g(.|q) below b*, down to
    the least favoured, so the gaps g(b*|q) - g(o|q) the in-context term must beat range from small to
    the largest."""
    out = []
    for q in triggers:
        ranked = [j for j in torch.as_tensor(bigram)[q].argsort(descending=True).tolist() if j != q]
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
    return {**pool(parts), "T": T, "counts": counts, "fillers_per_count": n_fill,
            "attn1_agreement": sum(r["attn1_agreement"] for r in rows) / len(rows),
            "attn2_agreement": sum(r["attn2_agreement"] for r in rows) / len(rows),
            "threshold_within_one": sum(within) / max(1, len(within)),
            "model_top1_is_b_star": sum(r["model_top1_is_b_star"].mean().item() for r in table) / len(table),
            "model_top1_is_o": sum(r["model_top1_is_o"].mean().item() for r in table) / len(table),
            "pairs": table, "parts": parts}


@dataclass(frozen=True)
class StudySizes:
    """How many prompts an analysis draws: fillers per designed setting, hijack outputs per query, the
    largest hijack count, prompts per length of the length family."""

    fillers: int
    outputs: int
    max_count: int
    length_prompts: int


QUICK_SIZES = StudySizes(fillers=4, outputs=3, max_count=6, length_prompts=8)  # the training job's analysis
FULL_SIZES = StudySizes(fillers=16, outputs=8, max_count=12, length_prompts=32)


@dataclass
class Study:
    """What the prompt families of one analysis share: the model, its strengths and the prompt sources;
    ``rows`` collects every family's prompts for the calculator hierarchy, ``parts`` each family's
    (model, calculator) logits."""

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
    variant: str = "full"
    sizes: StudySizes | None = None  # None: QUICK_SIZES or FULL_SIZES as ``quick`` says
    parts: dict = field(default_factory=dict)  # family -> [(model logits, calculator logits)]

    def __post_init__(self):
        if self.sizes is None:
            self.sizes = QUICK_SIZES if self.quick else FULL_SIZES

    @property
    def n_fill(self) -> int:
        return self.sizes.fillers

    @property
    def n_outputs(self) -> int:
        return self.sizes.outputs

    @cached_property
    def pairs(self) -> list[tuple[int, int, int]]:
        """The (q, o, b*) pairs of the designed families at the trigger queries (hijack_pairs)."""
        return hijack_pairs(self.strengths.bigram, self.triggers, self.n_outputs)


def make_study(model, cfg, chain, *, quick: bool, seed: int, strengths: Strengths, diag: Strengths,
               variant: str = "full", sizes: StudySizes | None = None) -> Study:
    """The prompt sources of one analysis (designed prompts and the sampler seeded by ``seed``)."""
    T = int(cfg.data.seq_len)
    return Study(model=model, cfg=cfg, chain=chain, strengths=strengths, diag=diag, gen=torch.Generator().manual_seed(seed),
                 sampler=make_sampler(cfg.data, chain, torch.device("cpu"), seed), triggers=trigger_queries(cfg, chain),
                 T=T, quick=quick, longest=model.positional.max_length(model.spec) or 8 * T, variant=variant, sizes=sizes)


def family_lengths(T: int, longest: int, quick: bool) -> list[int]:
    """The length family's prompt lengths: T/2 and T (quick), up to 8 T otherwise, as far as the model takes."""
    return [L for L in ([T // 2, T] if quick else [T // 2, T, 2 * T, 4 * T, 8 * T]) if 2 <= L <= longest]
