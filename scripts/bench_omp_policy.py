"""Time training steps and an evaluation under each OpenMP wait policy (the table in docs/performance.md).

    python scripts/bench_omp_policy.py            # idle machine
    python scripts/bench_omp_policy.py --busy     # with a Python busy loop holding one core

One fresh process per policy, with ``OMP_WAIT_POLICY`` set (or removed, for the runtime's
default) before torch loads its OpenMP runtime; importing toybigram leaves it as given. Each
prints the median of a d=64 training step, a d=128 in-context SGD step and one evaluation on
512 sequences of length 128.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

from toybigram.bench import time_median
from toybigram.validation import validate
from toybigram.cli import compose
from toybigram.evaluation import evaluate
from toybigram.train import TrainingStep, build_run

REPO = Path(__file__).resolve().parents[1]
POLICIES = {"PASSIVE": "PASSIVE", "default": None, "ACTIVE": "ACTIVE"}


def measure() -> str:
    cpu = torch.device("cpu")

    def build(overrides):
        cfg = compose("train", overrides)
        chain, spec = validate(cfg)
        run = build_run(cfg, chain, spec, cpu)
        return run, TrainingStep([run], [cfg.optim], cfg.train, cfg.data.seq_len)

    small = build(["model.d_model=64", "data.seq_len=64", "train.batch_size=32"])[1]
    run, large = build(["model.d_model=128", "data.seq_len=128", "optim=sgd", "train.loss=incontext", "train.eval_batch_size=512"])
    a = time_median(lambda: small(0), cpu, 30, 5)[0]
    b = time_median(lambda: large(0), cpu, 8, 2)[0]
    c = time_median(lambda: evaluate(run.model, run.eval_batch, run.eval_bayes, run.transition, run.fixed_triggers), cpu, 3, 1)[0]
    return f"d64 step {1e3 * a:5.1f} ms   d128 step {1e3 * b:5.1f} ms   eval 512x128 {1e3 * c:5.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", action="store_true", help="keep one core busy with a Python loop meanwhile")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(measure(), flush=True)
        return 0
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        for label, policy in POLICIES.items():
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            env["PYTHONPATH"] = str(REPO)
            out = subprocess.run([sys.executable, __file__, "--measure"], env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"error: the {label} measurement failed:\n{out.stderr[-2000:]}")
            print(f"{'busy' if args.busy else 'idle'} {label:<8} {out.stdout.strip()}", flush=True)
    finally:
        if busy:
            busy.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
