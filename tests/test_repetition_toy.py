"""The toy subject: neurons are the last layer's ReLU FFN (``blocks.{L-1}.mlp.hook_post``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from toybigram.errors import UserError
from toybigram.model import AssociativeTransformer, ModelSpec
from toybigram.repetition import analysis
from toybigram.repetition.generation import greedy_continue
from toybigram.repetition.models import ToySubject
from toybigram.repetition.neurons import make_edit


def toy(ffn: str = "relu") -> ToySubject:
    spec = ModelSpec(vocab_size=20, d_model=16, n_layers=2, max_len=96, ffn=ffn, d_hidden=12, init="random", dtype="float64")
    model = AssociativeTransformer(spec, seed=0).eval()
    model.requires_grad_(False)
    return ToySubject.build("toy", model, torch.device("cpu"), torch.float64)


def site_hooks(subject) -> int:
    return sum(len(p._forward_hooks) for p in subject.model.hook_points.values())


def test_toy_sites_and_exact_edits():
    subject = toy()
    assert subject.site_layers == [1] and subject.site_sizes == [12] and subject.start_ids == []
    ids = torch.randint(20, (2, 15))
    before, after = {}, {}
    edit = make_edit([0, 5, 11], subject.site_sizes, "add", 1.0, newest_only=True)
    with subject.neuron_hooks(lambda s, a: before.__setitem__(s, a.clone())):
        with subject.neuron_hooks(edit):
            with subject.neuron_hooks(lambda s, a: after.__setitem__(s, a.clone())):
                subject.forward(ids)
    expected = before[0].clone()
    expected[:, -1, [0, 5, 11]] += 1.0
    assert torch.equal(after[0], expected)
    assert site_hooks(subject) == 0


def test_toy_without_relu_is_refused():
    with pytest.raises(UserError, match="model.ffn=relu"):
        toy(ffn="linear")


def test_toy_batched_generation_matches_single_and_patterns_have_a_head_axis():
    subject = toy()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(20, (n,), generator=g).tolist() for n in (5, 5, 8, 3, 8)]
    edit = make_edit([2, 3], subject.site_sizes, "set", 0.0, newest_only=True)
    for e in (None, edit):
        batched = greedy_continue(subject, prompts, 12, batch_size=4, edit=e)
        single = [greedy_continue(subject, [p], 12, batch_size=1, edit=e)[0] for p in prompts]
        assert batched == single
    _, patterns = subject.attention_forward(torch.tensor([prompts[0]]))
    assert len(patterns) == 2 and patterns[0].shape == (1, 1, 5, 5)
    assert site_hooks(subject) == 0


def test_toy_capture_runs_on_constructed_loops():
    subject = toy()
    texts = [{"ids": list(range(20)) * 2 + [3, 7, 9, 1] * 10, "loop": {"first": 40, "period": 4, "onset": 44}}] * 3
    windows, heads = analysis.capture(subject, texts, 31, 30, batch_size=2)
    assert windows.count == 3 and windows.means().shape == (61, 12)
    assert heads.table(0.5)["induction_mean"].shape == (2, 1)


def test_bigram_argmax_cycles_and_token_sources():
    from toybigram.repetition.toy_loops import bigram_cycles, sources

    transition = np.eye(4)[[1, 2, 1, 3]]  # 0 -> 1 -> 2 -> 1 (period 2), 3 -> 3 (period 1)
    assert bigram_cycles(transition) == [2, 2, 2, 1]
    argmax = transition.argmax(1)
    # after the prefix [3, 0, 2]: 1 is the bigram's argmax after 2; 0 is neither; 2 copies what followed 0 before
    out = sources([[3, 0, 2, 1, 0, 2]], prefix=3, bigram_argmax=argmax)
    assert out["bigram_argmax"] == pytest.approx(1 / 3) and out["copy"] == pytest.approx(1.0) and out["copy_available"] == pytest.approx(1 / 3)


def test_toy_loops_cli_removes_each_component(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf

    from toybigram.factory import make_chain, make_spec
    from toybigram.checkpoint import save_checkpoint
    from toybigram.cli import compose

    cfg = compose("train", ["data=dirichlet", "data.vocab_size=12", "data.n_triggers=2", "model.d_model=32", "model.ffn=relu",
                            "model.d_hidden=8", "model.pos=rpe", "model.init=random"])
    model = AssociativeTransformer(make_spec(cfg, make_chain(cfg.data)), seed=0)
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", {"model": model.state_dict()}, OmegaConf.to_container(cfg, resolve=True))
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "toybigram.repetition.toy_loops", str(tmp_path / "run"), "--prompts", "4", "--prefix", "8", "--new", "40"]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-800:]
    saved = json.loads((tmp_path / "run" / "toy_loops.json").read_text())
    assert list(saved["ablations"]) == ["none", "attn1", "attn2", "ffn", "neurons"]
    table = saved["ablations"]
    assert all(0 <= r["looping"] <= 1 and r["n"] == 4 for r in table.values())
    for removed in ("attn1", "attn2", "ffn"):  # each component of this random model moves the greedy continuations
        assert table[removed] != table["none"], removed
    assert table["ffn"] == table["neurons"]  # no output bias: zero neurons is zero block output
    bad = subprocess.run([*command[:4], "--prompts", "0"], cwd=root, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --prompts: must be at least 1, got 0"
