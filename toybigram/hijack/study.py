"""The measurements of a hijack study, one resumable job per prompt set.

A job draws its prompts from its own generator (seeded by the study's seed and the job's key), runs
them through the model (and, for the toy, through the threshold law read from its weights) and
returns its curves: per (pair, instance) the margin logit(o) - logit(b*) at each count and whether o
is the top-1 token. Jobs land one per line in ``jobs.partial.jsonl``; with ``resume`` the ones already
there are kept, so a stopped study continues where it stopped and gives the same numbers.
"""
from __future__ import annotations

import json
import time
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from toybigram import runio
from toybigram.hijack.design import Instances, counts_that_fit
from toybigram.hijack.heads import attention_to_outputs
from toybigram.hijack.lexicon import Lexicon
from toybigram.hijack.reader import Head, Reader
from toybigram.theory.prompts import COMPETE_COUNTS  # (c1, c2), the toy's compete family

JOBS_PARTIAL = "jobs.partial.jsonl"


@dataclass
class Setting:
    """What every job reads: the model, its words, the pairs (q, o, b*) and the law (toy only)."""

    reader: Reader
    lexicon: Lexicon
    pairs: list[dict]
    seed: int
    batch_tokens: int
    law: Optional[object] = None  # toybigram.theory.threshold.ThresholdLaw for a toy model

    def generator(self, key: str) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(key.encode()))


@dataclass(frozen=True)
class Job:
    key: str
    units: int  # prompts, for progress
    run: Callable[[], dict]


