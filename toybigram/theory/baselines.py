"""Calculators with few numbers: the Bayes rule, the data bigram, and a scalar calculator.

They are the baselines a calculator read from the weights must beat, and the test of how
few numbers the in-context behaviour needs:

- ``bayes_logits`` (0 parameters): the log of the Bayes predictive distribution of the
  training process. A trigger that fired earlier in the prompt is followed by its in-context
  successor (the empirical share of its successors, one token when the prompt is consistent);
  an unfired trigger by the output distribution (uniform, or the chain's row); any other
  token by the chain's row pi_b(.|z_t).
- ``process_rows``: the context-free row of the training process for each token: pi_b(.|z),
  and for a fixed trigger its output distribution (what the training stream shows after it,
  so what a feed-forward block can store). The ``bigram_only`` row of the hierarchy is the
  data bigram log pi_b(.|z_t) itself (triggers included), times one fitted scale.
- the scalar calculator and its ladder (TERMS, LADDER; at most 17 numbers fitted on other prompts):
  at query position t with token q = z_t, layer 2 attends with one score per key type (induction
  keys s with z_{s-1} = q; earlier copies of q; t itself; every other key scores 0), and each
  attended position s writes beta e_{z_s} + gamma L(z_s) (the copied token read directly, and
  through the feed-forward block as if it were the current token, L = centred log of the process
  row); the query adds sigma L(q). Each rung of the ladder adds one named term with its own
  constants (``copy_attention``: the induction score, beta and sigma; ``ffn_read``: gamma;
  ``key_scores``; ``other_keys``: what the non-induction keys write; ``query_kind``: trigger and
  non-trigger queries apart; ``self_write``; ``dilution``: count^kappa; ``shared_vector``). A constant
  a rung does not fit takes the value of the one it refines, so every rung contains the one below.
  ``scalar_logits``/``fit_scalar`` are the 9-number rung ``other_keys`` (SCALAR_NAMES).
  Logits are compared after centring over j.

Every function works on prompts (B,T) at all query positions and returns (B,T,N) float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from toybigram.theory.calculator import centred

LOG_FLOOR = 1e-4  # probabilities below this count as this (as ideal.log_bigram): finite logits
SCORE_RIDGE = 1e-6  # penalty on each attention score squared, as a share of the logits' sum of squares


@dataclass
class Process:
    """What the sampler knows: the chain's rows pi_b (N,N), the trigger set, the triggers' output rows."""

    transition: torch.Tensor      # (N,N) pi_b(j|i)
    is_trigger: torch.Tensor      # (N,) bool: the fixed triggers (random triggers: the queries studied as triggers)
    output_rows: torch.Tensor     # (N,N) a trigger's successor distribution, by trigger

    @property
    def vocab_size(self) -> int:
        return self.transition.shape[0]


def make_process(transition, triggers: list[int], outputs: str = "uniform", exclude_trigger_output: bool = False) -> Process:
    """The training process of a run's data settings (data.outputs, data.exclude_trigger_output)."""
    pi = torch.as_tensor(transition, dtype=torch.float64)
    n = pi.shape[0]
    if outputs == "bigram":
        output_rows = pi.clone()
    else:
        output_rows = torch.ones(n, n, dtype=torch.float64)
        if exclude_trigger_output:
            output_rows.fill_diagonal_(0.0)
        output_rows = output_rows / output_rows.sum(1, keepdim=True)
    is_trigger = torch.zeros(n, dtype=torch.bool)
    is_trigger[torch.as_tensor(triggers, dtype=torch.long)] = True
    return Process(pi, is_trigger, output_rows)


def process_rows(process: Process) -> torch.Tensor:
    """P(next | current token) with no in-context evidence, (N,N): triggers' output rows, else pi_b."""
    return torch.where(process.is_trigger[:, None], process.output_rows, process.transition)


def log_rows(rows: torch.Tensor) -> torch.Tensor:
    """Centred log of probability rows, floored at LOG_FLOOR."""
    return centred(rows.clamp_min(LOG_FLOOR).log())


