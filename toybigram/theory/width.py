"""Calculator against ideal-memory builds as the width d grows: idealised, reduced and full Gram correction.

    python -m toybigram.theory.width [--d 256 512 1024 4096] [--N 16 65] [--out outputs/theory/width.json]

An ideal build (float64; alpha=12, lambda=10, beta=8, g = centred log pi_b with floor 1e-4;
N=65 the Shakespeare chain, else a seeded Dirichlet chain) and prompts from its trigger
sampler; centred-logit R^2 over all positions. The reduced correction's Gram blocks are
chosen once by greedy forward selection (gram.forward_selection) on the selection case
(d=512, N=65, build seed ``seed``) until R^2 >= 0.95; every row of the table is then a
fresh build and prompt set (seed + 1), so the figures are not fitted to what they report.
The full correction (all blocks) is exact for ideal builds: a check of the algebra.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from omegaconf import DictConfig

from toybigram.data import TriggerSampler, dirichlet_chain, shakespeare_chain
from toybigram.errors import OneLineParser, UserError, exit_with
from toybigram.factory import make_chain, make_sampler, make_spec
from toybigram.hooks import pattern_hook
from toybigram.model import ModelSpec
from toybigram.runio import provenance, write_json
from toybigram.theory.baselines import log_rows, make_process, process_rows
from toybigram.theory.calculator import agreement, attention_error
from toybigram.theory.gram import BLOCK_MEANING, BLOCKS, block_name, forward_selection, gram_build, predict_gram
from toybigram.theory.ideal import ideal_model, log_bigram

SELECTION_CASE = (512, 65)  # (d, N) on which the reduced block set is chosen
TARGET_R2 = 0.95


def ideal_build(d: int, N: int, seed: int, *, T: int = 128, prompts: int = 4, alpha=12.0, lam=10.0, beta=8.0):
    """An ideal-memory model of width d (float64), its g, prompts from its trigger sampler, its logits and layer-2 attention."""
    chain = shakespeare_chain() if N == 65 else dirichlet_chain(N, 0.5, seed)
    g = log_bigram(chain.transition)
    model = ideal_model(ModelSpec(vocab_size=N, d_model=d, max_len=T, dtype="float64"), alpha=alpha, lam=lam, beta=beta, g=g, seed=seed)
    tokens = TriggerSampler(chain, n_triggers=5, seed=seed + 1).sample(prompts, T).inputs
    names = [pattern_hook(1)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
    return model, g, tokens, logits, cache[names[0]]


def ideal_trained_like(cfg: DictConfig, *, alpha=12.0, lam=10.0, beta=8.0):
    """An ideal build (float64) with a training config's data and sizes, storing what a trained model stores: the
    previous-token head alpha, an induction key lambda for the fixed triggers only (every token with random
    triggers), the copy beta, and the feed-forward block g = centred log of the process's context-free rows
    (a trigger's output distribution, else pi_b). The config's model.dtype is replaced by float64."""
    chain = make_chain(cfg.data)
    N = chain.vocab_size
    sampler = make_sampler(cfg.data, chain, torch.device("cpu"), 0)
    triggers = sampler.fixed_triggers.tolist() if cfg.data.triggers == "fixed" else list(range(N))
    process = make_process(chain.transition, triggers, cfg.data.outputs, cfg.data.exclude_trigger_output)
    keys = torch.zeros(N, dtype=torch.float64)
    keys[triggers] = lam
    spec = replace(make_spec(cfg, chain), dtype="float64")
    return ideal_model(spec, alpha=alpha, lam=keys, beta=beta, g=log_rows(process_rows(process)), seed=int(cfg.seed))


def ideal_case(d: int, N: int, seed: int, *, T: int = 128, prompts: int = 4, alpha=12.0, lam=10.0, beta=8.0):
    """An ideal build, its Gram build, prompts, and the model's logits and layer-2 attention."""
    model, g, tokens, logits, a2 = ideal_build(d, N, seed, T=T, prompts=prompts, alpha=alpha, lam=lam, beta=beta)
    return gram_build(model, alpha, lam, beta, g), tokens, logits, a2


def score_calculators(case, calculators: dict) -> dict:
    """R^2, top-1 agreement and layer-2 attention error of each named block set on one case."""
    build, tokens, logits, a2 = case
    row = {}
    for name, keep in calculators.items():
        p = predict_gram(build, tokens, keep)
        fit = agreement(logits, p.logits)
        row.update({f"r2_{name}": fit["r2_centered_logits"], f"top1_{name}": fit["top1_agreement"],
                    f"attn2_error_{name}": attention_error(a2, p.a2)})
    return row


def main(argv=None) -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, nargs="+", default=[256, 512, 1024, 4096])
    parser.add_argument("--N", type=int, nargs="+", default=[16, 65])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/theory/width.json")
    args = parser.parse_args(argv)
    try:
        if any(d < 2 for d in args.d) or any(n < 2 for n in args.N):
            raise UserError("width: d and N must be at least 2")
        start = time.perf_counter()
        selection = ideal_case(*SELECTION_CASE, args.seed, prompts=args.prompts)
        steps = forward_selection(*selection[:3], target=TARGET_R2)
        reduced = [s["block"] for s in steps[1:]]
        fresh = ideal_case(*SELECTION_CASE, args.seed + 1, prompts=args.prompts)
        print(f"reduced correction: forward selection on d={SELECTION_CASE[0]}, N={SELECTION_CASE[1]} (seed {args.seed}); "
              f"R^2 on it and on a fresh build/prompts (seed {args.seed + 1})")
        for i, s in enumerate(steps):
            r2_fresh = score_calculators(fresh, {"x": reduced[:i]})["r2_x"]
            s.update({"block": None if s["block"] is None else block_name(s["block"]), "r2_fresh": r2_fresh,
                      "meaning": BLOCK_MEANING.get(s["block"] and block_name(s["block"]), "idealised (no block)")})
            print(f"  + {s['block'] or '-':>9}  R^2 {s['r2']:.3f} (fresh {r2_fresh:.3f})  {s['meaning']}")
        calculators = {"idealised": (), "reduced": reduced, "full": BLOCKS}
        rows = []
        print(f"{'d':>5} {'N':>3} | {'R2 ideal':>8} {'R2 red':>8} {'R2 full':>8} | {'top1 id':>7} {'top1 red':>8} | "
              f"{'a2 err id':>9} {'a2 err red':>10}")
        for N in args.N:
            for d in args.d:
                t0 = time.perf_counter()
                row = {"d": d, "N": N, "T": 128, "prompts": args.prompts, "seed": args.seed + 1,
                       **score_calculators(ideal_case(d, N, args.seed + 1, prompts=args.prompts), calculators)}
                row["seconds"] = time.perf_counter() - t0
                rows.append(row)
                print(f"{d:>5} {N:>3} | {row['r2_idealised']:8.3f} {row['r2_reduced']:8.3f} {row['r2_full']:8.3f} | "
                      f"{row['top1_idealised']:7.3f} {row['top1_reduced']:8.3f} | {row['attn2_error_idealised']:9.3f} "
                      f"{row['attn2_error_reduced']:10.3f}  [{row['seconds']:.0f}s]", flush=True)
        write_json(args.out, {"reduced_blocks": [block_name(b) for b in reduced], "selection": steps,
                              "selection_case": {"d": SELECTION_CASE[0], "N": SELECTION_CASE[1], "seed": args.seed,
                                                 "target_r2": TARGET_R2},
                              "rows": rows, "settings": vars(args), "wall_seconds": time.perf_counter() - start,
                              **provenance("cpu", "float64")})
        print(f"wrote {args.out}  ({time.perf_counter() - start:.0f}s)")
    except UserError as err:
        exit_with(err)


if __name__ == "__main__":
    main()