def scores(setting: Setting, prompts: torch.Tensor, targets: torch.Tensor, rivals: torch.Tensor,
           heads: tuple[Head, ...] = ()) -> dict[str, torch.Tensor]:
    """Margins logit(target) - logit(rival) at the last position, and whether the target is top-1, for prompts
    (B, T), in batches of ``batch_tokens``; with ``heads`` zeroed. The toy adds the law's margins."""
    reader, T = setting.reader, prompts.shape[1]
    size = max(1, setting.batch_tokens // (T + len(reader.start)))
    margins, top1, law = [], [], []
    with reader.ablate(list(heads)) if heads else nullcontext():
        for lo in range(0, len(prompts), size):
            logits = reader.last_logits(prompts[lo:lo + size])
            t, r = targets[lo:lo + size, None], rivals[lo:lo + size, None]
            margins.append((logits.gather(1, t) - logits.gather(1, r))[:, 0])
            top1.append(logits.argmax(-1) == t[:, 0])
            if setting.law is not None and not heads:
                predicted = setting.law.logits(prompts[lo:lo + size])
                law.append((predicted.gather(1, t) - predicted.gather(1, r))[:, 0])
    out = {"margin": torch.cat(margins), "top1": torch.cat(top1)}
    if law:
        out["law_margin"] = torch.cat(law)
    return out


def hijack_job(setting: Setting, key: str, pair_ids: list[int], kind: str, T: int, counts: list[int], instances: int,
               region: str = "uniform", heads: tuple[Head, ...] = (), prompt_key: Optional[str] = None) -> Job:
    """The hijack series of each pair at length T: curves over ``counts`` (those that fit the region). Jobs with
    the same ``prompt_key`` (default: the job's key) see the same prompts, e.g. with and without ablated heads."""
    fit = counts_that_fit(counts, T, region)

    def run() -> dict:
        gen = setting.generator(prompt_key or key)
        prompts, targets, rivals = [], [], []
        for i in pair_ids:
            p = setting.pairs[i]
            found = Instances.draw(kind, setting.lexicon, {p["q"], p["o"], p["b"]}, instances, T, max(fit), region, gen)
            prompts.append(found.series(p["q"], p["o"], fit).flatten(0, 1))
            targets.append(torch.full((len(fit) * instances,), p["o"]))
            rivals.append(torch.full((len(fit) * instances,), p["b"]))
        measured = scores(setting, torch.cat(prompts), torch.cat(targets), torch.cat(rivals), heads)
        shape = (len(pair_ids), len(fit), instances)
        curves = {name: value.view(shape).transpose(1, 2).tolist() for name, value in measured.items()}  # (pair, instance, count)
        return {"kind": "hijack", "filler": kind, "T": T, "region": region, "heads": [list(h) for h in heads],
                "counts": fit, "pairs": pair_ids, **curves}

    return Job(key, len(pair_ids) * len(fit) * instances, run)


COMPETE_PAIRS = max(c1 + c2 for c1, c2 in COMPETE_COUNTS)


def compete_job(setting: Setting, key: str, query_pairs: list[tuple[int, int]], kind: str, T: int, instances: int) -> Job:
    """Two outputs o1, o2 of one query, counts (c1, c2), o1's pairs all after o2's or all before:
    margin logit(o1) - logit(o2)."""
    def run() -> dict:
        gen = setting.generator(key)
        rows, prompts, targets, rivals = [], [], [], []
        for first, second in query_pairs:
            p1, p2 = setting.pairs[first], setting.pairs[second]
            found = Instances.draw(kind, setting.lexicon, {p1["q"], p1["o"], p2["o"], p1["b"]}, instances, T, COMPETE_PAIRS, "uniform", gen)
            for c1, c2 in COMPETE_COUNTS:
                for o1_last in (True, False):
                    prompts.append(found.compete(p1["q"], p1["o"], c1, p2["o"], c2, o1_last))
                    targets.append(torch.full((instances,), p1["o"]))
                    rivals.append(torch.full((instances,), p2["o"]))
                    rows.append({"pairs": [first, second], "c1": c1, "c2": c2, "o1_last": o1_last})
        measured = scores(setting, torch.cat(prompts), torch.cat(targets), torch.cat(rivals))
        for n, row in enumerate(rows):
            cut = slice(n * instances, (n + 1) * instances)
            row.update({name: value[cut].tolist() for name, value in measured.items()})
        return {"kind": "compete", "filler": kind, "T": T, "rows": rows}

    return Job(key, len(query_pairs) * len(COMPETE_COUNTS) * 2 * instances, run)


def attention_job(setting: Setting, key: str, pair_ids: list[int], T: int, counts: list[int], heads: list[Head]) -> Job:
    """The induction heads' attention from the final q onto the copied o's, per pair and count c >= 1."""
    fit = [c for c in counts_that_fit(counts, T) if c > 0]

    def run() -> dict:
        gen = setting.generator(key)
        rows = []
        for i in pair_ids:
            p = setting.pairs[i]
            found = Instances.draw("random", setting.lexicon, {p["q"], p["o"], p["b"]}, 1, T, max(fit), "uniform", gen)
            prompts = found.series(p["q"], p["o"], fit)[:, 0]
            for c, found_attention in zip(fit, attention_to_outputs(setting.reader, prompts, p["o"], heads)):
                rows.append({"pair": i, "c": c, **found_attention})
        return {"kind": "attention", "T": T, "heads": [list(h) for h in heads], "rows": rows}

    return Job(key, len(pair_ids) * len(fit), run)


def run_jobs(jobs: list[Job], partial: Path, settings: str, resume: bool, bars) -> dict[str, dict]:
    """Run every job not already in ``partial`` (made under the same ``settings``); {key: result} in job order."""
    done = {}
    if resume and partial.is_file():
        done = {r["key"]: r for r in runio.read_jsonl(partial) if r.get("settings") == settings}
    elif partial.exists():
        partial.unlink()
    todo = [job for job in jobs if job.key not in done]
    bar = bars(sum(job.units for job in todo), "designed prompts", unit="prompt")
    for job in todo:
        bar.set_postfix_str(job.key)
        start = time.perf_counter()
        row = {**job.run(), "key": job.key, "settings": settings}
        row["seconds"] = time.perf_counter() - start  # summed over resumed parts into the summary's timings
        runio.append_jsonl(partial, row)
        done[job.key] = row
        bar.update(job.units)
    bar.close()
    return {job.key: done[job.key] for job in jobs}


def settings_key(cfg) -> str:
    """The settings the jobs' numbers depend on (a resumed run under other settings starts its jobs afresh)."""
    from omegaconf import OmegaConf

    keep = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("lm", "words", "prompts", "heads")}
    return json.dumps({**keep, "seed": cfg.seed}, sort_keys=True)
