"""Positional encodings as objects: each registered one drives the model, the probes and the checks,
and a new encoding is one class plus one registry entry."""
import pytest
import torch
from conftest import TINY
from torch.utils.flop_counter import FlopCounterMode

from toybigram.bench import step_flops
from toybigram.validation import validate
from toybigram.checkpoint import load_run
from toybigram.config import register_configs
from toybigram.errors import ConfigError
from toybigram.evaluation import token_losses
from toybigram.model import AssociativeTransformer, ModelSpec
from toybigram.positional import ENCODINGS, PositionalEncoding, causal_distance
from toybigram.probes import position_profile, previous_token_scores, score_scale
from toybigram.runio import read_jsonl
from toybigram.train import train

register_configs()  # the tests compose the training config, as the command does

N, D, T = 11, 16, 12


def tiny(pos: str, **kw) -> AssociativeTransformer:
    layers = 2 if ENCODINGS[pos].previous_token_memory else 3
    spec = ModelSpec(vocab_size=N, d_model=D, n_layers=layers, pos=pos, max_len=T, init="random", dtype="float64", **kw)
    return AssociativeTransformer(spec, seed=1)


def layer1_scores(model: AssociativeTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The model's own layer-1 scores (the table-read forward), above the diagonal zeroed."""
    name = "blocks.0.attn.hook_attn_scores"
    scores = model.run_with_cache(tokens, names_filter=[name])[1][name]
    return scores.masked_fill(scores.isinf(), 0)


@pytest.mark.parametrize("pos", sorted(ENCODINGS))
def test_each_encoding_gives_the_models_layer1_scores_and_a_documented_profile(pos):
    model = tiny(pos)
    tokens = torch.randint(N, (2, T), generator=torch.Generator().manual_seed(0))
    x = model.embed(tokens)
    scores = model.positional.scores(x, model.blocks[0].W_K, lambda W: x @ W, model.position_tables(), model.spec)
    torch.testing.assert_close(scores.tril(), layer1_scores(model, tokens), rtol=1e-12, atol=1e-12)

    profile = position_profile(model, T)
    position_only = previous_token_scores(model, T)
    if pos == "nope":  # no position signal to read
        assert profile == {} and position_only is None
    else:
        assert position_only.shape == (T, T)
        (key, values), = profile.items()
        assert key == ("alpha" if pos == "ape" else "alpha_by_offset") and values.shape == (T,)
    if pos == "ape":  # the formulas of the docstrings: x_t = w_E(z_t) + p_t, S[t, s] = x_t^T W_K x_s (scaled)
        W_K, P = model.blocks[0].attn.W_K, model.W_pos[:T]
        x = model.W_E[tokens] + P
        by_formula = (x @ W_K @ x.transpose(1, 2)) * score_scale(model)
        torch.testing.assert_close(by_formula.tril(), layer1_scores(model, tokens), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(position_only, P @ W_K @ P.T, rtol=1e-12, atol=1e-12)


def test_encodings_refuse_what_they_cannot_do():
    with pytest.raises(ConfigError, match="^model.pos: nope needs model.n_layers=3"):
        ModelSpec(vocab_size=N, d_model=D, pos="nope", max_len=T).validate()
    with pytest.raises(ConfigError, match="^model.d_model: must be even for rope"):
        ModelSpec(vocab_size=N, d_model=15, pos="rope", max_len=T).validate()
    with pytest.raises(ConfigError, match="^model.pos: unknown value 'alibi'"):
        ModelSpec(vocab_size=N, d_model=D, pos="alibi", max_len=T).validate()
    spec = ModelSpec(vocab_size=N, d_model=D, pos="ape", max_len=T)
    assert spec.positional.max_length(spec) == T and ENCODINGS["rpe"].max_length(spec) is None
    with pytest.raises(ConfigError, match="^data.seq_len: 13 exceeds the absolute position table"):
        spec.positional.check_length(spec, T + 1)


class DistancePenalty(PositionalEncoding):
    """Layer-1 scores x_t^T W_K x_s - (t - s): every step back costs one unit (ALiBi with slope 1)."""

    name = "alibi"

    def scores(self, x, W_K, read, tables, spec):
        distance = causal_distance(x.shape[1], x.shape[1], x.device)
        return read(W_K) @ x.transpose(-1, -2) - distance.to(x.dtype)

    def position_scores(self, model, W_K, length):
        return -causal_distance(length, length, W_K.device).to(W_K.dtype)


def test_a_new_encoding_is_one_class_and_one_registry_entry(compose_train, monkeypatch, tmp_path):
    monkeypatch.setitem(ENCODINGS, "alibi", DistancePenalty())
    cfg = compose_train(*TINY, "model.pos=alibi", "train.steps=1", "train.eval_every=1", "threads=1")
    _, spec = validate(cfg)
    assert spec.pos == "alibi" and isinstance(spec.positional, DistancePenalty)

    summary = train(cfg, tmp_path)
    assert summary["status"] == "finished" and [row["step"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1]
    model, _ = load_run(tmp_path)
    assert torch.count_nonzero(model.blocks[0].W_K) > 0  # the one step trained layer 1 through the new scores
    assert set(position_profile(model, 8)) == {"alpha_by_offset"}

    tokens = torch.randint(spec.vocab_size, (3, 10))
    with FlopCounterMode(display=False) as counter:  # the benchmark counts it without a change
        token_losses(model(tokens), tokens).mean().backward()
    assert step_flops(spec, 3, 10)["total"] == counter.get_total_flops()
