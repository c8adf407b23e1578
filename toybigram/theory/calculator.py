"""The analytic logit calculator: pure functions of strengths and prompts.

Ignoring cross-talk, at every query position t of a prompt z (0-indexed here):

    S1(t,s)   = layer-1 score from the strengths (ideal: alpha_t at s = t-1, else 0)
    a1        = softmax_causal(S1)
    M(s,k)    = sum_u a1(s,u) [z_u = k]               what position s's layer-1 head read
    kappa(t,s)= sum_k Lambda[z_t, k] M(s,k)           layer-2 key score
    a2        = softmax_causal(kappa)
    IC(t,j)   = sum_s a2(t,s) B[j, z_s]               in-context term
    G(t,j)    = g(j | z_t)                            global term
    logit     = G + IC                                compare after centring over j

Lambda, B are (N, N) in the embedding basis; scalars and per-token vectors stand for
diagonal matrices (lambda_q, beta_j in docs/theory.md). Everything is batched over prompts
(B, T) and all query positions at once.

Further paths (the ``full`` read of a trained model, strengths.py): the residual stream at s
is a sum of four feature families with coefficients known from the prompt and a1,

    E: onehot(z_s) (N)   P: position s (T)   PhiE: M(s,.) (N)   PhiP: a1(s,.) (T)

so an extra layer-2 score path (f, f') adds coef_f(t) K_ff' coef_f'(s)^T to kappa, an extra
copied family f adds sum_s a2(t,s) coef_f(s) C_f to IC, and a direct family f adds
coef_f(t) D_f to G; K, C, D are tables in the token/position basis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from toybigram.errors import ConfigError


@dataclass
class Layer1:
    """Layer-1 score tables; S1(t,s) is the sum of those present (None = absent).

    pos[t,s] (T,T): from positions alone (ideal ape: alpha_t at s=t-1; rpe/rope: a profile in t-s).
    tok_pos[z_t, s], pos_tok[t, z_s], tok_tok[z_t, z_s]: token-dependent parts (ape, full read).
    tok_dist[z_t, t-s] (N,D): rpe, full read. pair_dist[z_t, z_s, t-s] (N,N,D): rope, full read.
    exact=True: a1(t,t-1) = 1 (the alpha -> infinity limit); position 0 attends to itself.
    """

    pos: torch.Tensor | None = None
    tok_pos: torch.Tensor | None = None
    pos_tok: torch.Tensor | None = None
    tok_tok: torch.Tensor | None = None
    tok_dist: torch.Tensor | None = None
    pair_dist: torch.Tensor | None = None
    exact: bool = False

    @property
    def length(self) -> int | None:
        """The longest prompt the tables cover (None = any)."""
        for table in (self.pos, self.tok_pos):
            if table is not None:
                return table.shape[-1]
        return None


@dataclass
class Strengths:
    """Memory strengths: layer-1 tables, induction key Lambda, copy B, global map g.

    key:  lambda; scalar, (N,) per query token, or (N,N) [query token, previous token].
    copy: beta; scalar, (N,) per attended token, or (N,N) [output j, attended k].
    bigram: the global bigram map g (N,N), g[i, j] = g(j | i); None = no global term.
    scores: further layer-2 score tables {(query family, key family): K}, families in FEATURES.
    copies: further copied families {f: C (n_f, N)}: logits written by layer 2 copying family f.
    directs: further direct families {f: D (n_f, N)}: logits read from the query's own family f.
    (Positional tables have one row per position up to the longest prompt they cover.)
    """

    layer1: Layer1
    key: float | torch.Tensor
    copy: float | torch.Tensor
    bigram: torch.Tensor | None
    vocab_size: int
    scores: dict = field(default_factory=dict)
    copies: dict = field(default_factory=dict)
    directs: dict = field(default_factory=dict)

    def to(self, dtype=torch.float64, device="cpu") -> "Strengths":
        def cast(v):
            return v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v

        layer1 = Layer1(**{k: cast(getattr(self.layer1, k)) for k in ("pos", "tok_pos", "pos_tok", "tok_tok", "tok_dist", "pair_dist")},
                        exact=self.layer1.exact)
        return replace(self, layer1=layer1, key=cast(self.key), copy=cast(self.copy), bigram=cast(self.bigram),
                       scores={k: cast(v) for k, v in self.scores.items()}, copies={k: cast(v) for k, v in self.copies.items()},
                       directs={k: cast(v) for k, v in self.directs.items()})


@dataclass
class Prediction:
    """Calculator output for prompts (B,T): attention (B,T,T), logit terms (B,T,N)."""

    a1: torch.Tensor
    a2: torch.Tensor
    global_term: torch.Tensor
    incontext_term: torch.Tensor
    logits: torch.Tensor


def as_matrix(strength, n: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """A scalar or per-token vector as the diagonal (N,N) matrix it stands for; a matrix as is."""
    s = torch.as_tensor(strength, dtype=dtype, device=device)
    if s.ndim == 0:
        return s * torch.eye(n, dtype=dtype, device=device)
    if s.ndim == 1:
        return torch.diag(s)
    return s


def prev_table(alpha, T: int, dtype=torch.float64) -> torch.Tensor:
    """The ideal positional score table: alpha_t at (t, t-1), zero elsewhere; alpha scalar or (T,)."""
    alpha = torch.as_tensor(alpha, dtype=dtype).expand(T) if torch.as_tensor(alpha).ndim == 0 else torch.as_tensor(alpha, dtype=dtype)[:T]
    return torch.diag(alpha[1:], diagonal=-1)


FEATURES = ("E", "P", "PhiE", "PhiP")  # token, position, previous-token content, previous-position content


def features(tokens: torch.Tensor, a1: torch.Tensor, n: int, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Coefficients (B,T,n_f) of the residual stream h_s on each feature family (module docstring)."""
    B, T = tokens.shape
    onehot = torch.nn.functional.one_hot(tokens, n).to(dtype)
    return {"E": onehot, "P": torch.eye(T, dtype=dtype, device=tokens.device).expand(B, T, T),
            "PhiE": a1 @ onehot, "PhiP": a1}


