"""``python -m toybigram.repetition.toy_loops RUN_DIR``: what makes the toy model loop.

The toy model trained with ``model.ffn=relu`` loops almost at once under greedy
decoding, and switching its ReLU neurons off changes nothing. This tool asks which
component the loops come from. It samples prefixes from the model (as the study does),
then continues them greedily with one component removed at every position:

- ``attn{i}``: the output of layer i's attention set to zero (``blocks.{i-1}.hook_attn_out``);
  layer 1 is the previous-token head, the last layer the induction head;
- ``ffn``: the feed-forward output set to zero (the stored bigram gone);
- ``neurons``: every ReLU neuron set to zero (the same, through the neurons).

For each it reports how many continuations loop, their period and how soon the loop
starts, and how often each greedy token is the stored bigram's argmax after the
previous token or a copy of what followed the previous token's last earlier occurrence.
A first-order greedy map (next token a function of the current one) must cycle within
N steps; the question is whether removing a component breaks that.
Writes ``toy_loops.json`` into RUN_DIR and prints a table.
"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from toybigram import runio
from toybigram.factory import make_chain
from toybigram.runtime import apply_threads
from toybigram.errors import OneLineParser, UserError, exit_with
from toybigram.hooks import block_hook
from toybigram.repetition.detector import find_loop
from toybigram.repetition.generation import decode_batch, generate_texts
from toybigram.repetition.models import ToySubject, load_toy, resolve_dtype

RESULT_FILE = "toy_loops.json"


def zero(activation, hook):
    return torch.zeros_like(activation)


def ablations(subject: ToySubject) -> dict[str, list]:
    """Hook lists that remove one component each (``none``: the model as trained)."""
    last = subject.n_layers - 1
    out = {"none": []}
    out.update({f"attn{i + 1}": [(block_hook(i, "hook_attn_out"), zero)] for i in range(subject.n_layers)})
    out["ffn"] = [(block_hook(last, "hook_mlp_out"), zero)]
    out["neurons"] = [(block_hook(last, "mlp.hook_post"), zero)]
    return out


def bigram_cycles(transition: np.ndarray) -> list[int]:
    """Period of the cycle that greedy decoding of the bigram alone (next = argmax row) falls into, from each start."""
    step = transition.argmax(1)
    periods = []
    for start in range(len(step)):
        seen, token = {}, start
        while token not in seen:
            seen[token] = len(seen)
            token = int(step[token])
        periods.append(len(seen) - seen[token])
    return periods


def sources(texts: list[list[int]], prefix: int, bigram_argmax: np.ndarray) -> dict:
    """Share of continuation tokens equal to the bigram argmax after the previous token, and to the in-context copy."""
    bigram = copy = with_copy = total = 0
    for ids in texts:
        last_next: dict[int, int] = {}
        for t in range(1, len(ids)):
            previous = ids[t - 1]
            if t >= 2:
                last_next[ids[t - 2]] = previous  # the pairs seen before position t - 1
            if t >= prefix:
                total += 1
                bigram += ids[t] == int(bigram_argmax[previous])
                if previous in last_next:
                    with_copy += 1
                    copy += ids[t] == last_next[previous]
    return {"bigram_argmax": bigram / max(total, 1), "copy": copy / max(with_copy, 1), "copy_available": with_copy / max(total, 1)}


def loop_stats(continuations: list[list[int]], det) -> dict:
    loops = [find_loop(c, det.ngram, det.window, det.repeats) for c in continuations]
    found = [loop for loop in loops if loop is not None]
    periods = np.array([loop.period for loop in found]) if found else np.array([np.nan])
    onsets = np.array([loop.first for loop in found]) if found else np.array([np.nan])
    return {
        "n": len(continuations), "looping": len(found) / len(continuations),
        "period_median": float(np.median(periods)), "period_max": float(np.max(periods)),
        "period_le_3": float(np.mean(periods <= 3)) if found else 0.0,
        "loop_start_median": float(np.median(onsets)),
    }


@torch.no_grad()
def study(subject: ToySubject, n_prompts: int, prefix: int, n_new: int, seed: int, batch_size: int = 64) -> dict:
    det = SimpleNamespace(ngram=10, window=100, repeats=3)
    cfg = SimpleNamespace(seed=seed, prefix_len=prefix, greedy_len=0, temperature=1.0)
    prompts = []
    for start in range(0, n_prompts, batch_size):
        prompts += generate_texts(subject, list(range(start, min(start + batch_size, n_prompts))), cfg)
    argmax = make_chain(subject.train_cfg.data).transition.argmax(1)
    table = {}
    for name, hooks in ablations(subject).items():
        with subject.model.hooks(hooks) if hooks else nullcontext():
            continuations = []
            for start in range(0, n_prompts, batch_size):
                continuations += decode_batch(subject, prompts[start : start + batch_size], n_new)
        texts = [p + c for p, c in zip(prompts, continuations)]
        table[name] = {**loop_stats(continuations, det), **sources(texts, len(prompts[0]), argmax)}
    periods = bigram_cycles(make_chain(subject.train_cfg.data).transition)
    return {
        "subject": subject.name, "n_prompts": n_prompts, "prefix_tokens": len(prompts[0]), "new_tokens": n_new,
        "detector": vars(det), "ablations": table,
        "bigram_argmax_cycles": {"periods": sorted(set(periods)), "median": float(np.median(periods)), "max": int(max(periods))},
    }


def print_table(result: dict) -> None:
    print(f"{result['subject']}: {result['n_prompts']} sampled prefixes of {result['prefix_tokens']} tokens, "
          f"{result['new_tokens']} greedy tokens under each ablation")
    print(f"  {'removed':<9} {'looping':>7} {'period':>7} {'<=3':>5} {'starts':>6} {'=bigram':>8} {'=copy':>6}")
    for name, r in result["ablations"].items():
        print(f"  {name:<9} {r['looping']:7.2f} {r['period_median']:7.1f} {r['period_le_3']:5.2f} "
              f"{r['loop_start_median']:6.1f} {r['bigram_argmax']:8.2f} {r['copy']:6.2f}")
    cycles = result["bigram_argmax_cycles"]
    print(f"  the bigram's own argmax map cycles with periods {cycles['periods']} (median {cycles['median']:.0f})")


def main(argv=None) -> None:
    parser = OneLineParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("run_dir", help="a toybigram training run trained with model.ffn=relu")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prefix", type=int, default=60, help="sampled tokens before the greedy continuation")
    parser.add_argument("--new", type=int, default=150, help="greedy tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    try:
        for name in ("prompts", "prefix", "new"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name}: must be at least 1, got {getattr(args, name)}")
        if args.threads < 0:
            raise UserError(f"--threads: must be non-negative, got {args.threads}")
        apply_threads(args.threads)
        subject = load_toy(Path(args.run_dir).resolve(), torch.device("cpu"), resolve_dtype("float32"))
        result = study(subject, args.prompts, args.prefix, args.new, args.seed)
    except UserError as err:
        exit_with(err)
    runio.write_json(Path(args.run_dir) / RESULT_FILE, result)
    print_table(result)


if __name__ == "__main__":
    main()
