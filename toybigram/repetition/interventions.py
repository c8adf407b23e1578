"""Deactivation and activation sweeps over K, top against random neurons (spec section 6).

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

from toybigram.repetition.detector import find_loop
from toybigram.repetition.generation import greedy_continue
from toybigram.repetition.neurons import make_edit

DEACTIVATE = {"mode": "set", "value": 0.0}


@dataclass(frozen=True)
class Condition:
    experiment: str  # deactivate | activate
    selection: str  # top | random | none
    draw: int  # random draw number (0 for top/none)
    k: int

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.selection}/{self.draw}/{self.k}"


def conditions(experiment: str, ks: Sequence[int], draws: int) -> list[Condition]:
    """K = 0 once (no edit), then top-K and each random draw for every K > 0."""
    out = [Condition(experiment, "none", 0, 0)] if 0 in ks else []
    for k in sorted(k for k in ks if k > 0):
        out.append(Condition(experiment, "top", 0, k))
        out.extend(Condition(experiment, "random", d, k) for d in range(draws))
    return out


def neurons_for(condition: Condition, ranking: np.ndarray, random_orders: Sequence[np.ndarray]) -> np.ndarray:
    if condition.selection == "top":
        return ranking[: condition.k]
    if condition.selection == "random":
        return random_orders[condition.draw][: condition.k]
    return ranking[:0]


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
    outputs = greedy_continue(subject, prompts, n_new, batch_size, edit=edit, progress=progress)
    loops = [find_loop(list(p) + o, det.ngram, det.window, det.repeats) is not None for p, o in zip(prompts, outputs)]
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


def summarise(rows: Sequence[dict], ks: Sequence[int]) -> list[dict]:
    """Per K: the top-K rate, and the random rate averaged over draws (with its spread)."""
    table = []
    base = next((r["repeat_rate"] for r in rows if r["selection"] == "none"), None)
    for k in sorted(ks):
        if k == 0:
            table.append({"k": 0, "top": base, "random_mean": base, "random_min": base, "random_max": base, "n_draws": 0})
            continue
        top = [r["repeat_rate"] for r in rows if r["selection"] == "top" and r["k"] == k]
        rand = [r["repeat_rate"] for r in rows if r["selection"] == "random" and r["k"] == k]
        table.append(
            {
                "k": k,
                "top": top[0] if top else None,
                "random_mean": float(np.mean(rand)) if rand else None,
                "random_min": float(np.min(rand)) if rand else None,
                "random_max": float(np.max(rand)) if rand else None,
                "n_draws": len(rand),
            }
        )
    return table
