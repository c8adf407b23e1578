"""Ideal construction: a model whose trainable weights are the ideal memories.

    W_K^1 = sum_t alpha_t p_t p_{t-1}^T          (ape)
          = alpha sum_k w_E(k) r_1^T             (rpe)
          = alpha (R_1 u) u^T, u = sum_k w_E(k)  (rope: scores alpha (x_t^T R_{s-t+1} u)(u^T x_s))
    W_K^2 = sum_k lambda_k w_E(k) (Phi_1 w_E(k))^T
    W_O^2 = sum_k beta_k w_U(k) (W_V^2 w_E(k))^T
    W_F   = sum_{i,j} g(j|i) w_U(j) w_E(i)^T      (relu: hidden unit i reads w_E(i), writes g(.|i))

W_K^1 is built by the positional encoding (``PositionalEncoding.ideal_key``). nope has no
positional memory to build (its previous-token head must be computed from the causal mask by
an extra layer); it is refused.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from toybigram.errors import ConfigError
from toybigram.model import AssociativeTransformer, ModelSpec


def log_bigram(transition: np.ndarray | torch.Tensor, floor: float = 1e-4) -> torch.Tensor:
    """g(j|i) = log max(pi_b(j|i), floor), centred over j (softmax ignores the row constant)."""
    g = torch.as_tensor(np.asarray(transition), dtype=torch.float64).clamp_min(floor).log()
    return g - g.mean(-1, keepdim=True)


def per_token(value, n: int) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=torch.float64)
    if v.ndim == 0:
        return v.expand(n).clone()
    if v.shape != (n,):
        raise ConfigError(f"theory: per-token strengths need shape ({n},), got {tuple(v.shape)}")
    return v


@torch.no_grad()
def ideal_model(spec: ModelSpec, *, alpha=12.0, lam=10.0, beta=8.0, g: torch.Tensor | None = None, seed: int = 0) -> AssociativeTransformer:
    """An AssociativeTransformer of ``spec`` with ideal memories of the given strengths.

    alpha: scalar or (max_len,) alpha_t (ape; rpe/rope use a scalar); lam, beta: scalar or (N,);
    g: (N,N) global map g[i,j] = g(j|i), or None for no feed-forward memory (W_F = 0).
    With spec.scale_scores the key memories are multiplied by sqrt(d) so the strengths hold.
    """
    positional = spec.positional
    if not positional.previous_token_memory:
        raise ConfigError(f"theory: no ideal construction for pos={spec.pos} "
                          "(its previous-token head is not a positional memory)")
    if spec.n_layers != 2:
        raise ConfigError(f"theory: the ideal construction is for two layers, got model.n_layers={spec.n_layers}")
    model = AssociativeTransformer(spec, seed=seed)
    dtype = model.W_E.dtype
    N, d = spec.vocab_size, spec.d_model
    scale = math.sqrt(d) if spec.scale_scores else 1.0
    E, U = model.W_E.double(), model.W_U.double()      # (N,d) rows w_E, (d,N) columns w_U
    first, second = model.blocks[0].attn, model.blocks[1].attn
    first.W_K.copy_((scale * positional.ideal_key(model, alpha)).to(dtype))

    phi_E = E @ model.ov(0).double().T                 # rows Phi_1 w_E(k)
    second.W_K.copy_((scale * E.T @ (per_token(lam, N)[:, None] * phi_E)).to(dtype))
    V2_E = E @ second.W_V.double().T                   # rows W_V^2 w_E(k)
    second.W_O.copy_((U @ (per_token(beta, N)[:, None] * V2_E)).to(dtype))

    mlp = model.blocks[-1].mlp
    if mlp is not None:
        g = torch.zeros(N, N, dtype=torch.float64) if g is None else torch.as_tensor(g, dtype=torch.float64)
        if mlp.kind == "linear":
            mlp.W_F.copy_((U @ g.T @ E).to(dtype))
        else:
            if spec.d_hidden < N:
                raise ConfigError(f"theory: an ideal relu memory needs model.d_hidden >= N = {N}, got {spec.d_hidden}")
            W_in = torch.zeros(spec.d_hidden, d, dtype=torch.float64)
            W_out = torch.zeros(d, spec.d_hidden, dtype=torch.float64)
            W_in[:N], W_out[:, :N] = E, U @ g.T        # unit i fires on w_E(i) and writes g(.|i)
            mlp.W_in.copy_(W_in.to(dtype))
            mlp.W_out.copy_(W_out.to(dtype))
    elif g is not None:
        raise ConfigError("theory: a global map g needs a feed-forward block (model.ffn=linear or relu)")
    return model.eval()
