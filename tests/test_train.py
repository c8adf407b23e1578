import json

import pytest

from conftest import TINY
from toybigram.runio import read_jsonl
from toybigram.train import TIMING_KEYS, train


def rows_without_timing(path):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in read_jsonl(path)]


def test_short_training_forms_an_induction_head(compose_train, tmp_path):
    cfg = compose_train(*TINY, "train.steps=200", "train.eval_every=50", "train.loss=incontext", "optim.lr=0.02", "optim.schedule=constant",
                        "model.ffn=none")
    summary = train(cfg, tmp_path / "run")
    chance = 1 / 16
    assert summary["acc_incontext"] > 0.85 > 10 * chance
    assert summary["attn_induction"] > 0.5
    assert summary["recall_induction_key"] == 1.0
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 50, 100, 150, 200]
    assert rows[0]["acc_incontext"] < 0.3  # it was learned, not there from the start
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("acc_incontext", "loss_global", "bayes_loss_global", "loss_incontext", "steps", "wall_seconds",
                "versions", "device", "dtype", "seed", "data_seed", "config"):
        assert key in saved


def test_same_seed_gives_identical_metrics(compose_train, tmp_path):
    cfg = compose_train(*TINY, "train.steps=20")
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    assert rows_without_timing(tmp_path / "a" / "metrics.jsonl") == rows_without_timing(tmp_path / "b" / "metrics.jsonl")
    other = compose_train(*TINY, "train.steps=20", "data_seed=1")
    train(other, tmp_path / "c")
    assert rows_without_timing(tmp_path / "a" / "metrics.jsonl") != rows_without_timing(tmp_path / "c" / "metrics.jsonl")


@pytest.mark.parametrize("optim", ["adamw", "sgd"])
def test_resume_after_interruption_equals_uninterrupted(compose_train, tmp_path, monkeypatch, optim):
    overrides = (*TINY, "train.steps=40", "train.ckpt_every=20", f"optim={optim}")
    train(compose_train(*overrides), tmp_path / "whole")

    from toybigram.data import TriggerSampler

    original, calls = TriggerSampler.sample, {"n": 0}

    def interrupted(self, *args, **kwargs):
        # the held-out batch is the first call; training batches follow
        calls["n"] += 1
        if calls["n"] == 1 + 31:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TriggerSampler, "sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(compose_train(*overrides), tmp_path / "resumed")
    monkeypatch.setattr(TriggerSampler, "sample", original)
    assert not (tmp_path / "resumed" / "summary.json").exists()
    assert read_jsonl(tmp_path / "resumed" / "metrics.jsonl")[-1]["step"] == 30  # rows past the checkpoint

    train(compose_train(*overrides, "train.resume=true"), tmp_path / "resumed")
    assert rows_without_timing(tmp_path / "whole" / "metrics.jsonl") == rows_without_timing(tmp_path / "resumed" / "metrics.jsonl")


def test_freeze_until_keeps_a_matrix_at_zero(compose_train, tmp_path):
    cfg = compose_train(*TINY, "train.steps=10", "train.ckpt_every=0", "+train.freeze_until={W_K1: 10, W_K2: 5}")
    train(cfg, tmp_path / "run")
    from toybigram.checkpoint import load_run

    model, _ = load_run(tmp_path / "run")
    assert model.blocks[0].attn.W_K.abs().max() == 0
    assert model.blocks[1].attn.W_K.abs().max() > 0


def test_chunked_evaluation_equals_one_piece(compose_train, monkeypatch):
    import torch

    import toybigram.evaluation as evaluation
    from toybigram.validation import validate
    from toybigram.train import build_run

    cfg = compose_train(*TINY, "train.eval_batch_size=40", "model.init=random")
    chain, spec = validate(cfg)
    run = build_run(cfg, chain, spec, torch.device("cpu"))
    whole = evaluation.evaluate(run.model, run.eval_batch, run.eval_bayes, run.transition, run.fixed_triggers)
    monkeypatch.setattr(evaluation, "CHUNK_SCORES", 7 * cfg.data.seq_len ** 2)  # chunks of 7 sequences, the last of 5
    chunked = evaluation.evaluate(run.model, run.eval_batch, run.eval_bayes, run.transition, run.fixed_triggers)
    assert chunked.keys() == whole.keys()
    for key, value in whole.items():
        assert chunked[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
