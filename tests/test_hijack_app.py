"""``python -m toybigram.hijack`` through the command line: a trained toy (its hijack threshold against the law
read from its weights), a tiny random Llama (the Hugging Face path), refusals and resume."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toybigram.cli import compose
from toybigram.errors import UserError
from toybigram.hijack.__main__ import precheck
from toybigram.hijack.export import tables as export_tables

ROOT = Path(__file__).resolve().parent.parent
TINY = ["progress=false", "threads=1", "words.n_queries=4", "words.query_pool=8", "words.n_outputs=2", "words.pool_size=12",
        "words.contexts=1", "prompts.lengths=[16,32]", "prompts.counts=[0,1,2,4]", "prompts.prose_lengths=[32]",
        "prompts.subset_queries=2", "prompts.recency_length=32", "prompts.compete_length=24", "heads.repeat_length=8",
        "heads.sequences=2", "heads.attention_length=24", "heads.ablation_length=24"]


def run_cli(*args: str, module: str = "toybigram.hijack") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-1500:]
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-1500:]
    return lines[0]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A toy trained on random triggers with rpe (every token can be a query; any prompt length is fair)."""
    run = tmp_path_factory.mktemp("toy") / "run"
    result = run_cli("data=dirichlet", "data.vocab_size=16", "data.seq_len=32", "data.triggers=random", "data.n_triggers=3",
                     "model.pos=rpe", "model.d_model=64", "train.steps=400", "train.batch_size=64", "train.theory=false",
                     "train.progress=none", "threads=1", f"hydra.run.dir={run}", module="toybigram.train")
    assert result.returncode == 0, result.stderr[-1500:]
    return run


