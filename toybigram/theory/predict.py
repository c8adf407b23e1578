"""python -m toybigram.theory.predict from_run=<run> [out=predictions.json lengths=... max_count=16 fillers=8 prompt_seed=1234]

Writes predictions for a model trained with random triggers at length T0 before that model is
measured: the threshold law (toybigram/theory/threshold.py) with its numbers read from a
*different* run ``from_run`` (another seed, width or training length of the same data), applied to
designed prompts at lengths T0/4 .. 8 T0 (default) made from the data statistics alone:

- hijack: for each query q (the most frequent tokens) and outputs o below the data's own favourite
  b* = argmax pi_b(.|q), prompts with c = 0..max_count pairs "q o"; per prompt set the law's mean
  o - b* margin and share of wins, per pair the threshold c* (the first count from which the mean
  margin stays positive), per length the count from which the law's share of wins stays >= 1/2;
  beside them the closed form (exact previous-token head) and the Bayes rule (c* = 1 for a trigger);
- nontrigger (runs with fixed triggers): the same for frequent queries that are not triggers; the
  Bayes rule never copies after them (c* infinite), the law gives a count or infinite;
- compete: o1 twice (or three times) and o2 once as the last pair, so majority and recency disagree;
  which output the law puts higher, prompt by prompt (the Bayes rule: the majority).

Every prompt set is recorded by its specification (q, o, b*, count, T, batch, seed) and a
fingerprint of its tokens, so ``python -m toybigram.theory.score`` regenerates exactly those
prompts; ``source`` names the run the numbers came from, which score refuses to score.
A threshold beyond the largest count is written as null (never within the grid).
"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

import hashlib
import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from omegaconf import OmegaConf

from toybigram.checkpoint import load_run
from toybigram.cli import user_errors
from toybigram.errors import ConfigError, UserError, require
from toybigram.factory import make_chain, make_sampler
from toybigram.rundir import DIVERGED, read_summary, run_status
from toybigram.runio import write_json
from toybigram.theory.calculator import first_crossing
from toybigram.theory.compare import hijack_pairs, trigger_queries
from toybigram.theory.prompts import compete, hijack
from toybigram.theory.threshold import ThresholdLaw, pair_counts

PREDICTIONS_FILE = "predictions.json"
KIND = "toybigram threshold-law predictions"
LENGTH_RATIOS = (0.25, 0.5, 1, 2, 4, 8)  # prompt lengths as multiples of the training length T0
COMPETE_COUNTS = ((2, 1), (3, 1))  # (majority, minority): the minority's pair comes last
SETTINGS = {"from_run": "", "out": PREDICTIONS_FILE, "lengths": "", "max_count": 16, "fillers": 8, "prompt_seed": 1234,
            "n_outputs": 2, "threads": 1, "overwrite": False}


def parse_settings(argv: list[str], defaults: dict, positional: str | None = None) -> SimpleNamespace:
    """key=value settings over ``defaults`` (types from the defaults); one bare argument fills ``positional``."""
    values = dict(defaults)
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep:
            require(positional is not None and not values.get(positional), "arguments", f"unexpected argument {arg!r}")
            values[positional] = arg
            continue
        require(key in defaults, key, f"unknown setting (choose from {', '.join(defaults)})")
        values[key] = _typed(key, text, defaults[key])
    return SimpleNamespace(**values)


def _typed(key: str, text: str, default):
    if isinstance(default, bool):
        require(text.lower() in ("true", "false"), key, f"must be true or false, got {text!r}")
        return text.lower() == "true"
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}: must be an integer, got {text!r}") from None
    return text


def fingerprint(tokens: torch.Tensor) -> str:
    """A short digest of a prompt set's tokens: score checks that it regenerates the same prompts."""
    return hashlib.sha256(np.ascontiguousarray(tokens.cpu().numpy().astype(np.int64)).tobytes()).hexdigest()[:16]


