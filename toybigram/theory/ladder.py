"""The scalar calculator's ladder on trained runs: how many numbers buy how much of the in-context theory.

    python -m toybigram.theory.ladder RUN_DIR [RUN_DIR ...] [--seed 0]
    python -m toybigram.theory.ladder --ideal 1024 2048 [--set data=dirichlet --set data.vocab_size=16] [--out outputs/theory]

For each run: the quick analysis of ``python -m toybigram.theory`` (prompt seed ``--seed``; the
ladder's constants fitted on prompt seed + 1), its ladder printed as a table (a row per
calculator, from 0 numbers to every table read from the weights) and written to
<run>/ladder.json. Every run directory is checked before any analysis starts: a missing or
unusable one ends the command with one ``error:`` line and exit code 2, nothing written.

``--ideal D ...``: the same for ideal builds of width D (toybigram.theory.width.ideal_trained_like:
the strengths built in, float64) with the main job's settings and the ``--set`` overrides; written
to <out>/ladder_ideal_N<N>_d<D>.json.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from toybigram.checkpoint import load_run
from toybigram.cli import compose
from toybigram.errors import OneLineParser, UserError, exit_with
from toybigram.runio import provenance, write_json
from toybigram.runtime import torch_threads
from toybigram.theory.compare import analyze
from toybigram.theory.width import ideal_trained_like

LADDER_FILE = "ladder.json"
TARGET_R2 = 0.9  # the width law is asked where the scalar calculator's in-context R^2 reaches this
SHOWN = ("n_parameters", "r2_counterfactual", "top1_contested", "margin_r2", "top1", "r2_centred")


def ladder_record(model, cfg, *, seed: int = 0, threads: int = 1) -> dict:
    """The ladder of one model (quick analysis, scored on prompt seed ``seed``) and what it was measured on."""
    start = time.perf_counter()
    with torch_threads(threads):
        record, _, _ = analyze(model, cfg, quick=True, seed=seed)
    spec = model.spec
    return {"d": spec.d_model, "N": spec.vocab_size, "T": int(cfg.data.seq_len), "seed": int(cfg.seed),
            "data_seed": int(cfg.get("data_seed", cfg.seed)), "source": str(cfg.data.source),
            **{k: record[k] for k in ("ladder", "ladder_terms", "calculator_fit", "fit_on", "scored_on")},
            "wall_seconds": time.perf_counter() - start}


def run_ladder(run_dir, *, seed: int = 0, model=None, cfg=None) -> dict:
    """The ladder of a run directory's model, written to <run>/ladder.json (atomically) and returned."""
    if model is None or cfg is None:
        model, cfg = load_run(run_dir)
    record = {**ladder_record(model, cfg, seed=seed), "run_dir": str(run_dir),
              **provenance("cpu", "float64 (calculator); model " + str(cfg.model.dtype))}
    write_json(Path(run_dir) / LADDER_FILE, record)
    return record


def ideal_config(d: int, overrides=()):
    """The training config of an ideal build: the main job's settings, ``overrides``, width ``d``."""
    try:
        return compose("train", [*overrides, f"model.d_model={d}"])
    except UserError:
        raise
    except Exception as err:  # Hydra/OmegaConf: unknown keys, bad types
        raise UserError(f"set: {' '.join(str(err).split())}") from None


def ideal_ladder(cfg, *, seed: int = 0) -> dict:
    """The ladder of the ideal build of a config (width.ideal_trained_like)."""
    return {**ladder_record(ideal_trained_like(cfg), cfg, seed=seed), "kind": "ideal build",
            **provenance("cpu", "float64")}


def fit_gap_law(d: list[float], gap: list[float], N: int, T: int) -> dict:
    """Two laws for the gap 1 - R^2 against the width d, least squares: ``sqrt`` gap = a + b sqrt((N + T)/d)
    (cross-talk of random directions), ``power`` gap = c d^-p (a line in log-log). Each with the width where
    the gap reaches 1 - TARGET_R2 (inf where the law never gets there: a >= 1 - TARGET_R2, or no decrease)."""
    d, gap = np.asarray(d, dtype=float), np.asarray(gap, dtype=float)
    target = 1 - TARGET_R2
    a, b = np.linalg.lstsq(np.stack([np.ones_like(d), np.sqrt((N + T) / d)], 1), gap, rcond=None)[0]
    width_sqrt = (N + T) / ((target - a) / b) ** 2 if b > 0 and a < target else math.inf
    slope, intercept = np.polyfit(np.log(d), np.log(np.clip(gap, 1e-9, None)), 1) if len(d) > 1 else (0.0, math.log(gap[0]))
    p, c = -slope, math.exp(intercept)
    width_power = (c / target) ** (1 / p) if p > 0 else math.inf
    return {"sqrt": {"a": float(a), "b": float(b), "width_at_target": float(width_sqrt)},
            "power": {"c": c, "p": float(p), "width_at_target": float(width_power)}, "N": N, "T": T, "target_r2": TARGET_R2}


def law_gap(law: dict, kind: str, d) -> np.ndarray:
    """The gap 1 - R^2 that a ``fit_gap_law`` law of ``kind`` (sqrt or power) gives at widths ``d``."""
    d = np.asarray(d, dtype=float)
    if kind == "sqrt":
        return law["sqrt"]["a"] + law["sqrt"]["b"] * np.sqrt((law["N"] + law["T"]) / d)
    return law["power"]["c"] * d ** -law["power"]["p"]


def format_ladder(rows: list[dict]) -> str:
    """A ladder (theory.json ``ladder``) as a markdown table; a scalar rung is named by the term it adds."""
    def cell(value) -> str:
        return "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.3f}"

    lines = ["| calculator | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
    lines += [f"| {row['name']} | " + " | ".join(cell(row[k]) for k in SHOWN) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m toybigram.theory.ladder", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories of python -m toybigram.train")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed scored (the constants are fitted on seed + 1)")
    parser.add_argument("--ideal", type=int, nargs="+", default=[], metavar="D", help="widths of ideal builds to score")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a training setting of the ideal builds")
    parser.add_argument("--out", default="outputs/theory", help="folder of the ideal builds' JSON files")
    args = parser.parse_args(argv)
    try:
        if args.seed < 0 or not (args.run_dirs or args.ideal) or any(d < 2 for d in args.ideal):
            raise UserError("ladder: give run directories or --ideal widths (at least 2), and a --seed of at least 0")
        loaded = [(run, *load_run(run)) for run in args.run_dirs]   # every input checked before any is analysed
        ideal = [ideal_config(d, args.set) for d in args.ideal]
    except UserError as err:
        exit_with(err)
    for run, model, cfg in loaded:
        _show(run, run_ladder(run, seed=args.seed, model=model, cfg=cfg))
    for cfg in ideal:
        record = ideal_ladder(cfg, seed=args.seed)
        path = Path(args.out) / f"ladder_ideal_N{record['N']}_d{record['d']}.json"
        write_json(path, record)
        _show(f"{path} (ideal build)", record)


def _show(where, record: dict) -> None:
    print(f"{where}  (d={record['d']}, N={record['N']}, T={record['T']}, seed {record['seed']}; fitted on prompt seed "
          f"{record['fit_on']['prompt_seed']}, scored on {record['scored_on']['prompt_seed']}; "
          f"{record['wall_seconds']:.0f} s)\n{format_ladder(record['ladder'])}\n", flush=True)


if __name__ == "__main__":
    main()
