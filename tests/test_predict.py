"""Predictions written before the model is measured (python -m toybigram.theory.predict) and their score
(python -m toybigram.theory.score): the prompts regenerate exactly, and bad input is refused in one line."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY
from toybigram.cli import compose
from toybigram.factory import make_chain
from toybigram.runio import read_json, write_json
from toybigram.theory.predict import compete_prompts, fingerprint, last_pair_output
from toybigram.theory.prompts import count_pairs, hijack
from toybigram.theory.score import threshold_metrics
from toybigram.train import train

RPE = (*TINY, "data.triggers=random", "model.pos=rpe", "train.steps=20", "threads=1")
PREDICT = ("lengths=8,16,32", "max_count=3", "fillers=2", "threads=1")


def command(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"toybigram.theory.{module}", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run a (seed 0) gives the law; its predictions are written before run b (seed 1), the one scored, exists."""
    root = tmp_path_factory.mktemp("predict")
    train(compose("train", [*RPE, "seed=0"]), root / "a")
    predictions = root / "predictions.json"
    code, _, err = finish(command("predict", f"from_run={root / 'a'}", f"out={predictions}", *PREDICT))
    assert code == 0, err
    train(compose("train", [*RPE, "seed=1"]), root / "b")
    train(compose("train", [*TINY, "model.pos=ape", "model.ape_extension=error", "train.steps=2", "threads=1"]), root / "ape")
    return {"root": root, "a": root / "a", "b": root / "b", "ape": root / "ape", "predictions": predictions}


def test_predictions_record_their_source_and_prompts_that_regenerate_exactly(runs):
    record = read_json(runs["predictions"])
    assert record["source"]["run_dir"] == str(runs["a"].resolve()) and record["source"]["seed"] == 0
    assert record["lengths"] == [8, 16, 32] and record["nontrigger"].startswith("not applicable")
    chain = make_chain(compose("train", list(RPE)).data)
    for spec in record["hijack_sets"]:
        prompts = hijack(chain, spec["q"], spec["o"], spec["c"], spec["T"], spec["batch"], torch.Generator().manual_seed(spec["seed"]))
        assert fingerprint(prompts) == spec["fingerprint"]
        assert (count_pairs(prompts, spec["q"], spec["o"]) == spec["c"]).all() and (prompts[:, -1] == spec["q"]).all()
        assert ((prompts[:, :-1] == spec["q"]).sum(1) == spec["c"]).all()  # q nowhere else
    for spec in record["compete_sets"]:
        prompts = compete_prompts(chain, spec)
        assert fingerprint(prompts) == spec["fingerprint"] and len(prompts) == spec["kept"] > 0
        assert (last_pair_output(prompts) == spec["o2"]).all()  # the minority's pair comes last
        assert (count_pairs(prompts, spec["q"], spec["o1"]) == spec["c1"]).all()
    assert {r["c_star_bayes"] for r in record["thresholds"]} == {1.0}


def test_score_measures_the_other_run_against_the_law_and_the_bayes_rule(runs, tmp_path):
    out = tmp_path / "score.json"
    code, _, err = finish(command("score", str(runs["predictions"]), f"run_dir={runs['b']}", f"out={out}"))
    assert code == 0, err
    score = read_json(out)
    assert score["run_dir"] == str(runs["b"].resolve()) and score["source"]["seed"] == 0
    assert set(score["threshold_metrics"]["hijack"]) == {"law", "closed_form", "corrected_closed_form", "bayes"}
    assert 0 <= score["threshold_metrics"]["hijack"]["law"]["within_one"] <= 1
    assert score["compete"]["overall"]["n"] == sum(s["kept"] for s in read_json(runs["predictions"])["compete_sets"])
    assert [r["T"] for r in score["aggregate"]] == [8, 16, 32]


def test_threshold_metrics_on_hand_made_thresholds():
    """within one count, and |log(1+p) - log(1+m)|, with thresholds beyond the grid (inf) counted as cap + 1."""
    measured = [2, 6, math.inf, 3]
    predicted = {"law": [1, 3, math.inf, 8], "closed_form": [2, 6, 9, 3], "corrected_closed_form": [3, 5, 7, 4],
                 "bayes": [1, 1, 1, 1]}
    rows = [{"c_star_measured": m, **{f"c_star_{name}": c[i] for name, c in predicted.items()}} for i, m in enumerate(measured)]
    metrics = threshold_metrics(rows, cap=8)
    assert metrics["law"]["within_one"] == 0.5 and metrics["law"]["n"] == 4  # (1, 2) and (9, 9) within one
    assert metrics["law"]["mae_log"] == pytest.approx((math.log(3 / 2) + math.log(7 / 4) + 0 + math.log(9 / 4)) / 4)
    assert metrics["closed_form"] == {"within_one": 1.0, "mae_log": 0.0, "n": 4}  # 9 is the capped inf
    assert metrics["corrected_closed_form"]["within_one"] == 0.75  # 7 against the capped 9 is two counts off
    assert metrics["bayes"]["within_one"] == 0.25


def tampered(runs) -> Path:
    """A copy of the predictions whose first prompt set no longer matches its fingerprint."""
    record = read_json(runs["predictions"])
    record["hijack_sets"][0]["fingerprint"] = "0" * 16
    path = runs["root"] / "tampered" / "predictions.json"
    path.parent.mkdir(exist_ok=True)
    write_json(path, record)
    return path


REFUSALS = {  # name -> (module, arguments from the runs, what the one error line names)
    "score-missing-predictions": ("score", lambda r: [str(r["root"] / "none.json"), f"run_dir={r['b']}"], "predictions: no predictions file"),
    "score-missing-run": ("score", lambda r: [str(r["predictions"]), f"run_dir={r['root'] / 'none'}"], "run_dir: no run directory"),
    "score-source-run": ("score", lambda r: [str(r["predictions"]), f"run_dir={r['a']}"],
                         "is the run the predictions' numbers were read from"),
    "score-changed-prompts": ("score", lambda r: [str(tampered(r)), f"run_dir={r['b']}"], "no longer regenerates"),
    "predict-negative-length": ("predict", lambda r: [f"from_run={r['a']}", f"out={r['root'] / 'x' / 'p.json'}", "lengths=16,-8"],
                                "lengths: every prompt length must be at least 4"),
    "predict-beyond-table": ("predict", lambda r: [f"from_run={r['ape']}", f"out={r['root'] / 'x' / 'p.json'}", "lengths=16,64"],
                             "lengths: 64 exceeds the 32 positions"),
}


def test_bad_input_is_refused_in_one_line_and_nothing_is_written(runs):
    (runs["root"] / "x").mkdir(exist_ok=True)
    arguments = {name: (module, args(runs)) for name, (module, args, _) in REFUSALS.items()}
    before = sorted(p.name for p in runs["root"].rglob("*"))
    launched = {name: command(module, *args) for name, (module, args) in arguments.items()}
    for name, process in launched.items():
        code, out, err = finish(process)
        assert code == 2 and out == "", (name, code, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and REFUSALS[name][2] in err, (name, err)
    after = sorted(p.name for p in runs["root"].rglob("*"))
    assert after == before and not list(runs["root"].rglob("prediction_score.json")) and not (runs["root"] / "x" / "p.json").exists()


def test_a_finished_output_is_kept_unless_overwrite(runs, tmp_path):
    out = tmp_path / "p.json"
    out.write_text(json.dumps({"kept": True}))
    code, _, err = finish(command("predict", f"from_run={runs['a']}", f"out={out}", *PREDICT))
    assert code == 2 and "overwrite=true" in err and json.loads(out.read_text()) == {"kept": True}
