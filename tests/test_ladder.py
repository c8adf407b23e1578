"""The scalar calculator's ladder of named terms: each term's constants, nesting, theory.json, the command, the width law."""
import math
import subprocess
import sys

import pytest
import torch

from conftest import TINY
from toybigram.cli import compose
from toybigram.data import dirichlet_chain
from toybigram.model import ModelSpec
from toybigram.runtime import torch_threads
from toybigram.theory.baselines import (LADDER, TERMS, fit_variant, key_cells, log_rows, stationary_log,
                                        variant_from_cells)
from toybigram.theory.compare import analyze
from toybigram.theory.ideal import ideal_model
from toybigram.theory.ladder import fit_gap_law, law_gap

N = 6
# values a term's constants take in the synthetic targets: attention scores, the dilution exponent, writes
TRUTH = {"lambda_induction_trigger": 3.0, "lambda_induction_other": 1.0, "lambda_query_copy": 0.5, "lambda_self": 1.0,
         "lambda_self_nontrigger": -0.5, "kappa_dilution": 0.7, "beta_induction": 6.0, "gamma_induction": 0.5,
         "beta_induction_nontrigger": 2.5, "gamma_induction_nontrigger": -0.4, "beta_other": 2.0, "gamma_other": 0.3,
         "beta_self": -1.5, "gamma_self": 0.8, "sigma_query": 0.8, "sigma_nontrigger": 1.3, "delta_shared": 1.5}


@pytest.fixture(scope="module")
def prompts():
    """Random prompts with triggers 0, 1: their KeyCells at every position, and the shared vector."""
    tokens = torch.randint(N, (80, 12), generator=torch.Generator().manual_seed(0))
    transition = torch.as_tensor(dirichlet_chain(N, 0.5, 1).transition)
    cells = key_cells(tokens, log_rows(transition), tokens < 2)
    return cells.select(torch.ones(tokens.shape, dtype=torch.bool)), stationary_log(transition)


@pytest.mark.parametrize("rung", range(len(LADDER)))
def test_each_term_recovers_its_constants_on_a_target_built_from_it(prompts, rung):
    cells, shared = prompts
    variant = LADDER[rung]
    truth = torch.tensor([TRUTH[name] for name in variant.names], dtype=torch.float64)
    logits = variant_from_cells(variant, truth, cells, shared)
    with torch_threads(1):
        fitted = dict(zip(variant.names, fit_variant(variant, cells, logits, shared).tolist()))
    for name in TERMS[rung].constants:   # the term this rung adds
        assert fitted[name] == pytest.approx(TRUTH[name], abs=0.02), (name, fitted)


def test_the_ladder_is_nested(prompts):
    """Each rung adds constants, and the rung below is the rung above with its new constants at their tie or default."""
    cells, shared = prompts
    counts = [len(v.names) for v in LADDER]
    assert counts == sorted(set(counts)) and counts[-1] <= 20
    for below, above in zip(LADDER, LADDER[1:]):
        assert set(below.names) < set(above.names)
        theta = torch.tensor([TRUTH[n] for n in below.names], dtype=torch.float64)
        values = below.expand(theta)
        carried = torch.stack([values[n] for n in above.names]).double()
        assert torch.allclose(variant_from_cells(above, carried, cells, shared), variant_from_cells(below, theta, cells, shared))


def test_the_ladder_is_in_theory_json():
    cfg = compose("train", [*TINY, "data.vocab_size=8"])
    model = ideal_model(ModelSpec(vocab_size=8, d_model=64, max_len=32, dtype="float64"), alpha=8.0, lam=5.0, beta=4.0)
    with torch_threads(1):
        record, _, _ = analyze(model, cfg, quick=True, families=("hijack", "dilution"))
    names = [row["name"] for row in record["ladder"]]
    assert names[:2] == ["bayes_rule", "bigram_only"] and names[-1] == "full"
    assert [v.name for v in LADDER] == [n for n in names if n in {v.name for v in LADDER}]
    counts = [row["n_parameters"] for row in record["ladder"]]
    assert counts == sorted(counts) and counts[0] == 0
    assert record["calculators"]["scalar"]["n_parameters"] == len(LADDER[-1].names)
    assert record["calculators"]["scalar"]["r2_counterfactual"] == record["ladder"][names.index(LADDER[-1].name)]["r2_counterfactual"]
    assert set(record["calculator_fit"]["ladder"]) == {v.name for v in LADDER} and set(record["ladder_terms"]) == {t.name for t in TERMS}
    for row in record["ladder"]:
        assert {"terms", "n_parameters", "r2_counterfactual", "top1_contested", "margin_r2", "top1", "r2_centred"} <= set(row)


def test_ladder_command_refuses_a_missing_run_dir_and_writes_nothing(tmp_path):
    missing = tmp_path / "no_run"
    done = subprocess.run([sys.executable, "-m", "toybigram.theory.ladder", str(missing)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: run_dir:") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []


def test_width_law_recovers_its_constants_and_says_when_it_never_reaches_the_target():
    d = [128, 256, 512, 1024]
    law = {"sqrt": {"a": 0.02, "b": 0.5}, "N": 65, "T": 32}
    fitted = fit_gap_law(d, law_gap(law, "sqrt", d).tolist(), 65, 32)
    assert fitted["sqrt"]["a"] == pytest.approx(0.02) and fitted["sqrt"]["b"] == pytest.approx(0.5)
    assert 1 - fitted["sqrt"]["a"] - fitted["sqrt"]["b"] * math.sqrt(97 / fitted["sqrt"]["width_at_target"]) == pytest.approx(0.9)
    floor = fit_gap_law(d, [0.5, 0.45, 0.42, 0.4], 65, 32)
    assert floor["sqrt"]["width_at_target"] == math.inf
