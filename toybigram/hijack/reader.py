"""The model a hijack study reads: a Hugging Face causal LM or a toybigram run, behind one small interface.

A ``Reader`` gives what the study needs and nothing else: last-position logits for a batch of
equal-length prompts, attention patterns per layer and head, a context manager that zero-ablates
chosen heads (their output before the output projection), the token that starts every prompt
(BOS, none for the toy), and how to turn text into tokens. Loading reuses the repetition study's
locator (``lm=smollm2 | hf | toy``), so the same model files, pre-checks and errors apply.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from toybigram.errors import UserError
from toybigram.hooks import pattern_hooks
from toybigram.repetition.models import ModelFacts, load_hf, load_toy_model, locate, precheck_model, toy_facts
from toybigram.runtime import resolve_dtype

# Per-layer attention output projections: Llama/Mistral/Qwen/Gemma `self_attn.o_proj`, GPT-2 `attn.c_proj`,
# GPT-NeoX `attention.dense`, OPT `self_attn.out_proj`. Heads are contiguous slices of its input.
OUTPUT_PROJECTION = re.compile(r"^(?P<stack>.*?)\.(?P<layer>\d+)\.(self_attn\.o_proj|attn\.c_proj|attention\.dense|self_attn\.out_proj)$")

Head = tuple[int, int]  # (layer, head)


@dataclass
class Reader:
    """A model under study: ``n_layers`` x ``n_heads`` heads, ``start`` tokens before every prompt."""

    name: str
    kind: str  # "hf" or "toy"
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    n_layers: int
    n_heads: int
    vocab_size: int
    max_len: Optional[int]
    start: list[int] = field(default_factory=list)

    @torch.no_grad()
    def last_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits at the last position (B, V), float64 on the CPU, for prompts (B, T) (start tokens added here)."""
        return self._last(self._with_start(tokens).to(self.device)).double().cpu()

    @torch.no_grad()
    def patterns(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Attention patterns per layer, (B, H, T', T') on the CPU, T' = T + len(start)."""
        return [p.float().cpu() for p in self._patterns(self._with_start(tokens).to(self.device))]

    def _with_start(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.start:
            return tokens
        return torch.cat([torch.tensor(self.start, dtype=tokens.dtype).expand(len(tokens), -1), tokens], dim=1)

    def random_heads(self, n: int, exclude: list[Head], generator: torch.Generator) -> list[Head]:
        """``n`` heads drawn uniformly from those not in ``exclude`` (the ablation control)."""
        others = [(l, h) for l in range(self.n_layers) for h in range(self.n_heads) if (l, h) not in set(exclude)]
        pick = torch.randperm(len(others), generator=generator)[: min(n, len(others))].tolist()
        return sorted(others[i] for i in pick)


class HFReader(Reader):
    """A Hugging Face causal LM; heads are slices of each layer's attention output projection input."""

    tokenizer: Any = None
    projections: dict = {}

    def _last(self, ids: torch.Tensor) -> torch.Tensor:
        try:
            out = self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        except TypeError:  # transformers releases without logits_to_keep
            out = self.model(input_ids=ids, use_cache=False)
        return out.logits[:, -1]

    def _patterns(self, ids: torch.Tensor) -> list[torch.Tensor]:
        previous = self.model.config._attn_implementation
        if previous != "eager":
            self.model.set_attn_implementation("eager")
        try:
            return list(self.model(input_ids=ids, use_cache=False, output_attentions=True).attentions)
        finally:
            if previous != "eager":
                self.model.set_attn_implementation(previous)

    @contextmanager
    def ablate(self, heads: list[Head]) -> Iterator[None]:
        """Zero the chosen heads' outputs (before the output projection); hooks removed on exit, even on error."""
        width = self.head_width
        by_layer: dict[int, list[int]] = {}
        for layer, head in heads:
            by_layer.setdefault(layer, []).append(head)
        handles = []

        def zero(chosen: list[int]):
            def hook(module, args):
                x = args[0].clone()
                for h in chosen:
                    x[..., h * width:(h + 1) * width] = 0
                return (x, *args[1:])
            return hook

        try:
            for layer, chosen in by_layer.items():
                handles.append(self.projections[layer].register_forward_pre_hook(zero(chosen)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    @property
    def head_width(self) -> int:
        config = self.model.config
        return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([int(token)])

    @classmethod
    def build(cls, name: str, model, tokenizer, device: torch.device, dtype: torch.dtype) -> "HFReader":
        projections = {int(m["layer"]): module for n, module in model.named_modules() if (m := OUTPUT_PROJECTION.match(n))}
        config = model.config
        n_layers = int(getattr(config, "num_hidden_layers", 0) or len(projections))
        if sorted(projections) != list(range(n_layers)):
            raise UserError(f"{name}: no attention output projection per layer to ablate heads at "
                            "(looked for '<layers>.<i>.self_attn.o_proj' and similar); this architecture is not supported")
        start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        reader = cls(name=name, kind="hf", model=model, device=device, dtype=dtype, n_layers=n_layers,
                     n_heads=int(config.num_attention_heads), vocab_size=int(config.vocab_size),
                     max_len=getattr(config, "max_position_embeddings", None), start=[int(t) for t in start])
        reader.tokenizer, reader.projections = tokenizer, projections
        return reader


class ToyReader(Reader):
    """toybigram's AssociativeTransformer: one head per layer; ablation zeroes ``blocks.{i}.hook_attn_out``."""

    train_cfg: Any = None

    def _last(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)[:, -1]

    def _patterns(self, ids: torch.Tensor) -> list[torch.Tensor]:
        names = pattern_hooks(self.n_layers)
        _, cache = self.model.run_with_cache(ids, names_filter=names)
        return [cache[n][:, None] for n in names]  # a head axis: (B, 1, T, T)

    @contextmanager
    def ablate(self, heads: list[Head]) -> Iterator[None]:
        hooks = [(f"blocks.{layer}.hook_attn_out", lambda x, hook: torch.zeros_like(x)) for layer, _ in sorted(set(heads))]
        with self.model.hooks(hooks):
            yield

    def token_text(self, token: int) -> str:
        return str(int(token))

    @classmethod
    def build(cls, path: Path, device: torch.device) -> "ToyReader":
        model, train_cfg = load_toy_model(path, device)
        spec = model.spec
        reader = cls(name=f"toy:{path.name}", kind="toy", model=model, device=device, dtype=next(model.buffers()).dtype,
                     n_layers=int(spec.n_layers), n_heads=1, vocab_size=int(model.vocab_size),
                     max_len=spec.positional.max_length(spec))
        reader.train_cfg = train_cfg
        return reader


def model_facts(lm: Any) -> ModelFacts:
    """The longest prompt the model takes, read without loading its weights (the hijack pre-check)."""
    kind, path = locate(lm)
    return toy_facts(path, need_neurons=False) if kind == "toy" else precheck_model(lm)


def load_reader(lm: Any, device: torch.device) -> Reader:
    """Load the model an ``lm`` config names; every failure is a one-line UserError."""
    kind, path = locate(lm)
    if kind == "toy":
        return ToyReader.build(path, device)
    name, model, tokenizer = load_hf(lm, kind, path, device, resolve_dtype(lm.dtype, "lm.dtype"))
    return HFReader.build(name, model, tokenizer, device, model.dtype)
