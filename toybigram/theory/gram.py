"""The corrected calculator for ideal builds: cross-talk in closed form from Gram matrices.

Every ideal memory reads the residual stream along a fixed family of directions and
writes along another:

    W_K^2 reads the query along w_E(k) and the key along Phi_1 w_E(k)    (strength lambda_k)
    W_O^2 W_V^2 reads a value along v_k = W_V^2T W_V^2 w_E(k), writes beta_k w_U(k)
    W_F reads along w_E(i), writes sum_j g(j|i) w_U(j);   the logits read along w_U(j)

and the residual stream at position s is a sum of four feature families with known
coefficients: w_E(z_s), p_s, Phi_1 w_E (weights M(s,.) = a1 @ onehot), Phi_1 p (weights a1(s,.)).
So each read is (coefficients) @ Gram(read directions, feature)^T. The idealised calculator
is the case Gram = identity for the matched pairs (E,E), (PhiE,PhiE), (V,E), (U,U) and 0 for
all others; the corrected one uses the true Gram matrices of the frozen matrices. It never
forms a d-dimensional vector: after the Gram matrices (cost N d (N + T)) everything is
N x N, N x T and T x T tables, whatever d is.

``keep`` names the Gram blocks taken from the frozen matrices (the rest stay ideal), so the
same function gives the idealised calculator (keep=()), any reduced correction, and the
full one (keep=BLOCKS). With all blocks kept it is exact for ideal builds up to rounding:
an identity that checks the algebra, not a theory. The theory is a reduced correction:
the few blocks chosen by ``forward_selection`` on one build and prompt set, then applied
unchanged to fresh builds (width.py); BLOCK_MEANING says what each block is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from toybigram.errors import ConfigError
from toybigram.model import AssociativeTransformer
from toybigram.theory.calculator import FEATURES, Prediction, agreement, causal_softmax

READS = ("E", "PhiE", "V", "U")          # query/token read, key read, value read, unembedding read
MATCHED = {("E", "E"), ("PhiE", "PhiE"), ("V", "E"), ("U", "U")}
BLOCKS = tuple((r, f) for r in READS for f in FEATURES) + (("E", "U"), ("U", "U"), ("P", "E"), ("P", "P"))

_READ = {"E": "query/token read w_E", "PhiE": "induction-key read Phi_1 w_E", "V": "layer-2 value read",
         "U": "logit read w_U", "P": "layer-1 position read p"}
_FEATURE = {"E": "token w_E(z_s)", "P": "position p_s", "PhiE": "previous-token content Phi_1 w_E",
            "PhiP": "previous-position content Phi_1 p", "U": "attention output / FFN output along w_U"}
BLOCK_MEANING = {f"{r},{f}": f"{_READ[r]} of the {_FEATURE[f]}" for r, f in BLOCKS}
BLOCK_MEANING["E,U"] = "feed-forward block (reads w_E) reading the copied token's unembedding w_U: W_F beta w_U(o)"
BLOCK_MEANING["U,U"] = "logit read w_U of a write along w_U (non-unit norms, overlaps of unembeddings)"


@dataclass
class GramBuild:
    """Strengths of an ideal build and the Gram matrices of its frozen directions (float64)."""

    alpha: torch.Tensor   # (L,) alpha_t
    lam: torch.Tensor     # (N,)
    beta: torch.Tensor    # (N,)
    g: torch.Tensor       # (N,N)
    ffn: str              # linear | relu | none
    gram: dict            # (read, feature) -> (n_read, n_feature)

    def block(self, read: str, feature: str, keep) -> torch.Tensor:
        G = self.gram[(read, feature)]
        if (read, feature) in keep:
            return G
        if (read, feature) in MATCHED:
            return torch.eye(*G.shape, dtype=G.dtype, device=G.device)
        if (read, feature) == ("P", "P"):
            return torch.eye(*G.shape, dtype=G.dtype, device=G.device)
        return torch.zeros_like(G)


@torch.no_grad()
def gram_build(model: AssociativeTransformer, alpha, lam, beta, g=None) -> GramBuild:
    """Gram matrices of the frozen directions of ``model`` (an ape two-layer model) and the strengths."""
    spec = model.spec
    positions = model.positions(spec.max_len)
    if positions is None or spec.n_layers != 2 or spec.scale_scores:
        raise ConfigError("theory: the Gram-matrix correction covers two-layer models with absolute positions (ape) "
                          "without score scaling")
    N, L = spec.vocab_size, spec.max_len
    E, U, P = model.W_E.double(), model.W_U.double().T, positions.double()  # rows
    phi = model.ov(0).double()
    W_V2 = model.blocks[1].attn.W_V.double()
    rows = {"E": E, "P": P, "PhiE": E @ phi.T, "PhiP": P @ phi.T, "V": (E @ W_V2.T) @ W_V2, "U": U}
    gram = {(r, f): rows[r] @ rows[f].T for r, f in BLOCKS}

    def vec(v):
        v = torch.as_tensor(v, dtype=torch.float64)
        return v.expand(N).clone() if v.ndim == 0 else v

    a = torch.as_tensor(alpha, dtype=torch.float64)
    a = a.expand(L).clone() if a.ndim == 0 else a
    ffn = spec.ffn
    g = torch.zeros(N, N, dtype=torch.float64) if g is None else torch.as_tensor(g, dtype=torch.float64)
    return GramBuild(a, vec(lam), vec(beta), g, ffn, gram)


def predict_gram(build: GramBuild, tokens: torch.Tensor, keep=BLOCKS) -> Prediction:
    """Calculator for an ideal build with the Gram blocks in ``keep`` taken as they are."""
    keep = set(keep)
    Bn, T = tokens.shape
    N = build.lam.shape[0]
    G = lambda r, f: build.block(r, f, keep)  # noqa: E731
    onehot = torch.nn.functional.one_hot(tokens, N).double()
    eye = torch.eye(T, dtype=torch.float64)

    # layer 1: S1(t,s) = sum_u alpha_u (x_t . p_u)(p_{u-1} . x_s), x = w_E(z) + p
    xp = onehot @ G("P", "E")[:T].T + G("P", "P")[:T, :T].T          # (B,T,T) x_t . p_u
    S1 = (xp[..., 1:] * build.alpha[1:T]) @ xp[..., :-1].transpose(1, 2)
    a1 = causal_softmax(S1)
    M = a1 @ onehot
    coeffs = {"E": onehot, "P": eye.expand(Bn, T, T), "PhiE": M, "PhiP": a1}

    def read(r: str) -> torch.Tensor:  # (B,T,n_r): the residual h read along family r
        return sum(coeffs[f] @ G(r, f)[:, : coeffs[f].shape[-1]].T for f in FEATURES)

    q, k, v = read("E"), read("PhiE"), read("V")
    a2 = causal_softmax((q * build.lam) @ k.transpose(1, 2))
    copied = build.beta * (a2 @ v)                                    # (B,T,N): W_O^2 output along w_U
    token_read = q + copied @ G("E", "U").T                           # E y
    if build.ffn == "relu":
        token_read = token_read.clamp_min(0)
    uu = G("U", "U")
    direct = read("U") + copied @ uu.T                                # U^T y
    known = (token_read @ build.g) @ uu.T if build.ffn != "none" else torch.zeros_like(direct)
    return Prediction(a1, a2, known, direct, known + direct)


def block_name(block) -> str:
    return ",".join(block)


def forward_selection(build: GramBuild, tokens: torch.Tensor, logits: torch.Tensor, target: float = 0.95,
                      candidates=BLOCKS, max_blocks: int = len(BLOCKS)) -> list[dict]:
    """Greedy forward selection of Gram blocks: each step adds the block raising the centred-logit
    R^2 (against ``logits``) most; stops at ``target``, after ``max_blocks``, or when nothing helps.
    Returns the steps [{"block", "r2"}], step 0 being the idealised calculator (no block)."""
    def r2(keep) -> float:
        return agreement(logits, predict_gram(build, tokens, keep).logits)["r2_centered_logits"]

    keep: list = []
    steps = [{"block": None, "r2": r2(keep)}]
    while steps[-1]["r2"] < target and len(keep) < max_blocks:
        trials = {b: r2(keep + [b]) for b in candidates if b not in keep}
        best = max(trials, key=trials.get) if trials else None
        if best is None or trials[best] <= steps[-1]["r2"]:
            break
        keep.append(best)
        steps.append({"block": best, "r2": trials[best]})
    return steps
