"""TransformerLens-style hook points, scoped to a ``with`` block.

A HookPoint is an identity module that names an activation. Hooks are plain
``fn(activation, hook) -> None | Tensor`` callables; returning a tensor replaces the
activation. They are attached only inside ``with model.hooks(...)`` and are removed on
exit, even when an exception escapes, so no hook state outlives its block.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Union

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]
NameFilter = Union[None, str, Iterable[str], Callable[[str], bool]]


def block_hook(layer: int, point: str) -> str:
    """Name of a hook point inside block ``layer`` (0-based): ``block_hook(1, "attn.hook_pattern")``."""
    return f"blocks.{layer}.{point}"


def pattern_hook(layer: int) -> str:
    """Name of layer ``layer``'s attention pattern (0-based), ``blocks.{layer}.attn.hook_pattern``."""
    return block_hook(layer, "attn.hook_pattern")


def pattern_hooks(n_layers: int) -> list[str]:
    """The attention-pattern hook names of every layer, first to last."""
    return [pattern_hook(layer) for layer in range(n_layers)]


def circuit_pattern_hooks(n_layers: int) -> tuple[str, str]:
    """The pattern hooks of the previous-token head and the induction head: the last two layers."""
    return pattern_hook(n_layers - 2), pattern_hook(n_layers - 1)


class HookPoint(nn.Module):
    """Identity that gives an activation a name (``blocks.1.attn.hook_pattern``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def name_predicate(names: NameFilter) -> Callable[[str], bool]:
    """Turn a name, a list of names or a predicate into a predicate; None selects every hook."""
    if names is None:
        return lambda name: True
    if callable(names):
        return names
    if isinstance(names, str):
        return lambda name: name == names
    chosen = set(names)
    return lambda name: name in chosen


class HookedModule(nn.Module):
    """Mixin: ``hook_points``, ``hooks(...)`` and ``run_with_cache(...)`` over named HookPoints."""

    def setup_hooks(self) -> None:
        """Give every HookPoint its dotted module name; call at the end of ``__init__``."""
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name

    @property
    def hook_points(self) -> dict[str, HookPoint]:
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    def hooks_attached(self, names: Iterable[str] | None = None) -> bool:
        """Whether any hook point (or any of ``names``) has a hook, from ``hooks``, ``run_with_cache`` or torch's API."""
        points = [self.get_submodule(name) for name in names] if names is not None else self.hook_points.values()
        return any(point._forward_hooks or point._forward_pre_hooks for point in points)

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[Union[str, Callable[[str], bool]], HookFn]] = ()) -> Iterator["HookedModule"]:
        """Attach ``(name_or_predicate, fn)`` hooks for the duration of the block."""
        points = self.hook_points
        handles = []
        try:
            for selector, fn in fwd_hooks:
                matches = [p for n, p in points.items() if name_predicate(selector)(n)]
                if isinstance(selector, str) and not matches:
                    raise KeyError(f"no hook point named {selector!r}; see model.hook_points")
                for point in matches:
                    handles.append(point.register_forward_hook(_adapter(fn)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def run_with_cache(self, *args, names_filter: NameFilter = None, detach: bool = True, **kwargs):
        """Run the model and return ``(output, cache)``, cache mapping hook names to activations."""
        cache: dict[str, torch.Tensor] = {}

        def store(activation: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = activation.detach() if detach else activation

        with self.hooks([(name_predicate(names_filter), store)]):
            output = self(*args, **kwargs)
        return output, cache


def _adapter(fn: HookFn):
    def forward_hook(module: HookPoint, inputs, output):
        return fn(output, module)

    return forward_hook
