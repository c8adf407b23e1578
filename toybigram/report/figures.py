"""The recorded figures: what each one means and where its floor or good range lies.

docs/metrics.md gives the definitions at length; these are the one-line versions a report
prints beside each number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass
class Context:
    """Reference values of one run's task, for the floors and chance levels shown beside its figures."""

    vocab_size: int | None = None
    seq_len: int | None = None
    bayes_acc_global: float | None = None  # accuracy of the true bigram on the held-out global targets
    first_chance: float | None = None  # best accuracy on a trigger's first firing
    uniform_kl: float | None = None  # bigram KL of a uniform guess, over the same tokens as bigram_kl

    @property
    def chance(self) -> float | None:
        return 1 / self.vocab_size if self.vocab_size else None

    @property
    def uniform_prev_attention(self) -> float | None:
        """Mean a(t, t-1) over t >= 1 of a head that spreads evenly over the t + 1 visible positions."""
        if not self.seq_len or self.seq_len < 2:
            return None
        return sum(1 / (t + 1) for t in range(1, self.seq_len)) / (self.seq_len - 1)


def fmt(value, digits: int = 4) -> str:
    """A number as the report prints it; missing or non-finite values as n/a."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


Reference = Callable[[dict, Context], str]


def _chance(text: str = "1 is perfect") -> Reference:
    return lambda figures, ctx: f"{text}; chance 1/N = {fmt(ctx.chance, 3)}" if ctx.chance else text


def _floor(kind: str) -> Reference:
    def reference(figures: dict, ctx: Context) -> str:
        return f"Bayes floor {fmt(figures.get(f'bayes_loss_{kind}'))} nats; gap {fmt(figures.get(f'gap_{kind}'))}"
    return reference


@dataclass(frozen=True)
class Figure:
    key: str
    name: str
    meaning: str
    reference: Reference


SECTIONS: dict[str, list[Figure]] = {
    "Predictions by label class (held-out batch)": [
        Figure("acc_incontext", "in-context accuracy",
               "top-1 accuracy on a trigger's second and later firings, which only an induction head can predict",
               _chance()),
        Figure("loss_incontext", "in-context loss", "cross-entropy (nats) on those targets",
               lambda f, c: "Bayes floor 0 (the context fixes them); good: below 0.1"),
        Figure("acc_global", "global accuracy", "top-1 accuracy on targets drawn from the bigram chain",
               lambda f, c: f"ceiling {fmt(c.bayes_acc_global, 3)} (the true bigram's accuracy on these targets)"
               if c.bayes_acc_global is not None else "ceiling: the true bigram's accuracy"),
        Figure("loss_global", "global loss", "cross-entropy (nats) on targets drawn from the bigram chain",
               _floor("global")),
        Figure("gap_global", "global gap", "global loss minus its Bayes floor: the bigram knowledge still missing",
               lambda f, c: "0 is perfect; good: below 0.05 nats"),
        Figure("acc_first", "first-firing accuracy", "top-1 accuracy on a trigger's first firing (output not yet seen)",
               lambda f, c: f"best possible {fmt(c.first_chance, 3)}" if c.first_chance is not None else "near chance"),
        Figure("loss_first", "first-firing loss", "cross-entropy (nats) on a trigger's first firing", _floor("first")),
        Figure("loss_all", "loss, all targets", "cross-entropy (nats) over every target of the batch",
               lambda f, c: "mixes the three classes above"),
        Figure("train_loss", "training loss", "mean training loss over the steps since the previous evaluation",
               lambda f, c: "on the training stream and the targets train.loss selects"),
    ],
    "Memories read from the weights": [
        Figure("recall_prev_token", "previous-token recall",
               "share of positions t >= 1 whose largest layer-1 positional score is on t - 1",
               lambda f, c: "1 is perfect"),
        Figure("recall_induction_key", "induction-key recall",
               "share of (trigger) tokens k whose induction key matches k best among all tokens", _chance()),
        Figure("recall_copy", "copy recall", "share of tokens k whose copy memory W_O^2 W_V^2 writes k's own logit highest",
               _chance()),
        Figure("bigram_kl", "bigram KL", "mean KL(pi_b(.|i) || softmax of the feed-forward logits for w_E(i) alone), "
               "non-trigger tokens", lambda f, c: f"0 is perfect; a uniform guess scores {fmt(c.uniform_kl, 3)}; "
               "the model also reads the token through other paths (docs/metrics.md)"
               if c.uniform_kl is not None else "0 is perfect"),
    ],
    "Attention on the held-out batch": [
        Figure("attn_prev_token", "layer 1 on previous token", "mean layer-1 weight a1(t, t-1) over positions t >= 1",
               lambda f, c: f"1 is a pure previous-token head; an even spread gives {fmt(c.uniform_prev_attention, 3)}; "
               "a working previous-token head sits well below 1 (docs/metrics.md)"),
        Figure("attn_induction", "layer 2 on induction target",
               "mean layer-2 mass, at in-context positions, on the positions right after an earlier copy of the current token",
               lambda f, c: "1 is a perfect induction head"),
    ],
}

THEORY_FIGURES = [
    Figure("top1_agreement", "top-1 agreement", "share of prompts' query positions where model and calculator pick the same token",
           lambda f, c: "1 is perfect"),
    Figure("r2_centered_logits", "centred-logit R^2", "1 - sum (model - theory)^2 / sum model^2 over logits centred per position",
           lambda f, c: "1 is perfect; 0 is no better than predicting flat logits"),
    Figure("hijack_top1_agreement", "hijack top-1 agreement", "the same on the hijack prompts ('q o' repeated c times)",
           lambda f, c: "1 is perfect"),
    Figure("hijack_r2_centered_logits", "hijack R^2", "centred-logit R^2 on the hijack prompts", lambda f, c: "1 is perfect"),
    Figure("bayes_rule_top1_agreement", "Bayes rule top-1 agreement",
           "the same for the zero-parameter rule: copy a trigger's in-context successor, else the data bigram's argmax",
           lambda f, c: "the baseline the calculator must beat"),
    Figure("scalar_top1_agreement", "scalar calculator top-1 agreement",
           "the same for the few-number calculator (fitted on other prompts; theory.json says how many numbers)",
           lambda f, c: "between the Bayes rule and the full calculator"),
    Figure("readout_floor_r2_centered_logits", "readout floor R^2",
           "centred-logit R^2 of the full calculator with uniform layer-2 attention (no induction at all)",
           lambda f, c: "what the exact readout alone explains; the theory's R^2 means something only above it"),
    Figure("r2_counterfactual_full", "in-context R^2, full",
           "R^2 of the predicted against the measured logit change when the prompt's 'q o' pairs are replaced by filler",
           lambda f, c: "1 is perfect; 0 is no better than predicting no change"),
    Figure("r2_counterfactual_scalar", "in-context R^2, scalar", "the same for the few-number calculator",
           lambda f, c: "1 is perfect"),
    Figure("r2_counterfactual_bayes_rule", "in-context R^2, Bayes rule", "the same for the zero-parameter rule",
           lambda f, c: "the baseline"),
    Figure("hijack_threshold_within_one", "hijack threshold within one",
           "share of (q, o) pairs whose measured and predicted count c*, from which o beats b*, differ by at most one",
           lambda f, c: "1 is perfect"),
]

ALL_FIGURES = [figure for figures in SECTIONS.values() for figure in figures]
