"""Teacher-forced analyses on the ranking texts (neuron scores, layers, heads).

One forward pass per batch of texts (no cache) gives, at once, every neuron's mean
activation at each offset from the onset (for the delta score and the onset profile)
and every head's attention to the earlier copy of the current token (self-finding)
and to the token after it (induction).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from toybigram.repetition.neurons import OnsetWindowSums


class HeadScores:
    """Mean attention, over query positions q >= s, to keys q - p (self-finding) and q - p + 1 (induction)."""

    def __init__(self):
        self.induction: Optional[np.ndarray] = None  # (layers, heads) sums of per-text means
        self.self_finding: Optional[np.ndarray] = None
        self.count = 0

    def add(self, patterns: Sequence[torch.Tensor], onsets: Sequence[int], periods: Sequence[int], query_end: Optional[Sequence[int]] = None) -> None:
        ind_rows, self_rows = [], []
        for b, (s, p) in enumerate(zip(onsets, periods)):
            T = patterns[0].shape[-1]
            end = T if query_end is None else query_end[b]
            q = torch.arange(s, end)
            ind_layer, self_layer = [], []
            for att in patterns:  # (B, H, T, T)
                a = att[b].float()
                ind_layer.append(a[:, q, q - p + 1].mean(-1))
                self_layer.append(a[:, q, q - p].mean(-1))
            ind_rows.append(torch.stack(ind_layer))
            self_rows.append(torch.stack(self_layer))
        ind = torch.stack(ind_rows).sum(0).cpu().double().numpy()
        slf = torch.stack(self_rows).sum(0).cpu().double().numpy()
        self.induction = ind if self.induction is None else self.induction + ind
        self.self_finding = slf if self.self_finding is None else self.self_finding + slf
        self.count += len(onsets)

    def table(self, threshold: float) -> dict:
        ind = self.induction / max(self.count, 1)
        slf = self.self_finding / max(self.count, 1)
        return {
            "threshold": threshold,
            "induction_mean": ind,
            "self_finding_mean": slf,
            "induction_heads_per_layer": (ind >= threshold).sum(1),
            "self_finding_heads_per_layer": (slf >= threshold).sum(1),
        }


@torch.no_grad()
def capture(subject, texts: Sequence[dict], lo: int, hi: int, batch_size: int, progress: Optional[Callable[[int], None]] = None):
    """Onset-window activation sums and head scores over ``texts`` (rows with ids and loop)."""
    windows = OnsetWindowSums(subject.site_sizes, lo, hi)
    heads = HeadScores()
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        lengths = {len(t["ids"]) for t in chunk}
        if len(lengths) != 1:
            raise ValueError("capture expects texts of equal length in a batch")
        ids = torch.tensor([t["ids"] for t in chunk], device=subject.device)
        onsets = [t["loop"]["onset"] for t in chunk]
        periods = [t["loop"]["period"] for t in chunk]
        with windows.batch(onsets, subject.device), subject.neuron_hooks(windows.hook):
            _, patterns = subject.attention_forward(ids)
        heads.add(patterns, onsets, periods)
        if progress:
            progress(len(chunk))
    return windows, heads


def layer_distribution(subject, delta: np.ndarray, top_fraction: float) -> dict:
    """Top ``top_fraction`` of all neurons that also have delta > 0, counted per layer."""
    n_top = max(1, int(round(top_fraction * len(delta))))
    order = np.argsort(-delta, kind="stable")[:n_top]
    order = order[delta[order] > 0]
    offsets = np.concatenate([[0], np.cumsum(subject.site_sizes)])
    site_of = np.searchsorted(offsets, order, side="right") - 1
    counts = np.bincount(site_of, minlength=len(subject.site_sizes))
    return {
        "top_fraction": top_fraction,
        "n_top": int(n_top),
        "n_top_positive": int(len(order)),
        "layers": subject.site_layers,
        "relative_depth": [subject.relative_depth(layer) for layer in subject.site_layers],
        "counts": counts.tolist(),
        "share": (counts / max(len(order), 1)).tolist(),
    }


def describe_neuron(subject, index: int) -> dict:
    offsets = np.concatenate([[0], np.cumsum(subject.site_sizes)])
    site = int(np.searchsorted(offsets, index, side="right") - 1)
    return {"neuron": int(index), "layer": subject.site_layers[site], "unit": int(index - offsets[site])}
