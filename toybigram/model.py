"""The associative-memory transformer (the derivation is in docs/theory.md).

Row-vector convention: activations are (batch, position, d). A matrix W acts on a
column vector as W x, so on rows as ``x @ W.T``; a bilinear score x_t^T W x_s is
``x @ W @ x.T``.

    x_t    = w_E(z_t) + p_t                        (ape; rpe/rope/nope add no p_t)
    a1     = softmax_causal(x_t^T W_K^1 x_s)        (rpe: x_t^T W_K^1 r_{t-s}; rope: x_t^T R_{s-t} W_K^1 x_s)
    h_t    = x_t + W_O^1 W_V^1 sum_s a1(t,s) x_s
    a2     = softmax_causal(h_t^T W_K^2 h_s)
    y_t    = h_t + W_O^2 W_V^2 sum_s a2(t,s) h_s  (+ FFN(y_t))
    logits = W_U^T y_t

The positional encoding (toybigram.positional) supplies p_t or layer 1's scores. Frozen at
random values: W_E, W_U, the position tables, every W_V, and W_O of all but the last layer.
Trainable: W_K of every layer, W_O of the last layer, and the feed-forward block of the
last layer; zero-initialised by default (the ReLU block's input matrix starts random,
otherwise no gradient could reach it).

``model.param`` sets the scales of the random values. toybigram: N(0, 1/d) entries for every
frozen matrix and table, and N(0, 1/fan-in) for a random initialisation. bietti (the
parametrisation of Bietti et al.'s public code): N(0, 1) token embeddings and positions,
and torch's nn.Linear law uniform(-1/sqrt(fan-in), 1/sqrt(fan-in)) for W_V, W_O, W_U and
a random initialisation. Either way every matrix comes from its own (seed, name) stream.
"""
from __future__ import annotations

import math
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toybigram.checks import boolean, choice, integer, number
from toybigram.errors import require
from toybigram.hooks import HookedModule, HookPoint, NameFilter, name_predicate
from toybigram.positional import ENCODINGS, PositionalEncoding, Read, positional_encoding
from toybigram.runtime import DTYPES
from toybigram.settings_help import setting

FFN_KINDS = ("none", "linear", "relu")
APE_EXTENSIONS = ("error", "random", "clamp")
INITS = ("zero", "random")
PARAMETRISATIONS = ("toybigram", "bietti")
MODEL_DTYPES = ("float32", "float64")
# Hook points the table read of layer 1 does not pass through (see AssociativeTransformer).
PLAIN_FORWARD_HOOKS = ("hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_z")


@dataclass(kw_only=True)
class ModelConfig:
    """The architecture settings: the Hydra group ``model`` (the vocabulary size comes from the data)."""

    d_model: int = setting(256, "width d of the residual stream")
    n_layers: int = setting(2, "2, or 3 (needed by model.pos=nope)")
    pos: str = setting("ape", "positional encoding: ape (absolute), rpe (relative), rope (rotary), nope (none)")
    max_len: Optional[int] = setting(None, "position-table length; null = data.seq_len")
    ape_extension: str = setting("error", "prompts longer than the ape table: error, random (fresh frozen rows) or clamp")
    ffn: str = setting("linear", "feed-forward block of the last layer: none, linear or relu")
    d_hidden: int = setting(256, "hidden width of the relu block")
    init: str = setting("zero", "initial value of the trainable matrices: zero or random")
    scale_scores: bool = setting(False, "divide attention scores by sqrt(d)")
    param: str = setting("toybigram", "scales of the random matrices: toybigram (N(0, 1/d)) or bietti (Bietti et al.'s code: "
                         "N(0, 1) embeddings and positions, nn.Linear's uniform law elsewhere); the preset model=bietti "
                         "adds model.init=random model.scale_scores=true: their model")
    rope_base: float = setting(10000.0, "base of the rotary frequencies base^(-2i/d)")
    dtype: str = setting("float32", "float32 or float64")


