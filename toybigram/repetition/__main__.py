"""``python -m toybigram.repetition lm=smollm2``: the repetition-neurons study end to end.

Stages, each leaving its table in the run directory: collect texts (resumable),
capture activations and attention on the ranking texts (scores, layer distribution,
onset profile, heads), deactivation/activation sweeps (resumable per condition),
perplexity, figures, and ``summary.json`` last.
"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

import io
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from toybigram import runio
from toybigram.factory import make_chain, make_sampler
from toybigram.rundir import check_study_dir
from toybigram.runtime import torch_threads
from toybigram.cli import run_app
from toybigram.errors import ConfigError, UserError, require
from toybigram.repetition import analysis, interventions, perplexity, plots
from toybigram.repetition.generation import collect
from toybigram.repetition.interventions import Condition
from toybigram.repetition.models import ModelFacts, load_subject, precheck_model, resolve_device
from toybigram.repetition.neurons import check_k, delta_scores, make_edit, rank
from toybigram.repetition.progress import StudyProgress
from toybigram.repetition.selections import NeuronSets, check_selections

log = logging.getLogger(__name__)

TEXTS_PARTIAL = "texts.partial.jsonl"
TEXTS = "texts.jsonl"
SCORES = "neuron_scores.npz"
INTERVENTIONS_PARTIAL = "interventions.partial.jsonl"
PERPLEXITY_PARTIAL = "perplexity.partial.jsonl"
EFFECT_VS_DAMAGE = "effect_vs_damage.json"
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
    require(p.seq_len >= 2, "perplexity.seq_len", f"must be at least 2, got {p.seq_len}")
    require(p.max_tokens is None or p.max_tokens >= p.seq_len, "perplexity.max_tokens", "must be at least perplexity.seq_len (or null for the whole text)")
    check_selections(iv.selections, "intervene.selections")
    require(p.random_draws >= 1, "perplexity.random_draws", "must be at least 1")
    require(cfg.progress_every_s > 0, "progress_every_s", f"must be positive, got {cfg.progress_every_s}")
    resolve_device(cfg.device)
    if cfg.threads is not None:
        require(cfg.threads >= 1, "threads", f"must be at least 1, got {cfg.threads}")


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Never overwrite a finished run; resume only what is there."""
    check_study_dir(run_dir, TEXTS_PARTIAL, cfg.resume, cfg.overwrite)


def precheck(cfg: DictConfig) -> None:
    """Everything that can be checked before Hydra writes the run directory; reads model metadata only."""
    validate(cfg)
    check_sizes(cfg, precheck_model(cfg.lm))
    run_dir = cfg.get("hydra", {}).get("run", {}).get("dir")
    if run_dir:
        check_run_dir(cfg, Path(run_dir))


def check_sizes(cfg: DictConfig, facts: ModelFacts, name: str = "the model") -> None:
    """K against the neuron count, the longest sequence against the model's positions (when known)."""
    if facts.n_neurons is not None:
        check_k([int(k) for k in cfg.intervene.ks], facts.n_neurons, "intervene.ks")
    longest = 1 + cfg.collect.prefix_len + cfg.collect.greedy_len + cfg.intervene.new_tokens  # start token first
    if facts.max_len is not None and longest > facts.max_len:
        raise ConfigError(
            f"collect.greedy_len/intervene.new_tokens: sequences reach {longest} tokens but {name} "
            f"has {facts.max_len} positions (train the toy model with a longer data.seq_len or model.max_len)"
        )


# --------------------------------------------------------------------------- helpers


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
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, delta=delta, ranking=ranking, profile=profile.astype(np.float32), offsets=offsets,
            site_layers=np.asarray(subject.site_layers), site_sizes=np.asarray(subject.site_sizes),
        )
        runio.atomic_write_bytes(path, buffer.getvalue())
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


def settings_of(cfg, *paths: str) -> str:
    """The settings a stage's results depend on, as one comparable string."""
    values = {path: OmegaConf.select(cfg, path) for path in paths}
    plain = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()}
    return json.dumps(plain, sort_keys=True)


