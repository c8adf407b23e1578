"""The hijack threshold at long prompts: the closed form with a diluted previous-token head.

The closed form (calculator.hijack_threshold) assumes the exact previous-token head: every key
whose previous token is q scores lambda_q in layer 2, wherever it sits. A trained layer-1 head
is a softmax over all earlier positions, so its weight on the previous token,

    w_s = a1(s, s-1) = e^{S1(s,s-1)} / sum_{u <= s} e^{S1(s,u)},

falls as s grows (more positions compete; with rpe every distance beyond the table shares
one score). A key at s carries only w_s of q's content, so its layer-2 score is lambda_q w_s
and c keys placed uniformly in a prompt of length T get the attention of c keys of strength

    E_eff(T) = mean_{1 <= s < T} exp(lambda_q w_s)        (instead of e^{lambda_q}).

The corrected threshold is the closed form with lambda_q replaced by log E_eff(T). Its numbers
are the closed form's (lambda_q, beta_o, beta_b, g(b*|q) - g(o|q)) plus the previous-token
weights w_s, all read from the weights; ``law_logits`` is the same law prompt by prompt (the
keys' actual positions instead of the mean), for compete prompts and per-prompt scoring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from toybigram.theory.calculator import causal_softmax, hijack_threshold
from toybigram.theory.strengths import read_strengths

__all__ = ["ThresholdLaw", "diluted_threshold", "effective_key", "law_logits", "measured_key_terms", "pair_counts",
           "previous_token_weights"]


def previous_token_weights(position_scores: torch.Tensor) -> torch.Tensor:
    """w_s = a1(s, s-1) for s = 0..T-1 (w_0 = 1: position 0 reads itself) under layer-1 scores (T, T)."""
    weights = causal_softmax(position_scores.double()).diagonal(-1)
    return torch.cat([weights.new_ones(1), weights])


def effective_key(lam, weights: torch.Tensor, T: int) -> torch.Tensor:
    """log mean_{1 <= s < T} exp(lambda w_s): the key strength c uniformly placed pairs act with at length T.

    ``lam`` broadcasts (scalar or (...,)); ``weights`` (>= T,) from previous_token_weights.
    """
    w = weights[1:T].double()
    lam = torch.as_tensor(lam, dtype=torch.float64)
    return torch.logsumexp(lam[..., None] * w, dim=-1) - math.log(len(w))


def diluted_threshold(T: int, lam, weights: torch.Tensor, beta_o, beta_b, gap, f_o=0.0, f_b=0.0) -> torch.Tensor:
    """The corrected hijack threshold: calculator.hijack_threshold with lambda -> effective_key(lambda, w, T)."""
    return hijack_threshold(T, effective_key(lam, weights, T), beta_o, beta_b, gap, f_o, f_b)


def law_logits(tokens: torch.Tensor, key: torch.Tensor, copy: torch.Tensor, bigram: torch.Tensor,
               weights: torch.Tensor) -> torch.Tensor:
    """Last-position logits (B, N) of the law for prompts (B, T): layer-2 score lambda_q w_s on keys whose
    previous token is the query q, 0 elsewhere; each key copies beta_{z_s} onto its own token; plus g(.|q)."""
    B, T = tokens.shape
    n = bigram.shape[0]
    q = tokens[:, -1]
    prev = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)
    scores = key.double()[q][:, None] * weights[:T].double()[None, :] * (prev == q[:, None])
    attention = torch.softmax(scores, dim=-1)                                       # (B, T)
    onehot = torch.nn.functional.one_hot(tokens, n).double()
    return bigram.double()[q] + (attention[:, :, None] * onehot).sum(1) * copy.double()[None, :]


@dataclass
class ThresholdLaw:
    """The law's numbers for one model: lambda_q (N,), beta_k (N,), g (N, N) and the previous-token
    weights w_s (L,) for prompts up to length L; ``source`` says where they were read."""

    key: torch.Tensor
    copy: torch.Tensor
    bigram: torch.Tensor
    weights: torch.Tensor
    source: dict

    @classmethod
    @torch.no_grad()
    def from_model(cls, model, length: int, source: dict | None = None) -> "ThresholdLaw":
        """Read from the weights: the diagonal strengths and the position-only layer-1 scores up to ``length``."""
        diag = read_strengths(model, length, "diagonal")
        pos = diag.layer1.pos
        weights = previous_token_weights(pos) if pos is not None else torch.ones(length, dtype=torch.float64)
        return cls(diag.key.double().cpu(), diag.copy.double().cpu(), diag.bigram.double().cpu(),
                   weights.double().cpu(), dict(source or {}))

    def gap(self, q: int, o: int, b: int) -> float:
        return (self.bigram[q, b] - self.bigram[q, o]).item()

    def thresholds(self, T: int, q: int, o: int, b: int, f_o: float = 0.0, f_b: float = 0.0) -> dict[str, float]:
        """{closed_form, corrected}: the threshold count of the pair at length T, without and with dilution."""
        args = (self.key[q], self.copy[o], self.copy[b], self.gap(q, o, b), f_o, f_b)
        return {"closed_form": hijack_threshold(T, *args).item(),
                "corrected": hijack_threshold(T, effective_key(self.key[q], self.weights, T), *args[1:]).item()}

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """law_logits with this law's numbers."""
        return law_logits(tokens, self.key, self.copy, self.bigram, self.weights)

    def numbers(self, pairs: list[tuple[int, int, int]], lengths: list[int]) -> dict:
        """The numbers the predictions use, for the record: lambda per query, beta per token, the gap
        g(b*|q) - g(o|q) per pair, E_eff per query and length, and the previous-token weights w_s."""
        queries = sorted({q for q, _, _ in pairs})
        return {"lambda": {str(q): self.key[q].item() for q in queries},
                "beta": {str(k): self.copy[k].item() for k in sorted({k for _, o, b in pairs for k in (o, b)})},
                "gap": {f"{q},{o},{b}": self.gap(q, o, b) for q, o, b in pairs},
                "effective_E": {str(q): {str(T): effective_key(self.key[q], self.weights, T).exp().item() for T in lengths}
                                for q in queries},
                "previous_weight": self.weights[: max(lengths)].tolist(),
                "source": self.source}


