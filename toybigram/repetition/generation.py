"""Batched decoding: seeded random starts, greedy continuation, resumable text collection.

Several texts share each forward pass and, for Hugging Face models, a KV cache; prompts
of unequal length are left-padded with their own position ids. Text i's sampled start
depends only on (seed, i), so batch size and resumption do not change which texts come out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from toybigram import runio
from toybigram.repetition.detector import find_loop, onset_usable
from toybigram.repetition.neurons import NeuronEdit, edited

PAD_ID = 0


def left_pad(prompts: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt))
            mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def batches(subject, prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches; equal lengths only when the model takes no padding."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    groups: list[list[int]] = []
    for i in order:
        last = groups[-1] if groups else None
        fits = last is not None and len(last) < batch_size
        if fits and not subject.supports_padding:
            fits = len(prompts[last[0]]) == len(prompts[i])
        if fits:
            last.append(i)
        else:
            groups.append([i])
    return groups


# fn(prompt, new tokens so far) -> True once a row's outcome is settled and it may stop early.
StopRule = Callable[[Sequence[int], list[int]], bool]
STOP_CHECK_EVERY = 20  # steps between stop checks (each check runs the detector on every active row)


@torch.no_grad()
def decode_batch(
    subject,
    prompts: Sequence[Sequence[int]],
    n_new: int,
    n_sampled: int = 0,
    generators: Optional[Sequence[torch.Generator]] = None,
    temperature: float = 1.0,
    stop: Optional[StopRule] = None,
) -> list[list[int]]:
    """Continue each prompt by ``n_sampled`` sampled then ``n_new - n_sampled`` greedy tokens (new tokens only).

    With ``stop``, every ``STOP_CHECK_EVERY`` steps the rows it settles leave the batch
    (and the KV cache), so their continuations are shorter; greedy decoding only.
    """
    if n_new == 0:
        return [[] for _ in prompts]
    if stop is not None and n_sampled:
        raise ValueError("early stopping is for greedy decoding only")
    ids, mask = left_pad(prompts, subject.device)
    decoder = subject.decoder(ids, mask)
    logits = decoder.logits
    new: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    for step in range(n_new):
        if step < n_sampled:
            probs = torch.softmax(logits.double().cpu() / temperature, dim=-1)
            tokens = torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, generators)])
            tokens = tokens.to(subject.device)
        else:
            tokens = logits.argmax(-1)
        for row, token in zip(active, tokens.tolist()):
            new[row].append(token)
        if step + 1 == n_new:
            break
        if stop is not None and (step + 1) % STOP_CHECK_EVERY == 0:
            keep = [i for i, row in enumerate(active) if not stop(prompts[row], new[row])]
            if not keep:
                break
            if len(keep) < len(active):
                rows = torch.tensor(keep, device=subject.device)
                decoder.keep(rows)
                tokens, active = tokens[rows], [active[i] for i in keep]
        logits = decoder.step(tokens)
    return new


def greedy_continue(
    subject,
    prompts: Sequence[Sequence[int]],
    n_new: int,
    batch_size: int,
    edit: Optional[NeuronEdit] = None,
    progress: Optional[Callable[[int], None]] = None,
    stop: Optional[StopRule] = None,
) -> list[list[int]]:
    """Greedy continuations (new tokens only) of every prompt, with an optional neuron edit and stop rule."""
    out: list[list[int]] = [[] for _ in prompts]
    with edited(subject, edit):
        for group in batches(subject, prompts, batch_size):
            for row, tokens in zip(group, decode_batch(subject, [prompts[i] for i in group], n_new, stop=stop)):
                out[row] = tokens
            if progress:
                progress(len(group))
    return out


def text_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index))


def start_prompt(subject, seed: int, index: int) -> list[int]:
    """BOS (or a space); the toy model has no BOS, so one seeded uniform token instead."""
    if subject.start_ids:
        return list(subject.start_ids)
    g = torch.Generator().manual_seed(int(seed) * 7_919 + int(index) + 1)
    return [int(torch.randint(subject.vocab_size, (1,), generator=g))]


def generate_texts(subject, indices: Sequence[int], cfg) -> list[list[int]]:
    """Texts ``indices``: start, ``cfg.prefix_len`` sampled tokens, ``cfg.greedy_len`` greedy tokens."""
    starts = [start_prompt(subject, cfg.seed, i) for i in indices]
    gens = [text_generator(cfg.seed, i) for i in indices]
    rows = decode_batch(
        subject, starts, cfg.prefix_len + cfg.greedy_len, cfg.prefix_len, gens, cfg.temperature
    )
    return [s + r for s, r in zip(starts, rows)]


def classify(ids: Sequence[int], det) -> dict:
    """Detector verdict for one text: repetitive (usable onset), rejected (loop, bad onset) or plain."""
    loop = find_loop(ids, det.ngram, det.window, det.repeats)
    if loop is None:
        return {"status": "plain", "loop": None}
    usable = onset_usable(loop.onset, len(ids), det.min_onset, det.min_after)
    return {"status": "repetitive" if usable else "rejected", "loop": loop.as_dict()}


def collect(subject, cfg, det, partial_path: Path, progress=None) -> list[dict]:
    """Generate texts until there are enough repetitive and plain ones; resumable.

    Each finished batch is appended to ``partial_path``; on restart the texts already
    there are kept and generation continues at the next index.
    """
    rows = runio.read_jsonl(partial_path) if partial_path.exists() else []
    rows = [r for r in rows if r.get("seed") == cfg.seed]
    need_rep = cfg.n_rank + cfg.n_heldout

    def done() -> bool:
        n_rep = sum(r["status"] == "repetitive" for r in rows)
        n_plain = sum(r["status"] == "plain" for r in rows)
        return n_rep >= need_rep and n_plain >= cfg.n_plain

    if progress:
        progress(len(rows), rows)
    next_index = max((r["index"] for r in rows), default=-1) + 1
    while not done() and next_index < cfg.max_texts:
        indices = list(range(next_index, min(next_index + cfg.batch_size, cfg.max_texts)))
        texts = generate_texts(subject, indices, cfg)
        new = [{"index": i, "seed": cfg.seed, "ids": ids, **classify(ids, det)} for i, ids in zip(indices, texts)]
        partial_path.parent.mkdir(parents=True, exist_ok=True)
        for row in new:
            runio.append_jsonl(partial_path, row)
        rows.extend(new)
        next_index = indices[-1] + 1
        if progress:
            progress(len(new), rows)
    return rows