@dataclass(kw_only=True)
class ModelSpec(ModelConfig):
    """Everything that fixes the architecture: the ``model`` settings, the vocabulary size, a resolved ``max_len``."""

    vocab_size: int

    @classmethod
    def of(cls, settings: Mapping[str, Any], vocab_size: int, seq_len: int) -> "ModelSpec":
        """The spec of ``model`` settings for ``vocab_size`` tokens; max_len None becomes the training length."""
        values = dict(settings)
        if values.get("max_len") is None:
            values["max_len"] = seq_len
        return cls(vocab_size=vocab_size, **values)

    @property
    def positional(self) -> PositionalEncoding:
        """The positional encoding named by ``pos``."""
        return positional_encoding(self.pos)

    def validate(self) -> "ModelSpec":
        """Check every field (ConfigError naming the setting); returns self. Sizes' upper bounds are the memory budget's."""
        integer(self.vocab_size, "data.vocab_size", 2)
        integer(self.d_model, "model.d_model", 1)
        require(self.n_layers in (2, 3), "model.n_layers", f"must be 2 or 3, got {self.n_layers}")
        for key, value, choices in (
            ("model.pos", self.pos, ENCODINGS),
            ("model.ffn", self.ffn, FFN_KINDS),
            ("model.ape_extension", self.ape_extension, APE_EXTENSIONS),
            ("model.init", self.init, INITS),
            ("model.param", self.param, PARAMETRISATIONS),
            ("model.dtype", self.dtype, MODEL_DTYPES),
        ):
            choice(value, key, choices)
        self.positional.check(self)
        integer(self.max_len, "model.max_len", 1)
        integer(self.d_hidden, "model.d_hidden", 1)
        boolean(self.scale_scores, "model.scale_scores")
        # Rotary frequencies base^(-2i/d) must fall from 1 with i: base 1 rotates every pair alike,
        # a base below 1 inverts the ladder, and 0 or a negative base gives inf or nan angles.
        number(self.rope_base, "model.rope_base", above=1)
        return self

    def trainable_names(self) -> list[str]:
        """The trainable matrices by the names of ``train.freeze_until``: W_K1.., W_O{L}, W_F."""
        names = [f"W_K{i + 1}" for i in range(self.n_layers)] + [f"W_O{self.n_layers}"]
        return names + (["W_F"] if self.ffn != "none" else [])


def _stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]))


def frozen_gaussian(seed: int, name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    """N(0, std^2) entries from a stream of their own: (seed, name) fixes them whatever else changes.

    Rows are drawn in order, so a longer table of the same name extends a shorter one.
    """
    return torch.from_numpy(_stream(seed, name).standard_normal(shape) * std)


def frozen_uniform(seed: int, name: str, shape: tuple[int, ...], bound: float) -> torch.Tensor:
    """uniform(-bound, bound) entries from the (seed, name) stream, as ``frozen_gaussian``."""
    return torch.from_numpy(_stream(seed, name).uniform(-bound, bound, shape))


def table_std(spec: ModelSpec) -> float:
    """Standard deviation of the token embeddings and position tables: 1/sqrt(d), or 1 for model.param=bietti."""
    return 1.0 if spec.param == "bietti" else 1 / math.sqrt(spec.d_model)


def frozen_matrix(spec: ModelSpec, seed: int, name: str, shape: tuple[int, int]) -> torch.Tensor:
    """A frozen random map other than the tables (W_V, W_O, W_U; shape (out, in)) in ``spec.param``'s law."""
    if spec.param == "bietti":
        return frozen_uniform(seed, name, shape, 1 / math.sqrt(shape[1]))
    return frozen_gaussian(seed, name, shape, 1 / math.sqrt(spec.d_model))


def initial_matrix(spec: ModelSpec, seed: int, name: str, shape: tuple[int, int], random: bool) -> torch.Tensor:
    """The starting value of a trainable map of shape (out, in): zeros, or random in ``spec.param``'s law
    (N(0, 1/in), or uniform(-1/sqrt(in), 1/sqrt(in)) as nn.Linear draws it)."""
    if not random:
        return torch.zeros(shape)
    if spec.param == "bietti":
        return frozen_uniform(seed, name, shape, 1 / math.sqrt(shape[1]))
    return frozen_gaussian(seed, name, shape, 1 / math.sqrt(shape[1]))


class Attention(nn.Module):
    """One single-head attention layer with W_Q = I: scores x_t^T W_K x_s, output W_O W_V sum_s a(t,s) x_s.

    The first layer takes its scores from the positional encoding (``positional``); later ones use x alone.
    """

    def __init__(self, spec: ModelSpec, layer: int, seed: int, positional: PositionalEncoding | None,
                 trainable_output: bool):
        super().__init__()
        d, random_init = spec.d_model, spec.init == "random"
        self.spec, self.positional = spec, positional
        self.W_K = nn.Parameter(initial_matrix(spec, seed, f"init.W_K{layer}", (d, d), random_init))
        self.register_buffer("W_V", frozen_matrix(spec, seed, f"W_V{layer}", (d, d)))
        if trainable_output:
            self.W_O = nn.Parameter(initial_matrix(spec, seed, f"init.W_O{layer}", (d, d), random_init))
        else:
            self.register_buffer("W_O", frozen_matrix(spec, seed, f"W_O{layer}", (d, d)))
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def scores(self, x: torch.Tensor, tables: dict[str, torch.Tensor], read: Read | None = None) -> torch.Tensor:
        """Raw scores (B, T, T) before the mask; ``tables`` are the model's position tables by name."""
        read = read or (lambda W: x @ W)
        if self.positional is None:
            return read(self.W_K) @ x.transpose(-1, -2)
        return self.positional.scores(x, self.W_K, read, tables, self.spec)

    def forward(self, x: torch.Tensor, tables: dict[str, torch.Tensor], read: Read | None = None) -> torch.Tensor:
        """``read(W)`` must equal ``x @ W``: the first layer gets one that reads the embedding tables (see
        ``AssociativeTransformer.embedding_read``), and then also takes its values from them."""
        T = x.shape[1]
        scores = self.scores(x, tables, read)
        if self.spec.scale_scores:
            scores = scores / math.sqrt(self.spec.d_model)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = self.hook_attn_scores(scores.masked_fill_(~causal, float("-inf")))  # in place: scores is a fresh tensor
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        if read is not None:
            return pattern @ read((self.W_O @ self.W_V).T)  # = (sum_s a(t,s) x_s) (W_O W_V)^T, hook_z unused
        z = self.hook_z(pattern @ x)  # sum_s a(t,s) x_s
        return z @ (self.W_O @ self.W_V).T


class FeedForward(nn.Module):
    """The last layer's feed-forward block: linear W_F y, or W_out relu(W_in y)."""

    def __init__(self, spec: ModelSpec, seed: int):
        super().__init__()
        d, h = spec.d_model, spec.d_hidden
        self.kind = spec.ffn
        random_init = spec.init == "random"
        if self.kind == "linear":
            self.W_F = nn.Parameter(initial_matrix(spec, seed, "init.W_F", (d, d), random_init))
        else:
            self.W_in = nn.Parameter(initial_matrix(spec, seed, "init.W_in", (h, d), random=True))
            self.W_out = nn.Parameter(initial_matrix(spec, seed, "init.W_out", (d, h), random_init))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return y @ self.W_F.T
        neurons = self.hook_post(F.relu(self.hook_pre(y @ self.W_in.T)))
        return neurons @ self.W_out.T


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int, seed: int, positional: PositionalEncoding):
        super().__init__()
        last = layer == spec.n_layers - 1
        self.attn = Attention(spec, layer + 1, seed, positional if layer == 0 else None, trainable_output=last)
        self.mlp = FeedForward(spec, seed) if (last and spec.ffn != "none") else None
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    W_K = property(lambda self: self.attn.W_K)
    W_V = property(lambda self: self.attn.W_V)
    W_O = property(lambda self: self.attn.W_O)

    def forward(self, x: torch.Tensor, tables: dict[str, torch.Tensor], read: Read | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(x, tables, read)))
        if self.mlp is not None:
            x = x + self.hook_mlp_out(self.mlp(x))
        return self.hook_resid_post(x)