def pair_counts(prompts: torch.Tensor, o: int, b: int, c) -> tuple[float, float]:
    """f_o, f_b: how often o (beyond its c pairs) and b* occur in the prompts, on average."""
    f_o = (prompts == o).sum(1).double() - torch.as_tensor(c, dtype=torch.float64)
    return f_o.mean().item(), (prompts == b).sum(1).double().mean().item()


def measured_key_terms(tokens: torch.Tensor, a1: torch.Tensor, a2_last: torch.Tensor) -> dict[str, float]:
    """What the law's key term is made of, measured on a model's attention for hijack prompts (B, T) that hold
    c >= 1 pairs of the final query q: the layer-2 attention on the o-keys (keys whose previous token is q),
    layer 1's weight on the previous token at those keys, the effective key strength (mean attention of an o-key
    over that of a key that neither follows q nor is q) and the share of q a non-matching key reads.
    ``a1`` (B, T, T) layer-1 attention, ``a2_last`` (B, T) the last position's layer-2 attention."""
    B, T = tokens.shape
    q = tokens[:, -1:]
    prev = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)
    o_keys = prev == q
    plain = ~o_keys & (tokens != q)
    plain[:, -1] = False
    positions = torch.arange(1, T)
    previous_weight = torch.cat([torch.ones(B, 1, dtype=a1.dtype), a1[:, positions, positions - 1]], dim=1)
    q_read = (a1 * (tokens == q)[:, None, :].to(a1.dtype)).sum(-1)
    per_o_key = (a2_last * o_keys).sum(1) / o_keys.sum(1)
    per_plain_key = (a2_last * plain).sum(1) / plain.sum(1)
    return {"attention_o_keys": (a2_last * o_keys).sum(1).mean().item(),
            "previous_weight_o_keys": (previous_weight[o_keys]).mean().item(),
            "effective_E": (per_o_key / per_plain_key).mean().item(),
            "q_read_plain_key": (q_read[plain]).mean().item()}
