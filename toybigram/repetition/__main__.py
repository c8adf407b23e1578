"""``python -m toybigram.repetition lm=smollm2``: the repetition-neurons study end to end.

Stages, each leaving its table in the run directory: collect texts (resumable),
capture activations and attention on the ranking texts (scores, layer distribution,
onset profile, heads), deactivation/activation sweeps (resumable per condition),
perplexity, figures, and ``summary.json`` last.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from toybigram import runio
from toybigram.errors import ConfigError, UserError, require
from toybigram.repetition import config as _config  # noqa: F401  (registers the schema)
from toybigram.repetition import analysis, interventions, perplexity
from toybigram.repetition.generation import collect
from toybigram.repetition.models import load_subject, precheck_model, resolve_device
from toybigram.repetition.neurons import check_k, delta_scores, make_edit, random_sets, rank

log = logging.getLogger(__name__)

TEXTS_PARTIAL = "texts.partial.jsonl"
TEXTS = "texts.jsonl"
SCORES = "neuron_scores.npz"
INTERVENTIONS_PARTIAL = "interventions.partial.jsonl"
PAPER = {
    "deactivate": "top neurons remove 25-35% of loops; random neurons barely any",
    "activate": "top neurons induce more loops than random ones",
    "layers": "a peak in the last layer and a second peak mid-network",
    "perplexity": "deactivation costs English models little; activating ~500-800 neurons pushes 2-3B models past 100",
}


# --------------------------------------------------------------------------- checks


def validate(cfg: DictConfig) -> None:
    d, c, s, iv, p = cfg.detector, cfg.collect, cfg.score, cfg.intervene, cfg.perplexity
    require(d.ngram >= 1, "detector.ngram", f"must be at least 1, got {d.ngram}")
    require(d.repeats >= 2, "detector.repeats", f"must be at least 2, got {d.repeats}")
    require(d.window >= d.ngram * 1, "detector.window", f"must be at least detector.ngram={d.ngram}, got {d.window}")
    need_before, need_after = max(s.width, s.profile_before - 1), max(s.width - 1, s.profile_after)
    require(d.min_onset >= need_before, "detector.min_onset", f"must be at least {need_before} so the before-window and onset profile fit")
    require(d.min_after >= need_after, "detector.min_after", f"must be at least {need_after} so the after-window and onset profile fit")
    require(c.prefix_len >= 0 and c.greedy_len > 0, "collect.greedy_len", "needs prefix_len >= 0 and greedy_len > 0")
    require(c.temperature > 0, "collect.temperature", f"must be positive, got {c.temperature}")
    require(c.n_rank >= 1, "collect.n_rank", f"must be at least 1, got {c.n_rank}")
    require(c.n_heldout >= 0 and c.n_plain >= 0, "collect.n_heldout", "n_heldout and n_plain must be non-negative")
    require(c.batch_size >= 1 and s.batch_size >= 1 and iv.batch_size >= 1 and p.batch_size >= 1, "batch_size", "every batch_size must be at least 1")
    require(c.max_texts >= 1, "collect.max_texts", f"must be at least 1, got {c.max_texts}")
    require(s.profile_before >= 1 and s.profile_after >= 1, "score.profile_before", "profile offsets must be positive")
    require(0 < s.top_fraction <= 1, "score.top_fraction", f"must be in (0, 1], got {s.top_fraction}")
    require(s.n_profile_neurons >= 1, "score.n_profile_neurons", "must be at least 1")
    require(len(iv.ks) >= 1, "intervene.ks", "needs at least one K")
    for k in iv.ks:
        require(int(k) >= 0, "intervene.ks", f"K must be non-negative, got {k}")
    require(iv.random_draws >= 1, "intervene.random_draws", f"must be at least 1, got {iv.random_draws}")
    require(iv.new_tokens >= 1, "intervene.new_tokens", "must be at least 1")
    require(1 <= iv.activate_prompt_len <= c.prefix_len + c.greedy_len, "intervene.activate_prompt_len", "must fit inside a collected text")
    require(p.seq_len >= 2 and p.max_tokens >= p.seq_len, "perplexity.seq_len", "needs 2 <= seq_len <= max_tokens")
    require(p.random_draws >= 1, "perplexity.random_draws", "must be at least 1")
    resolve_device(cfg.device)
    if cfg.threads is not None:
        require(cfg.threads >= 1, "threads", f"must be at least 1, got {cfg.threads}")


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Never overwrite a finished run; resume only what is there."""
    finished = (run_dir / runio.SUMMARY_FILE).is_file()
    started = (run_dir / TEXTS_PARTIAL).is_file()
    if cfg.overwrite:
        return
    if finished:
        raise UserError(f"{run_dir} already holds a finished run; choose another hydra.run.dir or pass overwrite=true")
    if started and not cfg.resume:
        raise UserError(f"{run_dir} holds an interrupted run; continue it with resume=true or start over with overwrite=true")
    if cfg.resume and not started:
        raise UserError(f"resume: nothing to resume in {run_dir} (set hydra.run.dir to the interrupted run's directory)")


