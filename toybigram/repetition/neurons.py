"""Neurons: global indexing, activation capture around the onset, the delta score, edits.

A neuron is one channel of a layer's MLP activation output (as in Hiraoka & Inui 2025). All sites
are numbered together (site 0's channels first), so one ranking covers every layer.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from toybigram.errors import ConfigError


def split_by_site(indices: Sequence[int] | np.ndarray, site_sizes: Sequence[int]) -> dict[int, torch.Tensor]:
    """Global neuron indices -> {site: channel indices}."""
    offsets = np.concatenate([[0], np.cumsum(site_sizes)])
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= offsets[-1]):
        raise ValueError("neuron index out of range")
    out = {}
    for site in range(len(site_sizes)):
        chosen = indices[(indices >= offsets[site]) & (indices < offsets[site + 1])] - offsets[site]
        if chosen.size:
            out[site] = torch.as_tensor(np.sort(chosen))
    return out


@dataclass(frozen=True)
class NeuronEdit:
    """Set (``mode='set'``) or shift (``mode='add'``) chosen neurons by ``value``.

    ``newest_only`` edits only the last position of each forward call: with a KV cache
    that is the token being generated, while earlier positions keep their values.
    """

    units: dict  # site -> LongTensor of channels
    mode: str  # set | add
    value: float
    newest_only: bool

    def __call__(self, site: int, act: torch.Tensor) -> Optional[torch.Tensor]:
        units = self.units.get(site)
        if units is None:
            return None
        act = act.clone()
        units = units.to(act.device)
        where = act[..., -1:, :] if self.newest_only else act
        if self.mode == "set":
            where[..., units] = self.value
        elif self.mode == "add":
            where[..., units] += self.value
        else:
            raise ValueError(f"unknown edit mode {self.mode!r}")
        return act


def make_edit(indices, site_sizes, mode: str, value: float, newest_only: bool) -> Optional[NeuronEdit]:
    """An edit of the given global neurons; None when there are none (K = 0)."""
    if len(indices) == 0:
        return None
    return NeuronEdit(split_by_site(indices, site_sizes), mode, float(value), newest_only)


@contextmanager
def edited(subject, edit: Optional[NeuronEdit]) -> Iterator[None]:
    """Apply ``edit`` to every forward pass inside the block (no-op for None)."""
    if edit is None:
        yield
        return
    with subject.neuron_hooks(edit):
        yield


class OnsetWindowSums:
    """Sum of every neuron's activation at offsets -before..after-1 from the onset, over texts.

    Offset j is the position s + j; with before=after=30 the score's windows are
    offsets -31..-2 (before, [s-31, s-1)) and -1..28 (after, [s-1, s+29)). We keep the
    span [-lo, hi) wide enough for both the score and the -30..+29 profile.
    """

    def __init__(self, site_sizes: Sequence[int], lo: int, hi: int):
        self.site_sizes = list(site_sizes)
        self.lo, self.hi = lo, hi
        self.sums = [torch.zeros(lo + hi, n, dtype=torch.float64) for n in site_sizes]
        self.count = 0
        self._onsets: Optional[torch.Tensor] = None

    @property
    def offsets(self) -> np.ndarray:
        return np.arange(-self.lo, self.hi)

    def hook(self, site: int, act: torch.Tensor) -> None:
        rows = self._onsets[:, None] + torch.arange(-self.lo, self.hi, device=act.device)[None, :]  # (B, W)
        window = torch.gather(act, 1, rows[:, :, None].expand(-1, -1, act.shape[-1]))  # (B, W, n)
        self.sums[site] += window.sum(0).to("cpu", torch.float64)

    @contextmanager
    def batch(self, onsets: Sequence[int], device) -> Iterator[None]:
        self._onsets = torch.as_tensor(list(onsets), device=device)
        try:
            yield
        finally:
            self.count += len(onsets)
            self._onsets = None

    def means(self) -> np.ndarray:
        """(window, total neurons) mean activation per offset."""
        return (torch.cat(self.sums, dim=1) / max(self.count, 1)).numpy()


def delta_scores(profile: np.ndarray, offsets: np.ndarray, width: int = 30) -> np.ndarray:
    """delta_n = mean activation on [s-1, s-1+width) - mean on [s-1-width, s-1) (the paper's score).

    Every text adds exactly ``width`` tokens to each window, so the mean over all
    window tokens equals the mean over offsets of the per-offset means.
    """
    before = (offsets >= -1 - width) & (offsets < -1)
    after = (offsets >= -1) & (offsets < -1 + width)
    if before.sum() != width or after.sum() != width:
        raise ValueError("the captured span does not cover both score windows")
    return profile[after].mean(0) - profile[before].mean(0)


def rank(delta: np.ndarray) -> np.ndarray:
    """All neurons by delta, descending (stable, so ties keep index order)."""
    return np.argsort(-delta, kind="stable")


def random_sets(n_neurons: int, draws: int, seed: int) -> list[np.ndarray]:
    """``draws`` random orderings of all neurons; random-K is the first K of each (nested in K)."""
    return [np.random.default_rng([seed, draw]).permutation(n_neurons) for draw in range(draws)]


def check_k(ks: Sequence[int], n_neurons: int, setting: str) -> None:
    for k in ks:
        if k < 0:
            raise ConfigError(f"{setting}: K must be non-negative, got {k}")
        if k > n_neurons:
            raise ConfigError(f"{setting}: K={k} is larger than the model's {n_neurons} neurons")