class AssociativeTransformer(HookedModule):
    """The toy two-layer (or three-layer) associative-memory transformer.

    Hook points follow TransformerLens names: ``hook_embed``, ``hook_pos_embed``,
    ``blocks.{i}.hook_resid_pre``, ``blocks.{i}.attn.hook_attn_scores``,
    ``blocks.{i}.attn.hook_pattern``, ``blocks.{i}.attn.hook_z``, ``blocks.{i}.hook_attn_out``,
    ``blocks.{i}.hook_resid_mid``, ``blocks.{i}.mlp.hook_pre``/``hook_post`` (relu),
    ``blocks.{i}.hook_mlp_out``, ``blocks.{i}.hook_resid_post``.

    Two forward paths, chosen by the caller. By default (``table_read`` true) layer 1 reads
    its keys and values from embedding tables of N + T rows (``embedding_read``) instead of
    multiplying every position's x_t: the training step's path. That read does not pass
    through ``PLAIN_FORWARD_HOOKS`` (the embeddings, layer 1's input and its z), so a forward
    with a hook on one of them raises RuntimeError (``run_with_cache`` switches by itself when its
    filter includes one of them). Inside ``with model.plain_forward():``
    layer 1 multiplies the residual stream itself: every hook point fires and an edited
    embedding reaches layer 1's keys and values. Both paths give the same numbers up to rounding.
    """

    def __init__(self, spec: ModelSpec, seed: int = 0):
        super().__init__()
        self.spec = spec.validate()
        self.seed = int(seed)
        self.positional = positional_encoding(spec.pos)
        self.table_read = True
        N, d, L = spec.vocab_size, spec.d_model, spec.max_len
        std = table_std(spec)
        self.register_buffer("W_E", frozen_gaussian(seed, "W_E", (N, d), std))  # rows w_E(k)
        self.register_buffer("W_U", frozen_matrix(spec, seed, "W_U", (N, d)).T.contiguous())  # columns w_U(k)
        for name in self.positional.tables:
            self.register_buffer(name, frozen_gaussian(seed, name, (L, d), std))
        self._extended_tables: dict[str, torch.Tensor] = {}
        self.blocks = nn.ModuleList(Block(spec, i, seed, self.positional) for i in range(spec.n_layers))
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.to(DTYPES[spec.dtype])
        self.setup_hooks()

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    @property
    def d_model(self) -> int:
        return self.spec.d_model

    def extended_table(self, name: str, rows: int) -> torch.Tensor:
        """The first ``rows`` rows of frozen table ``name`` drawn beyond its stored length (cached; the stored
        rows come first: a table's stream extends a shorter one)."""
        table = self._extended_tables.get(name)
        if table is None or table.shape[0] < rows:
            drawn = frozen_gaussian(self.seed, name, (rows, self.d_model), table_std(self.spec))
            table = self._extended_tables[name] = drawn.to(getattr(self, name))
        return table[:rows]

    def position_tables(self) -> dict[str, torch.Tensor]:
        """The positional encoding's frozen tables by name (W_pos for ape, W_rel for rpe)."""
        return {name: getattr(self, name) for name in self.positional.tables}

    def positions(self, T: int) -> torch.Tensor | None:
        """Absolute positions p_0..p_{T-1} added to the embeddings (ape, extended by ``ape_extension``); else None."""
        return self.positional.positions(self, T)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.hook_embed(self.W_E[tokens])
        positions = self.positions(tokens.shape[1])
        if positions is not None:
            x = x + self.hook_pos_embed(positions)
        return x

    def embedding_read(self, tokens: torch.Tensor) -> Read:
        """``W -> x @ W`` for the embedded tokens x_t = w_E(z_t) + p_t, from tables of N + T rows.

        (W_E W)[z_t] + p_t W costs (N + T) d^2 instead of B T d^2.
        """
        positions = self.positions(tokens.shape[-1])

        def read(W: torch.Tensor) -> torch.Tensor:
            out = F.embedding(tokens, self.W_E @ W)
            return out if positions is None else out + positions @ W

        return read

    @contextmanager
    def plain_forward(self) -> Iterator["AssociativeTransformer"]:
        """Within the block layer 1 multiplies the residual stream itself, so every hook point fires."""
        previous, self.table_read = self.table_read, False
        try:
            yield self
        finally:
            self.table_read = previous

    def run_with_cache(self, *args, names_filter: NameFilter = None, detach: bool = True, **kwargs):
        """``(logits, cache)`` as ``HookedModule.run_with_cache``. A cache that includes one of
        ``PLAIN_FORWARD_HOOKS`` (every hook, when ``names_filter`` is None) runs inside
        ``plain_forward``, so the cached activations are the ones layer 1 actually reads."""
        wanted = name_predicate(names_filter)
        if not any(wanted(name) for name in PLAIN_FORWARD_HOOKS):
            return super().run_with_cache(*args, names_filter=names_filter, detach=detach, **kwargs)
        with self.plain_forward():
            return super().run_with_cache(*args, names_filter=names_filter, detach=detach, **kwargs)

    def _layer1_read(self, tokens: torch.Tensor) -> Read | None:
        """The table read of layer 1, or None for the plain products (``plain_forward``)."""
        if not self.table_read:
            return None
        hooked = [name for name in PLAIN_FORWARD_HOOKS if self.hooks_attached([name])]
        if hooked:
            raise RuntimeError(f"hook point {hooked[0]} is not on the table-read path of layer 1; "
                               "run the hooked forward inside `with model.plain_forward():`")
        return self.embedding_read(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, N) for input tokens (B, T)."""
        read = self._layer1_read(tokens)
        x = self.embed(tokens)
        tables = self.position_tables()
        for i, block in enumerate(self.blocks):
            x = block(x, tables, read if i == 0 else None)
        return x @ self.W_U

    # -- the memories, named as in docs/theory.md ------------------------------------------------
    def ov(self, layer: int) -> torch.Tensor:
        """W_O W_V of ``layer`` (0-based); Phi_1 = ov(0)."""
        attn = self.blocks[layer].attn
        return attn.W_O @ attn.W_V

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable matrices by the names used in ``train.freeze_until``: W_K1.., W_O{L}, W_F."""
        groups = {f"W_K{i + 1}": [b.attn.W_K] for i, b in enumerate(self.blocks)}
        last = self.blocks[-1]
        groups[f"W_O{len(self.blocks)}"] = [last.attn.W_O]
        if last.mlp is not None:
            groups["W_F"] = list(last.mlp.parameters())
        return groups
