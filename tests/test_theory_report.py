"""The theory's report module: the headline lines the jobs print, and the files an analysis leaves."""
from __future__ import annotations

import json

import torch

from toybigram.theory.report import HEADLINE_KEYS, headline, headline_figures, output_paths, write_analysis

CALCULATORS = {name: {"top1": top1, "r2_centred": r2, "r2_counterfactual": cf, "n_parameters": n}
               for name, top1, r2, cf, n in (("bayes_rule", 0.8, 0.5, 0.3, 0), ("scalar", 0.79, 0.67, 0.54, 9),
                                             ("full", 0.9, 0.99, 0.96, 44103), ("full_uniform_layer2", 0.4, 0.505, 0.09, 34630))}


def test_headline_puts_the_calculator_beside_the_bayes_rule_and_the_readout_floor(tmp_path):
    results = {"hijack": {"top1_agreement": 0.94, "r2_centered_logits": 0.99, "threshold_within_one": 1.0}}
    head = headline_figures({"top1_agreement": 0.9, "r2_centered_logits": 0.986}, results, CALCULATORS)
    assert set(head) <= set(HEADLINE_KEYS) and head["readout_floor_r2_centered_logits"] == 0.505
    first, second = headline(head, tmp_path).splitlines()
    assert first == ("theory: top-1 agreement 0.900 (bayes rule 0.800, scalar 0.790 with 9 numbers)  "
                     "centred-logit R^2 0.986 (readout floor 0.505)")
    assert second.startswith("    in-context R^2 (prompt - counterfactual) full 0.960 / scalar 0.540 / bayes rule 0.300  | hijack top-1 0.940")
    assert second.endswith(f"({tmp_path / 'theory.json'})")
    older = {"top1_agreement": 0.9, "r2_centered_logits": 0.98}  # a summary written before the hierarchy existed
    assert headline(older, tmp_path, "theory_x.json") == f"theory: top-1 agreement 0.900  centred-logit R^2 0.980  ({tmp_path / 'theory_x.json'})"


def test_an_analysis_without_hijack_leaves_no_stale_hijack_plot(tmp_path):
    json_path, folder = output_paths(tmp_path, "theory_full_quick_length")
    folder.mkdir()
    (folder / "hijack_margins.png").write_bytes(b"from an earlier analysis")
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert write_analysis(tmp_path, "theory_full_quick_length", {"top1_agreement": 1.0}, {}, [(logits, logits + 0.1)]) == json_path
    assert sorted(p.name for p in folder.iterdir()) == ["logits_scatter.png"]
    assert json.loads(json_path.read_text()) == {"top1_agreement": 1.0}