def resumable(cfg, partial: Path, jobs: list[tuple[Condition, int, Callable[[], dict]]], settings: str, bars, desc: str, unit: str) -> list[dict]:
    """Run each (condition, units, job) not already in ``partial`` and append its row there; rows in job order.

    With ``resume`` the rows already there are kept (keyed by condition), so an
    interrupted sweep continues where it stopped; without it the file starts afresh.
    Rows made under other ``settings`` (say, another perplexity text) are not reused.
    """
    rows = runio.read_jsonl(partial) if (cfg.resume and partial.is_file()) else []
    rows = [r for r in rows if r.get("settings") == settings]
    if not cfg.resume and partial.exists():
        partial.unlink()
    done = {r["key"] for r in rows}
    todo = [job for job in jobs if job[0].key not in done]
    bar = bars(sum(units for _, units, _ in todo), desc, unit=unit)
    for condition, units, job in todo:
        bar.set_postfix_str(condition.key)
        row = {**condition.__dict__, **job(), "key": condition.key, "settings": settings}
        runio.append_jsonl(partial, row)
        rows.append(row)
        bar.update(units)
    bar.close()
    order = {condition.key: i for i, (condition, _, _) in enumerate(jobs)}
    return sorted((r for r in rows if r["key"] in order), key=lambda r: order[r["key"]])


def edit_settings(cfg) -> list[tuple[str, str, float]]:
    """(experiment, mode, value) of the enabled experiments."""
    out = [("deactivate", "set", 0.0)] if cfg.intervene.run_deactivate else []
    return out + ([("activate", "add", float(cfg.intervene.activate_value))] if cfg.intervene.run_activate else [])


def stage_interventions(cfg, subject, texts: list[dict], sets: NeuronSets, run_dir: Path, bars) -> list[dict]:
    iv = cfg.intervene
    heldout = [t["ids"][: t["loop"]["onset"]] for t in texts if t["split"] == "heldout"][: iv.n_deactivate]
    plain = [t["ids"][: iv.activate_prompt_len] for t in texts if t["split"] == "plain"][: iv.n_activate]

    def job(c: Condition, prompts, mode: str, value: float):
        neurons = sets.select(c.selection, c.k, c.draw)
        return lambda: interventions.run_condition(subject, c, prompts, neurons, mode, value, iv.new_tokens, cfg.detector, iv.batch_size)

    jobs = []
    for experiment, mode, value in edit_settings(cfg):
        prompts = heldout if experiment == "deactivate" else plain
        if prompts:
            found = interventions.conditions(experiment, [int(k) for k in iv.ks], iv.random_draws, iv.selections)
            jobs += [(c, 1, job(c, prompts, mode, value)) for c in found]
    settings = settings_of(cfg, "detector", "intervene.new_tokens", "intervene.activate_value", "intervene.activate_prompt_len",
                           "intervene.n_deactivate", "intervene.n_activate", "seed")
    rows = resumable(cfg, run_dir / INTERVENTIONS_PARTIAL, jobs, settings, bars, "interventions", "condition")
    runio.write_jsonl(run_dir / "interventions.jsonl", rows)
    return rows


def perplexity_chunks(cfg, subject) -> tuple[list[list[int]], str]:
    p = cfg.perplexity
    if hasattr(subject, "train_cfg"):
        tcfg = subject.train_cfg
        chain = make_chain(tcfg.data)
        sampler = make_sampler(tcfg.data, chain, torch.device("cpu"), seed=10_000 + int(tcfg.data_seed))
        tokens = sampler.sample(p.toy_sequences, min(p.seq_len, subject.max_len or p.seq_len) - 1).tokens
        return tokens.tolist(), "fresh sequences from the toy model's training distribution (held-out seed)"
    text, where = perplexity.load_text(p.text)
    return perplexity.text_chunks(subject, text, p.seq_len, p.max_tokens), where


