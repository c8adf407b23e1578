"""``python -m toybigram.hijack lm=smollm2``: knowledge hijack measured with designed prompts.

Does an in-context pair "q o", repeated c times, override what the model learned about q? Stages:
the model's own bigram over frequent words (b*(q), the gap of each output o), induction heads by
prefix matching, the designed prompts (hijack series per length and filler, recency, compete, the
heads' attention on the copied o, the series with those heads ablated), then c*(T) with intervals,
the threshold law fitted on half of the queries against its baselines, and ``summary.json`` last.
"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from toybigram import runio
from toybigram.cli import run_app
from toybigram.errors import ConfigError, require
from toybigram.factory import make_chain
from toybigram.hijack import heads as head_finder
from toybigram.hijack import lexicon as words
from toybigram.hijack import results
from toybigram.hijack.design import FILLERS, counts_that_fit, max_pairs
from toybigram.hijack.reader import Reader, load_reader, model_facts
from toybigram.hijack.study import (COMPETE_PAIRS, JOBS_PARTIAL, Setting, attention_job, compete_job, hijack_job,
                                    run_jobs, settings_key)
from toybigram.repetition.models import resolve_device
from toybigram.repetition.progress import StudyProgress
from toybigram.rundir import check_study_dir
from toybigram.runtime import torch_threads
from toybigram.theory.families import FAMILIES
from toybigram.theory.threshold import ThresholdLaw

log = logging.getLogger("toybigram.hijack")
WORDS_FILE = "words.json"
HEADS_FILE = "heads.json"


# --------------------------------------------------------------------------- checks


def validate(cfg: DictConfig) -> None:
    """Settings that are wrong whatever the model (one ConfigError naming the setting)."""
    w, p, h = cfg.words, cfg.prompts, cfg.heads
    require(w.n_queries >= 2, "words.n_queries", f"must be at least 2 (half fit the law, half score it), got {w.n_queries}")
    require(w.n_outputs >= 1, "words.n_outputs", f"must be at least 1, got {w.n_outputs}")
    require(w.pool_size >= 10, "words.pool_size", f"must be at least 10, got {w.pool_size}")
    require(w.query_pool >= 1, "words.query_pool", f"must be at least 1, got {w.query_pool}")
    require(w.contexts >= 0, "words.contexts", f"must be non-negative, got {w.contexts}")
    require(w.toy_corpus_tokens >= 64, "words.toy_corpus_tokens", f"must be at least 64, got {w.toy_corpus_tokens}")
    require(len(p.lengths) >= 1, "prompts.lengths", "needs at least one length")
    for T in [*p.lengths, *p.prose_lengths, p.recency_length, p.compete_length, h.attention_length, h.ablation_length]:
        require(int(T) >= 8, "prompts.lengths", f"every prompt length must be at least 8, got {T}")
    require(len(p.counts) >= 2 and p.counts[0] == 0 and list(p.counts) == sorted(set(p.counts)), "prompts.counts",
            f"must start at 0 and rise, with at least one positive count, got {list(p.counts)}")
    require(p.counts[1] <= max_pairs(min(p.lengths)), "prompts.counts",
            f"the smallest positive count {p.counts[1]} does not fit a prompt of {min(p.lengths)} tokens")
    require(p.instances >= 1, "prompts.instances", f"must be at least 1, got {p.instances}")
    for kind in p.fillers:
        require(kind in FILLERS, "prompts.fillers", f"unknown filler {kind!r} (choose {', '.join(FILLERS)})")
    require("random" in p.fillers, "prompts.fillers", "must include random (the law is fitted on it)")
    require(p.subset_queries >= 1, "prompts.subset_queries", f"must be at least 1, got {p.subset_queries}")
    require(counts_that_fit(list(p.counts), p.recency_length, "early")[-1:] != [0], "prompts.recency_length",
            f"a prompt of {p.recency_length} tokens has no room for a pair in its first half")
    require(max_pairs(p.compete_length) >= COMPETE_PAIRS, "prompts.compete_length",
            f"must hold {COMPETE_PAIRS} pairs, got {p.compete_length}")
    require(p.batch_tokens >= 1, "prompts.batch_tokens", f"must be at least 1, got {p.batch_tokens}")
    require(h.repeat_length >= 2 and h.sequences >= 1, "heads.repeat_length", "needs repeat_length >= 2 and sequences >= 1")
    require(0 < h.threshold <= 1, "heads.threshold", f"must be in (0, 1], got {h.threshold}")
    require(h.max_heads >= 1, "heads.max_heads", f"must be at least 1, got {h.max_heads}")
    require(0 < cfg.law.fit_fraction < 1, "law.fit_fraction", f"must be in (0, 1), got {cfg.law.fit_fraction}")
    require(cfg.progress_every_s > 0, "progress_every_s", f"must be positive, got {cfg.progress_every_s}")
    if cfg.threads is not None:
        require(cfg.threads >= 1, "threads", f"must be at least 1, got {cfg.threads}")
    resolve_device(cfg.device)


def longest_prompt(cfg: DictConfig) -> int:
    p, h = cfg.prompts, cfg.heads
    return max([*p.lengths, *p.prose_lengths, p.recency_length, p.compete_length, h.attention_length, h.ablation_length,
                2 * h.repeat_length])


def check_length(cfg: DictConfig, max_len, name: str, start: int = 1) -> None:
    """Every prompt (plus its start token) fits the model's positions."""
    longest = longest_prompt(cfg) + start
    if max_len is not None and longest > max_len:
        raise ConfigError(f"prompts.lengths: prompts reach {longest} tokens but {name} has {max_len} positions")


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Never overwrite a finished run; resume only what is there."""
    check_study_dir(run_dir, JOBS_PARTIAL, cfg.resume, cfg.overwrite, "hijack study")


def precheck(cfg: DictConfig) -> None:
    """Everything that can be checked before Hydra writes the run directory; reads model metadata only."""
    validate(cfg)
    facts = model_facts(cfg.lm)
    check_length(cfg, facts.max_len, "the model", start=0 if cfg.lm.kind == "toy" else 1)
    run_dir = cfg.get("hydra", {}).get("run", {}).get("dir")
    if run_dir:
        check_run_dir(cfg, Path(run_dir))


# --------------------------------------------------------------------------- stages


def stage_words(cfg: DictConfig, reader: Reader, run_dir: Path) -> tuple[words.Lexicon, list[int], list[dict], dict]:
    """The word pool, the queries, the model's own bigram, b*(q) and the pairs (q, o, b*); words.json."""
    w = cfg.words
    gen = torch.Generator().manual_seed(cfg.seed)
    if reader.kind == "toy":
        chain = make_chain(reader.train_cfg.data)
        lexicon = words.toy_lexicon(chain, min(w.pool_size, chain.vocab_size), w.toy_corpus_tokens, gen)
    else:
        lexicon = words.hf_lexicon(reader, w.corpus, w.pool_size, w.pattern)
    queries = words.choose_queries(lexicon, w.n_queries, w.query_pool, gen)
    contexts = lexicon.draw(w.contexts, set(queries), gen).tolist()
    g = words.own_bigram(reader, queries, contexts)
    b_star = words.favourites(g, queries, lexicon.excluded)
    pairs = words.choose_pairs(g, queries, b_star, lexicon.pool, w.n_outputs)
    for p in pairs:
        p.update({f"{k}_text": reader.token_text(p[k]) for k in ("q", "o", "b")})
    corpus = words.compare_with_corpus(g, queries, b_star, lexicon.corpus)
    record = {"corpus": lexicon.corpus_name, "pool_size": len(lexicon.pool), "queries": queries,
              "contexts": [reader.token_text(x) for x in contexts], "pairs": pairs, "corpus_bigram": corpus}
    runio.write_json(run_dir / WORDS_FILE, record)
    return lexicon, queries, pairs, record


