"""Steps to a trained model at the reference's shape: how they depend on the parametrisation and the optimizer.

    python scripts/sensitivity_speed.py                     # the whole grid, a Markdown table (< 20 min at threads=1)
    python scripts/sensitivity_speed.py --only A1 S2 --json sensitivity.json

Every row trains toybigram at d=128, T=128, batch 64, five fixed triggers, linear
feed-forward block, in-context loss (the shape of ``python -m toybigram.bench
--time-to-accuracy --reference``), evaluates the held-out batch every 10 steps and reports
the first step at which in-context accuracy reaches 0.9 and 0.97. A run stops at 0.97 or
after ``--cap`` steps. Step counts do not depend on the machine's load (the seeds fix every
number); the seconds column does, and is printed for orientation only.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toybigram.errors import UserError, exit_with  # noqa: E402
from toybigram.runio import write_json  # noqa: E402
from toybigram.speed import Targets, first_reaching, run_ours, with_quiet_training  # noqa: E402

SHAPE = ["model.d_model=128", "data.seq_len=128", "train.batch_size=64", "data.n_triggers=5", "data.triggers=fixed",
         "model.ffn=linear", "train.loss=incontext"]
SGD = ["optim=sgd", "optim.weight_decay=0.0001", "optim.schedule=constant"]  # the reference's optimizer: lr 0.2, momentum 0.9
BIETTI = ["model.param=bietti", "model.init=random", "model.scale_scores=true"]  # the reference's model
STEPS_400 = ["train.steps=400"]
# (label, what changes, overrides); AdamW rows start from toybigram's defaults (lr 0.01, cosine over train.steps).
GRID = [
    ("A1", "defaults (cosine over the default train.steps)", []),
    ("A2", "cosine over 400 steps", STEPS_400),
    ("A3", "constant lr", ["optim.schedule=constant"]),
    ("A4", "cosine over 400, lr 0.02", [*STEPS_400, "optim.lr=0.02"]),
    ("A5", "cosine over 400, lr 0.03", [*STEPS_400, "optim.lr=0.03"]),
    ("A6", "cosine over 400, lr 0.02, 20 warm-up steps", [*STEPS_400, "optim.lr=0.02", "optim.warmup_steps=20"]),
    ("A7", "cosine over 400, scores / sqrt(d)", [*STEPS_400, "model.scale_scores=true"]),
    ("A8", "cosine over 400, random init", [*STEPS_400, "model.init=random"]),
    ("A9", "cosine over 400, the reference's model (bietti, random init, scores / sqrt(d))", [*STEPS_400, *BIETTI]),
    ("A10", "cosine over 400, batch 128", [*STEPS_400, "train.batch_size=128"]),
    ("A11", "20 warm-up steps (cosine over the default train.steps)", ["optim.warmup_steps=20"]),
    ("A12", "lr 0.02, 20 warm-up steps (cosine over the default train.steps)", ["optim.lr=0.02", "optim.warmup_steps=20"]),
    ("A13", "lr 0.03, 30 warm-up steps (cosine over the default train.steps)", ["optim.lr=0.03", "optim.warmup_steps=30"]),
    ("S1", "toybigram's model", SGD),
    ("S2", "the reference's model", [*SGD, *BIETTI]),
    ("S3", "the reference's model, zero init", [*SGD, *BIETTI, "model.init=zero"]),
    ("S4", "the reference's model, raw scores (no / sqrt(d))", [*SGD, *BIETTI, "model.scale_scores=false"]),
    ("S5", "the reference's model, lr 0.4", [*SGD, *BIETTI, "optim.lr=0.4"]),
    ("S6", "the reference's model, cosine over 400", [*SGD, *BIETTI, *STEPS_400, "optim.schedule=cosine"]),
]


def run_row(overrides: list[str], cap: int, threads: int) -> dict:
    """Steps to 0.9 and 0.97 (None: not within ``cap``), the last accuracy and the process's seconds."""
    targets = Targets(0.97)
    settings = with_quiet_training([*SHAPE, *overrides, f"threads={threads}", "train.eval_every=10"])
    run = run_ours(settings, lambda points: targets.met(points) or bool(points) and points[-1]["step"] >= cap,
                   dict(os.environ))
    points = run["points"]
    reached = {t: first_reaching(points, "acc_incontext", t, above=True) for t in (0.9, 0.97)}
    return {"overrides": settings, "steps_to_0.9": reached[0.9] and reached[0.9]["step"],
            "steps_to_0.97": reached[0.97] and reached[0.97]["step"],
            "last_step": points[-1]["step"], "last_accuracy": points[-1]["acc_incontext"],
            "seconds": run["process_seconds"]}


TABLE_HEAD = ("| row | optimizer | setting | steps to 0.9 | steps to 0.97 | accuracy at the last step | s |\n"
              "|---|---|---|---|---|---|---|")


def table_line(label: str, what: str, row: dict, cap: int) -> str:
    optimizer = "SGD, lr 0.2 unless stated" if label.startswith("S") else "AdamW, the default lr unless stated"
    cells = [str(row[key]) if row[key] is not None else f"> {cap}" for key in ("steps_to_0.9", "steps_to_0.97")]
    return (f"| {label} | {optimizer} | {what} | " + " | ".join(cells)
            + f" | {row['last_accuracy']:.3f} (step {row['last_step']}) | {row['seconds']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ROW", help="run these rows only (labels A1.., S1..)")
    parser.add_argument("--cap", type=int, default=400, help="stop a run after this many steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training process")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    labels = {label for label, _, _ in GRID}
    try:
        unknown = sorted(set(args.only or ()) - labels)
        if unknown:
            raise UserError(f"--only: no rows {', '.join(unknown)} (rows: {', '.join(label for label, _, _ in GRID)})")
        if args.cap < 10 or args.threads < 0:
            raise UserError(f"--cap must be at least 10 and --threads non-negative, got {args.cap}, {args.threads}")
    except UserError as error:
        exit_with(error)
    rows = []
    print(TABLE_HEAD, flush=True)
    for label, what, overrides in GRID:  # in the grid's order; a line as soon as its run ends
        if args.only is None or label in args.only:
            rows.append((label, what, run_row(overrides, args.cap, args.threads)))
            print(table_line(*rows[-1], args.cap), flush=True)
    print(f"\nd=128, T=128, batch 64 unless stated; held-out batch of 256, evaluated every 10 steps; load average "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores (seconds only).")
    if args.json:
        write_json(args.json, {"cap": args.cap, "rows": [{"row": label, "setting": what, **row} for label, what, row in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
