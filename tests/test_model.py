import math

import pytest
import torch

from toybigram.errors import ConfigError
from toybigram.model import AssociativeTransformer, ModelSpec
from toybigram.positional import rotate
from toybigram.probes import attention_probes, copy_recall, induction_key_recall, previous_token_recall

N, D, T = 11, 32, 12


def tiny(pos="ape", n_layers=2, ffn="relu", init="random", **kw):
    spec = ModelSpec(vocab_size=N, d_model=D, n_layers=n_layers, pos=pos, max_len=T, ffn=ffn, init=init, **kw)
    return AssociativeTransformer(spec, seed=3).double()


def test_hook_names_and_shapes():
    model = tiny(ffn="relu", d_hidden=40)
    tokens = torch.randint(N, (2, T))
    with model.plain_forward():  # every hook point, layer 1's input and z included
        _, cache = model.run_with_cache(tokens)
    expected = {
        "hook_embed": (2, T, D),
        "hook_pos_embed": (T, D),
        "blocks.0.attn.hook_pattern": (2, T, T),
        "blocks.0.attn.hook_attn_scores": (2, T, T),
        "blocks.1.attn.hook_z": (2, T, D),
        "blocks.1.hook_resid_mid": (2, T, D),
        "blocks.1.mlp.hook_pre": (2, T, 40),
        "blocks.1.mlp.hook_post": (2, T, 40),
        "blocks.1.hook_mlp_out": (2, T, D),
        "blocks.1.hook_resid_post": (2, T, D),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
    assert (cache["blocks.1.mlp.hook_post"] >= 0).all()
    patterns = cache["blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(patterns.sum(-1), torch.ones(2, T, dtype=torch.float64))
    assert (patterns.triu(1) == 0).all()  # causal


def test_names_filter_and_hook_replacement_and_cleanup():
    model = tiny()
    tokens = torch.randint(N, (2, T))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert set(cache) == {"blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"}

    with model.hooks([("blocks.1.hook_resid_post", lambda x, hook: torch.zeros_like(x))]):
        assert torch.count_nonzero(model(tokens)) == 0
    assert torch.count_nonzero(model(tokens)) > 0

    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks([("blocks.1.hook_resid_pre", lambda x, hook: None)]):
            raise RuntimeError("boom")
    assert all(not p._forward_hooks for p in model.hook_points.values())
    with pytest.raises(KeyError):
        with model.hooks([("no_such_hook", lambda x, hook: None)]):
            pass
    assert all(not p._forward_hooks for p in model.hook_points.values())


def test_forward_is_the_documented_formula_for_ape():
    model = tiny(pos="ape", ffn="linear")
    tokens = torch.randint(N, (1, T))
    z = tokens[0]
    x = model.W_E[z] + model.W_pos[:T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    def attend(h, W_K):
        return torch.softmax((h @ W_K @ h.T).masked_fill(~causal, -math.inf), -1)

    b1, b2 = model.blocks
    h = x + attend(x, b1.W_K) @ x @ (b1.W_O @ b1.W_V).T
    y = h + attend(h, b2.W_K) @ h @ (b2.W_O @ b2.W_V).T
    y = y + y @ b2.mlp.W_F.T
    torch.testing.assert_close(model(tokens)[0], y @ model.W_U)


@pytest.mark.parametrize("pos,n_layers,ffn", [("ape", 2, "linear"), ("ape", 3, "relu"), ("rpe", 2, "linear"),
                                              ("rope", 2, "none"), ("nope", 3, "linear")])
def test_table_read_equals_the_plain_forward(pos, n_layers, ffn):
    """The default forward reads layer 1's keys and values from embedding tables; plain_forward multiplies x itself."""
    model = tiny(pos=pos, n_layers=n_layers, ffn=ffn)
    tokens = torch.randint(N, (3, T))
    fast = model(tokens)
    fast_grads = torch.autograd.grad(fast.square().sum(), list(model.parameters()))
    with model.plain_forward():
        assert not model.table_read
        plain = model(tokens)
        plain_grads = torch.autograd.grad(plain.square().sum(), list(model.parameters()))
    assert model.table_read
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # In the plain forward an edited embedding reaches every product of layer 1, keys and values included.
    with model.plain_forward(), model.hooks([("hook_embed", lambda x, hook: 2 * x)]):
        edited = model(tokens)
    doubled = tiny(pos=pos, n_layers=n_layers, ffn=ffn)
    doubled.W_E.mul_(2)
    torch.testing.assert_close(edited, doubled(tokens))


@pytest.mark.parametrize("point", ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_z"])
def test_a_hook_off_the_table_read_path_is_refused_not_skipped(point):
    model = tiny()
    tokens = torch.randint(N, (2, T))
    with pytest.raises(RuntimeError, match=f"{point}.*plain_forward"):
        with model.hooks([(point, lambda x, hook: None)]):
            model(tokens)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))  # the table read
    with model.plain_forward():
        _, plain = model.run_with_cache(tokens, names_filter=[point, "blocks.0.attn.hook_pattern"])
    assert point in plain
    torch.testing.assert_close(plain["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_pattern"])


def test_rope_and_rpe_scores_are_relative():
    rope = tiny(pos="rope")
    x = torch.randn(1, T, D, dtype=torch.float64)
    scores = rope.blocks[0].attn.scores(x, rope.position_tables())[0]
    t, s = 7, 3
    # x_t^T R_{s-t} W_K x_s: rotating both sides by the same extra angle changes nothing.
    a = rotate(x[0, t : t + 1], torch.tensor([t - s]), rope.spec.rope_base)
    b = x[0, s : s + 1] @ rope.blocks[0].W_K.T
    torch.testing.assert_close(scores[t, s], (a @ b.T)[0, 0])

    rpe = tiny(pos="rpe")
    scores = rpe.blocks[0].attn.scores(x, rpe.position_tables())[0]
    torch.testing.assert_close(scores[t, s], x[0, t] @ rpe.blocks[0].W_K @ rpe.W_rel[t - s])


def test_ape_beyond_the_table_needs_a_policy():
    tokens = torch.randint(N, (1, T + 5))
    with pytest.raises(ValueError, match="model.max_len"):
        tiny(pos="ape")(tokens)
    extended = tiny(pos="ape", ape_extension="random")
    assert extended(tokens).shape == (1, T + 5, N)
    # The extension continues the same frozen stream: a longer table starts with the shorter one.
    longer = AssociativeTransformer(ModelSpec(vocab_size=N, d_model=D, max_len=T + 5, init="random"), seed=3).double()
    torch.testing.assert_close(extended.positions(T + 5), longer.W_pos)
    assert tiny(pos="ape", ape_extension="clamp")(tokens).shape == (1, T + 5, N)


def test_frozen_and_trainable_split_and_zero_init():
    model = AssociativeTransformer(ModelSpec(vocab_size=N, d_model=D, max_len=T, ffn="linear"), seed=0)
    trainable = {n for n, p in model.named_parameters()}
    assert trainable == {"blocks.0.attn.W_K", "blocks.1.attn.W_K", "blocks.1.attn.W_O", "blocks.1.mlp.W_F"}
    assert all(torch.count_nonzero(p) == 0 for p in model.parameters())
    assert set(model.trainable_groups()) == {"W_K1", "W_K2", "W_O2", "W_F"}
    # Same seed, same frozen matrices; another seed, different ones.
    again = AssociativeTransformer(ModelSpec(vocab_size=N, d_model=D, max_len=T, ffn="linear"), seed=0)
    other = AssociativeTransformer(ModelSpec(vocab_size=N, d_model=D, max_len=T, ffn="linear"), seed=1)
    assert torch.equal(model.W_E, again.W_E) and not torch.equal(model.W_E, other.W_E)


def test_bietti_parametrisation_has_the_reference_codes_scales():
    """model.param=bietti: N(0, 1) embeddings and positions from the same streams, nn.Linear's
    uniform(+-1/sqrt(fan-in)) for the other frozen maps and for a random start; zero start kept."""
    d, h, rows = 256, 512, 128
    shape = dict(vocab_size=65, d_model=d, max_len=rows, d_hidden=h)
    ours = AssociativeTransformer(ModelSpec(**shape, ffn="linear"), seed=4)
    bietti = AssociativeTransformer(ModelSpec(**shape, ffn="linear", param="bietti", init="random"), seed=4)
    for table in ("W_E", "W_pos"):
        torch.testing.assert_close(getattr(bietti, table), math.sqrt(d) * getattr(ours, table))
        assert 0.95 < getattr(bietti, table).std() < 1.05
    relu = AssociativeTransformer(ModelSpec(**shape, ffn="relu", param="bietti", init="random"), seed=4)
    uniform = {"W_U": (bietti.W_U, d), "W_V1": (bietti.blocks[0].W_V, d), "W_O1": (bietti.blocks[0].W_O, d),
               "W_V2": (bietti.blocks[1].W_V, d), "W_K1": (bietti.blocks[0].W_K, d), "W_K2": (bietti.blocks[1].W_K, d),
               "W_O2": (bietti.blocks[1].W_O, d), "W_F": (bietti.blocks[1].mlp.W_F, d),
               "W_in": (relu.blocks[1].mlp.W_in, d), "W_out": (relu.blocks[1].mlp.W_out, h)}
    for name, (matrix, fan_in) in uniform.items():
        bound = 1 / math.sqrt(fan_in)
        assert matrix.abs().max() <= bound and matrix.abs().max() > 0.99 * bound, name
        assert abs(matrix.std() * math.sqrt(3 * fan_in) - 1) < 0.05, name  # uniform: std = bound / sqrt(3)
        assert abs(matrix.mean()) < 0.05 * bound, name
    trainable = [bietti.blocks[0].W_K, bietti.blocks[1].W_K, bietti.blocks[1].W_O]
    assert len({float(m.sum()) for m in trainable}) == 3  # each from its own stream
    again = AssociativeTransformer(ModelSpec(**shape, ffn="linear", param="bietti", init="random"), seed=4)
    assert all(torch.equal(a, b) for a, b in zip(bietti.state_dict().values(), again.state_dict().values()))
    zero = AssociativeTransformer(ModelSpec(**shape, ffn="linear", param="bietti"), seed=4)
    assert all(torch.count_nonzero(p) == 0 for p in zero.parameters())
    with pytest.raises(ConfigError, match="model.param"):
        ModelSpec(**shape, param="nanogpt").validate()


def test_ideal_memories_predict_incontext_tokens_and_pass_every_probe():
    from toybigram.data import TriggerSampler, dirichlet_chain
    from toybigram.theory.ideal import ideal_model

    spec = ModelSpec(vocab_size=16, d_model=1024, max_len=64, ffn="none")
    model = ideal_model(spec, alpha=12.0, lam=10.0, beta=8.0, seed=0)
    assert previous_token_recall(model)["recall_prev_token"] == 1.0
    assert induction_key_recall(model) == 1.0
    assert copy_recall(model) == 1.0

    sampler = TriggerSampler(dirichlet_chain(16, 0.5, seed=0), n_triggers=3, seed=0)
    batch = sampler.sample(32, 64)
    incontext = batch.labels >= 2
    logits = model(batch.inputs)
    accuracy = (logits.argmax(-1) == batch.targets)[incontext].float().mean().item()
    assert accuracy > 0.98
    probes = attention_probes(model, batch.inputs, batch.labels)
    assert probes["attn_prev_token"] > 0.95 and probes["attn_induction"] > 0.9
    # Without the copy memory the same prompts are at chance: the memories do the work.
    with torch.no_grad():
        model.blocks[1].attn.W_O.zero_()
    assert (model(batch.inputs).argmax(-1) == batch.targets)[incontext].float().mean().item() < 0.3
