"""Prompt families are a registry: a new family is one ``register`` call, and the theory command,
the analysis and the calculator hierarchy pick it up with no other change."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import TINY
from toybigram.cli import compose
from toybigram.config import register_configs
from toybigram.errors import ConfigError
from toybigram.theory.families import FAMILIES, IN_CONTEXT, PromptFamily, chosen, register
from toybigram.theory.hierarchy import CALCULATORS
from toybigram.train import train

# A family defined outside the package: one "q o" pair early in the prompt, registered before the command starts.
WRAPPER = '''
    import runpy

    from toybigram.startup import start_command

    start_command()

    from toybigram.theory.families import DESIGNED, PromptFamily, register
    from toybigram.theory.prompts import designed
    from toybigram.theory.study import designed_rows, pool, run_both


    def single_pair(study, parts):
        """One pair 'q o' for each (q, o, b*), then filler, then q."""
        for q, o, b in study.pairs:
            prompts = designed(study.chain, q, [(o, 1)], study.T, study.n_fill, study.gen)
            model, _, _, calculator = run_both(study.model, study.strengths, prompts, last_only=True)
            study.rows.append(designed_rows("single_pair", prompts, q, o, b, model[:, -1]))
            parts.append((model[:, -1], calculator.logits[:, -1]))
        return {**pool(parts), "pairs": len(study.pairs)}


    register(PromptFamily("single_pair", "one 'q o' pair before the final q", target="the pair's output o",
                          metrics=DESIGNED, run=single_pair))
    runpy.run_module("toybigram.theory", run_name="__main__", alter_sys=True)
'''


def test_the_registry_runs_in_order_and_refuses_unknown_and_repeated_names():
    assert list(FAMILIES)[:4] == ["length", "hijack", "compete", "dilution"]
    assert chosen(["dilution", "length"]) == ["length", "dilution"] and chosen(None) == list(FAMILIES)
    with pytest.raises(ConfigError, match=r"^families: unknown family 'twist' \(choose from length, hijack"):
        chosen(["twist"])
    with pytest.raises(ConfigError, match="^families: choose at least one"):
        chosen([])
    with pytest.raises(ValueError, match="already registered"):
        register(PromptFamily("hijack", "again", target="o", metrics=(), run=lambda study, parts: {}))
    assert FAMILIES["length"].target.startswith("none") and not set(IN_CONTEXT) & set(FAMILIES["length"].metrics)


def test_a_family_registered_outside_the_package_runs_through_the_theory_command(tmp_path):
    register_configs()
    run_dir = tmp_path / "run"
    train(compose("train", [*TINY, "train.steps=20", "threads=1"]), run_dir)
    wrapper = tmp_path / "with_single_pair.py"
    wrapper.write_text(textwrap.dedent(WRAPPER))
    proc = subprocess.run([sys.executable, str(wrapper), f"run_dir={run_dir}", "quick=true", "families=[single_pair,length]",
                           "threads=1", "plots=false"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "theory_full_quick_length-single_pair.json").read_text())
    assert record["settings"]["families"] == ["length", "single_pair"]
    assert record["prompt_families"]["single_pair"]["target"] == "the pair's output o"
    assert record["families"]["single_pair"]["pairs"] > 0 and 0 <= record["families"]["single_pair"]["top1_agreement"] <= 1
    assert record["scored_on"]["overall"] == ["length", "single_pair"]
    for family, declared in record["prompt_families"].items():  # the metrics a family declares are the ones it gets
        table = record["calculators_by_family"][family]
        assert set(table) == set(CALCULATORS)
        for metric in IN_CONTEXT:
            assert (table["full"][metric] is not None) == (metric in declared["metrics"]), (family, metric)
    assert "theory_full_quick_length-single_pair.json" in proc.stdout
