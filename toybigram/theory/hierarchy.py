"""The calculator hierarchy: how many numbers predict the model's use of in-context evidence.

Rows (CALCULATORS), from none to every table read from the weights:

    bayes_rule           0 numbers: log of the Bayes predictive distribution (baselines.py)
    bigram_only          1 fitted scale on the data bigram log pi_b(.|z_t) (the chain's row, triggers included)
    scalar               the last rung of the scalar ladder (baselines.LADDER: 17 fitted numbers) + the data's rows
    diagonal             alpha_t, lambda_k, beta_k and g read from the weights
    full                 the default read (strengths.py)
    full_uniform_layer2  full with layer 2's attention uniform over the causal keys: no induction at
                         all, so whatever it scores is the readout's, not the in-context theory's

The ``ladder`` key lists every calculator and every rung of the scalar ladder (baselines.TERMS: each
rung adds one named term with its own constants) by the count of numbers it uses, from 0 to full.

Fitted numbers come from prompts of another prompt seed than the scored ones (``fit_on``,
``scored_on`` in theory.json). Metrics (``metrics``), on the rows of the prompt families:

    top1, r2_centred        argmax agreement; centred-logit R^2 (calculator.agreement)
    r2_counterfactual       R^2 of the logit change prompt minus counterfactual (the same prompt with
                            its "q o" pairs replaced by chain steps), centred over j: what the evidence does
    margin_sign_agreement   sign of logit_o - logit_b* agrees (o: in-context target, b*: the pair's rival)
    margin_r2               1 - sum (m - p)^2 / sum m^2 over those margins (constant logits score 0)
    top1_contested          top1 on rows where the data bigram's argmax is not among the Bayes rule's
                            favourites: in-context evidence against the stored bigram
    top1_near_tie           top1 on rows where the model's two largest logits are within NEAR_TIE

    python -m toybigram.theory.hierarchy RUN_DIR/theory.json     # the tables, overall and per family
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from toybigram.errors import exit_with
from toybigram.hooks import circuit_pattern_hooks
from toybigram.theory.baselines import (LADDER, TERMS, KeyCells, Process, bayes_logits, bayes_probabilities, fit_ladder,
                                        fit_scale, key_cells, log_rows, process_rows, stationary_log, variant_from_cells)
from toybigram.theory.calculator import Strengths, agreement, centred, predict
from toybigram.theory.prompts import counterfactual

CALCULATORS = ("bayes_rule", "bigram_only", "scalar", "diagonal", "full", "full_uniform_layer2")
SCALAR_VARIANT = LADDER[-1]  # the ``scalar`` row: the ladder's last rung
VARIANTS = {variant.name: variant for variant in LADDER}
NEAR_TIE = 0.5  # logits: the model's top-2 gap below this makes a row a near tie
FIT_SEED_OFFSET = 1  # the fitted numbers come from prompt seed (scored seed + this)


@dataclass
class RowSet:
    """Prompts of one family; scored at the last position (designed prompts) or at every position."""

    family: str
    tokens: torch.Tensor                         # (B,T)
    last_only: bool = True
    query: int | None = None                     # designed prompts: q (only in "q o" pairs and at the end)
    target: torch.Tensor | None = None           # (B,) o, the in-context target
    rival: torch.Tensor | None = None            # (B,) b*, the global favourite it competes with
    is_trigger: torch.Tensor | None = None       # (B,T) bool: the query token is a trigger (None: the process's set)
    counterfactual: torch.Tensor | None = None   # (B,T), filled in by ``add_counterfactuals``
    logits: torch.Tensor | None = None           # the model's logits at the scored rows, when already known


def unuse_layer2(strengths: Strengths) -> Strengths:
    """The same strengths with layer 2's scores all zero: uniform causal attention (the readout floor)."""
    return replace(strengths, key=0.0, scores={})


def strength_count(strengths: Strengths) -> int:
    """How many numbers a calculator reads from the weights: every entry of every table it holds."""
    tables = [strengths.key, strengths.copy, strengths.bigram, *strengths.scores.values(), *strengths.copies.values(),
              *strengths.directs.values()]
    layer1 = [getattr(strengths.layer1, k) for k in ("pos", "tok_pos", "pos_tok", "tok_tok", "tok_dist", "pair_dist")]
    return sum(torch.as_tensor(t).numel() for t in tables + layer1 if t is not None)


def scored(tensor: torch.Tensor, last_only: bool) -> torch.Tensor:
    """(B,T,...) -> the scored rows: the last position (B,...) or every position (B*T,...)."""
    return tensor[:, -1] if last_only else tensor.flatten(0, 1)


