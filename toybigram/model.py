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

Frozen at random N(0, 1/d) entries: W_E, W_U, positions, every W_V, and W_O of all
but the last layer. Trainable: W_K of every layer, W_O of the last layer, and the
feed-forward block of the last layer; zero-initialised by default (the ReLU block's
input matrix starts random, otherwise no gradient could reach it).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toybigram.checks import boolean, choice, integer, number
from toybigram.errors import ConfigError, require
from toybigram.hooks import HookedModule, HookPoint

POSITIONAL_ENCODINGS = ("ape", "rpe", "rope", "nope")
FFN_KINDS = ("none", "linear", "relu")
APE_EXTENSIONS = ("error", "random", "clamp")
INITS = ("zero", "random")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
Read = Callable[[torch.Tensor], torch.Tensor]  # W -> x @ W for a layer's input x
TABLE_READ_BYPASSES = ("hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_z")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes the architecture; ``max_len`` is the position-table length."""

    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    pos: str = "ape"
    max_len: int = 128
    ape_extension: str = "error"
    ffn: str = "linear"
    d_hidden: int = 256
    init: str = "zero"
    scale_scores: bool = False
    rope_base: float = 10000.0
    dtype: str = "float32"

    def validate(self) -> "ModelSpec":
        """Check every field (ConfigError naming the setting); returns self. Sizes' upper bounds are the memory budget's."""
        integer(self.vocab_size, "data.vocab_size", 2)
        integer(self.d_model, "model.d_model", 1)
        require(self.n_layers in (2, 3), "model.n_layers", f"must be 2 or 3, got {self.n_layers}")
        for setting, value, choices in (
            ("model.pos", self.pos, POSITIONAL_ENCODINGS),
            ("model.ffn", self.ffn, FFN_KINDS),
            ("model.ape_extension", self.ape_extension, APE_EXTENSIONS),
            ("model.init", self.init, INITS),
            ("model.dtype", self.dtype, tuple(DTYPES)),
        ):
            choice(value, setting, choices)
        require(
            self.pos != "nope" or self.n_layers >= 3,
            "model.pos",
            "nope needs model.n_layers=3 (the causal mask must first be turned into a position signal)",
        )
        require(self.pos != "rope" or self.d_model % 2 == 0, "model.d_model", "must be even for rope")
        integer(self.max_len, "model.max_len", 1)
        integer(self.d_hidden, "model.d_hidden", 1)
        boolean(self.scale_scores, "model.scale_scores")
        # Rotary frequencies base^(-2i/d) must fall from 1 with i: base 1 rotates every pair alike,
        # a base below 1 inverts the ladder, and 0 or a negative base gives inf or nan angles.
        number(self.rope_base, "model.rope_base", above=1)
        return self


def frozen_gaussian(seed: int, name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    """N(0, std^2) entries from a stream of their own: (seed, name) fixes them whatever else changes.

    Rows are drawn in order, so a longer table of the same name extends a shorter one.
    """
    stream = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]))
    return torch.from_numpy(stream.standard_normal(shape) * std)


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position: rotate the pairs (x_i, x_{i+d/2}) of row t by angle t * base^(-2i/d)."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2 / x.shape[-1])
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """One single-head attention layer with W_Q = I: scores x_t^T W_K x_s, output W_O W_V sum_s a(t,s) x_s."""

    def __init__(self, spec: ModelSpec, layer: int, seed: int, positional: str, trainable_output: bool):
        super().__init__()
        d = spec.d_model
        self.spec, self.positional = spec, positional
        std = 1 / math.sqrt(d)
        init_key = frozen_gaussian(seed, f"init.W_K{layer}", (d, d), std) if spec.init == "random" else torch.zeros(d, d)
        self.W_K = nn.Parameter(init_key)
        self.register_buffer("W_V", frozen_gaussian(seed, f"W_V{layer}", (d, d), std))
        if trainable_output:
            self.W_O = nn.Parameter(frozen_gaussian(seed, f"init.W_O{layer}", (d, d), std) if spec.init == "random" else torch.zeros(d, d))
        else:
            self.register_buffer("W_O", frozen_gaussian(seed, f"W_O{layer}", (d, d), std))
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def scores(self, x: torch.Tensor, rel: torch.Tensor | None, read: Read | None = None) -> torch.Tensor:
        """Raw scores (B, T, T) before the mask."""
        T = x.shape[1]
        read = read or (lambda W: x @ W)
        if self.positional == "rpe":
            # x_t^T W_K r_{t-s}; distances beyond the table share its last row.
            distance = torch.arange(T, device=x.device)[:, None] - torch.arange(T, device=x.device)[None, :]
            distance = distance.clamp(0, rel.shape[0] - 1)
            by_distance = read(self.W_K) @ rel.T  # (B, T, D)
            return by_distance.gather(-1, distance.expand(x.shape[0], T, T))
        if self.positional == "rope":
            positions = torch.arange(T, device=x.device)
            query = rotate(x, positions, self.spec.rope_base)
            key = rotate(read(self.W_K.T), positions, self.spec.rope_base)
            return query @ key.transpose(-1, -2)
        return read(self.W_K) @ x.transpose(-1, -2)

    def forward(self, x: torch.Tensor, rel: torch.Tensor | None = None, read: Read | None = None) -> torch.Tensor:
        """``read(W)`` must equal ``x @ W``: the first layer gets one that reads the embedding tables (see
        ``AssociativeTransformer.embedding_read``), and then also takes its values from them."""
        T = x.shape[1]
        scores = self.scores(x, rel, read)
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
            self.W_F = nn.Parameter(frozen_gaussian(seed, "init.W_F", (d, d), 1 / math.sqrt(d)) if random_init else torch.zeros(d, d))
        else:
            self.W_in = nn.Parameter(frozen_gaussian(seed, "init.W_in", (h, d), 1 / math.sqrt(d)))
            self.W_out = nn.Parameter(frozen_gaussian(seed, "init.W_out", (d, h), 1 / math.sqrt(h)) if random_init else torch.zeros(d, h))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return y @ self.W_F.T
        neurons = self.hook_post(F.relu(self.hook_pre(y @ self.W_in.T)))
        return neurons @ self.W_out.T


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int, seed: int):
        super().__init__()
        last = layer == spec.n_layers - 1
        positional = spec.pos if (layer == 0 and spec.pos in ("rpe", "rope")) else "plain"
        self.attn = Attention(spec, layer + 1, seed, positional, trainable_output=last)
        self.mlp = FeedForward(spec, seed) if (last and spec.ffn != "none") else None
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    W_K = property(lambda self: self.attn.W_K)
    W_V = property(lambda self: self.attn.W_V)
    W_O = property(lambda self: self.attn.W_O)

    def forward(self, x: torch.Tensor, rel: torch.Tensor | None = None, read: Read | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(x, rel, read)))
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
    """

    def __init__(self, spec: ModelSpec, seed: int = 0):
        super().__init__()
        self.spec = spec.validate()
        self.seed = int(seed)
        N, d, L = spec.vocab_size, spec.d_model, spec.max_len
        std = 1 / math.sqrt(d)
        self.register_buffer("W_E", frozen_gaussian(seed, "W_E", (N, d), std))  # rows w_E(k)
        self.register_buffer("W_U", frozen_gaussian(seed, "W_U", (N, d), std).T.contiguous())  # columns w_U(k)
        self.register_buffer("W_pos", frozen_gaussian(seed, "W_pos", (L, d), std) if spec.pos == "ape" else None)
        self.register_buffer("W_rel", frozen_gaussian(seed, "W_rel", (L, d), std) if spec.pos == "rpe" else None)
        self._extended_positions: torch.Tensor | None = None
        self.blocks = nn.ModuleList(Block(spec, i, seed) for i in range(spec.n_layers))
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

    def positions(self, T: int) -> torch.Tensor:
        """Rows p_0..p_{T-1} of the absolute table, extended by ``ape_extension`` if T > max_len."""
        L = self.spec.max_len
        if T <= L:
            return self.W_pos[:T]
        policy = self.spec.ape_extension
        if policy == "error":
            raise ConfigError(
                f"prompt length {T} exceeds the absolute position table (model.max_len={L}); "
                "set model.ape_extension=random or clamp to test longer prompts"
            )
        if policy == "clamp":
            return torch.cat([self.W_pos, self.W_pos[-1:].expand(T - L, -1)])
        if self._extended_positions is None or self._extended_positions.shape[0] < T:
            table = frozen_gaussian(self.seed, "W_pos", (T, self.d_model), 1 / math.sqrt(self.d_model))
            self._extended_positions = table.to(self.W_pos)  # untrained rows past max_len
        return torch.cat([self.W_pos, self._extended_positions[L:T]])

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.hook_embed(self.W_E[tokens])
        if self.spec.pos == "ape":
            x = x + self.hook_pos_embed(self.positions(tokens.shape[1]))
        return x

    def embedding_read(self, tokens: torch.Tensor) -> Read:
        """``W -> x @ W`` for the embedded tokens x_t = w_E(z_t) + p_t, from tables of N + T rows.

        (W_E W)[z_t] + p_t W costs (N + T) d^2 instead of B T d^2: the first layer reads its
        keys and values this way (a sixth of a training step's FLOPs at d = T = 128).
        """
        positions = self.positions(tokens.shape[-1]) if self.spec.pos == "ape" else None

        def read(W: torch.Tensor) -> torch.Tensor:
            out = F.embedding(tokens, self.W_E @ W)
            return out if positions is None else out + positions @ W

        return read

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, N) for input tokens (B, T)."""
        x = self.embed(tokens)
        # A hook on the embedding or on layer 1's input or z gets the plain products of the (possibly edited) x.
        read = None if self.hooks_attached(TABLE_READ_BYPASSES) else self.embedding_read(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, self.W_rel, read if i == 0 else None)
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
