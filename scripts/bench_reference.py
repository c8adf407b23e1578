"""Time toybigram's training loop against Bietti et al.'s public implementation, side by side.

    git clone https://github.com/albietz/transformer-birth /path/to/transformer-birth   # once, by hand
    python scripts/bench_reference.py --reference /path/to/transformer-birth [--repeats 2] [--steps 150]

Both programs train the same configuration (d=128, T=128, batch 64, 2 layers, frozen
embeddings and output, linear feed-forward in layer 2, five fixed triggers with uniform
outputs, in-context loss on targets whose trigger fired before, SGD lr 0.2 with momentum
0.9 and weight decay 1e-4, evaluation on a held-out batch of 512 every 50 steps) in
fresh processes, alternately (reference, ours, reference, ours, ...). The figure is the
training loop's wall time per step between the step-50 and the last evaluation: both
programs log the elapsed time at their evaluations, so the same steps and evaluations
are inside the window and process start-up, worker start-up and the first evaluation
are outside it.

The reference runs unmodified (``ihead_basic_main.py``) with two changes made from the
outside: its hard-coded ``.cuda()`` calls are made no-ops so that it runs on the CPU,
and its character tables (``data/meta.pkl``, which its ``data/prepare.py`` downloads)
are written from toybigram's Shakespeare counts when the checkout has none. Its data
comes from ``--workers`` worker processes (default 2, one per core here). Both programs
start from the caller's environment; toybigram's command then picks its OpenMP wait policy
itself (toybigram.startup), and so does this process, where both models' steps are also
timed side by side. ``--omp-passive`` gives both ``OMP_WAIT_POLICY=PASSIVE``, the fair
setting on a CPU shared with other work (spinning OpenMP threads stall there).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")  # the caller's, before this process picks its own

from toybigram.startup import choose_omp_wait_policy  # noqa: E402

if __name__ == "__main__":  # before torch loads, as toybigram's commands do
    choose_omp_wait_policy()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from toybigram.bench import time_interleaved  # noqa: E402
from toybigram.runtime import apply_threads  # noqa: E402
from toybigram.validation import validate  # noqa: E402
from toybigram.cli import compose  # noqa: E402
from toybigram.errors import UserError, exit_with  # noqa: E402
from toybigram.reference import (CPU_LAUNCHER, REFERENCE_LOG, check_reference, cpu_seconds_of_children,  # noqa: E402
                                 reference_overrides, window_ms_per_step, write_meta)
from toybigram.train import TrainingStep, build_run  # noqa: E402


def shape_overrides(args) -> list[str]:
    """toybigram's settings for the compared configuration (the reference gets the same, toybigram.reference)."""
    return [
        f"model.d_model={args.d_model}", f"data.seq_len={args.seq_len}", f"train.batch_size={args.batch_size}",
        f"data.n_triggers={args.triggers}", "data.triggers=fixed", "model.ffn=linear", "train.loss=incontext",
        "optim=sgd", "optim.lr=0.2", "optim.momentum=0.9", "optim.weight_decay=0.0001", "optim.schedule=constant",
        f"seed={args.seed}", f"threads={args.threads}",
    ]