def _rows(table: torch.Tensor, n_rows: int, n_cols: int | None = None) -> torch.Tensor:
    """A table cut to the prompt's sizes (positional tables cover longer prompts)."""
    return table[:n_rows] if n_cols is None else table[:n_rows, :n_cols]


def causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    T = scores.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


def shift_attention(B: int, T: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """The exact previous-token head: a1(t, t-1) = 1, a1(0, 0) = 1."""
    a1 = torch.diag(torch.ones(T - 1, dtype=dtype, device=device), diagonal=-1)
    a1[0, 0] = 1.0
    return a1.expand(B, T, T)


def layer1_scores(layer1: Layer1, tokens: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """S1 (B,T,T) for prompts (B,T) (scores above the diagonal are masked later)."""
    B, T = tokens.shape
    covered = layer1.length
    if covered is not None and T > covered:
        raise ConfigError(f"theory: prompt length {T} exceeds the {covered} positions the layer-1 strengths cover")
    S = torch.zeros(B, T, T, dtype=dtype, device=tokens.device)
    if layer1.pos is not None:
        S = S + layer1.pos[:T, :T]
    if layer1.tok_pos is not None:
        S = S + layer1.tok_pos[tokens][:, :, :T]
    if layer1.pos_tok is not None:
        S = S + layer1.pos_tok[:T][:, tokens].permute(1, 0, 2)
    if layer1.tok_tok is not None:
        S = S + layer1.tok_tok[tokens[:, :, None], tokens[:, None, :]]
    if layer1.tok_dist is not None or layer1.pair_dist is not None:
        table = layer1.tok_dist if layer1.tok_dist is not None else layer1.pair_dist
        D = table.shape[-1]
        distance = (torch.arange(T, device=tokens.device)[:, None] - torch.arange(T, device=tokens.device)[None, :]).clamp(0, D - 1)
        if layer1.tok_dist is not None:
            S = S + layer1.tok_dist[tokens[:, :, None], distance]
        else:
            S = S + layer1.pair_dist[tokens[:, :, None], tokens[:, None, :], distance]
    return S


def layer1_attention(layer1: Layer1, tokens: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    if layer1.exact:
        return shift_attention(*tokens.shape, dtype=dtype, device=tokens.device)
    return causal_softmax(layer1_scores(layer1, tokens, dtype))


def predict(strengths: Strengths, tokens: torch.Tensor, a1: torch.Tensor | None = None, dtype=torch.float64,
            last_only: bool = False) -> Prediction:
    """Attention and logits of the calculator for prompts (B,T) at every query position.

    ``a1`` overrides the layer-1 attention (e.g. a measured one, for nope). ``last_only``
    predicts layer 2 and the logits for the last query position only (a2 (B,1,T), logits (B,1,N)).
    """
    n = strengths.vocab_size
    if a1 is None:
        a1 = layer1_attention(strengths.layer1, tokens, dtype)
    feats = features(tokens, a1, n, dtype)
    M = feats["PhiE"]                                                # (B,T,N)
    Lam = as_matrix(strengths.key, n, dtype, tokens.device)
    T = tokens.shape[1]
    query = slice(T - 1, T) if last_only else slice(0, T)
    kappa = Lam[tokens[:, query]] @ M.transpose(-1, -2)              # (B,T,T), or (B,1,T)
    for (fq, fk), K in strengths.scores.items():
        q, k = feats[fq][:, query], feats[fk]
        kappa = kappa + q @ _rows(K, q.shape[-1], k.shape[-1]) @ k.transpose(-1, -2)
    a2 = causal_softmax(kappa) if not last_only else torch.softmax(kappa, -1)
    Bmat = as_matrix(strengths.copy, n, dtype, tokens.device)
    written = Bmat.T[tokens]                                         # (B,T,N): B[j, z_s]
    for f, C in strengths.copies.items():
        written = written + feats[f] @ _rows(C, feats[f].shape[-1])
    incontext = a2 @ written                                         # sum_s a2(t,s) written(s)
    known = strengths.bigram[tokens[:, query]] if strengths.bigram is not None else torch.zeros_like(incontext)
    for f, D in strengths.directs.items():
        known = known + feats[f][:, query] @ _rows(D, feats[f].shape[-1])
    return Prediction(a1, a2, known, incontext, known + incontext)


# -- the closed form of the ideal case -------------------------------------------------
def prompt_counts(tokens: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the last position's query q = z_{T-1}: n_q (B,), c_q (B,N), m (B,N).

    prev(s) = z_{s-1}, and prev(0) = z_0 (the exact head's first position reads itself).
    """
    q = tokens[:, -1]
    prev = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)
    after_q = (prev == q[:, None]).to(torch.float64)
    onehot = torch.nn.functional.one_hot(tokens, n).to(torch.float64)
    return after_q.sum(1), (after_q[:, :, None] * onehot).sum(1), onehot.sum(1)


def closed_form_incontext(tokens: torch.Tensor, lam: float, beta: float, n: int) -> torch.Tensor:
    """IC_j = beta [e^lam c_q(j) + (m_j - c_q(j))] / [e^lam n_q + (T - n_q)] at the last position, (B,N)."""
    T = tokens.shape[1]
    n_q, c, m = prompt_counts(tokens, n)
    damp = math.exp(-lam)  # divide through by e^lam: no overflow for large lambda
    return beta * (c + damp * (m - c)) / (n_q + damp * (T - n_q))[:, None]


def hijack_threshold(T, lam, beta_o, beta_b, gap, f_o=0.0, f_b=0.0) -> torch.Tensor:
    """Smallest count c >= 0 at which o overtakes the global favourite b* in a hijack prompt.

    Closed form under the exact previous-token head and diagonal strengths. The prompt holds
    q exactly c + 1 times (c times followed by o, then last), o another f_o times and b*
    f_b times elsewhere. With E = e^lambda and gap = g(b*|q) - g(o|q), o wins when

        beta_o (E c + f_o) - beta_b f_b > gap ((E - 1) c + T)

    i.e. c > (gap T - beta_o f_o + beta_b f_b) / (beta_o E - gap (E - 1)). Returns inf where no
    count suffices (the copy strength beta_o does not beat the gap). Broadcasts over arguments.
    """
    T, lam, beta_o, beta_b, gap, f_o, f_b = (torch.as_tensor(v, dtype=torch.float64) for v in (T, lam, beta_o, beta_b, gap, f_o, f_b))
    E = torch.exp(lam)
    slope = beta_o * E - gap * (E - 1)
    rhs = gap * T - beta_o * f_o + beta_b * f_b
    c = torch.where(slope > 0, torch.floor(rhs / slope) + 1, torch.where(rhs < 0, 0.0, math.inf))
    return c.clamp_min(0)


def first_crossing(counts: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """Smallest count whose margin (and every larger count's) is positive; inf if none.

    counts (C,) ascending, margins (..., C). Requiring all larger counts to stay positive
    makes the threshold well defined when noisy margins cross more than once.
    """
    positive = margins > 0
    stays = positive.flip(-1).cumprod(-1).flip(-1).bool()  # positive from here to the end
    index = torch.where(stays.any(-1), stays.float().argmax(-1), torch.full(stays.shape[:-1], -1, device=margins.device))
    c = counts.to(torch.float64)[index.clamp_min(0)]
    return torch.where(index >= 0, c, torch.full_like(c, math.inf))


# -- agreement figures -------------------------------------------------------------------
def centred(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.mean(-1, keepdim=True)


def agreement(model_logits: torch.Tensor, theory_logits: torch.Tensor) -> dict[str, float]:
    """Centred-logit R^2 (pooled and median per prompt), Pearson r, top-1 agreement; inputs (..., N)."""
    y, f = centred(model_logits.double()).flatten(0, -2), centred(theory_logits.double()).flatten(0, -2)
    resid, total = ((y - f) ** 2), (y - y.mean()) ** 2
    r2 = 1 - resid.sum() / total.sum()
    per_prompt = 1 - resid.sum(-1) / (y**2).sum(-1).clamp_min(1e-300)
    yc, fc = y - y.mean(), f - f.mean()
    pearson = (yc * fc).sum() / (yc.norm() * fc.norm()).clamp_min(1e-300)
    top1 = (y.argmax(-1) == f.argmax(-1)).double().mean()
    return {"r2_centered_logits": r2.item(), "r2_median": per_prompt.median().item(), "pearson_r": pearson.item(),
            "top1_agreement": top1.item(), "n": y.shape[0]}


def attention_error(model_attn: torch.Tensor, theory_attn: torch.Tensor) -> float:
    """Mean total-variation distance between attention rows (0 = identical, 1 = disjoint)."""
    return 0.5 * (model_attn.double() - theory_attn.double()).abs().sum(-1).mean().item()
