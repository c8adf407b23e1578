"""Positional encodings: how the model knows where a token is, one class per encoding.

Every place that depends on the encoding asks its object: validation, the frozen tables,
the embedding, layer 1's attention scores, the probes' position-only scores, the tables
the theory reads, the ideal previous-token memory, and the FLOP and memory counts. A new
encoding is a subclass of ``PositionalEncoding`` plus its instance in ``ENCODINGS`` (keyed by
its ``name``, the value of ``model.pos``):

    ape   x_t = w_E(z_t) + p_t; layer-1 scores x_t^T W_K x_s
    rpe   layer-1 scores x_t^T W_K r_{t-s} (distances beyond the table share its last row)
    rope  layer-1 scores x_t^T R_{s-t} W_K x_s (rotary: R rotates pairs of coordinates)
    nope  no positional signal; the causal mask must be turned into one by an extra layer

The methods take the model (an ``AssociativeTransformer``) and its spec (a ``ModelSpec``)
as arguments; this module imports neither, so the model can import it. The derivations
are in docs/theory.md.
"""
from __future__ import annotations

from typing import Callable

import torch

from toybigram.checks import choice
from toybigram.errors import ConfigError, require

Read = Callable[[torch.Tensor], torch.Tensor]  # W -> x @ W for a layer's input x


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position: rotate the pairs (x_i, x_{i+d/2}) of row t by angle t * base^(-2i/d)."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2 / x.shape[-1])
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def causal_distance(length: int, rows: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Distance t - s of query t to key s, (T, T), clamped to [0, rows - 1] (the rows of a distance table)."""
    distance = torch.arange(length, device=device)[:, None] - torch.arange(length, device=device)[None, :]
    return distance.clamp(0, rows - 1)


def previous_token_alpha(scores: torch.Tensor) -> torch.Tensor:
    """alpha_t = S[t, t-1] minus the mean of row t's other causal scores, (T,); alpha_0 = 0."""
    T = scores.shape[0]
    alpha = torch.zeros(T, dtype=torch.float64, device=scores.device)
    for t in range(1, T):
        others = torch.cat([scores[t, : t - 1], scores[t, t : t + 1]])
        alpha[t] = scores[t, t - 1] - others.mean()
    return alpha


class PositionalEncoding:
    """The defaults are those of an encoding without a table whose layer-1 scores are x_t^T W_K x_s."""

    name = ""
    tables: tuple[str, ...] = ()  # frozen (max_len, d) tables the model draws, as buffers of these names
    previous_token_memory = True  # layer 1 can hold a previous-token memory the theory reads from the weights

    # -- settings ----------------------------------------------------------------------------------
    def check(self, spec) -> None:
        """Raise ConfigError when ``spec`` cannot use this encoding."""

    def max_length(self, spec) -> int | None:
        """The longest prompt a model of ``spec`` accepts (None: any)."""
        return None

    def check_length(self, spec, length: int) -> None:
        """Refuse (ConfigError naming data.seq_len) a training length the model cannot take."""

    def table_rows(self, spec) -> int:
        """Rows of the frozen position tables."""
        return spec.max_len * len(self.tables)

    # -- the forward pass -------------------------------------------------------------------------
    def positions(self, model, length: int) -> torch.Tensor | None:
        """Absolute positions p_0..p_{T-1} (T, d) added to the token embeddings; None when none are added."""
        return None

    def scores(self, x: torch.Tensor, W_K: torch.Tensor, read: Read, tables: dict, spec) -> torch.Tensor:
        """Layer-1 scores (B, T, T) before the mask; ``read(W)`` equals ``x @ W``."""
        return read(W_K) @ x.transpose(-1, -2)

    # -- probes and theory ------------------------------------------------------------------------
    def position_scores(self, model, W_K: torch.Tensor, length: int) -> torch.Tensor | None:
        """Layer-1 score matrix S[t, s] (T, T) carried by positions alone; None when positions carry none."""
        return None

    def profile(self, scores: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        """The previous-token profile of float64 position-only ``scores``: alpha by offset t - s from the last query."""
        row = scores[-1, :].flip(0)  # score by offset delta = 0..T-1
        return {"alpha_by_offset": row - row.mean()}

    def diagonal_layer1(self, scores: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        """Layer-1 tables of the theory's diagonal read (``Layer1`` fields) from float64 position-only scores."""
        return {"pos": scores * scale}

    def layer1_tables(self, model, W_K: torch.Tensor, E: torch.Tensor, scale: float, length: int) -> dict:
        """Layer-1 tables of the theory's full read (``Layer1`` fields), exact for layer 1; float64 W_K, E."""
        raise ConfigError(f"theory: no layer-1 tables for model.pos={self.name}")

    def ideal_key(self, model, alpha) -> torch.Tensor:
        """The ideal previous-token memory W_K^1 (d, d), float64, of strength ``alpha``."""
        raise ConfigError(f"theory: no ideal construction for pos={self.name} "
                          "(its previous-token head is not a positional memory)")

    # -- cost -------------------------------------------------------------------------------------
    def position_rows(self, length: int) -> int:
        """Rows added to the token table when layer 1 reads its keys and values from tables."""
        return 0

    def score_flops(self, spec, batch_size: int, length: int) -> int:
        """Matmul FLOPs of layer 1's scores, forward, after the key read (the backward costs the same)."""
        return 2 * batch_size * length * length * spec.d_model

    def score_bytes(self, batch_size: int, length: int, table_rows: int, dtype_bytes: int) -> int:
        """Bytes a training step holds for layer-1 scores beyond the B x T x T patterns."""
        return 0


class AbsolutePositions(PositionalEncoding):
    """ape: a frozen table of positions p_t added to the token embeddings."""

    name = "ape"
    tables = ("W_pos",)

    def max_length(self, spec) -> int | None:
        return spec.max_len if spec.ape_extension == "error" else None

    def check_length(self, spec, length: int) -> None:
        require(
            self.max_length(spec) is None or length <= spec.max_len,
            "data.seq_len",
            f"{length} exceeds the absolute position table (model.max_len={spec.max_len}); "
            "raise model.max_len or set model.ape_extension=random or clamp",
        )

    def positions(self, model, length: int) -> torch.Tensor:
        """Rows p_0..p_{T-1} of the table, extended by ``model.ape_extension`` beyond max_len."""
        L = model.spec.max_len
        if length <= L:
            return model.W_pos[:length]
        policy = model.spec.ape_extension
        if policy == "error":
            raise ConfigError(
                f"prompt length {length} exceeds the absolute position table (model.max_len={L}); "
                "set model.ape_extension=random or clamp to test longer prompts"
            )
        if policy == "clamp":
            return torch.cat([model.W_pos, model.W_pos[-1:].expand(length - L, -1)])
        return torch.cat([model.W_pos, model.extended_table("W_pos", length)[L:]])  # untrained rows past max_len

    def position_scores(self, model, W_K: torch.Tensor, length: int) -> torch.Tensor:
        """p_t^T W_K p_s."""
        P = model.positions(length)
        return P @ W_K @ P.T

    def profile(self, scores: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        """alpha_t by position."""
        return {"alpha": previous_token_alpha(scores * scale)}

    def diagonal_layer1(self, scores: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        alpha = previous_token_alpha(scores * scale)
        return {"pos": torch.diag(alpha[1:], diagonal=-1)}

    def layer1_tables(self, model, W_K: torch.Tensor, E: torch.Tensor, scale: float, length: int) -> dict:
        """x = w_E + p splits the score into position-position, token-position, position-token, token-token."""
        s, P = scale, model.positions(length).double()
        return {"pos": s * P @ W_K @ P.T, "tok_pos": s * E @ W_K @ P.T, "pos_tok": s * P @ W_K @ E.T,
                "tok_tok": s * E @ W_K @ E.T}

    def ideal_key(self, model, alpha) -> torch.Tensor:
        """sum_t alpha_t p_t p_{t-1}^T; alpha scalar or (max_len,)."""
        L = model.spec.max_len
        a = torch.as_tensor(alpha, dtype=torch.float64)
        a = a.expand(L) if a.ndim == 0 else a
        if a.shape != (L,):
            raise ConfigError(f"theory: alpha_t needs shape ({L},) (model.max_len), got {tuple(a.shape)}")
        P = model.W_pos.double()
        return P[1:].T @ (a[1:, None] * P[:-1])

    def position_rows(self, length: int) -> int:
        return length  # read(W) = (W_E W)[z] + P W


class RelativePositions(PositionalEncoding):
    """rpe: layer 1 scores a query against a frozen table of distances r_{t-s}."""

    name = "rpe"
    tables = ("W_rel",)

    def scores(self, x: torch.Tensor, W_K: torch.Tensor, read: Read, tables: dict, spec) -> torch.Tensor:
        """x_t^T W_K r_{t-s}; distances beyond the table share its last row."""
        rel = tables["W_rel"]
        T = x.shape[1]
        distance = causal_distance(T, rel.shape[0], x.device)
        by_distance = read(W_K) @ rel.T  # (B, T, D)
        return by_distance.gather(-1, distance.expand(x.shape[0], T, T))

    def position_scores(self, model, W_K: torch.Tensor, length: int) -> torch.Tensor:
        """The score of a mean token ubar at t against distance t - s: ubar^T W_K r_{t-s}."""
        mean_token = model.W_E.mean(dim=0)
        by_distance = (mean_token @ W_K) @ model.W_rel.T  # (D,)
        distance = causal_distance(length, model.W_rel.shape[0])
        return by_distance[distance.to(by_distance.device)]

    def layer1_tables(self, model, W_K: torch.Tensor, E: torch.Tensor, scale: float, length: int) -> dict:
        """S(t, s) = e_{z_t}^T W_K r_{t-s}, by query token and distance."""
        return {"tok_dist": scale * E @ W_K @ model.W_rel.double().T}

    def ideal_key(self, model, alpha) -> torch.Tensor:
        """alpha sum_k w_E(k) r_1^T."""
        E = model.W_E.double()
        return float(alpha) * torch.outer(E.sum(0), model.W_rel.double()[1])

    def score_flops(self, spec, batch_size: int, length: int) -> int:
        return 2 * batch_size * length * spec.d_model * spec.max_len  # (x W_K) r_delta^T for every stored distance

    def score_bytes(self, batch_size: int, length: int, table_rows: int, dtype_bytes: int) -> int:
        return 2 * batch_size * length * table_rows * dtype_bytes + 16 * length * length  # scores by distance, the index


class RotaryPositions(PositionalEncoding):
    """rope: layer 1 rotates query and key by their positions, so scores depend on t - s."""

    name = "rope"

    def check(self, spec) -> None:
        require(spec.d_model % 2 == 0, "model.d_model", "must be even for rope")

    def scores(self, x: torch.Tensor, W_K: torch.Tensor, read: Read, tables: dict, spec) -> torch.Tensor:
        """x_t^T R_{s-t} W_K x_s, as (R_t x_t)^T (R_s W_K x_s)."""
        positions = torch.arange(x.shape[1], device=x.device)
        query = rotate(x, positions, spec.rope_base)
        key = rotate(read(W_K.T), positions, spec.rope_base)
        return query @ key.transpose(-1, -2)

    def position_scores(self, model, W_K: torch.Tensor, length: int) -> torch.Tensor:
        """The score between a mean token ubar at t and at s: ubar^T R_{s-t} W_K ubar."""
        mean_token = model.W_E.mean(dim=0)
        positions = torch.arange(length, device=W_K.device)
        u = mean_token.expand(length, -1)
        base = model.spec.rope_base
        return rotate(u, positions, base) @ rotate(u @ W_K.T, positions, base).T

    def layer1_tables(self, model, W_K: torch.Tensor, E: torch.Tensor, scale: float, length: int) -> dict:
        """S(t, s) = e_{z_t}^T R_{s-t} W_K e_{z_s}, by query token, key token and distance t - s."""
        keys = E @ W_K.T  # rows W_K e_k
        deltas = torch.arange(length, device=E.device)
        rotated = torch.stack([rotate(keys, torch.full((len(keys),), -int(dl)), model.spec.rope_base) for dl in deltas],
                              -1)  # (N, d, D): R_{-delta} W_K e_k
        return {"pair_dist": scale * torch.einsum("id,jdD->ijD", E, rotated)}

    def ideal_key(self, model, alpha) -> torch.Tensor:
        """alpha (R_1 u) u^T with u = sum_k w_E(k): scores alpha (x_t^T R_{s-t+1} u)(u^T x_s)."""
        u = model.W_E.double().sum(0)
        Ru = rotate(u[None], torch.tensor([1]), model.spec.rope_base)[0]
        return float(alpha) * torch.outer(Ru, u)


class NoPositions(PositionalEncoding):
    """nope: no position signal; a first layer must derive one from the causal mask."""

    name = "nope"
    previous_token_memory = False

    def check(self, spec) -> None:
        require(spec.n_layers >= 3, "model.pos",
                "nope needs model.n_layers=3 (the causal mask must first be turned into a position signal)")


ENCODINGS: dict[str, PositionalEncoding] = {
    encoding.name: encoding for encoding in (AbsolutePositions(), RelativePositions(), RotaryPositions(), NoPositions())
}


def positional_encoding(name: str) -> PositionalEncoding:
    """The encoding registered as ``name`` (ConfigError naming model.pos otherwise)."""
    return ENCODINGS[choice(name, "model.pos", ENCODINGS)]
