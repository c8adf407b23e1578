"""Strengths read from a model's weights (spec section 4, last paragraph).

Two variants:
- ``diagonal``: alpha_t (ape) or a relative-position profile (rpe/rope), lambda_k, beta_k
  and g. Each diagonal strength is read relative to the mean of its row's other entries,
  because a constant added to every competitor cancels in the softmax (key) or in the
  centred logits (copy); on an ideal build this returns the strengths it was built with.
- ``full``: the memories as matrices in the embedding basis, Lambda[j,k], B[j,k], g[i,j],
  and the layer-1 score split into its position and token parts (exact for layer 1).
  With a linear feed-forward block the logits read the residual through (I + W_F), so the
  copy and global maps include the paths through W_F (the block also reads the copied
  token: on ideal builds that path is the largest cross-talk term, see gram.py), and the
  query's own position p_t and previous-token content Phi_1 w_E(k) get logit tables.

The induction-key, copy and bigram matrices are the probes' (toybigram.probes).
"""
from __future__ import annotations

import math

import torch

from toybigram.model import AssociativeTransformer, rotate
from toybigram.probes import bigram_memory, copy_memory, induction_key_memory, previous_token_scores
from toybigram.theory.calculator import Layer1, Strengths

VARIANTS = ("diagonal", "full")


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
    Bm = copy_memory(model).double()
    g = bigram_memory(model)
    g = None if g is None else g.double()
    layer1 = read_layer1(model, T, variant)
    pos_logit = prev_logit = None
    if variant == "diagonal":
        key, copy = relative_diagonal(Lam, 1), relative_diagonal(Bm, 0)
    else:
        key, copy = Lam, Bm
        mlp = model.blocks[-1].mlp
        E, U = model.W_E.double(), model.W_U.double()
        readout = U if mlp is None else (U + mlp.W_F.double().T @ U if mlp.kind == "linear" else None)
        if readout is not None:  # logits = readout^T y: every path, FFN included (linear block)
            copy = ((E @ model.ov(model.spec.n_layers - 1).double().T) @ readout).T
            g = E @ readout
            prev_logit = (E @ model.ov(model.spec.n_layers - 2).double().T) @ readout
            if model.spec.pos == "ape":
                pos_logit = model.positions(T).double() @ readout
        else:  # relu block: its own map on w_E(i) plus the direct paths
            g = g + E @ U
            prev_logit = (E @ model.ov(model.spec.n_layers - 2).double().T) @ U
    return Strengths(layer1=layer1 if layer1 is not None else Layer1(exact=True), key=key, copy=copy, glob=g,
                     vocab_size=model.vocab_size, pos_logit=pos_logit, prev_logit=prev_logit)