def stage_perplexity(cfg, subject, sets: NeuronSets, run_dir: Path, bars) -> tuple[list[dict], str, int]:
    """Perplexity of the unedited model once, then of every enabled experiment's edits; resumable per condition."""
    p = cfg.perplexity
    chunks, where = perplexity_chunks(cfg, subject)

    def job(c: Condition, mode: str, value: float):
        def score() -> dict:
            edit = make_edit(sets.select(c.selection, c.k, c.draw), subject.site_sizes, mode, value, newest_only=False)
            nll, tokens = perplexity.window_nll(subject, chunks, p.batch_size, edit, skip=1)
            return {"mode": mode, "value": value, "perplexity": float(np.exp(sum(nll) / sum(tokens))), "window_nll": nll, "window_tokens": tokens}
        return score

    unedited = Condition("unedited", "none", 0, 0)
    jobs = [(unedited, 1, job(unedited, "set", 0.0))]
    for experiment, mode, value in edit_settings(cfg):
        found = interventions.conditions(experiment, [int(k) for k in cfg.intervene.ks if k > 0], p.random_draws, cfg.intervene.selections)
        jobs += [(c, 1, job(c, mode, value)) for c in found]
    settings = settings_of(cfg, "perplexity.text", "perplexity.seq_len", "perplexity.max_tokens", "perplexity.toy_sequences",
                           "intervene.activate_value", "seed")
    rows = resumable(cfg, run_dir / PERPLEXITY_PARTIAL, jobs, settings, bars, "perplexity", "condition")
    return rows, where, sum(len(c) - 1 for c in chunks)


# --------------------------------------------------------------------------- the study


def run_study(cfg: DictConfig, run_dir: str | Path) -> dict:
    """The whole study in ``run_dir`` with ``cfg.threads`` torch CPU threads (the count is restored after)."""
    with torch_threads(cfg.threads or 0):
        return study(cfg, Path(run_dir))


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record the block's wall time in seconds under ``key``."""
    start = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - start


def study(cfg: DictConfig, run_dir: Path) -> dict:
    """Every stage in order, each named as it starts, then summary.json; returns the summary."""
    n_stages = 4 + bool(cfg.perplexity.enabled) + bool(cfg.figures)
    with StudyProgress(n_stages, cfg.progress, cfg.progress_every_s) as progress:
        return run_stages(cfg, run_dir, progress)


def run_stages(cfg: DictConfig, run_dir: Path, progress: StudyProgress) -> dict:
    """The stages of ``study``, each inside ``progress.stage`` with its size in its name."""
    device = resolve_device(cfg.device)
    c, timings = cfg.collect, {}
    t0 = time.perf_counter()
    model = cfg.lm.kind if not cfg.lm.path else f"{cfg.lm.kind} {cfg.lm.path}"
    with progress.stage(f"loading the model ({model})"), timed(timings, "load_s"):
        subject = load_subject(cfg.lm, device)
        check_sizes(cfg, ModelFacts(subject.n_neurons, subject.max_len), subject.name)  # also when called without precheck
        if cfg.overwrite and not cfg.resume:
            for name in (runio.SUMMARY_FILE, TEXTS_PARTIAL, TEXTS, SCORES, INTERVENTIONS_PARTIAL, PERPLEXITY_PARTIAL):
                (run_dir / name).unlink(missing_ok=True)
    with progress.stage(f"collecting up to {c.max_texts} texts ({c.n_rank + c.n_heldout} repetitive and {c.n_plain} "
                        f"plain needed)"), timed(timings, "collect_s"):
        texts = stage_collect(cfg, subject, run_dir, progress)
    rank_texts = [r for r in texts if r["split"] == "rank"]
    with progress.stage(f"ranking neurons on {len(rank_texts)} texts"), timed(timings, "capture_s"):
        scores = stage_scores(cfg, subject, rank_texts, run_dir, progress)
    with progress.stage(f"interventions on {sum(r['split'] == 'heldout' for r in texts)} held-out and "
                        f"{sum(r['split'] == 'plain' for r in texts)} plain prompts"), timed(timings, "interventions_s"):
        draws = max(cfg.intervene.random_draws, cfg.perplexity.random_draws)
        sets = NeuronSets.build(scores["ranking"], subject.site_sizes, draws, cfg.seed)
        tables = stage_intervention_tables(cfg, subject, texts, sets, run_dir, progress)
    ppl = {"source": None, "tokens": 0, "table": None}
    if cfg.perplexity.enabled:
        with progress.stage("perplexity of the unedited and the edited model"), timed(timings, "perplexity_s"):
            ppl = stage_perplexity_tables(cfg, subject, sets, tables, run_dir, progress)
    figures = []
    if cfg.figures:
        with progress.stage("figures"):
            figures = plots.write_all(run_dir)
    timings["total_s"] = time.perf_counter() - t0
    summary = build_summary(cfg, subject, texts, scores, tables, ppl, figures, timings, run_dir, device)
    runio.write_json(run_dir / runio.SUMMARY_FILE, summary)
    return summary


