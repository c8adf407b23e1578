"""Which K neurons an intervention edits: the ranked set and its controls.

- ``top``: the K neurons with the largest delta (the repetition neurons).
- ``bottom``: the K neurons with the most negative delta (they fall at the onset).
- ``random``: K neurons drawn uniformly from all layers.
- ``layer``: layer-matched random: as many neurons in each layer as the top-K set has
  there, drawn at random within that layer. It separates "these neurons" from "this
  many neurons in these layers": late layers may matter more than early ones whatever
  the neurons do.

Random sets are nested in K (each draw is a fixed random order, K takes a prefix), so a
larger K adds neurons to a smaller one's set, as for ``top``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from toybigram.errors import ConfigError

SELECTIONS = ("top", "random", "layer", "bottom")
RANDOM_SELECTIONS = ("random", "layer")
LAYER_STREAM = 1_000_000  # seeds layer-matched draws apart from uniform ones


def uniform_orders(n_neurons: int, draws: int, seed: int) -> list[np.ndarray]:
    """``draws`` random orderings of all neurons; random-K is the first K of each."""
    return [np.random.default_rng([seed, draw]).permutation(n_neurons) for draw in range(draws)]


def per_layer_orders(site_sizes: Sequence[int], draws: int, seed: int) -> list[list[np.ndarray]]:
    """For each draw, each site's neurons (global indices) in a random order."""
    offsets = np.concatenate([[0], np.cumsum(site_sizes)]).astype(np.int64)
    out = []
    for draw in range(draws):
        rng = np.random.default_rng([seed, LAYER_STREAM + draw])
        out.append([offsets[site] + rng.permutation(int(size)) for site, size in enumerate(site_sizes)])
    return out


@dataclass
class NeuronSets:
    """The ranking and the random orders every selection is read from."""

    ranking: np.ndarray  # all neurons, largest delta first
    site_sizes: list[int]
    uniform: list[np.ndarray]
    per_layer: list[list[np.ndarray]]

    @classmethod
    def build(cls, ranking: np.ndarray, site_sizes: Sequence[int], draws: int, seed: int) -> "NeuronSets":
        n = int(sum(site_sizes))
        return cls(np.asarray(ranking), list(site_sizes), uniform_orders(n, draws, seed), per_layer_orders(site_sizes, draws, seed))

    def counts_per_site(self, neurons: np.ndarray) -> np.ndarray:
        offsets = np.concatenate([[0], np.cumsum(self.site_sizes)])
        return np.bincount(np.searchsorted(offsets, neurons, side="right") - 1, minlength=len(self.site_sizes))

    def select(self, selection: str, k: int, draw: int = 0) -> np.ndarray:
        """Global indices of the K neurons of ``selection`` (draw ``draw`` for the random ones)."""
        if selection == "none" or k == 0:
            return self.ranking[:0]
        if selection == "top":
            return self.ranking[:k]
        if selection == "bottom":
            return self.ranking[::-1][:k]
        if selection == "random":
            return self.uniform[draw][:k]
        if selection == "layer":
            counts = self.counts_per_site(self.ranking[:k])
            return np.concatenate([order[:c] for order, c in zip(self.per_layer[draw], counts)])
        raise ValueError(f"unknown neuron selection {selection!r}")


def check_selections(selections: Sequence[str], setting: str) -> list[str]:
    chosen = [str(s) for s in selections]
    unknown = [s for s in chosen if s not in SELECTIONS]
    if unknown or not chosen or len(set(chosen)) < len(chosen):
        raise ConfigError(f"{setting}: choose one or more of {', '.join(SELECTIONS)}, each once (got {chosen})")
    return chosen