@pytest.fixture(scope="module")
def toy_study(toy_run, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("toy_study") / "hijack"
    result = run_cli("lm=toy", f"lm.path={toy_run}", f"hydra.run.dir={out}", *TINY, "words.n_queries=8", "words.query_pool=16",
                     "words.n_outputs=3", "words.pool_size=16", "prompts.lengths=[16,32,64,128]",
                     "prompts.counts=[0,1,2,3,4,6,8]", "prompts.instances=2")
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result


HF_ARGS = ["words.pattern='^w[0-9]+$'", *TINY]


@pytest.fixture(scope="module")
def hf_study(tiny_llama_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf_study") / "hijack"
    result = run_cli("lm=hf", f"lm.path={tiny_llama_dir}", f"words.corpus={tiny_llama_dir / 'text.txt'}", *HF_ARGS,
                     f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_toy_hijack_end_to_end_and_the_law_from_its_weights(toy_study, toy_run):
    out, result = toy_study
    summary = json.loads((out / "summary.json").read_text())
    assert "knowledge hijack: toy:run" in result.stdout
    rows = summary["c_star"]["random"]
    assert [r["T"] for r in rows] == [16, 32, 64, 128]
    # in-context evidence works: more pairs, more outputs beat the favourite; longer prompts dilute it
    for r in rows:
        assert r["o_beats_b"][-1] > r["o_beats_b"][0] + 0.2
    assert rows[0]["o_beats_b"][-1] > rows[-1]["o_beats_b"][-1]
    # the toy's one head that copies is layer 2's, and zeroing it removes the hijack
    assert summary["heads"]["induction"] == [[1, 0]]
    ablated = {r["ablated"]: r for r in summary["ablation"]}
    assert ablated["induction"]["gain_remaining"] < 0.1 < ablated["none"]["gain_remaining"]
    # the law read from the weights (no fitted number) predicts held-out flips better than the rules without numbers
    rules = summary["law"]["rules"]
    best_free = max(rules["first_sight"]["accuracy_held_out"], rules["never"]["accuracy_held_out"])
    assert rules["law_from_weights"]["accuracy_held_out"] > best_free
    assert summary["law"]["fit_queries"] == 4 and summary["law"]["held_out_queries"] == 4
    assert {"versions", "device", "dtype", "config", "timings"} <= set(summary)
    with pytest.raises(UserError, match="already holds a finished hijack study"):
        precheck(compose("hijack", ["lm=toy", f"lm.path={toy_run}", f"hydra.run.dir={out}", *TINY], with_hydra=True))


def test_export_writes_figure_11_tables_and_the_figure_draws(hf_study, toy_study, tmp_path):
    data = tmp_path / "data"
    result = run_cli(str(hf_study), str(toy_study[0]), "--data", str(data), module="toybigram.hijack.export")
    assert result.returncode == 0, result.stderr[-1500:]
    names = sorted(p.name for p in data.iterdir())
    assert names == [f"fig11_hijack_lm_{t}.csv" for t in ("ablation", "attention", "curves", "rules", "setting", "shares",
                                                          "thresholds")]
    with pytest.raises(UserError, match="lm_run: .* studies a toy"):
        export_tables(toy_study[0], hf_study)
    from experiments.figure import registry  # the same drawing as paper_figures/fig11_hijack_lm.py

    paths = registry()["fig11"].draw(data, tmp_path)
    assert sorted(p.name for p in paths) == ["fig11_hijack_lm.pdf", "fig11_hijack_lm.png"]
    assert (tmp_path / "fig11_hijack_lm.png").read_bytes()[:4] == b"\x89PNG"


def test_hf_model_end_to_end_then_resume_refusals(hf_study, tiny_llama_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(hf_study, out)
    args = ["lm=hf", f"lm.path={tiny_llama_dir}", f"words.corpus={tiny_llama_dir / 'text.txt'}", *HF_ARGS]
    summary = json.loads((out / "summary.json").read_text())
    words = json.loads((out / "words.json").read_text())
    assert len(words["queries"]) == 4 and all(p["q_text"].startswith("w") for p in words["pairs"])
    assert set(summary["c_star"]) == {"random", "prose"}
    assert all(math.isfinite(r["o_beats_b"][0]) for r in summary["c_star"]["random"])
    assert set(summary["law"]["rules"]) >= {"first_sight", "never", "constant", "law", "law_without_gap"}
    assert (out / "jobs.partial.jsonl").is_file()
    # an interrupted run (jobs, no summary) is refused without resume=true and continued with it, to the same numbers
    (out / "summary.json").unlink()
    with pytest.raises(UserError, match="interrupted run"):
        precheck(compose("hijack", [*args, f"hydra.run.dir={out}"], with_hydra=True))
    with pytest.raises(UserError, match="nothing to resume"):
        precheck(compose("hijack", [*args, f"hydra.run.dir={tmp_path / 'empty'}", "resume=true"], with_hydra=True))
    resumed = run_cli(*args, f"hydra.run.dir={out}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert json.loads((out / "summary.json").read_text())["c_star"] == summary["c_star"]


@pytest.mark.parametrize("args,expected", [
    (["words.n_queries=-3"], "error: words.n_queries: must be at least 2"),
    (["lm=toy", "lm.path=/nonexistent/run"], "error: lm.path: /nonexistent/run does not exist"),
    (["no_such_option=1"], "error: Could not override 'no_such_option'"),
])
def test_bad_input_is_one_line_and_writes_nothing(args, expected, tmp_path):
    result = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert one_error_line(result).startswith(expected), result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,expected", [
    (["prompts.counts=[1,2]"], "prompts.counts: must start at 0"),
    (["prompts.counts=[0,20]"], "prompts.counts: the smallest positive count 20 does not fit"),
    (["prompts.lengths=[4]"], "prompts.lengths: every prompt length must be at least 8"),
    (["prompts.fillers=[poetry]"], "prompts.fillers: unknown filler 'poetry'"),
    (["prompts.fillers=[prose]"], "prompts.fillers: must include random"),
    (["law.fit_fraction=1.5"], "law.fit_fraction"),
    (["heads.threshold=0"], "heads.threshold"),
    (["lm=hf"], "lm.path: lm=hf needs a path"),
])
def test_bad_settings_are_refused_before_anything_is_written(args, expected, tmp_path):
    with pytest.raises(UserError, match=expected):
        precheck(compose("hijack", [*args, f"hydra.run.dir={tmp_path / 'run'}"], with_hydra=True))
    assert not (tmp_path / "run").exists()


def test_prompt_longer_than_the_position_table_is_refused(tmp_path):
    from omegaconf import OmegaConf

    from toybigram.checkpoint import save_checkpoint
    from toybigram.cli import compose
    from toybigram.factory import make_chain, make_spec
    from toybigram.model import AssociativeTransformer

    cfg = compose("train", ["data=dirichlet", "data.vocab_size=12", "data.seq_len=16", "model.d_model=32", "model.pos=ape",
                            "model.ape_extension=error"])
    run = tmp_path / "ape"
    run.mkdir()
    model = AssociativeTransformer(make_spec(cfg, make_chain(cfg.data)), seed=0)
    save_checkpoint(run / "checkpoint.pt", {"model": model.state_dict()}, OmegaConf.to_container(cfg, resolve=True))
    result = run_cli("lm=toy", f"lm.path={run}", f"hydra.run.dir={tmp_path / 'out'}", *TINY)
    assert "prompts reach 32 tokens but the model has 16 positions" in one_error_line(result)
    assert not (tmp_path / "out").exists()
