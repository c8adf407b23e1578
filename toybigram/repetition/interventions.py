"""Deactivation and activation sweeps over K for each neuron selection (as in Hiraoka & Inui 2025).

Edits hit the newest position of every greedy step (KV cache on; prompt positions keep
their values). Deactivate: set the neurons to 0 while continuing held-out repetitive
texts cut before their second copy; count outputs that still loop. Activate: add +1.0
while continuing the first tokens of non-repetitive texts; count outputs that now loop.
The detector reads the prompt plus the continuation, as ``generate`` would return it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from toybigram.repetition import stats
from toybigram.repetition.detector import find_loop
from toybigram.repetition.generation import greedy_continue
from toybigram.repetition.neurons import make_edit
from toybigram.repetition.selections import RANDOM_SELECTIONS

EFFECT_SIGN = {"deactivate": -1.0, "activate": 1.0}  # effect = loops removed / loops added


@dataclass(frozen=True)
class Condition:
    experiment: str  # deactivate | activate
    selection: str  # top | bottom | random | layer | none
    draw: int  # random draw number (0 for the ranked selections and none)
    k: int

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.selection}/{self.draw}/{self.k}"


def conditions(experiment: str, ks: Sequence[int], draws: int, selections: Sequence[str] = ("top", "random")) -> list[Condition]:
    """K = 0 once (no edit), then every selection at every K > 0, first draw first.

    The order makes a partial sweep useful: every selection and K gets its first draw
    before any random set gets its second.
    """
    out = [Condition(experiment, "none", 0, 0)] if 0 in ks else []
    positive = sorted(k for k in ks if k > 0)
    for draw in range(draws):
        for k in positive:
            out.extend(
                Condition(experiment, s, draw, k) for s in selections if s in RANDOM_SELECTIONS or draw == 0
            )
    return out


def run_condition(
    subject,
    condition: Condition,
    prompts: Sequence[Sequence[int]],
    neurons: np.ndarray,
    mode: str,
    value: float,
    n_new: int,
    det,
    batch_size: int,
    progress: Optional[Callable[[int], None]] = None,
) -> dict:
    """Continue every prompt under the edit and count the outputs the detector flags."""
    edit = make_edit(neurons, subject.site_sizes, mode, value, newest_only=True)

    def is_looping(prompt, new: list[int]) -> bool:
        return find_loop(list(prompt) + new, det.ngram, det.window, det.repeats) is not None

    # A loop found in a prefix stays in every extension, so a looping row's verdict is settled: it stops early.
    outputs = greedy_continue(subject, prompts, n_new, batch_size, edit=edit, progress=progress, stop=is_looping)
    loops = [is_looping(p, o) for p, o in zip(prompts, outputs)]
    return {
        **condition.__dict__,
        "key": condition.key,
        "mode": mode,
        "value": value,
        "n_prompts": len(prompts),
        "n_repeating": int(sum(loops)),
        "repeat_rate": float(np.mean(loops)) if loops else None,
        "repeating": [int(x) for x in loops],
    }


def summarise(rows: Sequence[dict], ks: Sequence[int], seed: int = 0) -> list[dict]:
    """One row per K and selection: the loop rate (mean over draws) and the effect against K = 0.

    Intervals are paired bootstrap intervals over prompts (``stats.loop_rates``); without
    an unedited row the effect is left out.
    """
    if not rows:
        return []
    experiment = rows[0]["experiment"]
    base_row = next((r for r in rows if r["selection"] == "none"), None)
    base = np.asarray(base_row["repeating"], float) if base_row else None
    table = []
    if base_row is not None and 0 in ks:
        table.append({"k": 0, "selection": "none", "n_draws": 1, "n_prompts": int(base.size),
                      **stats.loop_rates(base, base[None], EFFECT_SIGN[experiment], seed)})
    for k in sorted(k for k in ks if k > 0):
        for selection in dict.fromkeys(r["selection"] for r in rows if r["k"] == k):
            chosen = sorted((r for r in rows if r["k"] == k and r["selection"] == selection), key=lambda r: r["draw"])
            edited = np.asarray([r["repeating"] for r in chosen], float)
            reference = base if base is not None else np.full(edited.shape[1], np.nan)
            numbers = stats.loop_rates(reference, edited, EFFECT_SIGN[experiment], seed)
            if base is None:
                numbers.update(effect=None, effect_lo=None, effect_hi=None)
            table.append({"k": k, "selection": selection, "n_draws": len(chosen), "n_prompts": int(edited.shape[1]), **numbers})
    return table


def effect_vs_damage(tables: dict, ppl_table: Sequence[dict]) -> list[dict]:
    """Each edited condition's effect on loops beside its perplexity cost, to compare selections at equal damage."""
    out = []
    for experiment, table in tables.items():
        for row in table:
            cost = next((r for r in ppl_table if (r["experiment"], r["k"], r["selection"]) == (experiment, row["k"], row["selection"])), None)
            if row["k"] == 0 or cost is None:
                continue
            out.append({
                "experiment": experiment, "selection": row["selection"], "k": row["k"],
                "effect": row["effect"], "effect_lo": row["effect_lo"], "effect_hi": row["effect_hi"], "loop_draws": row["n_draws"],
                "ratio": cost["ratio"], "ratio_lo": cost["ratio_lo"], "ratio_hi": cost["ratio_hi"],
                "perplexity": cost["perplexity"], "perplexity_draws": cost["n_draws"],
            })
    return out