@torch.no_grad()
def model_logits(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's logits (B,T,N) float64 on the CPU, and its layer-1 attention where the calculator
    must take it (no positional memory: nope), else None."""
    names = circuit_pattern_hooks(model.spec.n_layers)
    logits, cache = model.run_with_cache(tokens.to(next(model.parameters()).device), names_filter=names)
    a1 = None if model.positional.previous_token_memory else cache[names[0]].double().cpu()
    return logits.double().cpu(), a1


@dataclass
class Calculators:
    """Everything the hierarchy's rows need: the process, the weights' strengths and the fitted numbers."""

    process: Process
    weights: dict                  # name -> Strengths: diagonal, full, full_uniform_layer2
    ladder: dict = field(default_factory=dict)   # ladder variant name -> its fitted constants
    bigram_scale: float = 1.0
    log_table: torch.Tensor = field(init=False)    # the process's context-free rows (scalar)
    chain_table: torch.Tensor = field(init=False)  # the data bigram pi_b (bigram_only)
    shared: torch.Tensor = field(init=False)       # the ladder's shared vector

    def __post_init__(self):
        self.log_table = log_rows(process_rows(self.process))
        self.chain_table = log_rows(self.process.transition)
        self.shared = stationary_log(self.process.transition)

    @property
    def theta(self) -> torch.Tensor | None:
        """The ``scalar`` row's fitted constants (SCALAR_VARIANT.names order)."""
        return self.ladder.get(SCALAR_VARIANT.name)

    def trigger_mask(self, rows: RowSet, tokens: torch.Tensor) -> torch.Tensor:
        return self.process.is_trigger[tokens] if rows.is_trigger is None else rows.is_trigger

    def logits(self, name: str, rows: RowSet, tokens: torch.Tensor, a1) -> torch.Tensor:
        """Calculator ``name`` on ``tokens`` (a row set's prompts or their counterfactuals): (B,T,N)."""
        if name == "bayes_rule":
            return bayes_logits(self.process, tokens, self.trigger_mask(rows, tokens))
        if name == "bigram_only":
            return self.bigram_scale * self.chain_table[tokens]
        if name == "scalar" or name in VARIANTS:
            return self.variant_logits(rows, tokens)[SCALAR_VARIANT.name if name == "scalar" else name]
        return predict(self.weights[name], tokens, a1=a1, last_only=rows.last_only).logits

    def variant_logits(self, rows: RowSet, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every ladder variant on ``tokens``: name -> (B,T,N), or (B,1,N) for a row set scored at the last position."""
        cells = key_cells(tokens, self.log_table, self.trigger_mask(rows, tokens), rows.last_only)
        return {name: variant_from_cells(VARIANTS[name], theta, cells, self.shared) for name, theta in self.ladder.items()}

    def all_logits(self, rows: RowSet, tokens: torch.Tensor, a1) -> dict[str, torch.Tensor]:
        """Every calculator of CALCULATORS and every ladder variant on ``tokens`` (the scalar cells found once)."""
        out = {name: self.logits(name, rows, tokens, a1) for name in CALCULATORS if name != "scalar"}
        out.update(self.variant_logits(rows, tokens))
        out["scalar"] = out[SCALAR_VARIANT.name]
        return out


def fit_rows(model, row_sets: list[RowSet], calculators: "Calculators") -> tuple[KeyCells, torch.Tensor, torch.Tensor]:
    """The fit prompts and their counterfactuals as the fits take them: KeyCells of the scored rows, the
    model's logits there (R,N) and the query tokens (R,)."""
    cells, logits, queries = [], [], []
    for rows in row_sets:
        for tokens in [t for t in (rows.tokens, rows.counterfactual) if t is not None]:
            found = key_cells(tokens, calculators.log_table, calculators.trigger_mask(rows, tokens), rows.last_only)
            cells.append(found.select(torch.ones(found.own.shape[:2], dtype=torch.bool)))
            known = rows.logits if tokens is rows.tokens else None
            logits.append(known if known is not None else scored(model_logits(model, tokens)[0], rows.last_only))
            queries.append(scored(tokens, rows.last_only))
    return KeyCells.cat(cells), torch.cat(logits), torch.cat(queries)


def fit_calculators(calculators: "Calculators", cells: KeyCells, logits: torch.Tensor, queries: torch.Tensor) -> dict:
    """Fit the scalar calculator's numbers and bigram_only's scale on the rows ``cells`` (query tokens
    ``queries``); returns them by name."""
    calculators.ladder = fit_ladder(cells, logits, calculators.shared)
    calculators.bigram_scale = fit_scale(calculators.chain_table[queries], logits)
    return {"scalar": dict(zip(SCALAR_VARIANT.names, calculators.theta.tolist())),
            "ladder": {name: dict(zip(VARIANTS[name].names, theta.tolist())) for name, theta in calculators.ladder.items()},
            "bigram_only": {"scale": calculators.bigram_scale}, "rows": logits.shape[0]}


@dataclass
class Scores:
    """One row set through the model and every calculator: scored rows (R,N), counterfactual rows or None."""

    family: str
    model: torch.Tensor
    model_cf: torch.Tensor | None
    predicted: dict
    predicted_cf: dict
    target: torch.Tensor | None
    rival: torch.Tensor | None
    contested: torch.Tensor        # (R,) bool


def score_rows(model, calculators: Calculators, rows: RowSet) -> Scores:
    """The model and every calculator on a row set's prompts (and counterfactuals)."""
    def run(tokens, known=None):
        needs_a1 = not model.positional.previous_token_memory
        logits, a1 = (known, None) if known is not None and not needs_a1 else model_logits(model, tokens)
        logits = logits if logits is known else scored(logits, rows.last_only)
        return logits, {name: scored(value, rows.last_only) for name, value in calculators.all_logits(rows, tokens, a1).items()}

    model_rows, predicted = run(rows.tokens, rows.logits)
    model_cf, predicted_cf = run(rows.counterfactual) if rows.counterfactual is not None else (None, {})
    bayes = bayes_probabilities(calculators.process, rows.tokens, calculators.trigger_mask(rows, rows.tokens))
    stored = calculators.process.transition[rows.tokens].argmax(-1, keepdim=True)
    contested = scored(bayes.gather(-1, stored)[..., 0] < bayes.max(-1).values, rows.last_only)
    return Scores(rows.family, model_rows, model_cf, predicted, predicted_cf, rows.target, rows.rival, contested)


def r2_no_intercept(measured: torch.Tensor, predicted: torch.Tensor) -> float | None:
    """1 - sum (m - p)^2 / sum m^2: 1 for a perfect prediction, 0 for predicting zero."""
    total = (measured ** 2).sum()
    return None if measured.numel() == 0 or total == 0 else (1 - ((measured - predicted) ** 2).sum() / total).item()


def share(hits: torch.Tensor, rows: torch.Tensor) -> float | None:
    """Mean of ``hits`` on ``rows`` (None when no row qualifies)."""
    return hits[rows].double().mean().item() if rows.any() else None


def metrics(parts: list[Scores], name: str) -> dict:
    """The hierarchy's figures of calculator ``name`` pooled over ``parts`` (module docstring)."""
    cat = lambda pick: torch.cat([pick(p) for p in parts])  # noqa: E731
    model, predicted = cat(lambda p: p.model), cat(lambda p: p.predicted[name])
    hits = model.argmax(-1) == predicted.argmax(-1)
    top2 = model.topk(2, dim=-1).values
    out = {"top1": hits.double().mean().item(), "r2_centred": agreement(model, predicted)["r2_centered_logits"],
           "top1_contested": share(hits, cat(lambda p: p.contested)), "top1_near_tie": share(hits, top2[:, 0] - top2[:, 1] < NEAR_TIE),
           "rows": model.shape[0], "rows_contested": int(cat(lambda p: p.contested).sum()),
           "rows_near_tie": int((top2[:, 0] - top2[:, 1] < NEAR_TIE).sum())}
    paired = [p for p in parts if p.model_cf is not None]
    designed = [p for p in parts if p.target is not None]
    out["r2_counterfactual"] = r2_no_intercept(
        torch.cat([centred(p.model) - centred(p.model_cf) for p in paired]),
        torch.cat([centred(p.predicted[name]) - centred(p.predicted_cf[name]) for p in paired])) if paired else None
    if designed:
        def margin(p, logits):
            rows = torch.arange(len(p.target))
            return logits[rows, p.target] - logits[rows, p.rival]
        measured = torch.cat([margin(p, p.model) for p in designed])
        guessed = torch.cat([margin(p, p.predicted[name]) for p in designed])
        out.update({"margin_sign_agreement": ((measured > 0) == (guessed > 0)).double().mean().item(),
                    "margin_r2": r2_no_intercept(measured, guessed)})
    else:
        out.update({"margin_sign_agreement": None, "margin_r2": None})
    return out


def add_counterfactuals(chain, row_sets: list[RowSet], generator: torch.Generator) -> None:
    """Each designed row set gets its counterfactual prompts (prompts.counterfactual), in place."""
    for rows in row_sets:
        if rows.query is not None:
            rows.counterfactual = counterfactual(chain, rows.tokens, rows.query, generator)


def parameters_from(calculators: Calculators, fit_seed: int) -> dict[str, tuple[int, str]]:
    """(n_parameters, where they come from) for every row of the hierarchy."""
    fitted = f"fitted on prompt seed {fit_seed} (least squares on centred logits of prompts and counterfactuals)"
    read = {name: (strength_count(s), "read from the weights (every entry of the calculator's tables)")
            for name, s in calculators.weights.items()}
    return {"bayes_rule": (0, "none: the training process (chain rows, trigger set, the triggers' output distribution)"),
            "bigram_only": (1, f"one scale {fitted}; the data bigram pi_b"),
            **{variant.name: (len(variant.names), f"{', '.join(variant.names)} {fitted}; the process's context-free rows")
               for variant in LADDER},
            "scalar": (len(SCALAR_VARIANT.names), f"the ladder's last rung {SCALAR_VARIANT.name}: {', '.join(SCALAR_VARIANT.names)} "
                       f"{fitted}; the process's context-free rows"),
            **read}


LADDER_KEYS = ("n_parameters", "r2_counterfactual", "top1_contested", "margin_r2", "top1", "r2_centred",
               "margin_sign_agreement", "top1_near_tie")


def ladder_rows(parts: list[Scores], origin: dict) -> list[dict]:
    """The ladder: every calculator and every scalar variant on ``parts``, by number of constants (0 to full)."""
    terms = {variant.name: list(variant.terms) for variant in LADDER}
    names = sorted([n for n in CALCULATORS if n != "scalar"] + list(terms), key=lambda n: origin[n][0])
    rows = []
    for name in names:
        found = metrics(parts, name)
        rows.append({"name": name, "terms": terms.get(name, [name]), **{k: origin[name][0] if k == "n_parameters" else found[k]
                                                                        for k in LADDER_KEYS}})
    return rows


def hierarchy(model, calculators: Calculators, scored_sets: list[RowSet], fit_sets: list[RowSet], *,
              seed: int, fit_seed: int, overall_families) -> dict:
    """Fit on ``fit_sets``, score every calculator on ``scored_sets``: the theory.json keys of the hierarchy.

    ``overall_families``: the families pooled into ``calculators`` (the agreement headline's);
    ``calculators_by_family`` has every family scored.
    """
    fitted = fit_calculators(calculators, *fit_rows(model, fit_sets, calculators))
    parts = [score_rows(model, calculators, rows) for rows in scored_sets]
    origin = parameters_from(calculators, fit_seed)

    def table(chosen: list[Scores]) -> dict:
        return {name: {"n_parameters": origin[name][0], "parameters_from": origin[name][1], **metrics(chosen, name)}
                for name in CALCULATORS}

    families = list(dict.fromkeys(p.family for p in parts))
    overall = [p for p in parts if p.family in overall_families]
    return {
        "calculators": table(overall),
        "ladder": ladder_rows(overall, origin),
        "ladder_terms": {term.name: {"constants": list(term.constants), "meaning": term.meaning} for term in TERMS},
        "calculators_by_family": {f: table([p for p in parts if p.family == f]) for f in families},
        "calculator_fit": fitted,
        "fit_on": {"prompt_seed": fit_seed, "families": list(dict.fromkeys(r.family for r in fit_sets)),
                   "prompts": sum(len(r.tokens) for r in fit_sets)},
        "scored_on": {"prompt_seed": seed, "families": families, "prompts": sum(len(r.tokens) for r in scored_sets),
                      "overall": list(overall_families)},
    }


TABLE_COLUMNS = ("n_parameters", "top1", "r2_centred", "r2_counterfactual", "margin_sign_agreement", "margin_r2",
                 "top1_contested", "top1_near_tie")


def format_hierarchy(table: dict) -> str:
    """One ``calculators`` table of theory.json as markdown, a row per calculator."""
    def cell(value) -> str:
        return "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.3f}"

    lines = ["| calculator | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(row.get(k)) for k in TABLE_COLUMNS) + " |" for name, row in table.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """python -m toybigram.theory.hierarchy THEORY_JSON: the hierarchy tables of an analysis, overall and per family."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        exit_with("usage: python -m toybigram.theory.hierarchy THEORY_JSON (a theory*.json of python -m toybigram.theory)")
    path = Path(args[0])
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        exit_with(f"theory_json: cannot read {path}: {err}")
    if not isinstance(record, dict) or "calculators" not in record:
        exit_with(f"theory_json: {path} has no calculator hierarchy (written by an older version? rerun the analysis)")
    print(f"fit on {record['fit_on']}; scored on {record['scored_on']}\n\noverall\n{format_hierarchy(record['calculators'])}")
    for family, table in record["calculators_by_family"].items():
        print(f"\n{family}\n{format_hierarchy(table)}")


if __name__ == "__main__":
    main()