def run_reference(args, env: dict) -> dict:
    cli = [*reference_overrides(compose("train", shape_overrides(args))), f"eval_delta={args.eval_every}",
           f"num_data_workers={args.workers}", f"max_iters={args.steps + 1}", f"seed={args.seed}"]
    before, tick = cpu_seconds_of_children(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CPU_LAUNCHER.format(threads=args.threads or os.cpu_count()), *cli],
                          cwd=args.reference, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    if proc.returncode != 0:
        raise RuntimeError(f"the reference failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    points = [(int(m[1]), float(m[4])) for line in proc.stderr.splitlines() if (m := REFERENCE_LOG.match(line.strip()))]
    return {"ms_per_step": window_ms_per_step(points, args.eval_every), "process_seconds": wall,
            "cpu_seconds": cpu_seconds_of_children() - before}


def run_ours(args, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"hydra.run.dir={tmp}/run", *shape_overrides(args), f"train.eval_every={args.eval_every}",
            "train.eval_batch_size=512", f"train.steps={args.steps}", "train.ckpt_every=0", "train.theory=false",
            "train.progress=none",
        ]
        before, tick = cpu_seconds_of_children(), time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "toybigram.train", *overrides], cwd=REPO, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - tick
        if proc.returncode != 0:
            raise RuntimeError(f"toybigram failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    points = [(row["step"], row["elapsed_seconds"]) for row in rows]
    return {"ms_per_step": window_ms_per_step(points, args.eval_every), "process_seconds": wall,
            "cpu_seconds": cpu_seconds_of_children() - before}


def model_steps(args) -> dict:
    """Forward, backward and SGD update on one fixed batch, both models in this process, timed in alternation.

    The reference's model is imported from the checkout and built as its main script
    builds it (same configuration as the loops); in-context loss on targets with label >= 2.
    """
    cfg = compose("train", shape_overrides(args))
    apply_threads(cfg.threads)
    chain, spec = validate(cfg)
    ours = build_run(cfg, chain, spec, torch.device("cpu"))
    batch = ours.sampler.sample(args.batch_size, args.seq_len)

    sys.path.insert(0, str(args.reference))
    from ihead_basic_model import ModelArgs, Transformer  # the reference's model, from the checkout

    reference = Transformer(ModelArgs(
        vocab_size=chain.vocab_size, dim=args.d_model, max_length=args.seq_len, final_ffn=True, linear_final_ffn=True,
        freeze_embeddings=True, freeze_output=True,
    ))
    reference_optimizer = torch.optim.SGD([p for p in reference.parameters()], lr=0.2, weight_decay=1e-4, momentum=0.9)
    x, y, labels = batch.inputs, batch.targets, batch.labels

    def reference_step() -> None:
        reference_optimizer.zero_grad()
        pred = reference(x)
        loss = F.cross_entropy(pred[labels >= 2], y[labels >= 2])
        loss.backward()
        reference_optimizer.step()
        loss.item()

    our_training_step = TrainingStep([ours], [cfg.optim], cfg.train, args.seq_len)

    def our_step() -> None:
        our_training_step.update([batch], 0)

    reference_s, ours_s = time_interleaved([reference_step, our_step], torch.device("cpu"), args.model_steps, 3)
    return {"reference_model_step_ms": 1e3 * reference_s, "toybigram_model_step_ms": 1e3 * ours_s,
            "torch_threads": torch.get_num_threads()}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: a bad value ends in one ``error:`` line and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of albietz/transformer-birth")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--triggers", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="the reference's data worker processes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both (0: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--omp-passive", action="store_true", help="run both with OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--model-steps", type=int, default=20,
                        help="also time both models' step alone in this process, this many times each (0: skip)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except UserError as error:
        exit_with(error)
    return args


def check_args(args: argparse.Namespace) -> None:
    check_reference(args.reference)
    if args.model_steps < 0:
        raise UserError(f"--model-steps must be non-negative, got {args.model_steps}")
    if min(args.repeats, args.steps, args.eval_every, args.d_model, args.seq_len, args.batch_size, args.workers) < 1:
        raise UserError("--repeats, --steps, --eval-every, sizes and --workers must be positive")
    if args.steps < 2 * args.eval_every:
        raise UserError(f"--steps must be at least twice --eval-every to have a timing window, got {args.steps}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if write_meta(args.reference):
        print(f"wrote {args.reference / 'data' / 'meta.pkl'} from toybigram's Shakespeare counts")

    reference_env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if USER_OMP_WAIT_POLICY is not None or args.omp_passive:
        reference_env["OMP_WAIT_POLICY"] = "PASSIVE" if args.omp_passive else USER_OMP_WAIT_POLICY
    ours_env = {**reference_env, "PYTHONPATH": str(REPO)}
    results: dict[str, list[dict]] = {"reference": [], "toybigram": []}
    for repeat in range(args.repeats):
        for name, run, env in (("reference", run_reference, reference_env), ("toybigram", run_ours, ours_env)):
            figures = run(args, env)
            results[name].append(figures)
            print(f"repeat {repeat + 1} {name:<10} {figures['ms_per_step']:7.1f} ms/step in the loop  "
                  f"(process {figures['process_seconds']:.1f} s, {figures['cpu_seconds']:.1f} CPU-s)", flush=True)
    ratios = [r["ms_per_step"] / o["ms_per_step"] for r, o in zip(results["reference"], results["toybigram"])]
    steps_alone = model_steps(args) if args.model_steps else None
    if steps_alone:
        print(f"model step alone, in one process: reference {steps_alone['reference_model_step_ms']:.1f} ms, "
              f"toybigram {steps_alone['toybigram_model_step_ms']:.1f} ms ({steps_alone['torch_threads']} threads)")
    summary = {
        "reference_ms_per_step": statistics.median(r["ms_per_step"] for r in results["reference"]),
        "toybigram_ms_per_step": statistics.median(o["ms_per_step"] for o in results["toybigram"]),
        "ratios": ratios,
        "model_step_alone": steps_alone,
        "load_average": list(os.getloadavg()),
    }
    print(f"median     reference {summary['reference_ms_per_step']:.1f} ms/step, toybigram "
          f"{summary['toybigram_ms_per_step']:.1f} ms/step; per-pair speed-up "
          + ", ".join(f"{x:.2f}x" for x in ratios))
    if args.json:
        args.json.write_text(json.dumps({"config": vars(args) | {"reference": str(args.reference), "json": str(args.json)},
                                         "runs": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
