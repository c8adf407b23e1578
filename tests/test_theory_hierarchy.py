"""The calculator hierarchy: the Bayes rule, the scalar fit, the metrics, the readout floor, theory.json."""
import subprocess
import sys

import pytest
import torch

from conftest import TINY
from toybigram.cli import compose
from toybigram.config import register_configs
from toybigram.data import dirichlet_chain
from toybigram.model import ModelSpec
from toybigram.runio import write_json
from toybigram.runtime import torch_threads
from toybigram.theory import calculator as C
from toybigram.theory.baselines import (SCALAR_NAMES, bayes_probabilities, fit_scalar, key_cells, log_rows, make_process,
                                        scalar_logits)
from toybigram.theory.compare import analyze
from toybigram.theory.hierarchy import CALCULATORS, Scores, metrics, unuse_layer2
from toybigram.theory.ideal import ideal_model, log_bigram
from toybigram.theory.prompts import count_pairs, counterfactual, hijack
from toybigram.theory.strengths import read_strengths

N = 6


def test_bayes_rule_copies_a_fired_trigger_and_otherwise_follows_the_process():
    chain = dirichlet_chain(N, 0.5, 0)
    process = make_process(chain.transition, [0], outputs="uniform")
    tokens = torch.tensor([[3, 0, 4, 2, 0, 5, 0]])
    p = bayes_probabilities(process, tokens)[0]
    pi = torch.as_tensor(chain.transition)
    assert torch.allclose(p[1], torch.full((N,), 1 / N, dtype=torch.float64))   # trigger, not fired yet: its outputs
    assert torch.equal(p[4], torch.eye(N, dtype=torch.float64)[4])               # fired once, followed by 4
    assert torch.allclose(p[6], (torch.eye(N, dtype=torch.float64)[4] + torch.eye(N, dtype=torch.float64)[5]) / 2)
    assert torch.allclose(p[3], pi[2].double()) and torch.allclose(p[0], pi[3].double())  # non-triggers: the chain
    excluding = make_process(chain.transition, [0], exclude_trigger_output=True)
    assert bayes_probabilities(excluding, tokens)[0, 1, 0] == 0


def test_scalar_fit_recovers_the_numbers_of_a_synthetic_target():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(N, (100, 12), generator=gen)
    table = log_rows(torch.as_tensor(dirichlet_chain(N, 0.5, 1).transition))
    is_trigger = tokens < 2
    truth = torch.tensor([3.0, -1.0, 0.5, 1.0, 6.0, 0.5, 2.0, 0.3, 0.8], dtype=torch.float64)
    logits = scalar_logits(truth, tokens, table, is_trigger).flatten(0, 1)
    cells = key_cells(tokens, table, is_trigger)
    with torch_threads(1):
        fitted = fit_scalar(cells.select(torch.ones(tokens.shape, dtype=torch.bool)), logits)
    assert len(fitted) == len(SCALAR_NAMES)
    assert torch.allclose(fitted, truth, atol=0.02), fitted


def hand_made(predicted, predicted_cf) -> Scores:
    model = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0], [1.0, 1.2, -2.0]], dtype=torch.float64)
    model_cf = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    pick = lambda x: x(model, model_cf)  # noqa: E731
    return Scores("hijack", model, model_cf, {"c": pick(predicted)}, {"c": pick(predicted_cf)},
                  target=torch.tensor([0, 1, 1]), rival=torch.tensor([2, 2, 0]), contested=torch.tensor([True, False, True]))


