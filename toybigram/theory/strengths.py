"""Strengths read from a model's weights.

Three variants:
- ``diagonal``: alpha_t (ape) or a relative-position profile (rpe/rope), lambda_k, beta_k
  and g (beta and g read through the same logit readout as ``full``). Each diagonal strength is read relative to the mean of its row's other entries,
  because a constant added to every competitor cancels in the softmax (key) or in the
  centred logits (copy); on an ideal build this returns the strengths it was built with.
- ``full`` (default): the memories as matrices in the embedding basis, Lambda[j,k], B[j,k],
  g[i,j], the layer-1 score split into its position and token parts (exact for layer 1),
  plus the paths that measurably carry a trained model's logits (docs/theory.md):
  layer 2 copies every feature family of the attended position (its token, position,
  previous-token and previous-position content: C_f), the query's own families are read
  directly (D_f), and the layer-2 score adds the token-token and position-position
  tables (FULL_SCORE_PATHS) to the induction key. With a linear feed-forward block every
  logit table reads the residual through (I + W_F): in trained models the block, not the
  direct path, writes almost all logits (it reads the attention output too).
- ``exact``: every score table (all 16 family pairs). For ape models with a linear or no
  feed-forward block the calculator then equals the forward pass up to rounding: an
  identity that checks the tables, not a theory.

The induction-key, copy and bigram matrices are the probes' (toybigram.probes).
"""
from __future__ import annotations

import math

import torch

from toybigram.model import AssociativeTransformer, rotate
from toybigram.probes import bigram_memory, copy_memory, induction_key_memory, previous_token_scores
from toybigram.theory.calculator import FEATURES, Layer1, Strengths

VARIANTS = ("diagonal", "full", "exact")
FULL_SCORE_PATHS = (("E", "E"), ("P", "P"))  # beyond the induction key (E, PhiE): chosen by measurement


def relative_diagonal(memory: torch.Tensor, dim: int) -> torch.Tensor:
    """memory[k,k] minus the mean of the other entries of row k (dim=1) or column k (dim=0)."""
    n = memory.shape[0]
    diag = memory.diagonal()
    others = (memory.sum(dim) - diag) / (n - 1)
    return diag - others


def _score_scale(model: AssociativeTransformer) -> float:
    return 1 / math.sqrt(model.d_model) if model.spec.scale_scores else 1.0


@torch.no_grad()
def read_alpha(model: AssociativeTransformer, T: int | None = None) -> torch.Tensor | None:
    """alpha_t (T,) for ape (relative to the other causal scores of row t; alpha_0 = 0),
    or the relative profile r(delta) = S(delta=1) - mean_{delta != 1} for rpe/rope, as (T,) alpha_t;
    None for nope."""
    S = previous_token_scores(model, T)
    if S is None:
        return None
    S = S.double() * _score_scale(model)
    T = S.shape[0]
    alpha = torch.zeros(T, dtype=torch.float64, device=S.device)
    for t in range(1, T):
        others = torch.cat([S[t, : t - 1], S[t, t : t + 1]])
        alpha[t] = S[t, t - 1] - others.mean()
    return alpha


@torch.no_grad()
def read_layer1(model: AssociativeTransformer, T: int, variant: str) -> Layer1 | None:
    """Layer-1 tables of the previous-token layer for prompts of length <= T; None for nope."""
    spec = model.spec
    if spec.pos == "nope":
        return None
    s = _score_scale(model)
    if variant == "diagonal":
        alpha = read_alpha(model, T)
        if spec.pos == "ape":
            return Layer1(pos=torch.diag(alpha[1:], diagonal=-1))
        return Layer1(pos=previous_token_scores(model, T).double() * s)  # a profile in t - s, (T,T)
    W_K = model.blocks[spec.n_layers - 2].attn.W_K.double()
    E = model.W_E.double()
    if spec.pos == "ape":
        P = model.positions(T).double()
        return Layer1(pos=s * P @ W_K @ P.T, tok_pos=s * E @ W_K @ P.T, pos_tok=s * P @ W_K @ E.T, tok_tok=s * E @ W_K @ E.T)
    if spec.pos == "rpe":
        return Layer1(tok_dist=s * E @ W_K @ model.W_rel.double().T)
    # rope: S(t,s) = e_{z_t}^T R_{s-t} W_K e_{z_s}; R_{-delta} for delta = t - s = 0..T-1
    keys = E @ W_K.T                                                      # rows W_K e_k
    deltas = torch.arange(T, device=E.device)
    rotated = torch.stack([rotate(keys, torch.full((len(keys),), -int(dl)), spec.rope_base) for dl in deltas], -1)  # (N,d,D)
    return Layer1(pair_dist=s * torch.einsum("id,jdD->ijD", E, rotated))