def precheck(cfg: DictConfig) -> None:
    """Everything that can be checked before Hydra writes the run directory or a model loads."""
    validate(cfg)
    precheck_model(cfg.lm)
    run_dir = cfg.get("hydra", {}).get("run", {}).get("dir")
    if run_dir:
        check_run_dir(cfg, Path(run_dir))


def check_subject(cfg: DictConfig, subject) -> None:
    """Checks that need the loaded model: K against the neuron count, text length against positions."""
    check_k([int(k) for k in cfg.intervene.ks], subject.n_neurons, "intervene.ks")
    longest = len(subject.start_ids or [0]) + cfg.collect.prefix_len + cfg.collect.greedy_len
    longest_edit = longest + cfg.intervene.new_tokens
    if subject.max_len is not None and longest_edit > subject.max_len:
        raise ConfigError(
            f"collect.greedy_len/intervene.new_tokens: sequences reach {longest_edit} tokens but {subject.name} "
            f"has {subject.max_len} positions (train the toy model with a longer data.seq_len or model.max_len)"
        )


# --------------------------------------------------------------------------- helpers


class Bars:
    """tqdm bars on stderr, or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, total: int, desc: str, unit: str = "text", initial: int = 0):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not self.enabled, dynamic_ncols=True, leave=False)


def split_texts(rows: list[dict], cfg: DictConfig) -> list[dict]:
    """Assign splits in index order: rank, heldout (repetitive), plain (activation prompts)."""
    rows = sorted(rows, key=lambda r: r["index"])
    n_rep = n_plain = 0
    for row in rows:
        split = "unused"
        if row["status"] == "repetitive":
            split = "rank" if n_rep < cfg.collect.n_rank else "heldout" if n_rep < cfg.collect.n_rank + cfg.collect.n_heldout else "unused"
            n_rep += 1
        elif row["status"] == "plain" and n_plain < cfg.collect.n_plain:
            split, n_plain = "plain", n_plain + 1
        row["split"] = split
    return rows


def stage_collect(cfg, subject, run_dir: Path, bars) -> list[dict]:
    partial = run_dir / TEXTS_PARTIAL
    c = cfg.collect
    bar = bars(c.max_texts, "collect texts")

    def progress(n: int, rows: list[dict]) -> None:
        bar.update(n)
        bar.set_postfix_str(
            f"repetitive {sum(r['status'] == 'repetitive' for r in rows)}/{c.n_rank + c.n_heldout} "
            f"plain {sum(r['status'] == 'plain' for r in rows)}/{c.n_plain}"
        )

    rows = collect(subject, c, cfg.detector, partial, progress)
    bar.close()
    n_rep = sum(r["status"] == "repetitive" for r in rows)
    n_plain = sum(r["status"] == "plain" for r in rows)
    if n_rep < c.n_rank + c.n_heldout or n_plain < c.n_plain:
        raise UserError(
            f"too few texts: {n_rep} repetitive (need collect.n_rank+n_heldout={c.n_rank + c.n_heldout}) and "
            f"{n_plain} non-repetitive (need collect.n_plain={c.n_plain}) among {len(rows)} generated "
            f"(collect.max_texts={c.max_texts}); the texts so far are kept in {partial}: raise collect.max_texts "
            f"and rerun with resume=true hydra.run.dir={run_dir}"
        )
    rows = split_texts(rows, cfg)
    for row in rows:
        row["text"] = subject.decode(row["ids"])
    runio.write_jsonl(run_dir / TEXTS, rows)
    return rows


def stage_scores(cfg, subject, rank_texts: list[dict], run_dir: Path, bars) -> dict:
    s = cfg.score
    lo = max(s.width + 1, s.profile_before)
    hi = max(s.width - 1, s.profile_after)
    path = run_dir / SCORES
    if cfg.resume and path.is_file():
        saved = np.load(path)
        profile, offsets = saved["profile"], saved["offsets"]
        heads_table = runio.read_json(run_dir / "heads.json")
    else:
        bar = bars(len(rank_texts), "capture activations")
        windows, heads = analysis.capture(subject, rank_texts, lo, hi, s.batch_size, bar.update)
        bar.close()
        profile, offsets = windows.means(), windows.offsets
        heads_table = heads.table(s.head_threshold)
        heads_table["layers"] = list(range(subject.n_layers))
        runio.write_json(run_dir / "heads.json", heads_table)
    delta = delta_scores(profile, offsets, s.width)
    ranking = rank(delta)
    if not (cfg.resume and path.is_file()):
        buffer_path = path
        import io

        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, delta=delta, ranking=ranking, profile=profile.astype(np.float32), offsets=offsets,
            site_layers=np.asarray(subject.site_layers), site_sizes=np.asarray(subject.site_sizes),
        )
        runio.atomic_write_bytes(buffer_path, buffer.getvalue())
    top = [{**analysis.describe_neuron(subject, int(i)), "delta": float(delta[i])} for i in ranking[:100]]
    runio.write_json(run_dir / "top_neurons.json", top)
    layers = analysis.layer_distribution(subject, delta, s.top_fraction)
    runio.write_json(run_dir / "layer_distribution.json", layers)
    keep = (offsets >= -s.profile_before) & (offsets < s.profile_after)
    profile_rows = {
        "offsets": offsets[keep],
        "neurons": [analysis.describe_neuron(subject, int(i)) for i in ranking[: s.n_profile_neurons]],
        "mean_activation": profile[keep][:, ranking[: s.n_profile_neurons]].T,
    }
    runio.write_json(run_dir / "onset_profile.json", profile_rows)
    return {"delta": delta, "ranking": ranking, "layers": layers, "heads": heads_table, "profile": profile_rows, "top": top}


def stage_interventions(cfg, subject, texts: list[dict], ranking, random_orders, run_dir: Path, bars) -> list[dict]:
    iv = cfg.intervene
    ks = [int(k) for k in iv.ks]
    heldout = [t for t in texts if t["split"] == "heldout"][: iv.n_deactivate]
    plain = [t for t in texts if t["split"] == "plain"][: iv.n_activate]
    jobs = []
    if iv.run_deactivate and heldout:
        prompts = [t["ids"][: t["loop"]["onset"]] for t in heldout]
        jobs += [(c, prompts, "set", 0.0) for c in interventions.conditions("deactivate", ks, iv.random_draws)]
    if iv.run_activate and plain:
        prompts = [t["ids"][: iv.activate_prompt_len] for t in plain]
        jobs += [(c, prompts, "add", float(iv.activate_value)) for c in interventions.conditions("activate", ks, iv.random_draws)]
    partial = run_dir / INTERVENTIONS_PARTIAL
    rows = runio.read_jsonl(partial) if (cfg.resume and partial.is_file()) else []
    if not cfg.resume and partial.exists():
        partial.unlink()
    done = {r["key"] for r in rows}
    todo = [j for j in jobs if j[0].key not in done]
    bar = bars(sum(len(p) for _, p, _, _ in todo), "interventions", unit="prompt")
    for condition, prompts, mode, value in todo:
        bar.set_postfix_str(condition.key)
        neurons = interventions.neurons_for(condition, ranking, random_orders)
        row = interventions.run_condition(
            subject, condition, prompts, neurons, mode, value, iv.new_tokens, cfg.detector, iv.batch_size, bar.update
        )
        runio.append_jsonl(partial, row)
        rows.append(row)
    bar.close()
    keys = [j[0].key for j in jobs]
    rows = sorted((r for r in rows if r["key"] in keys), key=lambda r: keys.index(r["key"]))
    runio.write_jsonl(run_dir / "interventions.jsonl", rows)
    return rows


def perplexity_chunks(cfg, subject) -> tuple[list[list[int]], str]:
    p = cfg.perplexity
    if hasattr(subject, "train_cfg"):
        from toybigram.build import make_chain, make_sampler

        tcfg = subject.train_cfg
        chain = make_chain(tcfg.data)
        sampler = make_sampler(tcfg.data, chain, torch.device("cpu"), seed=10_000 + int(tcfg.data_seed))
        tokens = sampler.sample(p.toy_sequences, min(p.seq_len, subject.max_len or p.seq_len) - 1).tokens
        return tokens.tolist(), "fresh sequences from the toy model's training distribution (held-out seed)"
    text, where = perplexity.load_text(p.text)
    return perplexity.text_chunks(subject, text, p.seq_len, p.max_tokens), where


def stage_perplexity(cfg, subject, ranking, random_orders, bars) -> tuple[list[dict], str, int]:
    p = cfg.perplexity
    chunks, where = perplexity_chunks(cfg, subject)
    ks = [int(k) for k in cfg.intervene.ks]
    jobs = []
    for experiment, mode, value in (("deactivate", "set", 0.0), ("activate", "add", float(cfg.intervene.activate_value))):
        for condition in interventions.conditions(experiment, ks, p.random_draws):
            if condition.selection == "none" and experiment == "activate":
                continue  # the unedited model is scored once
            jobs.append((condition, mode, value))
    bar = bars(len(jobs) * len(chunks), "perplexity", unit="chunk")
    rows = []
    for condition, mode, value in jobs:
        bar.set_postfix_str(condition.key)
        neurons = interventions.neurons_for(condition, ranking, random_orders)
        edit = make_edit(neurons, subject.site_sizes, mode, value, newest_only=False)
        ppl = perplexity.perplexity(subject, chunks, p.batch_size, edit, skip=1, progress=bar.update)
        rows.append({**condition.__dict__, "mode": mode, "value": value, "perplexity": ppl})
    bar.close()
    n_tokens = sum(len(c) - 1 for c in chunks)
    return rows, where, n_tokens


# --------------------------------------------------------------------------- the study


def run_study(cfg: DictConfig, run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    bars = Bars(cfg.progress)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    subject = load_subject(cfg.lm, device)
    check_subject(cfg, subject)
    if cfg.overwrite and not cfg.resume:
        for name in (runio.SUMMARY_FILE, TEXTS_PARTIAL, TEXTS, SCORES, INTERVENTIONS_PARTIAL):
            (run_dir / name).unlink(missing_ok=True)
    timings["load_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    texts = stage_collect(cfg, subject, run_dir, bars)
    timings["collect_s"] = time.perf_counter() - t
    rank_texts = [r for r in texts if r["split"] == "rank"]

    t = time.perf_counter()
    scores = stage_scores(cfg, subject, rank_texts, run_dir, bars)
    timings["capture_s"] = time.perf_counter() - t
    random_orders = random_sets(subject.n_neurons, max(cfg.intervene.random_draws, cfg.perplexity.random_draws), cfg.seed)

    t = time.perf_counter()
    ks = [int(k) for k in cfg.intervene.ks]
    rows = stage_interventions(cfg, subject, texts, scores["ranking"], random_orders, run_dir, bars)
    tables = {
        experiment: interventions.summarise([r for r in rows if r["experiment"] == experiment], ks)
        for experiment in ("deactivate", "activate")
        if any(r["experiment"] == experiment for r in rows)
    }
    runio.write_json(run_dir / "interventions_table.json", tables)
    timings["interventions_s"] = time.perf_counter() - t

    ppl_table, ppl_source, ppl_tokens = None, None, 0
    if cfg.perplexity.enabled:
        t = time.perf_counter()
        ppl_rows, ppl_source, ppl_tokens = stage_perplexity(cfg, subject, scores["ranking"], random_orders, bars)
        ppl_table = perplexity.summarise(ppl_rows, ks)
        runio.write_jsonl(run_dir / "perplexity.jsonl", ppl_rows)
        runio.write_json(run_dir / "perplexity_table.json", {"source": ppl_source, "tokens": ppl_tokens, "table": ppl_table})
        timings["perplexity_s"] = time.perf_counter() - t

    figures = []
    if cfg.figures:
        from toybigram.repetition import plots

        figures = plots.write_all(run_dir)
    timings["total_s"] = time.perf_counter() - t0

    counts = {s: sum(r["split"] == s for r in texts) for s in ("rank", "heldout", "plain", "unused")}
    statuses = {s: sum(r["status"] == s for r in texts) for s in ("repetitive", "rejected", "plain")}
    heads = scores["heads"]
    summary = {
        "subject": subject.name,
        "n_layers": subject.n_layers,
        "neuron_layers": subject.site_layers,
        "neurons_per_layer": subject.site_sizes,
        "n_neurons": subject.n_neurons,
        "texts": {"generated": len(texts), **statuses, "splits": counts},
        "top_neurons": scores["top"][:10],
        "layer_distribution": scores["layers"],
        "heads": {
            "threshold": heads["threshold"],
            "induction_heads_per_layer": heads["induction_heads_per_layer"],
            "self_finding_heads_per_layer": heads["self_finding_heads_per_layer"],
            "best_induction_score_per_layer": np.max(heads["induction_mean"], axis=1),
            "best_self_finding_score_per_layer": np.max(heads["self_finding_mean"], axis=1),
        },
        "interventions": tables,
        "perplexity": {"source": ppl_source, "tokens": ppl_tokens, "table": ppl_table},
        "paper": PAPER,
        "figures": figures,
        "timings": timings,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "run_dir": str(run_dir),
        **runio.provenance(device, subject.dtype),
    }
    runio.write_json(run_dir / runio.SUMMARY_FILE, summary)
    return summary


def print_summary(summary: dict) -> None:
    lines = [f"repetition neurons: {summary['subject']} ({summary['n_neurons']} neurons) in {summary['timings']['total_s']:.0f} s"]
    t = summary["texts"]
    lines.append(f"  texts      {t['generated']} generated: {t['repetitive']} repetitive, {t['rejected']} rejected onset, {t['plain']} plain")
    for experiment, table in summary["interventions"].items():
        cells = " ".join(
            f"K={r['k']}:{r['top']:.2f}/{r['random_mean']:.2f}" for r in table if r["top"] is not None and r["random_mean"] is not None
        )
        lines.append(f"  {experiment:<10} repeat rate top/random {cells}")
    layers = summary["layer_distribution"]
    lines.append(f"  layers     top {layers['n_top_positive']} neurons per layer {layers['counts']}")
    heads = summary["heads"]
    lines.append(f"  heads      induction {heads['induction_heads_per_layer']} self-finding {heads['self_finding_heads_per_layer']}")
    if summary["perplexity"]["table"]:
        cells = " ".join(
            f"{r['experiment'][:5]} K={r['k']}:{r['top']:.1f}/{r['random_mean']:.1f}" for r in summary["perplexity"]["table"] if r["k"]
        )
        lines.append(f"  perplexity {summary['perplexity']['table'][0]['top']:.2f} unedited; top/random {cells}")
    lines.append(f"  output     {summary['run_dir']}")
    print("\n".join(lines))


def main_task(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = run_study(cfg, run_dir)
    print_summary(summary)
    return summary


def main() -> None:
    from toybigram.cli import run_app

    run_app(main_task, "repetition", precheck)


if __name__ == "__main__":
    main()