def stage_heads(cfg: DictConfig, reader: Reader, lexicon, run_dir: Path) -> dict:
    h = cfg.heads
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    scores = head_finder.prefix_matching(reader, lexicon, h.repeat_length, h.sequences, gen)
    found = head_finder.induction_heads(scores, h.threshold, h.max_heads)
    control = reader.random_heads(len(found), found, torch.Generator().manual_seed(cfg.seed + 2)) if found else []
    record = {"scores": scores, "threshold": h.threshold, "induction": [list(x) for x in found],
              "induction_scores": [float(scores[l, x]) for l, x in found], "control": [list(x) for x in control],
              "best": float(scores.max())}
    runio.write_json(run_dir / HEADS_FILE, record)
    return record


def plan_jobs(cfg: DictConfig, setting: Setting, queries: list[int], heads: dict) -> list:
    """Every prompt set of the study, in the order they run."""
    p, h = cfg.prompts, cfg.heads
    counts = list(p.counts)
    everyone = list(range(len(setting.pairs)))
    subset_queries = set(queries[: p.subset_queries])
    subset = [i for i, pair in enumerate(setting.pairs) if pair["q"] in subset_queries]
    jobs = [hijack_job(setting, f"grid/random/T{T}", everyone, "random", T, counts, p.instances) for T in p.lengths]
    if "prose" in p.fillers:
        jobs += [hijack_job(setting, f"grid/prose/T{T}", subset, "prose", T, counts, p.instances) for T in p.prose_lengths]
    jobs += [hijack_job(setting, f"recency/{region}", subset, "random", p.recency_length, counts, p.instances, region)
             for region in ("early", "late")]
    by_query: dict[int, list[int]] = {}
    for i in subset:
        by_query.setdefault(setting.pairs[i]["q"], []).append(i)
    two_outputs = [(ids[0], ids[1]) for ids in by_query.values() if len(ids) >= 2]
    if two_outputs:
        jobs.append(compete_job(setting, "compete", two_outputs, "random", p.compete_length, p.instances))
    induction = [tuple(x) for x in heads["induction"]]
    if induction:
        jobs.append(attention_job(setting, "attention", subset, h.attention_length, counts, induction))
        for name, chosen in (("none", ()), ("induction", induction), ("control", [tuple(x) for x in heads["control"]])):
            jobs.append(hijack_job(setting, f"ablation/{name}", subset, "random", h.ablation_length, counts, p.instances,
                                   heads=tuple(chosen), prompt_key="ablation"))
    return jobs