def requested_lengths(settings) -> list[int] | None:
    """``lengths`` as integers of at least 4 (a filler, one pair, the query), or None for the default."""
    if not settings.lengths:
        return None
    try:
        lengths = [int(x) for x in str(settings.lengths).split(",")]
    except ValueError:
        raise ConfigError(f"lengths: must be comma-separated integers, got {settings.lengths!r}") from None
    for T in lengths:
        require(T >= 4, "lengths", f"every prompt length must be at least 4 (a filler, one pair, the query), got {T}")
    return lengths


def chosen_lengths(settings, T0: int, longest: int | None) -> list[int]:
    """The prompt lengths: ``lengths`` or T0/4 .. 8 T0, each within the positions the model allows (``longest``)."""
    lengths = requested_lengths(settings) or sorted({max(4, round(r * T0)) for r in LENGTH_RATIOS})
    for T in lengths:
        require(longest is None or T <= longest, "lengths",
                f"{T} exceeds the {longest} positions of the model's position table (model.max_len)")
    return lengths


def check_settings(settings) -> None:
    """The options alone, before any file is read."""
    require(bool(settings.from_run), "from_run", "required (the run whose weights give the law's numbers)")
    require(bool(settings.out), "out", "must name a file")
    require(settings.max_count >= 1, "max_count", f"must be at least 1, got {settings.max_count}")
    require(settings.fillers >= 1, "fillers", f"must be at least 1, got {settings.fillers}")
    require(settings.prompt_seed >= 0, "prompt_seed", f"must be non-negative, got {settings.prompt_seed}")
    require(settings.n_outputs >= 1, "n_outputs", f"must be at least 1, got {settings.n_outputs}")
    require(settings.threads >= 0, "threads", f"must be non-negative, got {settings.threads}")
    requested_lengths(settings)


def data_pairs(chain, queries: list[int], n_outputs: int) -> list[tuple[int, int, int]]:
    """(q, o, b*) from the data alone: b* the chain's favourite after q, the outputs at evenly spaced ranks below it."""
    data_bigram = torch.as_tensor(np.log(np.maximum(chain.transition, 1e-12)))
    return hijack_pairs(data_bigram, queries, n_outputs)


def other_queries(cfg, chain, count: int) -> list[int]:
    """The most frequent tokens that are not triggers (runs with fixed triggers), else none."""
    if cfg.data.triggers != "fixed":
        return []
    triggers = set(make_sampler(cfg.data, chain, torch.device("cpu"), 0).fixed_triggers.tolist())
    ranked = torch.tensor(chain.unigram).argsort(descending=True).tolist()
    return [k for k in ranked if k not in triggers][:count]


def source_record(run_dir: Path, cfg) -> dict:
    """Which run the law's numbers come from (score refuses to score it)."""
    return {"run_dir": str(run_dir.resolve()), "seed": int(cfg.seed), "data_seed": int(cfg.get("data_seed", cfg.seed)),
            "d_model": int(cfg.model.d_model), "seq_len": int(cfg.data.seq_len), "steps": int(cfg.train.steps),
            "pos": str(cfg.model.pos)}