def stage_intervention_tables(cfg, subject, texts: list[dict], sets: NeuronSets, run_dir: Path, bars) -> dict:
    """The intervention sweeps, then the loop rate per experiment, selection and K (interventions_table.json)."""
    ks = [int(k) for k in cfg.intervene.ks]
    rows = stage_interventions(cfg, subject, texts, sets, run_dir, bars)
    tables = {
        experiment: interventions.summarise([r for r in rows if r["experiment"] == experiment], ks, cfg.seed)
        for experiment in ("deactivate", "activate")
        if any(r["experiment"] == experiment for r in rows)
    }
    runio.write_json(run_dir / "interventions_table.json", tables)
    return tables


def stage_perplexity_tables(cfg, subject, sets: NeuronSets, tables: dict, run_dir: Path, bars) -> dict:
    """Perplexity under every edit, its table and the effect against the damage (perplexity_table.json and others)."""
    rows, source, tokens = stage_perplexity(cfg, subject, sets, run_dir, bars)
    ppl = {"source": source, "tokens": tokens, "table": perplexity.summarise(rows, [int(k) for k in cfg.intervene.ks], cfg.seed)}
    runio.write_jsonl(run_dir / "perplexity.jsonl", rows)
    runio.write_json(run_dir / "perplexity_table.json", ppl)
    runio.write_json(run_dir / EFFECT_VS_DAMAGE, interventions.effect_vs_damage(tables, ppl["table"]))
    return ppl


def build_summary(cfg, subject, texts, scores, tables, ppl, figures, timings, run_dir: Path, device) -> dict:
    counts = {s: sum(r["split"] == s for r in texts) for s in ("rank", "heldout", "plain", "unused")}
    statuses = {s: sum(r["status"] == s for r in texts) for s in ("repetitive", "rejected", "plain")}
    heads = scores["heads"]
    return {
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
        "perplexity": ppl,
        "paper": PAPER,
        "figures": figures,
        "timings": timings,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "run_dir": str(run_dir),
        **runio.provenance(device, subject.dtype),
    }


def print_summary(summary: dict) -> None:
    lines = [f"repetition neurons: {summary['subject']} ({summary['n_neurons']} neurons) in {summary['timings']['total_s']:.0f} s"]
    t = summary["texts"]
    lines.append(f"  texts      {t['generated']} generated: {t['repetitive']} repetitive, {t['rejected']} rejected onset, {t['plain']} plain")
    for experiment, table in summary["interventions"].items():
        lines.append(f"  {experiment:<10} share of outputs that loop, by selection and K:")
        for selection in dict.fromkeys(r["selection"] for r in table if r["selection"] != "none"):
            cells = " ".join(f"{r['k']}:{r['rate']:.2f}" for r in table if r["selection"] in (selection, "none"))
            lines.append(f"    {selection:<8} {cells}")
    layers = summary["layer_distribution"]
    lines.append(f"  layers     top {layers['n_top_positive']} neurons per layer {layers['counts']}")
    heads = summary["heads"]
    lines.append(f"  heads      induction {heads['induction_heads_per_layer']} self-finding {heads['self_finding_heads_per_layer']}")
    table = summary["perplexity"]["table"]
    if table:
        lines.append(f"  perplexity {table[0]['perplexity']:.2f} unedited; edited / unedited:")
        for experiment, selection in dict.fromkeys((r["experiment"], r["selection"]) for r in table if r["k"]):
            cells = " ".join(f"{r['k']}:{r['ratio']:.2f}" for r in table if (r["experiment"], r["selection"]) == (experiment, selection))
            lines.append(f"    {experiment[:5]} {selection:<8} {cells}")
    lines.append(f"  output     {summary['run_dir']}")
    print("\n".join(lines))


def main_task(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = run_study(cfg, run_dir)
    print_summary(summary)
    return summary


def main() -> None:
    run_app(main_task, "repetition", precheck)


if __name__ == "__main__":
    main()