def run_study(cfg: DictConfig, run_dir: str | Path) -> dict:
    """The whole study in ``run_dir`` with ``cfg.threads`` torch CPU threads (the count is restored after)."""
    with torch_threads(cfg.threads or 0):
        with StudyProgress(5, cfg.progress, cfg.progress_every_s, log) as progress:
            return run_stages(cfg, Path(run_dir), progress)


def run_stages(cfg: DictConfig, run_dir: Path, progress: StudyProgress) -> dict:
    device = resolve_device(cfg.device)
    timings, t0 = {}, time.perf_counter()
    with progress.stage(f"loading the model ({cfg.lm.kind}{' ' + str(cfg.lm.path) if cfg.lm.path else ''})"):
        reader = load_reader(cfg.lm, device)
        check_length(cfg, reader.max_len, reader.name, len(reader.start))
        if cfg.overwrite and not cfg.resume:
            for name in (runio.SUMMARY_FILE, JOBS_PARTIAL):
                (run_dir / name).unlink(missing_ok=True)
    timings["load_s"] = time.perf_counter() - t0
    with progress.stage(f"{cfg.words.n_queries} query words and the model's own bigram"):
        lexicon, queries, pairs, word_record = stage_words(cfg, reader, run_dir)
    with progress.stage("induction heads by prefix matching"):
        heads = stage_heads(cfg, reader, lexicon, run_dir)
    law = None
    if reader.kind == "toy":
        law = ThresholdLaw.from_model(reader.model, longest_prompt(cfg), {"run": str(cfg.lm.path)})
    setting = Setting(reader, lexicon, pairs, cfg.seed, cfg.prompts.batch_tokens, law)
    jobs = plan_jobs(cfg, setting, queries, heads)
    t1 = time.perf_counter()
    with progress.stage(f"{len(jobs)} sets of designed prompts for {len(pairs)} (q, o) pairs"):
        done = run_jobs(jobs, run_dir / JOBS_PARTIAL, settings_key(cfg), cfg.resume, progress)
    timings["prompts_s"] = time.perf_counter() - t1
    timings["prompts_all_parts_s"] = sum(job.get("seconds", 0.0) for job in done.values())  # with resumed parts
    with progress.stage("thresholds, the law's fit and summary.json"):
        summary = build_summary(cfg, reader, done, pairs, queries, word_record, heads, device)
        timings["total_s"] = time.perf_counter() - t0
        summary["timings"] = timings
        runio.write_json(run_dir / runio.SUMMARY_FILE, {**summary, "run_dir": str(run_dir)})
    return {**summary, "run_dir": str(run_dir)}