def _hijack_sets(law: ThresholdLaw, chain, pairs, family: str, lengths, settings, next_seed) -> tuple[list, list]:
    """Prompt sets and per-pair thresholds of one family of hijack prompts."""
    sets, thresholds = [], []
    for T in lengths:
        counts = [c for c in range(settings.max_count + 1) if 2 * c + 2 <= T]
        for q, o, b in pairs:
            margins, made = [], []
            for c in counts:
                seed = next_seed()
                prompts = hijack(chain, q, o, c, T, settings.fillers, torch.Generator().manual_seed(seed))
                made.append(prompts)
                logits = law.logits(prompts)
                margin = logits[:, o] - logits[:, b]
                margins.append(margin.mean().item())
                sets.append({"family": family, "q": q, "o": o, "b": b, "c": c, "T": T, "batch": settings.fillers,
                             "seed": seed, "fingerprint": fingerprint(prompts), "law_margin": margins[-1],
                             "law_share": (margin > 0).double().mean().item()})
            f_o, f_b = pair_counts(torch.cat(made), o, b, torch.tensor(counts).repeat_interleave(settings.fillers))
            closed = law.thresholds(T, q, o, b, f_o, f_b)
            thresholds.append({"family": family, "q": q, "o": o, "b": b, "T": T,
                               "c_star_law": first_crossing(torch.tensor(counts), torch.tensor(margins)).item(),
                               "c_star_closed_form": closed["closed_form"], "c_star_corrected_closed_form": closed["corrected"],
                               "c_star_bayes": 1.0 if family == "hijack" else float("inf")})
    return sets, thresholds


def last_pair_output(prompts: torch.Tensor) -> torch.Tensor:
    """The token after the last earlier occurrence of the query (the prompts' last token), (B,)."""
    T = prompts.shape[1]
    is_query = prompts[:, :-2] == prompts[:, -1:]
    last = torch.where(is_query, torch.arange(T - 2), torch.full_like(prompts[:, :-2], -1)).max(1).values
    return prompts.gather(1, (last + 1).clamp_min(0)[:, None])[:, 0]


def compete_prompts(chain, spec: dict) -> torch.Tensor:
    """The compete prompts of a spec: generated 4 x batch, those whose last pair is the minority's kept (up to batch)."""
    made = compete(chain, spec["q"], spec["o1"], spec["c1"], spec["o2"], spec["c2"], spec["T"], 4 * spec["batch"],
                   torch.Generator().manual_seed(spec["seed"]))
    return made[last_pair_output(made) == spec["o2"]][: spec["batch"]]


def _compete_sets(law: ThresholdLaw, chain, pairs, lengths, settings, next_seed) -> list[dict]:
    """Majority o1 against a minority o2 whose pair comes last: the law's winner prompt by prompt."""
    by_query: dict[int, list[int]] = {}
    for q, o, _ in pairs:
        by_query.setdefault(q, []).append(o)
    sets = []
    for T in lengths:
        for q, outs in by_query.items():
            for o1, o2 in ((a, b) for a in outs for b in outs if a != b):
                for c1, c2 in COMPETE_COUNTS:
                    if 2 * (c1 + c2) + 2 > T:
                        continue
                    spec = {"family": "compete", "q": q, "o1": o1, "c1": c1, "o2": o2, "c2": c2, "T": T,
                            "batch": settings.fillers, "seed": next_seed()}
                    prompts = compete_prompts(chain, spec)
                    if not len(prompts):  # too little filler for the minority's pair to come last
                        continue
                    logits = law.logits(prompts)
                    sets.append({**spec, "kept": len(prompts), "fingerprint": fingerprint(prompts),
                                 "law_majority": (logits[:, o1] > logits[:, o2]).long().tolist()})
    return sets


def share_threshold(counts: list[int], shares: list[float]) -> float:
    """The count from which a share of wins stays at or above one half (inf if never)."""
    return first_crossing(torch.tensor(counts), torch.tensor([1.0 if s >= 0.5 else -1.0 for s in shares])).item()


def aggregate(sets: list[dict], key: str) -> list[dict]:
    """Per family and length: the count from which the share of prompts ``key`` wins stays >= 1/2."""
    groups: dict[tuple[str, int], dict[int, list[float]]] = {}
    for s in sets:
        groups.setdefault((s["family"], s["T"]), {}).setdefault(s["c"], []).append(s[key])
    return [{"family": family, "T": T, "c_star": share_threshold(sorted(by_c), [np.mean(by_c[c]) for c in sorted(by_c)])}
            for (family, T), by_c in sorted(groups.items())]


