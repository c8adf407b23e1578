"""python -m toybigram.theory.score <predictions.json> run_dir=<run> [out=... overwrite=false threads=1]

Scores predictions written by ``python -m toybigram.theory.predict`` against a trained model:
regenerates every recorded prompt set (refusing if its fingerprint differs), runs the model on
it and writes ``prediction_score.json`` (beside the predictions unless ``out`` is given):

- per (q, o, b*) pair and length, the measured threshold c* (the first count from which the
  model's mean o - b* margin stays positive) against the law's, the closed form's and the Bayes
  rule's (c* = 1 for a trigger, never for a non-trigger); for each predictor the share of
  thresholds within one count and the mean absolute error in log(1 + c*) (thresholds beyond the
  grid count as max_count + 1);
- per length, the count from which the share of prompts the model wins stays >= 1/2 against the
  law's; compete prompts: how often the law, and the Bayes rule (the majority), name the output
  the model puts higher.

Refused before anything is written: a missing or foreign predictions file, a missing run
directory, the very run the predictions' numbers were read from, a run of other data or another
positional encoding, and an existing output without ``overwrite=true``.
"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

import json
import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from toybigram.errors import UserError, require
from toybigram.factory import make_chain
from toybigram.runio import write_json
from toybigram.theory.calculator import first_crossing
from toybigram.theory.predict import (KIND, check_output, compete_prompts, fingerprint, load_trained, run_command,
                                      share_threshold)
from toybigram.theory.prompts import hijack

SCORE_FILE = "prediction_score.json"
SETTINGS = {"predictions": "", "run_dir": "", "out": "", "threads": 1, "overwrite": False}
PREDICTORS = ("law", "closed_form", "corrected_closed_form", "bayes")
DATA_KEYS = ("source", "vocab_size", "dirichlet_alpha", "chain_seed", "text_path", "triggers", "n_triggers", "seq_len",
             "outputs", "exclude_trigger_output")


def read_predictions(path: Path) -> dict:
    """The predictions file, or a UserError saying why it cannot be scored."""
    if not path.is_file():
        raise UserError(f"predictions: no predictions file at {path}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"predictions: {path} is not readable JSON ({err})") from None
    require(isinstance(record, dict) and record.get("kind") == KIND, "predictions",
            f"{path} was not written by python -m toybigram.theory.predict")
    return record


def check_not_source(predictions: dict, run_dir: Path) -> None:
    """The scored run is not the run the law's numbers were read from."""
    source = Path(predictions["source"]["run_dir"])
    require(run_dir.resolve() != source.resolve(), "run_dir",
            f"{run_dir} is the run the predictions' numbers were read from; score another run")


def check_same_data(predictions: dict, cfg) -> None:
    """The scored run was trained on the same data with the same positional encoding."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in DATA_KEYS:
        require(data.get(key) == predictions["data"].get(key), "run_dir",
                f"data.{key}={data.get(key)!r} differs from the predictions' {predictions['data'].get(key)!r}")
    require(str(cfg.model.pos) == predictions["model"]["pos"], "run_dir",
            f"model.pos={cfg.model.pos} differs from the predictions' {predictions['model']['pos']}")


def _regenerated(prompts: torch.Tensor, spec: dict) -> torch.Tensor:
    if fingerprint(prompts) != spec["fingerprint"]:
        raise UserError(f"predictions: the prompt set with seed {spec['seed']} no longer regenerates as recorded "
                        "(the prompt generator or the data changed)")
    return prompts


@torch.no_grad()
def measure(model, chain, predictions: dict) -> dict:
    """The model on every recorded prompt set, by the set's seed: its mean o - b* margin and share of wins
    (hijack sets), and whether it puts the majority output higher, prompt by prompt (compete sets)."""
    hijacks, competes = {}, {}
    for spec in predictions["hijack_sets"]:
        prompts = _regenerated(hijack(chain, spec["q"], spec["o"], spec["c"], spec["T"], spec["batch"],
                                      torch.Generator().manual_seed(spec["seed"])), spec)
        logits = model(prompts)[:, -1].double()
        margin = logits[:, spec["o"]] - logits[:, spec["b"]]
        hijacks[_key(spec)] = {"margin": margin.mean().item(), "share": (margin > 0).double().mean().item()}
    for spec in predictions["compete_sets"]:
        prompts = _regenerated(compete_prompts(chain, spec), spec)
        logits = model(prompts)[:, -1].double()
        competes[_key(spec)] = (logits[:, spec["o1"]] > logits[:, spec["o2"]]).long().tolist()
    return {"hijack": hijacks, "compete": competes}


def _by_pair(predictions: dict, measured: dict, value: str, group) -> dict[tuple, dict[int, list[float]]]:
    """Measured ``value`` of every hijack set, grouped by ``group(set)`` and then by count."""
    out: dict[tuple, dict[int, list[float]]] = {}
    for spec in predictions["hijack_sets"]:
        out.setdefault(group(spec), {}).setdefault(spec["c"], []).append(measured["hijack"][_key(spec)][value])
    return out


def _key(spec: dict) -> str:
    """A prompt set's measurements by its seed, as text (so they read back from JSON the same)."""
    return str(spec["seed"])


