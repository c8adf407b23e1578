import os
from pathlib import Path

import pytest

os.environ.setdefault("CI", "true")  # plain progress lines, never a bar

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one torch thread each
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def compose_train():
    """Compose the training config with overrides, as the CLI would (the hydra node dropped)."""
    from toybigram.cli import compose

    def _compose(*overrides: str):
        return compose("train", overrides)

    return _compose


TINY = (
    "data=dirichlet",
    "data.vocab_size=16",
    "data.seq_len=32",
    "data.n_triggers=2",
    "model.d_model=64",
    "train.batch_size=16",
    "train.eval_batch_size=32",
    "train.eval_every=10",
    "train.progress=none",
    "train.theory=false",
)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama and a word-level tokenizer (words w3 .. w63), saved like any local HF model, with a
    text of those words in text.txt."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    import torch

    path = tmp_path_factory.mktemp("tinyllama")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 64)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    (path / "text.txt").write_text(" ".join(f"w{3 + (i * 7) % 61}" for i in range(400)))
    return path
