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
- ``scalar_logits`` (SCALAR_NAMES, 9 numbers fitted on other prompts): at query position t
  with token q = z_t, layer 2 attends with one score per key type (induction keys s with
  z_{s-1} = q, split by whether q is a trigger; earlier copies of q; t itself; every other
  key scores 0), and each attended position s writes beta e_{z_s} + gamma L(z_s), with
  separate (beta, gamma) for induction keys and the rest: the copied token read directly and
  through the feed-forward block as if it were the current token, L = centred log of the
  process row. The query adds sigma L(q). Logits are compared after centring over j.

Every function works on prompts (B,T) at all query positions and returns (B,T,N) float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from toybigram.theory.calculator import centred

LOG_FLOOR = 1e-4  # probabilities below this count as this (as ideal.log_bigram): finite logits
SCALAR_NAMES = ("lambda_induction_trigger", "lambda_induction_other", "lambda_query_copy", "lambda_self",
                "beta_induction", "gamma_induction", "beta_other", "gamma_other", "sigma_query")
SCALAR_START = (0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0)
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


def scalar_basis(scores: torch.Tensor, cells: KeyCells) -> torch.Tensor:
    """(..., 5, N): what the scalar calculator's five write numbers (SCALAR_NAMES[4:]) multiply, given its
    four attention scores ``scores`` (SCALAR_NAMES[:4]): the logits are linear in those five."""
    lam_trig, lam_other, lam_copy, lam_self = scores
    lam_induction = torch.where(cells.trigger, lam_trig, lam_other)
    cell_scores = torch.stack([lam_induction * ind + {"other": 0.0, "copy": lam_copy, "self": lam_self}[kind]
                               for ind, kind in CELLS], -1)
    weights = torch.softmax(cell_scores + cells.counts.log(), -1)                   # a cell: count e^score / Z
    induction = torch.tensor([ind for ind, _ in CELLS], dtype=weights.dtype)
    on, off = weights * induction, weights * (1 - induction)
    read = lambda w, values: (w[..., None] * values).sum(-2)  # noqa: E731  sum over cells
    return torch.stack([read(on, cells.tokens), read(on, cells.rows), read(off, cells.tokens), read(off, cells.rows),
                        cells.own], -2)


def scalar_from_cells(theta: torch.Tensor, cells: KeyCells) -> torch.Tensor:
    """The scalar calculator (module docstring) with numbers ``theta`` (SCALAR_NAMES order) on KeyCells: (..., N)."""
    return (theta[4:, None] * scalar_basis(theta[:4], cells)).sum(-2)


def scalar_logits(theta: torch.Tensor, tokens: torch.Tensor, log_table: torch.Tensor, is_trigger: torch.Tensor,
                  last_only: bool = False) -> torch.Tensor:
    """The scalar calculator on prompts (B,T) at every position, (B,T,N), or at the last, (B,1,N)."""
    return scalar_from_cells(theta, key_cells(tokens, log_table, is_trigger, last_only))


def fit_scalar(cells: KeyCells, logits: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """Least squares on the centred logits (R,N) of the rows ``cells``: the 9 numbers (SCALAR_NAMES order).

    Levenberg-Marquardt from SCALAR_START: the Jacobian is exact for the five write numbers (the
    logits are linear in them) and a finite difference for the four scores; nine numbers need
    neither autograd nor an optimizer object. A ridge of SCORE_RIDGE (relative to the logits'
    sum of squares) on the scores keeps them finite: once attention saturates, larger scores
    change nothing.
    """
    target = centred(logits.double()).flatten()
    ridge = (SCORE_RIDGE * (target ** 2).sum()).sqrt()

    def residual(theta):
        return torch.cat([centred(scalar_from_cells(theta, cells)).flatten() - target, ridge * theta[:4]])

    theta = torch.tensor(SCALAR_START, dtype=torch.float64)
    r, damping, step = residual(theta), 1e-3, 1e-6
    for _ in range(steps):
        linear = centred(scalar_basis(theta[:4], cells)).transpose(-2, -1).flatten(0, -2)   # (R*N, 5)
        linear = torch.cat([linear, torch.zeros(4, 5, dtype=torch.float64)])
        jacobian = torch.stack([(residual(theta + step * e) - r) / step for e in torch.eye(9, dtype=torch.float64)[:4]], 1)
        jacobian = torch.cat([jacobian, linear], 1)
        normal = jacobian.T @ jacobian
        while True:
            trial = theta - torch.linalg.solve(normal + damping * torch.diag(normal.diagonal() + 1e-9), jacobian.T @ r)
            r_trial = residual(trial)
            if (r_trial ** 2).sum() < (r ** 2).sum() or damping > 1e8:
                break
            damping *= 4.0
        improvement = 1 - (r_trial ** 2).sum() / (r ** 2).sum()
        if improvement < 0:
            break
        theta, r, damping = trial, r_trial, damping / 4.0
        if improvement < 1e-6:
            break
    return theta


def fit_scale(predicted: torch.Tensor, logits: torch.Tensor) -> float:
    """The one number of ``bigram_only``: least-squares scale of centred ``predicted`` onto centred ``logits``."""
    x, y = centred(predicted.double()), centred(logits.double())
    return ((x * y).sum() / (x * x).sum().clamp_min(1e-300)).item()
