"""Benchmark: batched KV-cache text collection against ``generate`` one text at a time.

    python -m toybigram.repetition.bench [--lm smollm2|PATH] [--texts 16] [--batch-size 16]

Both decode the same prompts (BOS + the seeded sampled start of each text) greedily
for ``--greedy-len`` tokens; prints both wall times, the speed-up and whether every
token agrees.
"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

import argparse
import sys
import time

import torch

from toybigram.runtime import apply_threads
from toybigram.errors import OneLineParser, UserError, exit_with
from toybigram.repetition.config import CollectConfig, LMConfig
from toybigram.repetition.generation import generate_texts, greedy_continue
from toybigram.repetition.models import load_subject


def main(argv=None) -> None:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", default="smollm2", help="smollm2, or a local model directory / GGUF file")
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prefix-len", type=int, default=10)
    parser.add_argument("--greedy-len", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    try:
        run(args)
    except UserError as err:
        exit_with(err)


def run(args) -> None:
    if args.texts < 1 or args.batch_size < 1:
        raise UserError("--texts and --batch-size must be at least 1")
    if args.threads < 0:
        raise UserError(f"--threads must be non-negative, got {args.threads}")
    apply_threads(args.threads)
    lm = LMConfig(kind="smollm2") if args.lm == "smollm2" else LMConfig(kind="hf", path=args.lm)
    subject = load_subject(lm, torch.device("cpu"))
    if not hasattr(subject, "tokenizer"):
        raise UserError("the benchmark compares against transformers' generate, so it needs a Hugging Face model")
    # Prompts: the seeded sampled starts of texts 0..n-1 (the part before greedy decoding).
    cfg = CollectConfig(seed=args.seed, prefix_len=args.prefix_len, greedy_len=0)
    prompts = []
    for start in range(0, args.texts, args.batch_size):
        prompts += generate_texts(subject, list(range(start, min(start + args.batch_size, args.texts))), cfg)

    t = time.perf_counter()
    batched = greedy_continue(subject, prompts, args.greedy_len, args.batch_size)
    batched_s = time.perf_counter() - t

    t = time.perf_counter()
    single = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = subject.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.greedy_len, min_new_tokens=args.greedy_len,
                do_sample=False, pad_token_id=subject.tokenizer.eos_token_id,
            )
            single.append(out[0, len(prompt):].tolist())
    single_s = time.perf_counter() - t

    same = sum(a == b for a, b in zip(batched, single))
    print(
        f"{subject.name}: {args.texts} texts x {args.greedy_len} greedy tokens, torch threads {torch.get_num_threads()}\n"
        f"  generate, one text at a time : {single_s:7.1f} s\n"
        f"  batched KV cache (batch {args.batch_size:>3}) : {batched_s:7.1f} s\n"
        f"  speed-up                     : {single_s / batched_s:7.2f}x\n"
        f"  identical token sequences    : {same}/{len(prompts)}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
