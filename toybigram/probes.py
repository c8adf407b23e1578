"""Memory-recall probes (pure functions of the weights) and attention probes on a batch.

The previous-token layer is the second-to-last one and the induction layer the last
(layers 1 and 2 of the two-layer model).
"""
from __future__ import annotations

import math

import torch

from toybigram.hooks import circuit_pattern_hooks
from toybigram.model import AssociativeTransformer
from toybigram.positional import previous_token_alpha

LABEL_CLASSES = {"global": (0, 0), "first": (1, 1), "incontext": (2, None)}


def circuit_layers(model: AssociativeTransformer) -> tuple[int, int]:
    """Indices (0-based) of the previous-token layer and the induction layer: the last two."""
    return model.spec.n_layers - 2, model.spec.n_layers - 1


def score_scale(model: AssociativeTransformer) -> float:
    """The factor the model applies to attention scores: 1/sqrt(d) with ``scale_scores``, else 1."""
    return 1 / math.sqrt(model.d_model) if model.spec.scale_scores else 1.0


@torch.no_grad()
def previous_token_scores(model: AssociativeTransformer, length: int | None = None) -> torch.Tensor | None:
    """Layer-1 score matrix S[t, s] carried by positions alone, (T, T); None when positions carry none (nope).

    ape: p_t^T W_K p_s. rope/rpe: the score between a mean token at t and at s, which
    carries only the relative position (rope: ubar^T R_{s-t} W_K ubar; rpe: ubar^T W_K r_{t-s}).
    """
    W_K = model.blocks[circuit_layers(model)[0]].attn.W_K
    return model.positional.position_scores(model, W_K, length or model.spec.max_len)


@torch.no_grad()
def read_alpha(model: AssociativeTransformer, length: int | None = None) -> torch.Tensor | None:
    """alpha_t (T,) of the position-only scores (scaled as the model scales them), relative to the other
    causal scores of row t (alpha_0 = 0); for rpe/rope a relative profile as (T,) alpha_t; None for nope."""
    scores = previous_token_scores(model, length)
    return None if scores is None else previous_token_alpha(scores.double() * score_scale(model))


@torch.no_grad()
def position_profile(model: AssociativeTransformer, length: int) -> dict[str, torch.Tensor]:
    """The previous-token head's profile from positions alone: {"alpha": (T,)} by position for absolute
    encodings, {"alpha_by_offset": (T,)} by offset t - s from the last query for relative ones, {} for nope."""
    scores = previous_token_scores(model, length)
    return {} if scores is None else model.positional.profile(scores.double(), score_scale(model))


def previous_token_recall(model: AssociativeTransformer, first: int = 64) -> dict[str, float | None]:
    """Share of query positions t >= 1 whose causal argmax_s of the layer-1 score is t - 1."""
    scores = previous_token_scores(model)
    if scores is None:
        return {"recall_prev_token": None, f"recall_prev_token_first{first}": None}
    T = scores.shape[0]
    causal = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()
    best = scores.masked_fill(~causal, float("-inf")).argmax(dim=-1)
    hits = (best == torch.arange(T, device=scores.device) - 1)[1:].double()
    return {"recall_prev_token": hits.mean().item(), f"recall_prev_token_first{first}": hits[: first - 1].mean().item()}


@torch.no_grad()
def induction_key_memory(model: AssociativeTransformer) -> torch.Tensor:
    """lambda[k, j] = w_E(k)^T W_K^2 Phi_1 w_E(j), (N, N)."""
    prev, ind = circuit_layers(model)
    return model.W_E @ model.blocks[ind].attn.W_K @ model.ov(prev) @ model.W_E.T


@torch.no_grad()
def copy_memory(model: AssociativeTransformer) -> torch.Tensor:
    """beta[j, k] = w_U(j)^T W_O^2 W_V^2 w_E(k), (N, N): row j = output, column k = attended token."""
    return model.W_U.T @ model.ov(circuit_layers(model)[1]) @ model.W_E.T


@torch.no_grad()
def bigram_memory(model: AssociativeTransformer) -> torch.Tensor | None:
    """g[i, j] = w_U(j)^T FFN(w_E(i)), (N, N): the feed-forward block's logits for input token i."""
    mlp = model.blocks[-1].mlp
    if mlp is None:
        return None
    return mlp(model.W_E) @ model.W_U


def _diagonal_recall(memory: torch.Tensor, dim: int, tokens: torch.Tensor | None) -> float:
    best = memory.argmax(dim=dim)
    hits = (best == torch.arange(memory.shape[0], device=memory.device)).double()
    return (hits if tokens is None else hits[tokens]).mean().item()


def induction_key_recall(model: AssociativeTransformer, tokens: torch.Tensor | None = None) -> float:
    """Share of query tokens k (default all) with argmax_j lambda[k, j] = k."""
    return _diagonal_recall(induction_key_memory(model), 1, tokens)


def copy_recall(model: AssociativeTransformer, tokens: torch.Tensor | None = None) -> float:
    """Share of attended tokens k (default all) with argmax_j beta[j, k] = k."""
    return _diagonal_recall(copy_memory(model), 0, tokens)


def bigram_fit(model: AssociativeTransformer, transition: torch.Tensor, exclude: torch.Tensor | None = None) -> float | None:
    """Mean KL(pi_b(.|i) || softmax(g[i])) in nats over tokens i not in ``exclude`` (the triggers)."""
    g = bigram_memory(model)
    if g is None:
        return None
    p = transition.to(g)
    log_q = torch.log_softmax(g, dim=-1)
    kl = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - log_q), torch.zeros_like(p)).sum(-1)
    keep = torch.ones(len(kl), dtype=torch.bool, device=kl.device)
    if exclude is not None and exclude.numel():
        keep[exclude] = False
    return kl[keep].mean().item()


def weight_probes(model: AssociativeTransformer, transition: torch.Tensor, triggers: torch.Tensor | None = None) -> dict:
    """All four memory-recall probes; ``triggers`` restricts the induction probe to fixed triggers."""
    return {
        **previous_token_recall(model),
        "recall_induction_key": induction_key_recall(model, triggers),
        "recall_copy": copy_recall(model),
        "bigram_kl": bigram_fit(model, transition, triggers),
    }


@torch.no_grad()
def attention_probes(model: AssociativeTransformer, inputs: torch.Tensor, labels: torch.Tensor, cache: dict | None = None) -> dict:
    """Attention on a batch: layer 1 on the previous token, layer 2 on the token after an earlier copy.

    attn_prev_token: mean a1(t, t-1) over t >= 1.
    attn_induction: mean over in-context positions (label >= 2) of the layer-2 mass on
    positions s whose previous token equals the current token.
    """
    names = circuit_pattern_hooks(model.spec.n_layers)
    if cache is None or not all(n in cache for n in names):
        _, cache = model.run_with_cache(inputs, names_filter=names)
    a1, a2 = cache[names[0]], cache[names[1]]
    attn_prev = a1.diagonal(offset=-1, dim1=-2, dim2=-1).mean().item()
    after_copy = torch.zeros_like(inputs, dtype=torch.bool).unsqueeze(-1).expand(-1, -1, inputs.shape[1]).clone()
    # after_copy[b, t, s] = (z_{s-1} == z_t) for 1 <= s <= t
    after_copy[:, :, 1:] = inputs.unsqueeze(-1) == inputs[:, None, :-1]
    mass = (a2 * after_copy.to(a2.dtype)).sum(-1)
    incontext = labels >= 2
    attn_induction = mass[incontext].mean().item() if incontext.any() else math.nan
    return {"attn_prev_token": attn_prev, "attn_induction": attn_induction}