def successor_counts(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """(B,T,N): how often z_t was followed by j earlier in the prompt (pairs s, s+1 with s < t)."""
    T = tokens.shape[1]
    same = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril(-1)
    following = torch.nn.functional.one_hot(tokens[:, 1:], n).to(torch.float64)       # (B,T-1,N): z_{s+1}
    return same[:, :, :-1].to(torch.float64) @ following


def bayes_probabilities(process: Process, tokens: torch.Tensor, is_trigger: torch.Tensor | None = None) -> torch.Tensor:
    """The Bayes predictive distribution (B,T,N) at every position; ``is_trigger`` (B,T) overrides the
    trigger set (the length family's per-sequence triggers)."""
    n = process.vocab_size
    counts = successor_counts(tokens, n)
    total = counts.sum(-1, keepdim=True)
    trig = process.is_trigger[tokens] if is_trigger is None else is_trigger
    unfired = torch.where(trig[..., None], process.output_rows[tokens], process.transition[tokens])
    fired = counts / total.clamp_min(1.0)
    return torch.where(trig[..., None] & (total > 0), fired, unfired)


def bayes_logits(process: Process, tokens: torch.Tensor, is_trigger: torch.Tensor | None = None) -> torch.Tensor:
    """log of ``bayes_probabilities``, floored (0 parameters)."""
    return log_rows(bayes_probabilities(process, tokens, is_trigger))


CELLS = tuple((induction, kind) for induction in (False, True) for kind in ("other", "copy", "self"))


@dataclass
class KeyCells:
    """The keys of each query row sorted into CELLS (is s an induction key; is it an earlier copy of the
    query, the query itself, or neither): per cell the count, the mean one-hot token and the mean row
    L(z_s); with ``own`` = L(z_t) and ``trigger`` the row is all the scalar calculator needs."""

    counts: torch.Tensor     # (R,C)
    tokens: torch.Tensor     # (R,C,N)
    rows: torch.Tensor       # (R,C,N)
    own: torch.Tensor        # (R,N)
    trigger: torch.Tensor    # (R,) bool

    def select(self, mask: torch.Tensor) -> "KeyCells":
        """The rows at ``mask`` (B,T) bool of a (B,T,...) set, flattened."""
        return KeyCells(*(t[mask] for t in (self.counts, self.tokens, self.rows, self.own, self.trigger)))

    @staticmethod
    def cat(parts: list["KeyCells"]) -> "KeyCells":
        return KeyCells(*(torch.cat(fields) for fields in zip(*((p.counts, p.tokens, p.rows, p.own, p.trigger) for p in parts))))


def key_cells(tokens: torch.Tensor, log_table: torch.Tensor, is_trigger: torch.Tensor, last_only: bool = False) -> KeyCells:
    """KeyCells (B,T,...) of prompts (B,T) at every query position t (keys s <= t); (B,1,...) at the last
    position only with ``last_only``."""
    B, T = tokens.shape
    induction = torch.zeros(B, T, T, dtype=torch.bool)
    induction[:, :, 1:] = tokens[:, :, None] == tokens[:, None, :-1]
    induction &= torch.ones(T, T, dtype=torch.bool).tril()
    earlier = torch.ones(T, T, dtype=torch.bool).tril(-1)
    kinds = {"copy": (tokens[:, :, None] == tokens[:, None, :]) & earlier,
             "self": torch.eye(T, dtype=torch.bool).expand(B, T, T)}
    kinds["other"] = earlier & ~kinds["copy"]
    onehot = torch.nn.functional.one_hot(tokens, log_table.shape[0]).to(torch.float64)
    rows = log_table[tokens]
    query = slice(T - 1, T) if last_only else slice(None)
    masks = torch.stack([(kinds[kind] & (induction if ind else ~induction))[:, query].to(torch.float64)
                         for ind, kind in CELLS], 2)
    counts = masks.sum(-1)                                                          # (B,T,C)
    mean = lambda values: (masks @ values[:, None]) / counts.clamp_min(1)[..., None]  # noqa: E731  (B,T,C,N)
    return KeyCells(counts, mean(onehot), mean(rows), rows[:, query], is_trigger[:, query])


@dataclass(frozen=True)
class Term:
    """A named term of the scalar calculator: the constants it adds and what it stands for."""

    name: str
    constants: tuple[str, ...]
    meaning: str


TERMS = (
    Term("copy_attention", ("lambda_induction_trigger", "beta_induction", "sigma_query"),
         "layer 2 attends to induction keys with one score and writes the copied token e_z; the query adds its own row L(q)"),
    Term("ffn_read", ("gamma_induction",),
         "the feed-forward block reads the copied token as if it were the current token: gamma L(z) at induction keys"),
    Term("key_scores", ("lambda_induction_other", "lambda_query_copy", "lambda_self"),
         "separate attention scores for induction keys at non-trigger queries, earlier copies of the query, the query itself"),
    Term("other_keys", ("beta_other", "gamma_other"),
         "the other keys write beta' e_z + gamma' L(z): what they copy changes when the pairs arrive"),
    Term("query_kind", ("lambda_self_nontrigger", "beta_induction_nontrigger", "gamma_induction_nontrigger", "sigma_nontrigger"),
         "the query's own score, the induction writes and the query's row separately for non-trigger queries"),
    Term("self_write", ("beta_self", "gamma_self"), "the query's own position writes with constants of its own"),
    Term("dilution", ("kappa_dilution",), "a key type's attention grows as count^kappa instead of count"),
    Term("shared_vector", ("delta_shared",),
         "the induction mass writes one shared vector: the centred log of the chain's stationary distribution"),
)
# the cells each group of write constants reads: induction keys; other keys but the query's own; the query's own key
KEY_GROUPS = torch.tensor([[float(ind) for ind, _ in CELLS], [float(not ind and kind != "self") for ind, kind in CELLS],
                           [float(not ind and kind == "self") for ind, kind in CELLS]], dtype=torch.float64)
SCORE_NAMES = ("lambda_induction_trigger", "lambda_induction_other", "lambda_query_copy", "lambda_self",
               "lambda_self_nontrigger", "kappa_dilution")
WRITE_NAMES = ("beta_induction", "gamma_induction", "beta_induction_nontrigger", "gamma_induction_nontrigger",
               "beta_other", "gamma_other", "beta_self", "gamma_self", "sigma_query", "sigma_nontrigger", "delta_shared")
# A constant a variant does not fit takes the value of the one it refines, else its default (0 unless listed).
TIES = {"lambda_self_nontrigger": "lambda_self", "beta_induction_nontrigger": "beta_induction",
        "gamma_induction_nontrigger": "gamma_induction", "beta_self": "beta_other", "gamma_self": "gamma_other",
        "sigma_nontrigger": "sigma_query"}
DEFAULTS = {"kappa_dilution": 1.0}
START = {"kappa_dilution": 1.0, "beta_induction": 1.0, "beta_other": 1.0, "sigma_query": 1.0}


@dataclass(frozen=True)
class Variant:
    """A rung of the ladder: the scalar calculator with the first terms of TERMS. Its fitted constants
    (``names``) are the attention constants in SCORE_NAMES order, then the write constants."""

    name: str
    terms: tuple[str, ...]

    @cached_property
    def names(self) -> tuple[str, ...]:
        free = {c for term in TERMS if term.name in self.terms for c in term.constants}
        return tuple(n for n in SCORE_NAMES + WRITE_NAMES if n in free)

    @cached_property
    def n_scores(self) -> int:
        return sum(n in SCORE_NAMES for n in self.names)

    def resolve(self, name: str) -> str | None:
        """The fitted constant that ``name`` takes its value from (itself when fitted), None for its default."""
        while name not in self.names and name in TIES:
            name = TIES[name]
        return name if name in self.names else None

    def expand(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every constant of SCORE_NAMES + WRITE_NAMES, given this variant's ``theta``."""
        values = dict(zip(self.names, theta))
        return {n: values[self.resolve(n)] if self.resolve(n) else torch.tensor(DEFAULTS.get(n, 0.0), dtype=torch.float64)
                for n in SCORE_NAMES + WRITE_NAMES}

    @cached_property
    def write_map(self) -> torch.Tensor:
        """(len(WRITE_NAMES), fitted writes) 0/1: which fitted write constant each write term takes."""
        writes = self.names[self.n_scores:]
        return torch.tensor([[float(self.resolve(n) == w) for w in writes] for n in WRITE_NAMES], dtype=torch.float64)


LADDER = tuple(Variant(TERMS[k].name, tuple(t.name for t in TERMS[: k + 1])) for k in range(len(TERMS)))
NINE_NUMBERS = LADDER[3]  # copy, feed-forward read, key scores, other keys: the 9-number calculator
SCALAR_NAMES = NINE_NUMBERS.names


def stationary_log(transition: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """Centred log of the chain's stationary distribution (N,): the shared vector of ``shared_vector``."""
    p = torch.full((transition.shape[0],), 1.0 / transition.shape[0], dtype=torch.float64)
    for _ in range(iterations):
        p = p @ transition.double()
    return log_rows(p[None])[0]


def cell_weights(scores: dict, cells: KeyCells) -> torch.Tensor:
    """(..., C): layer 2's attention mass on each cell of CELLS, given the attention constants ``scores``."""
    trig = cells.trigger
    lam_induction = torch.where(trig, scores["lambda_induction_trigger"], scores["lambda_induction_other"])
    lam_own = torch.where(trig, scores["lambda_self"], scores["lambda_self_nontrigger"])
    by_kind = {"other": torch.zeros_like(lam_own), "copy": scores["lambda_query_copy"] + 0 * lam_own, "self": lam_own}
    cell_scores = torch.stack([lam_induction * ind + by_kind[kind] for ind, kind in CELLS], -1)
    logit = cell_scores + scores["kappa_dilution"] * cells.counts.clamp_min(1).log()   # a cell: count^kappa e^score
    return torch.softmax(torch.where(cells.counts > 0, logit, torch.tensor(-torch.inf, dtype=logit.dtype)), -1)


def cell_features(cells: KeyCells, shared: torch.Tensor | None = None) -> torch.Tensor:
    """(..., 2C + 2, N): what the write terms combine: each cell's mean token, each cell's mean row L(z), the
    query's own row L(q) and the shared vector."""
    shared = torch.zeros(cells.own.shape[-1], dtype=torch.float64) if shared is None else shared
    return torch.cat([cells.tokens, cells.rows, cells.own[..., None, :], shared.expand_as(cells.own)[..., None, :]], -2)


def write_coefficients(weights: torch.Tensor, trigger: torch.Tensor) -> torch.Tensor:
    """(..., len(WRITE_NAMES), 2C + 2): each write term as a combination of ``cell_features``."""
    C = len(CELLS)
    groups = weights[..., None, :] * KEY_GROUPS                                   # (..., 3, C): induction, other, own
    t = trigger.to(weights.dtype)
    out = torch.zeros(*weights.shape[:-1], len(WRITE_NAMES), 2 * C + 2, dtype=weights.dtype)
    for column, (group, part, query_kind) in enumerate([(0, 0, t), (0, 1, t), (0, 0, 1 - t), (0, 1, 1 - t), (1, 0, 1),
                                                         (1, 1, 1), (2, 0, 1), (2, 1, 1)]):
        kind = query_kind[..., None] if torch.is_tensor(query_kind) else query_kind
        out[..., column, part * C:(part + 1) * C] = kind * groups[..., group, :]
    out[..., 8, 2 * C], out[..., 9, 2 * C] = t, 1 - t                              # sigma: the query's own row
    out[..., 10, 2 * C + 1] = groups[..., 0, :].sum(-1)                              # delta: induction mass x shared
    return out


def write_basis(scores: dict, cells: KeyCells, shared: torch.Tensor | None = None) -> torch.Tensor:
    """(..., len(WRITE_NAMES), N): what each write constant multiplies, given the attention constants ``scores``."""
    return write_coefficients(cell_weights(scores, cells), cells.trigger) @ cell_features(cells, shared)


def variant_basis(variant: Variant, theta: torch.Tensor, cells: KeyCells, shared=None) -> torch.Tensor:
    """(..., fitted writes, N): what the variant's write constants multiply (the logits are linear in them)."""
    return variant.write_map.T @ write_basis(variant.expand(theta), cells, shared)


def variant_from_cells(variant: Variant, theta: torch.Tensor, cells: KeyCells, shared=None) -> torch.Tensor:
    """A ladder variant with constants ``theta`` (its ``names`` order) on KeyCells: logits (..., N)."""
    return (theta[variant.n_scores:, None] * variant_basis(variant, theta, cells, shared)).sum(-2)


def scalar_logits(theta: torch.Tensor, tokens: torch.Tensor, log_table: torch.Tensor, is_trigger: torch.Tensor,
                  last_only: bool = False, variant: Variant = NINE_NUMBERS, shared=None) -> torch.Tensor:
    """A scalar calculator (default the 9-number one) on prompts (B,T) at every position, (B,T,N), or at the last, (B,1,N)."""
    return variant_from_cells(variant, theta, key_cells(tokens, log_table, is_trigger, last_only), shared)


def fit_variant(variant: Variant, cells: KeyCells, logits: torch.Tensor, shared=None, start=None,
                steps: int = 200) -> torch.Tensor:
    """Least squares on the centred logits (R,N) of the rows ``cells``: the variant's constants (``names`` order).

    The logits are linear in the write constants, so for given attention constants those are solved
    exactly (variable projection), through the per-row Gram matrices of ``cell_features`` (the N
    logits of a row never enter the loop); L-BFGS moves the attention constants from ``start``
    (default START). A ridge of SCORE_RIDGE (relative to the logits' sum of squares) pulls them to
    their defaults: once attention saturates, larger scores change nothing.
    """
    features = centred(cell_features(cells, shared))                               # (R, F, N)
    target = centred(logits.double())
    gram = features @ features.transpose(-2, -1)
    eye = torch.eye(gram.shape[-1], dtype=torch.float64)
    factor = torch.linalg.cholesky(gram + 1e-10 * gram.diagonal(0, -2, -1).mean() * eye + 1e-300 * eye)  # gram = L L^T
    projection, total = (features @ target[..., None])[..., 0], (target ** 2).sum()
    k, n = variant.n_scores, len(variant.names)
    origin = torch.tensor([DEFAULTS.get(name, 0.0) for name in variant.names[:k]], dtype=torch.float64)

    def solved(scores):
        """The write constants solved for ``scores``, and the objective (residual sum of squares / total + ridge)."""
        theta = torch.cat([scores, torch.zeros(n - k, dtype=torch.float64)])
        coefficients = variant.write_map.T @ write_coefficients(cell_weights(variant.expand(theta), cells), cells.trigger)
        rooted = (coefficients @ factor).transpose(0, 1).flatten(1)               # (writes, R*F)
        normal, rhs = rooted @ rooted.T, (coefficients * projection[:, None, :]).sum((0, 2))
        writes = torch.linalg.solve(normal + 1e-12 * normal.diagonal().mean() * torch.eye(n - k, dtype=torch.float64), rhs)
        return writes, (total - writes @ rhs) / total + SCORE_RIDGE * ((scores - origin) ** 2).sum()

    first = torch.tensor([START.get(name, 0.0) for name in variant.names], dtype=torch.float64) if start is None else start
    scores = first[:k].clone().requires_grad_(k > 0)
    if k:
        optimizer = torch.optim.LBFGS([scores], lr=1.0, max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-12,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            objective = solved(scores)[1]
            objective.backward()
            return objective

        optimizer.step(closure)
    with torch.no_grad():
        return torch.cat([scores.detach(), solved(scores.detach())[0]])


def fit_scalar(cells: KeyCells, logits: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """The 9-number calculator's constants (SCALAR_NAMES order) fitted on the rows ``cells``."""
    return fit_variant(NINE_NUMBERS, cells, logits, steps=steps)


def fit_ladder(cells: KeyCells, logits: torch.Tensor, shared=None) -> dict[str, torch.Tensor]:
    """Every rung of LADDER fitted in turn, each started from the one below (its constants carried over), so a
    rung never fits its prompts worse than the one below it."""
    fitted, below = {}, None
    for variant in LADDER:
        start = None
        if below is not None:
            values = below[0].expand(below[1])
            start = torch.stack([values[n] for n in variant.names]).double()
        fitted[variant.name] = fit_variant(variant, cells, logits, shared, start)
        below = (variant, fitted[variant.name])
    return fitted


def fit_scale(predicted: torch.Tensor, logits: torch.Tensor) -> float:
    """The one number of ``bigram_only``: least-squares scale of centred ``predicted`` onto centred ``logits``."""
    x, y = centred(predicted.double()), centred(logits.double())
    return ((x * y).sum() / (x * x).sum().clamp_min(1e-300)).item()
