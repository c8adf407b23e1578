"""Path decomposition of the last-position logits (toybigram.theory.paths): exact, refusals, command."""
import json

import pytest
import torch
from conftest import TINY

from toybigram.factory import as_container, make_chain, make_spec
from toybigram.checkpoint import save_checkpoint
from toybigram.config import register_configs
from toybigram.errors import UserError
from toybigram.model import AssociativeTransformer, ModelSpec
from toybigram.theory import paths as P

register_configs()  # the tests compose the training config, as the command does

N, T = 8, 12


def tiny(**kw) -> AssociativeTransformer:
    """Random (not ideal) trainable matrices, so every path is non-zero."""
    spec = ModelSpec(vocab_size=N, d_model=16, max_len=T, init="random", dtype="float64", **kw)
    return AssociativeTransformer(spec, seed=3)


@pytest.mark.parametrize("pos,ffn,n_paths", [("ape", "linear", 16), ("rpe", "linear", 8), ("ape", "none", 8)])
def test_paths_sum_to_the_model_logits(pos, ffn, n_paths):
    model = tiny(pos=pos, ffn=ffn)
    tokens = torch.randint(N, (5, T), generator=torch.Generator().manual_seed(0))
    paths, logits = P.path_logits(model, tokens)
    assert len(paths) == n_paths
    with torch.no_grad():
        forward = model(tokens)[:, -1]
    assert torch.allclose(logits, forward)
    assert torch.allclose(sum(paths.values()), forward, atol=1e-10)  # the property that makes the split honest
    table = P.shares(paths, logits)
    assert abs(sum(v["projection"] for v in table.values()) - 1) < 1e-10
    key, path = next(iter(paths.items()))  # one path's share recomputed from its definition
    centred = path - path.mean(-1, keepdim=True)
    y = logits - logits.mean(-1, keepdim=True)
    assert table[key]["share"] == pytest.approx(((centred ** 2).sum() / (y ** 2).sum()).item(), rel=1e-9)
    assert max(v["share"] for v in table.values()) > 0.01  # random memories: no path is trivially empty


@pytest.mark.parametrize("kw,match", [({"ffn": "relu"}, "relu"), ({"n_layers": 3}, "two-layer")])
def test_refuses_models_without_the_decomposition(kw, match):
    with pytest.raises(UserError, match=match):
        P.path_logits(tiny(**kw), torch.zeros(1, T, dtype=torch.long))


def test_command_writes_paths_json(tmp_path, compose_train, capsys):
    cfg = compose_train(*TINY, "model.init=random")
    model = AssociativeTransformer(make_spec(cfg, make_chain(cfg.data)), seed=cfg.seed)
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": model.state_dict()}, as_container(cfg))
    P.main([f"run_dir={tmp_path}", "--outputs", "2", "--max-count", "2", "--fillers", "2"])
    out = json.loads((tmp_path / P.PATHS_FILE).read_text())
    assert out["rows"] == len(out["pairs"]) * 3 * 2 and len(out["paths"]) == 16
    assert out["max_abs_reconstruction_error"] < 1e-4 * max(1.0, out["max_abs_logit"])  # float32 model
    assert "| layer 2 copies token w_E(z_s) |" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["{missing}"], ["{missing}", "--fillers", "0"]])
def test_bad_input_is_one_error_line(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        P.main([a.format(missing=tmp_path / "nope") for a in args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