@torch.no_grad()
def read_strengths(model: AssociativeTransformer, T: int, variant: str = "full") -> Strengths:
    """The model's strengths as the calculator takes them (float64, on the model's device)."""
    if variant not in VARIANTS:
        from toybigram.errors import ConfigError

        raise ConfigError(f"theory.variant: unknown value {variant!r} (choose {', '.join(VARIANTS)})")
    s = _score_scale(model)
    Lam = induction_key_memory(model).double() * s
    layer1 = read_layer1(model, T, variant)
    layer1 = layer1 if layer1 is not None else Layer1(exact=True)
    rows = feature_rows(model, T)
    readout = logit_readout(model)
    if readout is None:  # relu block: its own map on w_E(i) plus the direct paths through W_U
        U = model.W_U.double()
        copies, directs = {}, {f: r @ U for f, r in rows.items()}
        copy, directs["E"] = copy_memory(model).double(), directs["E"] + bigram_memory(model).double()
    else:
        copied = model.ov(model.spec.n_layers - 1).double().T @ readout      # (d,N): logits of a copied vector
        copies, directs = {f: r @ copied for f, r in rows.items()}, {f: r @ readout for f, r in rows.items()}
        copy = copies["E"].T
    glob = directs.pop("E")
    copies.pop("E", None)
    if variant == "diagonal":
        return Strengths(layer1=layer1, key=relative_diagonal(Lam, 1), copy=relative_diagonal(copy, 0), glob=glob,
                         vocab_size=model.vocab_size)
    W_K2 = model.blocks[-1].attn.W_K.double()
    pairs = [(a, b) for a in rows for b in rows] if variant == "exact" else [p for p in FULL_SCORE_PATHS if set(p) <= set(rows)]
    scores = {(a, b): s * rows[a] @ W_K2 @ rows[b].T for a, b in pairs if (a, b) != ("E", "PhiE")}
    return Strengths(layer1=layer1, key=Lam, copy=copy, glob=glob, vocab_size=model.vocab_size,
                     scores=scores, copies=copies, directs=directs)


@torch.no_grad()
def feature_rows(model: AssociativeTransformer, T: int) -> dict[str, torch.Tensor]:
    """Directions of the residual feature families (calculator.FEATURES) as rows, float64:
    w_E(k), p_t (ape only), Phi_1 w_E(k), Phi_1 p_t (ape only)."""
    phi = model.ov(model.spec.n_layers - 2).double()
    E = model.W_E.double()
    rows = {"E": E, "PhiE": E @ phi.T}
    if model.spec.pos == "ape":
        P = model.positions(T).double()
        rows.update({"P": P, "PhiP": P @ phi.T})
    return {f: rows[f] for f in FEATURES if f in rows}


@torch.no_grad()
def logit_readout(model: AssociativeTransformer) -> torch.Tensor | None:
    """R (d,N) with logits = R^T y for the last layer's residual y: W_U, or (I + W_F)^T W_U for a
    linear feed-forward block; None for a relu block (not linear)."""
    mlp = model.blocks[-1].mlp
    U = model.W_U.double()
    if mlp is None:
        return U
    return U + mlp.W_F.double().T @ U if mlp.kind == "linear" else None
