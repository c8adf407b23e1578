"""The TransformerLens export computes toybigram's logits and attention patterns, or refuses clearly."""
import sys

import pytest
import torch

from conftest import TINY
from toybigram.checkpoint import load_run
from toybigram.errors import ConfigError, UserError
from toybigram.hooks import pattern_hooks
from toybigram.interop import INSTALL_HINT, to_hooked_transformer
from toybigram.model import AssociativeTransformer, ModelSpec
from toybigram.train import train

TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


@pytest.fixture(scope="module")
def transformer_lens():
    return pytest.importorskip("transformer_lens")


def random_model(pos: str, ffn: str, dtype: str = "float64", **settings) -> AssociativeTransformer:
    """A random-init model whose keys are sharp enough that every attention pattern is far from uniform."""
    spec = ModelSpec(vocab_size=16, d_model=32, n_layers=3 if pos == "nope" else 2, pos=pos, max_len=24, ffn=ffn,
                     d_hidden=40, init="random", dtype=dtype, **settings)
    model = AssociativeTransformer(spec, seed=3).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_K.mul_(8)
    return model


def prompts(vocab_size: int, length: int = 24) -> torch.Tensor:
    return torch.randint(vocab_size, (4, length), generator=torch.Generator().manual_seed(0))


def assert_same_model(model: AssociativeTransformer, exported, tokens: torch.Tensor, tolerance: float,
                      sharp_attention: bool = True) -> None:
    """Same logits, and the same attention pattern at each layer's TransformerLens hook name."""
    names = pattern_hooks(model.spec.n_layers)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
        exported_logits, exported_cache = exported.run_with_cache(tokens, names_filter=names)
    assert logits.abs().max() > 0.5  # random logits, not a near-zero model that would match anything
    assert (exported_logits - logits).abs().max().item() < tolerance
    for name in names:
        pattern = cache[name]
        last_query = pattern[:, -1]
        assert not sharp_attention or (last_query.amax(-1) > 1.5 * last_query.amin(-1)).all()  # far from uniform
        assert (exported_cache[name][:, 0] - pattern).abs().max().item() < tolerance


@pytest.mark.parametrize("pos", ["ape", "rope", "nope"])
@pytest.mark.parametrize("ffn", ["none", "linear", "relu"])
def test_export_matches_in_float64(transformer_lens, pos, ffn):
    model = random_model(pos, ffn, scale_scores=ffn == "relu")
    exported = to_hooked_transformer(model)
    assert isinstance(exported, transformer_lens.HookedTransformer)
    assert exported.cfg.dtype == torch.float64 and exported.cfg.n_heads == 1
    assert_same_model(model, exported, prompts(model.vocab_size), TOLERANCE["float64"])


@pytest.mark.parametrize("pos", ["ape", "rope", "nope"])
def test_export_matches_in_float32(transformer_lens, pos):
    model = random_model(pos, "linear", dtype="float32")
    assert_same_model(model, to_hooked_transformer(model), prompts(model.vocab_size), TOLERANCE["float32"])


def test_a_trained_run_exports_with_its_logits(transformer_lens, compose_train, tmp_path):
    train(compose_train(*TINY, "model.pos=rope", "model.ffn=relu", "model.d_hidden=32", "model.init=random",
                        "train.steps=30", "train.report=false", "threads=1"), tmp_path)
    model, _ = load_run(tmp_path)
    assert_same_model(model, to_hooked_transformer(model), prompts(model.vocab_size, 32), TOLERANCE["float32"],
                      sharp_attention=False)


def test_longer_prompts_need_an_ape_extension(transformer_lens):
    model = random_model("ape", "relu", ape_extension="random")
    assert_same_model(model, to_hooked_transformer(model, n_ctx=40), prompts(model.vocab_size, 40),
                      TOLERANCE["float64"])
    with pytest.raises(ConfigError, match=r"^n_ctx: 40 exceeds .*ape_extension"):
        to_hooked_transformer(random_model("ape", "relu"), n_ctx=40)


def test_rope_prompts_beyond_the_rotary_cache(transformer_lens):
    model = random_model("rope", "none")
    exported = to_hooked_transformer(model, n_ctx=2100)  # TransformerLens caches 2048 rotations at first
    assert_same_model(model, exported, prompts(model.vocab_size, 2100)[:1], TOLERANCE["float64"])


def test_relative_positions_have_no_counterpart():
    with pytest.raises(ConfigError, match=r"^model\.pos: rpe cannot be exported to TransformerLens"):
        to_hooked_transformer(random_model("rpe", "linear"))


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"install the tl extra") as caught:
        to_hooked_transformer(random_model("ape", "linear"))
    assert INSTALL_HINT in str(caught.value) and "\n" not in str(caught.value)