def test_metrics_score_one_for_a_perfect_predictor_and_zero_for_a_constant_one():
    perfect = metrics([hand_made(lambda m, cf: m, lambda m, cf: cf)], "c")
    assert {k: perfect[k] for k in ("top1", "r2_centred", "r2_counterfactual", "margin_sign_agreement", "margin_r2",
                                    "top1_contested", "top1_near_tie")} == pytest.approx(dict.fromkeys(
        ("top1", "r2_centred", "r2_counterfactual", "margin_sign_agreement", "margin_r2", "top1_contested",
         "top1_near_tie"), 1.0))
    assert perfect["rows_contested"] == 2 and perfect["rows_near_tie"] == 1
    constant = metrics([hand_made(lambda m, cf: torch.full_like(m, 5.0), lambda m, cf: torch.full_like(cf, -1.0))], "c")
    assert constant["r2_centred"] == pytest.approx(0) and constant["r2_counterfactual"] == pytest.approx(0)
    assert constant["margin_r2"] == pytest.approx(0) and constant["margin_sign_agreement"] == 0  # margins all positive


def test_counterfactual_removes_only_the_pairs():
    chain = dirichlet_chain(N, 0.5, 0)
    prompts = hijack(chain, 2, 4, 3, 16, 20, torch.Generator().manual_seed(1))
    other = counterfactual(chain, prompts, 2, torch.Generator().manual_seed(2))
    assert (other[:, -1] == 2).all() and ((other[:, :-1] == 2).sum(1) == 0).all()
    changed = other != prompts
    paired = torch.zeros_like(changed)
    paired[:, :-1] = prompts[:, :-1] == 2
    paired[:, 1:] |= paired[:, :-1].clone()
    paired[:, -1] = False
    assert not (changed & ~paired).any() and (count_pairs(prompts, 2, 4) == 3).all()


def test_readout_floor_attends_uniformly():
    model = ideal_model(ModelSpec(vocab_size=N, d_model=32, max_len=12, dtype="float64"), alpha=6.0, lam=4.0, beta=3.0,
                        g=log_bigram(dirichlet_chain(N, 0.5, 0).transition))
    tokens = torch.randint(N, (3, 12), generator=torch.Generator().manual_seed(3))
    full = read_strengths(model, 12, "full")
    floor = C.predict(unuse_layer2(full), tokens)
    uniform = torch.ones(12, 12, dtype=torch.float64).tril()
    assert torch.allclose(floor.a2, (uniform / uniform.sum(1, keepdim=True)).expand(3, 12, 12))
    assert not torch.allclose(C.predict(full, tokens).a2, floor.a2)


def test_theory_record_has_the_hierarchy_fitted_on_other_prompts(tmp_path):
    register_configs()
    cfg = compose("train", [*TINY, "data.vocab_size=8"])
    model = ideal_model(ModelSpec(vocab_size=8, d_model=64, max_len=32, dtype="float64"), alpha=8.0, lam=5.0, beta=4.0)
    with torch_threads(1):
        record, _, _ = analyze(model, cfg, quick=True, families=("length", "hijack", "dilution"))
    assert set(record["calculators"]) == set(CALCULATORS)
    assert record["calculators"]["bayes_rule"]["n_parameters"] == 0
    assert record["calculators"]["scalar"]["n_parameters"] == len(record["calculator_fit"]["scalar"])
    assert record["calculators"]["full"]["top1"] == pytest.approx(record["overall"]["top1_agreement"])
    assert {"length", "hijack", "hijack_non_trigger", "dilution"} <= set(record["calculators_by_family"])
    assert record["fit_on"]["prompt_seed"] != record["scored_on"]["prompt_seed"]
    for row in record["calculators"].values():
        assert {"n_parameters", "parameters_from", "top1", "r2_centred", "r2_counterfactual", "margin_sign_agreement",
                "margin_r2", "top1_contested", "top1_near_tie"} <= set(row)
    write_json(tmp_path / "theory.json", record)
    shown = subprocess.run([sys.executable, "-m", "toybigram.theory.hierarchy", str(tmp_path / "theory.json")],
                           capture_output=True, text=True, timeout=120)
    scalar_row = f"| scalar | {record['calculators']['scalar']['n_parameters']:,} |"
    assert shown.returncode == 0 and scalar_row in shown.stdout and "hijack_non_trigger" in shown.stdout
    refused = subprocess.run([sys.executable, "-m", "toybigram.theory.hierarchy", str(tmp_path / "none.json")],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("error: theory_json:") and refused.stderr.count("\n") == 1
