"""The Hydra app end to end on a tiny random Llama saved here, and its bad-input messages."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from toybigram.cli import compose  # noqa: E402
from toybigram.errors import UserError  # noqa: E402
from toybigram.repetition.__main__ import TEXTS_PARTIAL, precheck, run_study  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "progress=false", "collect.n_rank=3", "collect.n_heldout=1", "collect.n_plain=1", "collect.max_texts=16",
    "collect.batch_size=8", "collect.prefix_len=50", "collect.greedy_len=50",
    "intervene.ks=[0,4]", "intervene.random_draws=1", "intervene.new_tokens=20",
    "perplexity.seq_len=16", "perplexity.max_tokens=64",
]


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_llama_dir) -> Path:
    return tiny_llama_dir


def cfg_for(model_dir: Path, run_dir: Path, *extra: str, with_hydra: bool = False):
    """The composed config; ``with_hydra`` keeps the hydra node that precheck reads the run dir from."""
    overrides = ["lm=hf", f"lm.path={model_dir}", f"hydra.run.dir={run_dir}", f"perplexity.text={model_dir / 'text.txt'}", *TINY, *extra]
    return compose("repetition", overrides, with_hydra=with_hydra)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "toybigram.repetition", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_study_end_to_end_then_refuses_to_overwrite(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = cfg_for(tiny_model_dir, run_dir)
    precheck(cfg_for(tiny_model_dir, run_dir, with_hydra=True))
    summary = run_study(cfg, run_dir)
    for name in ("texts.jsonl", "neuron_scores.npz", "top_neurons.json", "layer_distribution.json", "heads.json",
                 "onset_profile.json", "interventions.jsonl", "interventions_table.json", "perplexity_table.json",
                 "fig_layers_heads.png", "fig_interventions.png", "summary.json"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["n_neurons"] == 48 and saved["neurons_per_layer"] == [24, 24]
    assert saved["config"]["collect"]["n_rank"] == 3 and saved["device"] == "cpu" and saved["versions"]["torch"]
    texts = [json.loads(line) for line in (run_dir / "texts.jsonl").read_text().splitlines()]
    assert sum(t["split"] == "rank" for t in texts) == 3 and sum(t["split"] == "heldout" for t in texts) == 1
    deact = summary["interventions"]["deactivate"]
    assert [(r["k"], r["selection"]) for r in deact] == [(0, "none"), (4, "top"), (4, "random"), (4, "layer"), (4, "bottom")]
    assert deact[0]["rate"] == 1.0 and deact[0]["effect"] == 0.0  # unedited held-out prompts loop again
    for row in deact:
        assert row["rate_lo"] <= row["rate"] <= row["rate_hi"] and row["effect_lo"] <= row["effect"] <= row["effect_hi"]
    damage = json.loads((run_dir / "effect_vs_damage.json").read_text())
    assert {(r["experiment"], r["selection"]) for r in damage} == {(e, s) for e in ("deactivate", "activate") for s in ("top", "random", "layer", "bottom")}
    export_and_draw_figure(run_dir, tmp_path / "figure")
    # a finished run is never overwritten silently
    with pytest.raises(UserError, match="finished run"):
        precheck(cfg_for(tiny_model_dir, run_dir, with_hydra=True))
    extend_in_a_second_part(tiny_model_dir, run_dir)


def extend_in_a_second_part(model_dir: Path, run_dir: Path) -> None:
    """resume=true overwrite=true on a finished run keeps every finished condition and runs only the new ones."""
    partial = run_dir / "interventions.partial.jsonl"
    rows = [json.loads(line) for line in partial.read_text().splitlines()]
    marked = next(r for r in rows if r["key"] == "deactivate/top/0/4")
    marked["marker"] = "kept"  # a recomputed row would lose it
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ppl_partial = run_dir / "perplexity.partial.jsonl"
    ppl_rows = ppl_partial.read_text().splitlines()
    more = ("intervene.ks=[0,4,8]", "intervene.run_activate=false", "resume=true", "overwrite=true", "figures=false",
            "perplexity.max_tokens=32")  # another text sample: no perplexity row can be reused
    precheck(cfg_for(model_dir, run_dir, *more, with_hydra=True))
    summary = run_study(cfg_for(model_dir, run_dir, *more), run_dir)
    after = [json.loads(line) for line in partial.read_text().splitlines()]
    assert after[: len(rows)] == rows and len(after) == len(rows) + 4  # K=8: top, random, layer, bottom
    table = summary["interventions"]["deactivate"]
    assert [r["k"] for r in table] == [0, 4, 4, 4, 4, 8, 8, 8, 8] and "activate" not in summary["interventions"]
    ppl_after = ppl_partial.read_text().splitlines()
    assert ppl_after[: len(ppl_rows)] == ppl_rows and len(ppl_after) == len(ppl_rows) + 1 + 2 * 8  # unedited, K=4 and 8
    assert summary["perplexity"]["tokens"] == 30  # 2 windows of 16 tokens, BOS not scored


def export_and_draw_figure(run_dir: Path, out: Path) -> None:
    """The run's tables go to paper-figure tables, and figure 8 draws from those alone."""
    sys.path.insert(0, str(ROOT / "paper_figures"))
    import fig8_repetition

    from toybigram.repetition import export

    export.main([str(run_dir), "--data", str(out)])
    loops = (out / "fig8_repetition_loops.csv").read_text().splitlines()
    assert loops[0].startswith("experiment,k,selection") and len(loops) == 1 + 2 * 5
    paths = fig8_repetition.main(["--data", str(out), "--out", str(out)])
    assert [p.name for p in paths] == ["fig8_repetition.png", "fig8_repetition.pdf"] and all(p.stat().st_size > 0 for p in paths)


