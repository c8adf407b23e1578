"""Calculator against ideal-memory builds as the width d grows.

    python -m toybigram.theory.width [--d 256 512 1024 4096] [--N 16 65] [--out outputs/theory/width.json]

For each (d, N): an ideal build (float64; alpha=12, lambda=10, beta=8, g = centred log pi_b
with floor 1e-4; N=65 the Shakespeare chain, else a seeded Dirichlet chain), prompts from
its trigger sampler, and the centred-logit R^2 over all positions of the idealised
calculator, the leading correction (the feed-forward block reading the copied token's
unembedding, Gram block (E,U), alone), and the full Gram correction; layer-2 attention
error (mean total variation) for both; and the Gram blocks whose removal costs most R^2.
"""
from __future__ import annotations

import argparse
import time

import torch

from toybigram.data import TriggerSampler, dirichlet_chain, shakespeare_chain
from toybigram.errors import UserError, exit_with
from toybigram.model import ModelSpec
from toybigram.runio import provenance, write_json
from toybigram.theory.calculator import agreement, attention_error
from toybigram.theory.gram import BLOCKS, gram_build, predict_gram
from toybigram.theory.ideal import ideal_model, log_bigram


def one(d: int, N: int, *, T: int = 128, prompts: int = 4, seed: int = 0, alpha=12.0, lam=10.0, beta=8.0) -> dict:
    start = time.perf_counter()
    chain = shakespeare_chain() if N == 65 else dirichlet_chain(N, 0.5, seed)
    g = log_bigram(chain.transition)
    model = ideal_model(ModelSpec(vocab_size=N, d_model=d, max_len=T, dtype="float64"), alpha=alpha, lam=lam, beta=beta, g=g, seed=seed)
    build = gram_build(model, alpha, lam, beta, g)
    tokens = TriggerSampler(chain, n_triggers=5, seed=seed + 1).sample(prompts, T).inputs
    names = ["blocks.1.attn.hook_pattern"]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
    a2 = cache[names[0]]
    fits = {name: predict_gram(build, tokens, keep) for name, keep in
            (("idealised", ()), ("leading", (("E", "U"),)), ("corrected", BLOCKS))}
    row = {"d": d, "N": N, "T": T, "prompts": prompts}
    for name, p in fits.items():
        row[f"r2_{name}"] = agreement(logits, p.logits)["r2_centered_logits"]
        row[f"top1_{name}"] = agreement(logits, p.logits)["top1_agreement"]
        row[f"attn2_error_{name}"] = attention_error(a2, p.a2)
    drops = {f"{r},{f}": row["r2_corrected"] - agreement(logits, predict_gram(build, tokens, set(BLOCKS) - {(r, f)}).logits)["r2_centered_logits"]
             for r, f in BLOCKS}
    row["r2_lost_without_block"] = dict(sorted(drops.items(), key=lambda kv: -kv[1])[:5])
    row["seconds"] = time.perf_counter() - start
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, nargs="+", default=[256, 512, 1024, 4096])
    parser.add_argument("--N", type=int, nargs="+", default=[16, 65])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/theory/width.json")
    args = parser.parse_args(argv)
    try:
        if any(d < 2 for d in args.d) or any(n < 2 for n in args.N):
            raise UserError("width: d and N must be at least 2")
        rows = []
        print(f"{'d':>5} {'N':>3} | {'R2 ideal':>8} {'R2 lead':>8} {'R2 corr':>8} | {'a2 err id':>9} {'a2 err co':>9} | top block lost")
        for N in args.N:
            for d in args.d:
                r = one(d, N, prompts=args.prompts, seed=args.seed)
                rows.append(r)
                top = next(iter(r["r2_lost_without_block"].items()))
                print(f"{d:>5} {N:>3} | {r['r2_idealised']:8.3f} {r['r2_leading']:8.3f} {r['r2_corrected']:8.3f} | "
                      f"{r['attn2_error_idealised']:9.3f} {r['attn2_error_corrected']:9.3f} | {top[0]} ({top[1]:.3f})  [{r['seconds']:.0f}s]", flush=True)
        write_json(args.out, {"rows": rows, "settings": vars(args), **provenance("cpu", "float64")})
        print(f"wrote {args.out}")
    except UserError as err:
        exit_with(err)


if __name__ == "__main__":
    main()
