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

import torch

from toybigram.errors import ConfigError
from toybigram.model import AssociativeTransformer
from toybigram.probes import (bigram_memory, circuit_layers, copy_memory, induction_key_memory, previous_token_scores,
                              read_alpha, score_scale)
from toybigram.theory.calculator import FEATURES, Layer1, Strengths

__all__ = ["FULL_SCORE_PATHS", "VARIANTS", "feature_rows", "logit_readout", "read_alpha", "read_layer1", "read_strengths",
           "relative_diagonal"]

VARIANTS = ("diagonal", "full", "exact")
FULL_SCORE_PATHS = (("E", "E"), ("P", "P"))  # beyond the induction key (E, PhiE): chosen by measurement


def relative_diagonal(memory: torch.Tensor, dim: int) -> torch.Tensor:
    """memory[k,k] minus the mean of the other entries of row k (dim=1) or column k (dim=0)."""
    n = memory.shape[0]
    diag = memory.diagonal()
    others = (memory.sum(dim) - diag) / (n - 1)
    return diag - others


@torch.no_grad()
def read_layer1(model: AssociativeTransformer, T: int, variant: str) -> Layer1 | None:
    """Layer-1 tables of the previous-token layer for prompts of length <= T; None without a positional memory (nope)."""
    positional = model.positional
    if not positional.previous_token_memory:
        return None
    s = score_scale(model)
    if variant == "diagonal":
        return Layer1(**positional.diagonal_layer1(previous_token_scores(model, T).double(), s))
    W_K = model.blocks[circuit_layers(model)[0]].attn.W_K.double()
    return Layer1(**positional.layer1_tables(model, W_K, model.W_E.double(), s, T))


@torch.no_grad()
def read_strengths(model: AssociativeTransformer, T: int, variant: str = "full") -> Strengths:
    """The model's strengths as the calculator takes them (float64, on the model's device)."""
    if variant not in VARIANTS:
        raise ConfigError(f"theory.variant: unknown value {variant!r} (choose {', '.join(VARIANTS)})")
    s = score_scale(model)
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
    bigram = directs.pop("E")
    copies.pop("E", None)
    if variant == "diagonal":
        return Strengths(layer1=layer1, key=relative_diagonal(Lam, 1), copy=relative_diagonal(copy, 0), bigram=bigram,
                         vocab_size=model.vocab_size)
    W_K2 = model.blocks[-1].attn.W_K.double()
    pairs = [(a, b) for a in rows for b in rows] if variant == "exact" else [p for p in FULL_SCORE_PATHS if set(p) <= set(rows)]
    scores = {(a, b): s * rows[a] @ W_K2 @ rows[b].T for a, b in pairs if (a, b) != ("E", "PhiE")}
    return Strengths(layer1=layer1, key=Lam, copy=copy, bigram=bigram, vocab_size=model.vocab_size,
                     scores=scores, copies=copies, directs=directs)


@torch.no_grad()
def feature_rows(model: AssociativeTransformer, T: int) -> dict[str, torch.Tensor]:
    """Directions of the residual feature families (calculator.FEATURES) as rows, float64:
    w_E(k), p_t (ape only), Phi_1 w_E(k), Phi_1 p_t (ape only)."""
    phi = model.ov(model.spec.n_layers - 2).double()
    E = model.W_E.double()
    rows = {"E": E, "PhiE": E @ phi.T}
    P = model.positions(T)
    if P is not None:  # absolute positions
        P = P.double()
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