def measured_thresholds(predictions: dict, measured: dict) -> list[dict]:
    """Each predicted threshold row with the measured c* beside it."""
    margins = _by_pair(predictions, measured, "margin", lambda s: (s["family"], s["q"], s["o"], s["T"]))
    rows = []
    for row in predictions["thresholds"]:
        by_c = margins[(row["family"], row["q"], row["o"], row["T"])]
        counts = sorted(by_c)
        measured_c = first_crossing(torch.tensor(counts), torch.tensor([by_c[c][0] for c in counts])).item()
        rows.append({**{k: _number(v) for k, v in row.items()}, "c_star_measured": measured_c})
    return rows


def _number(value):
    """A threshold read back from JSON: null was a threshold beyond the grid."""
    return math.inf if value is None else value


def threshold_metrics(rows: list[dict], cap: int) -> dict:
    """Per predictor: share of thresholds within one count of the measured one, and the mean absolute error
    in log(1 + c*), thresholds beyond the grid counted as cap + 1."""
    def capped(c):
        return min(c, cap + 1)

    out = {}
    for name in PREDICTORS:
        pairs = [(capped(r[f"c_star_{name}"]), capped(r["c_star_measured"])) for r in rows]
        if pairs:
            out[name] = {"within_one": float(np.mean([abs(p - m) <= 1 for p, m in pairs])),
                         "mae_log": float(np.mean([abs(math.log1p(p) - math.log1p(m)) for p, m in pairs])), "n": len(pairs)}
    return out


def compete_rows(predictions: dict, measured: dict) -> list[dict]:
    """Per length: how often the law and the Bayes rule (the majority) name the output the model puts higher."""
    by_length: dict[int, list[tuple[int, int]]] = {}
    for spec in predictions["compete_sets"]:
        model = measured["compete"][_key(spec)]
        by_length.setdefault(spec["T"], []).extend(zip(spec["law_majority"], model))
    rows = []
    for T, pairs in sorted(by_length.items()):
        law, model = (np.array(x, dtype=float) for x in zip(*pairs)) if pairs else (np.zeros(0), np.zeros(0))
        rows.append({"T": T, "n": len(pairs), "model_majority_share": float(model.mean()) if pairs else math.nan,
                     "law_majority_share": float(law.mean()) if pairs else math.nan,
                     "law_agreement": float((law == model).mean()) if pairs else math.nan,
                     "bayes_agreement": float(model.mean()) if pairs else math.nan})
    return rows


def aggregate_rows(predictions: dict, measured: dict) -> list[dict]:
    """Per family and length: the count from which the share of prompts won stays >= 1/2, measured and predicted."""
    shares = _by_pair(predictions, measured, "share", lambda s: (s["family"], s["T"]))
    rows = []
    for row in predictions["aggregate"]:
        by_c = shares[(row["family"], row["T"])]
        counts = sorted(by_c)
        rows.append({"family": row["family"], "T": row["T"], "c_star_law": _number(row["c_star"]),
                     "c_star_measured": share_threshold(counts, [float(np.mean(by_c[c])) for c in counts]),
                     "c_star_bayes": 1.0 if row["family"] == "hijack" else math.inf})
    return rows


def compare(predictions: dict, measured: dict) -> dict:
    """The score of predictions against a model's measurements (``measure``)."""
    rows = measured_thresholds(predictions, measured)
    by_family = {f: threshold_metrics([r for r in rows if r["family"] == f], predictions["max_count"])
                 for f in sorted({r["family"] for r in rows})}
    competes = compete_rows(predictions, measured)
    n = sum(r["n"] for r in competes)
    overall = {k: sum(r[k] * r["n"] for r in competes if r["n"]) / n if n else None
               for k in ("law_agreement", "bayes_agreement", "model_majority_share", "law_majority_share")}
    return {"source": predictions["source"], "T_train": predictions["T_train"], "lengths": predictions["lengths"],
            "thresholds": rows, "threshold_metrics": by_family, "aggregate": aggregate_rows(predictions, measured),
            "compete": {"overall": {**overall, "n": n}, "by_length": competes}, "nontrigger": predictions["nontrigger"]}


def score_command(settings) -> Path:
    """Check everything, score, write; the path written."""
    require(bool(settings.predictions), "predictions", "required (the predictions.json to score)")
    require(bool(settings.run_dir), "run_dir", "required (the trained run to score)")
    require(settings.threads >= 0, "threads", f"must be non-negative, got {settings.threads}")
    path = Path(settings.predictions)
    predictions = read_predictions(path)
    run_dir = Path(settings.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run_dir: no run directory at {run_dir}")
    check_not_source(predictions, run_dir)
    out = Path(settings.out) if settings.out else path.parent / SCORE_FILE
    check_output(out, settings.overwrite)
    model, cfg = load_trained(run_dir, "run_dir")
    check_same_data(predictions, cfg)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    record = compare(predictions, measure(model, make_chain(cfg.data), predictions))
    write_json(out, {"run_dir": str(run_dir.resolve()), "predictions": str(path.resolve()), **record})
    return out


def main(argv: list[str] | None = None) -> None:
    run_command(argv, __doc__, SETTINGS, score_command, "prediction score", positional="predictions")


if __name__ == "__main__":
    main()
