import os

import pytest

os.environ.setdefault("CI", "true")  # plain progress lines, never a bar


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