def test_too_few_texts_then_resume_keeps_them(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match="too few texts"):
        run_study(cfg_for(tiny_model_dir, run_dir, "collect.n_rank=40", "collect.max_texts=8"), run_dir)
    assert not (run_dir / "summary.json").exists() and not (run_dir / "texts.jsonl").exists()
    first = (run_dir / TEXTS_PARTIAL).read_text().splitlines()
    assert len(first) == 8
    with pytest.raises(UserError, match="interrupted run"):
        precheck(cfg_for(tiny_model_dir, run_dir, "collect.max_texts=16", with_hydra=True))
    resume = ("collect.max_texts=16", "resume=true", "intervene.run_activate=false", "perplexity.enabled=false", "figures=false")
    cfg = cfg_for(tiny_model_dir, run_dir, *resume)
    precheck(cfg_for(tiny_model_dir, run_dir, *resume, with_hydra=True))
    run_study(cfg, run_dir)
    again = (run_dir / TEXTS_PARTIAL).read_text().splitlines()
    assert again[:8] == first and len(again) >= 9


def test_k_larger_than_neuron_count(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="K=49 is larger than the model's 48 neurons"):
        run_study(cfg_for(tiny_model_dir, tmp_path / "run", "intervene.ks=[0,49]"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"not a model")
    cases = [
        (["lm=hf"], "lm.path"),
        (["lm=hf", f"lm.path={tmp_path / 'missing'}"], "does not exist"),
        (["lm=hf", f"lm.path={not_gguf}"], "is not a GGUF file"),
        (["lm=hf", f"lm.path={tmp_path}"], "neither a GGUF file nor a Hugging Face model directory"),
        (["lm.kind=bogus"], "unknown model kind"),
        (["lm=toy"], "lm.path"),
        (["detector.repeats=1"], "detector.repeats"),
        (["detector.min_after=10"], "detector.min_after"),
        (["intervene.ks=[0,-5]"], "intervene.ks"),
        (["progress_every_s=0"], "progress_every_s"),
    ]
    for args, expected in cases:
        with pytest.raises(UserError, match=expected):
            precheck(compose("repetition", [*args, f"hydra.run.dir={tmp_path / 'run'}"], with_hydra=True))
    assert not (tmp_path / "run").exists()


LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[toybigram\.repetition\]\[INFO\] - (.*)$")


def test_cli_names_every_stage_and_is_never_silent(tiny_model_dir, tmp_path):
    """Off a terminal each stage is named with its size as it starts, and a line comes at least every progress_every_s."""
    every_s = 0.25
    shown = [arg for arg in TINY if arg != "progress=false"]
    result = run_cli("lm=hf", f"lm.path={tiny_model_dir}", f"hydra.run.dir={tmp_path / 'run'}",
                     f"perplexity.text={tiny_model_dir / 'text.txt'}", *shown, "threads=1", "figures=false",
                     f"progress_every_s={every_s}")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f"), m[2]) for m in map(LOG_LINE.match, result.stdout.splitlines()) if m]
    starts = [text for _, text in lines if text.startswith("stage ") and " done in " not in text]
    assert starts == [
        f"stage 1/5: loading the model (hf {tiny_model_dir})",
        "stage 2/5: collecting up to 16 texts (4 repetitive and 1 plain needed)",
        "stage 3/5: ranking neurons on 3 texts",
        "stage 4/5: interventions on 1 held-out and 1 plain prompts",
        "stage 5/5: perplexity of the unedited and the edited model",
    ]
    assert lines[-1][1].startswith("stage 5/5 done in ")
    assert any(text.startswith("  stage 1/5: loading the model") for _, text in lines)  # loading alone outlasts the bound
    gaps = [(later - earlier).total_seconds() for (earlier, _), (later, _) in zip(lines, lines[1:])]
    assert max(gaps) < every_s + 1.5, max(gaps)  # slack for a loaded machine
    assert "collect texts" not in result.stderr  # no bars off a terminal


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    broken_gguf = tmp_path / "broken.gguf"
    broken_gguf.write_bytes(b"GGUF" + b"\x00" * 64)
    cases = [
        (["lm=hf", f"lm.path={tmp_path / 'missing'}"], "does not exist"),
        (["lm=hf", f"lm.path={broken_gguf}", f"hydra.run.dir={tmp_path / 'r1'}"], "could not load GGUF file"),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr[-500:])
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and expected in lines[0], (args, result.stderr[-500:])
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "r1" / "summary.json").exists()


def test_model_without_mlp_activation_module_is_refused():
    from toybigram.repetition.models import HFSubject

    class NoMLP(torch.nn.Module):
        config = transformers.LlamaConfig(num_hidden_layers=1, vocab_size=8)

        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    class Tok:
        bos_token_id = 1

    with pytest.raises(UserError, match="no MLP activation module to hook"):
        HFSubject.build("no-mlp", NoMLP(), Tok(), torch.device("cpu"), torch.float32)


def test_smoke_preset_shrinks_every_stage_and_passes_the_precheck(tiny_model_dir, tmp_path):
    cfg = compose("repetition", ["+preset=smoke", "lm=hf", f"lm.path={tiny_model_dir}", f"hydra.run.dir={tmp_path / 'run'}"],
                  with_hydra=True)
    assert (cfg.collect.n_rank, cfg.collect.n_heldout, cfg.collect.n_plain) == (3, 2, 2)
    assert list(cfg.intervene.ks) == [0, 20] and cfg.intervene.random_draws == 1 and cfg.perplexity.max_tokens == 512
    assert cfg.collect.greedy_len == 200 and cfg.detector.ngram == 10  # the protocol itself is unchanged
    precheck(cfg)
    assert not (tmp_path / "run").exists()
