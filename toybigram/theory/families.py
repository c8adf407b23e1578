"""The prompt families of the theory: a registry, one ``PromptFamily`` per kind of prompt.

A family says what it is (``description``), what its in-context target is (``target``: the token
the evidence in the prompt argues for, or "none"), which of the calculator hierarchy's metrics
apply to its rows (``metrics``), and how it runs on a ``Study`` (``run(study, parts)``): it draws
its prompts, runs model and calculator on them (study.run_both), appends its rows to
``study.rows`` (the hierarchy's RowSets, named after the family) and its (model, calculator)
logits to ``parts``, and returns its agreement figures.

``FAMILIES`` holds them in the order an analysis runs them. The theory command's ``families=``
setting, the analysis (compare.py), the hierarchy's overall rows and Figure 5 all read it, so a
new family is one entry here (``register``), with its generator in prompts.py when it needs one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from toybigram.errors import ConfigError
from toybigram.theory.calculator import agreement
from toybigram.theory.hierarchy import RowSet
from toybigram.theory.prompts import COMPETE_COUNTS, compete, dilution, length_prompts
from toybigram.theory.study import (Study, attention_figures, designed_rows, family_lengths, hijack_pairs, hijack_study,
                                    pool, run_both)

ANY_PROMPT = ("top1", "r2_centred", "top1_contested", "top1_near_tie")  # metrics of every row
IN_CONTEXT = ("r2_counterfactual", "margin_sign_agreement", "margin_r2")  # rows with a target o, a rival b*, a counterfactual
DESIGNED = ANY_PROMPT + IN_CONTEXT


@dataclass(frozen=True)
class PromptFamily:
    """One kind of prompt: its name, what it tests, its in-context target, the metrics that apply, how it runs."""

    name: str
    description: str
    target: str
    metrics: tuple[str, ...]
    run: Callable[[Study, list], dict]

    def describe(self) -> dict:
        """What theory.json records about the family (everything but the function)."""
        return {"description": self.description, "target": self.target, "metrics": list(self.metrics)}


def length_family(study: Study, parts: list) -> dict:
    """Prompts from the training distribution at each length: agreement at all positions and in-context ones."""
    per_T = {}
    for L in family_lengths(study.T, study.longest, study.quick):
        batch = length_prompts(study.sampler, L, study.sizes.length_prompts)
        m, a1m, a2m, p = run_both(study.model, study.strengths, batch.inputs)
        study.rows.append(RowSet("length", batch.inputs, last_only=False, logits=m.flatten(0, 1),
                                 is_trigger=(batch.inputs[..., None] == batch.triggers[:, None, :]).any(-1)))
        ic = batch.labels >= 2
        per_T[str(L)] = {**agreement(m, p.logits), **attention_figures(a1m, a2m, p),
                         "incontext": {**agreement(m[ic], p.logits[ic]), **attention_figures(a1m, a2m, p, ic)} if ic.any() else None}
        parts.append((m.flatten(0, 1), p.logits.flatten(0, 1)))
    return {"by_T": per_T, **pool(parts)}


def hijack_family(study: Study, parts: list) -> dict:
    """hijack(q, o, c, T) for the trigger pairs, and (fixed triggers) for as many non-trigger queries."""
    model, strengths = study.model, study.strengths
    counts = torch.arange(0, study.sizes.max_count + 1)
    prompts = dict(chain=study.chain, counts=counts, T=study.T, n_fill=study.n_fill, gen=study.gen, diag=study.diag)
    result = {**hijack_study(model, strengths, study.pairs, **prompts, collect=study.rows),
              "b_star_source": f"argmax_j of g(j|q) read from the weights ({study.variant} variant)"}
    parts.extend(result.pop("parts"))
    if study.cfg.data.triggers == "fixed":  # queries without a trained induction key: the global term should win
        by_frequency = torch.tensor(study.chain.unigram).argsort(descending=True).tolist()
        others = [q for q in by_frequency if q not in study.triggers][:len(study.triggers)]
        non_trigger = hijack_study(model, strengths, hijack_pairs(strengths.bigram, others, study.n_outputs), **prompts,
                                   collect=study.rows, family="hijack_non_trigger")
        non_trigger.pop("parts")
        result["non_trigger"] = non_trigger
    return result


def compete_family(study: Study, parts: list) -> dict:
    """compete(q, o1, c1, o2, c2, T) over a grid of counts: does the calculator pick the model's winner?"""
    pairs, wins = study.pairs, []
    for q, o1, b in pairs[:: max(1, len(pairs) // 5)]:
        o2 = next(o for qq, o, _ in pairs if qq == q and o != o1)
        prompts = torch.cat([compete(study.chain, q, o1, c1, o2, c2, study.T, study.n_fill, study.gen) for c1, c2 in COMPETE_COUNTS])
        targets = torch.tensor([o1 if c1 >= c2 else o2 for c1, c2 in COMPETE_COUNTS]).repeat_interleave(study.n_fill)
        m, _, _, p = run_both(study.model, study.strengths, prompts, last_only=True)
        study.rows.append(designed_rows("compete", prompts, q, targets, b, m[:, -1]))
        m, th = m[:, -1], p.logits[:, -1]
        parts.append((m, th))
        wins.append(((m[:, o1] > m[:, o2]) == (th[:, o1] > th[:, o2])).double().mean().item())
    return {**pool(parts), "grid_c1_c2": list(COMPETE_COUNTS), "o1_vs_o2_agreement": sum(wins) / len(wins)}


def dilution_family(study: Study, parts: list) -> dict:
    """A count of two "q o" pairs while filler makes the prompt longer."""
    T = study.T
    lengths = [L for L in ([T // 4, T // 2, T] if study.quick else [T // 4, T // 2, T, 2 * T, 4 * T]) if 8 <= L <= study.longest]
    by_T = {}
    for q, o, b in study.pairs[:: max(1, len(study.pairs) // 5)]:
        for L, prompts in dilution(study.chain, q, o, 2, lengths, study.n_fill, study.gen).items():
            m, _, _, p = run_both(study.model, study.strengths, prompts, last_only=True)
            study.rows.append(designed_rows("dilution", prompts, q, o, b, m[:, -1]))
            parts.append((m[:, -1], p.logits[:, -1]))
            by_T.setdefault(str(L), []).append(parts[-1])
    return {**pool(parts), "count": 2, "by_T": {L: pool(v) for L, v in by_T.items()}}


FAMILIES: dict[str, PromptFamily] = {}  # name -> family, in the order an analysis runs them


def register(family: PromptFamily) -> PromptFamily:
    """Add ``family`` to the registry (after the others); a name already taken is a programming error."""
    if family.name in FAMILIES:
        raise ValueError(f"prompt family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def chosen(families, setting: str = "families") -> list[str]:
    """The requested families in the registry's order, every registered one for None (ConfigError for an
    unknown one or none)."""
    if families is None:
        return list(FAMILIES)
    for name in families:
        if name not in FAMILIES:
            raise ConfigError(f"{setting}: unknown family {name!r} (choose from {', '.join(FAMILIES)})")
    if not families:
        raise ConfigError(f"{setting}: choose at least one of {', '.join(FAMILIES)}")
    return [name for name in FAMILIES if name in families]


register(PromptFamily("length", "prompts from the training distribution at T/2 and T (up to 8 T in the full analysis), "
                      "scored at every position", target="none (the training stream's own triggers)",
                      metrics=ANY_PROMPT, run=length_family))
register(PromptFamily("hijack", "c 'q o' pairs (c = 0..6, 0..12 in the full analysis) before a final q; q a trigger, "
                      "o at evenly spaced ranks of g(.|q) below b*; with fixed triggers also as many non-trigger queries "
                      "(rows 'hijack_non_trigger', not pooled)", target="the pair's output o", metrics=DESIGNED,
                      run=hijack_family))
register(PromptFamily("compete", "two outputs o1, o2 after the same trigger q, counts (c1, c2) over prompts.COMPETE_COUNTS",
                      target="the output with more pairs (o1 on a tie)", metrics=DESIGNED, run=compete_family))
register(PromptFamily("dilution", "two 'q o' pairs while filler makes the prompt longer (T/4 .. T, to 4 T in the full "
                      "analysis)", target="the pair's output o", metrics=DESIGNED, run=dilution_family))