def make_predictions(law: ThresholdLaw, cfg, settings, lengths: list[int]) -> dict:
    """Every prediction for models trained like ``cfg`` (the source run's data and model settings)."""
    chain = make_chain(cfg.data)
    next_seed = itertools.count(settings.prompt_seed).__next__  # every prompt set its own generator seed, in order
    pairs = data_pairs(chain, trigger_queries(cfg, chain), settings.n_outputs)
    sets, thresholds = _hijack_sets(law, chain, pairs, "hijack", lengths, settings, next_seed)
    others = other_queries(cfg, chain, max(1, cfg.data.n_triggers))
    other_pairs = data_pairs(chain, others, settings.n_outputs) if others else []
    if others:
        more_sets, more_thresholds = _hijack_sets(law, chain, other_pairs, "nontrigger", lengths, settings, next_seed)
        sets, thresholds = sets + more_sets, thresholds + more_thresholds
    return {"kind": KIND, "version": 1, "source": law.source,
            "law": {"name": "closed form with the diluted previous-token head (toybigram.theory.threshold)",
                    "numbers": law.numbers(pairs + other_pairs, lengths)},
            "data": OmegaConf.to_container(cfg.data, resolve=True), "model": {"pos": str(cfg.model.pos)},
            "T_train": int(cfg.data.seq_len), "lengths": lengths, "max_count": settings.max_count,
            "fillers": settings.fillers, "prompt_seed": settings.prompt_seed,
            "nontrigger": "predicted" if others else "not applicable: with random triggers every token is a trigger somewhere",
            "hijack_sets": sets, "thresholds": thresholds, "aggregate": aggregate(sets, "law_share"),
            "compete_sets": _compete_sets(law, chain, pairs, lengths, settings, next_seed)}


def check_output(path: Path, overwrite: bool, setting: str = "out") -> None:
    """Refuse to replace a finished output unless asked, and a folder that does not exist."""
    if path.exists() and not overwrite:
        raise UserError(f"{setting}: {path} exists (overwrite=true replaces it)")
    if not path.parent.is_dir():
        raise UserError(f"{setting}: no directory {path.parent} to write {path.name} into")


def load_trained(run_dir: str | Path, setting: str):
    """(model, cfg) of a run that did not diverge; a UserError naming ``setting`` otherwise."""
    if not Path(run_dir).is_dir():
        raise UserError(f"{setting}: no run directory at {run_dir}")
    summary = read_summary(Path(run_dir))
    if run_status(summary) == DIVERGED:
        raise UserError(f"{setting}: the run in {run_dir} diverged at step {summary.get('diverged_at_step')}; "
                        "its weights are not finite")
    return load_run(run_dir, setting=setting)


def predict_command(settings) -> Path:
    """Check everything, read the law from ``from_run``, write the predictions; the path written."""
    check_settings(settings)
    out = Path(settings.out)
    check_output(out, settings.overwrite)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model, cfg = load_trained(settings.from_run, "from_run")
    require(model.positional.previous_token_memory, "from_run",
            f"the law reads a positional previous-token head; model.pos={cfg.model.pos} has none")
    lengths = chosen_lengths(settings, int(cfg.data.seq_len), model.positional.max_length(model.spec))
    law = ThresholdLaw.from_model(model, max(lengths), source_record(Path(settings.from_run), cfg))
    write_json(out, make_predictions(law, cfg, settings, lengths))
    return out


def run_command(argv: list[str] | None, doc: str | None, defaults: dict, command, label: str,
                positional: str | None = None) -> None:
    """The command line of predict and score: -h prints ``doc``; otherwise parse the settings, run
    ``command(settings)`` (user errors end in one line, exit 2) and print the path it wrote."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print((doc or "").strip())
        return
    with user_errors():
        out = command(parse_settings(argv, defaults, positional))
    print(f"{label}: {out}")


def main(argv: list[str] | None = None) -> None:
    run_command(argv, __doc__, SETTINGS, predict_command, "predictions")


if __name__ == "__main__":
    main()