# The theory's prompt families this study rebuilds on a word filler (recency is its own: pairs in one half).
MIRRORED_FAMILIES = ("hijack", "dilution", "compete")


def build_summary(cfg, reader: Reader, done: dict, pairs, queries, word_record: dict, heads: dict, device) -> dict:
    thresholds = {kind: results.threshold_rows(done, pairs, kind, cfg.seed) for kind in cfg.prompts.fillers}
    if reader.kind == "toy":
        thresholds["law_from_weights"] = results.threshold_rows(done, pairs, "random", cfg.seed, field="law_margin")
    gaps = [p["gap"] for p in pairs]
    return {
        "model": reader.name,
        "kind": reader.kind,
        "vocab_size": reader.vocab_size,
        "pairs": len(pairs),
        "queries": len(queries),
        "gap": {"min": min(gaps), "median": float(torch.tensor(gaps).median()), "max": max(gaps)},
        "corpus_bigram": {k: v for k, v in word_record["corpus_bigram"].items() if k != "rows"},
        "families": {name: FAMILIES[name].describe() for name in MIRRORED_FAMILIES},
        "c_star": thresholds,
        "law": results.law_fit(done, pairs, queries, cfg.law.fit_fraction, cfg.seed),
        "recency": results.recency_rows(done, pairs, cfg.seed),
        "compete": results.compete_summary(done),
        "heads": {k: heads[k] for k in ("induction", "induction_scores", "control", "threshold", "best")},
        "attention": results.attention_summary(done),
        "ablation": results.ablation_rows(done, pairs, cfg.seed),
        "config": OmegaConf.to_container(cfg, resolve=True),
        **runio.provenance(device, reader.dtype),
    }


def fmt(value) -> str:
    return "inf" if value is None or value == float("inf") else f"{value:g}"


def print_summary(summary: dict) -> None:
    lines = [f"knowledge hijack: {summary['model']}, {summary['pairs']} (q, o) pairs over {summary['queries']} query words, "
             f"gap log p(b*|q) - log p(o|q) from {summary['gap']['min']:.1f} to {summary['gap']['max']:.1f} "
             f"in {summary['timings']['total_s']:.0f} s"]
    for kind, rows in summary["c_star"].items():
        cells = "  ".join(f"T={r['T']}: {fmt(r['c_star'])} [{fmt(r['interval'][0])}, {fmt(r['interval'][1])}]" for r in rows)
        lines.append(f"  c*(T) {kind:<16} {cells}")
    random_rows = summary["c_star"].get("random", [])
    if random_rows:
        lines.append("  c* vs gap (Spearman)    " + "  ".join(f"T={r['T']}: {r['gap']['spearman']:+.2f}" for r in random_rows))
    rules = summary["law"]["rules"]
    lines.append("  held-out flip accuracy  " + "  ".join(f"{name} {r['accuracy_held_out']:.3f} ({r['numbers']} numbers)"
                                                       for name, r in rules.items()))
    for row in summary["ablation"]:
        lines.append(f"  ablation {row['ablated']:<10} heads {len(row['heads'])}: c* {fmt(row['c_star'])}, "
                     f"margin gain {row['margin_gain']:.2f} ({fmt(row['gain_remaining'])} of intact)")
    lines.append(f"  output     {summary['run_dir']}")
    print("\n".join(lines))


def main_task(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    summary = run_study(cfg, Path(HydraConfig.get().runtime.output_dir))
    print_summary(summary)
    return summary


def main() -> None:
    run_app(main_task, "hijack", precheck)


if __name__ == "__main__":
    main()
