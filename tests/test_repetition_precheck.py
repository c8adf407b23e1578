"""What needs the model is refused before Hydra creates the run directory: one error line, exit 2, nothing written.

The pre-check reads only metadata (a toy run's checkpoint config, a model directory's
config.json, a GGUF header), so these cases never load a language model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from toybigram.factory import make_chain, make_spec
from toybigram.checkpoint import save_checkpoint
from toybigram.cli import compose
from toybigram.model import AssociativeTransformer

ROOT = Path(__file__).resolve().parent.parent
TOY = ("data=dirichlet", "data.vocab_size=16", "data.n_triggers=2", "model.d_model=32", "model.d_hidden=12")


def toy_run(path: Path, *overrides: str) -> Path:
    """A toybigram run directory holding an untrained model's checkpoint (enough for the pre-check)."""
    cfg = compose("train", [*TOY, *overrides])
    model = AssociativeTransformer(make_spec(cfg, make_chain(cfg.data)), seed=cfg.seed)
    path.mkdir(parents=True)
    save_checkpoint(path / "checkpoint.pt", {"model": model.state_dict()}, OmegaConf.to_container(cfg, resolve=True))
    return path


def tiny_gguf(path: Path) -> Path:
    """A GGUF file whose header says 2 layers x 8 feed-forward neurons and 64 positions."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_feed_forward_length(8)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def refused(run_dir: Path, *args: str) -> str:
    """Run the CLI, check the refusal contract, return the error line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "toybigram.repetition", *args, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-800:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-800:]
    assert not run_dir.exists(), "the run directory was created"
    return lines[0]


def test_toy_runs_that_cannot_be_studied_are_refused_before_the_run_directory(tmp_path):
    linear = toy_run(tmp_path / "linear", "model.ffn=linear")
    relu = toy_run(tmp_path / "relu", "model.ffn=relu", "model.max_len=512")
    short = toy_run(tmp_path / "short", "model.ffn=relu")  # 32 positions (data.seq_len)
    truncated = toy_run(tmp_path / "truncated", "model.ffn=relu")
    data = (truncated / "checkpoint.pt").read_bytes()
    (truncated / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert "model.ffn=linear" in refused(tmp_path / "r1", "lm=toy", f"lm.path={linear}")
    assert "truncated or corrupt" in refused(tmp_path / "r2", "lm=toy", f"lm.path={truncated}")
    assert "K=13 is larger than the model's 12 neurons" in refused(tmp_path / "r3", "lm=toy", f"lm.path={relu}", "intervene.ks=[0,13]")
    assert "has 32 positions" in refused(tmp_path / "r4", "lm=toy", f"lm.path={short}", "intervene.ks=[0,4]")


def test_model_sizes_are_read_from_metadata_before_the_run_directory(tmp_path):
    pytest.importorskip("transformers")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "intermediate_size": 24, "max_position_embeddings": 512}))
    assert "K=49 is larger than the model's 48 neurons" in refused(tmp_path / "r1", "lm=hf", f"lm.path={hf_dir}", "intervene.ks=[0,49]")
    gguf_file = tiny_gguf(tmp_path / "tiny.gguf")
    assert "K=17 is larger than the model's 16 neurons" in refused(tmp_path / "r2", "lm=hf", f"lm.path={gguf_file}", "intervene.ks=[0,17]")
    assert "has 64 positions" in refused(tmp_path / "r3", "lm=hf", f"lm.path={gguf_file}", "intervene.ks=[0,4]")
    assert "intervene.selections" in refused(tmp_path / "r4", "lm=hf", f"lm.path={hf_dir}", "intervene.selections=[top,middle]")
    assert "intervene.bogus" in refused(tmp_path / "r5", "lm=hf", f"lm.path={hf_dir}", "intervene.bogus=1")


def test_export_of_a_directory_without_a_study_is_one_error_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "toybigram.repetition.export", str(tmp_path), "--data", str(tmp_path / "data")],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: run_dir: ") and len(result.stderr.splitlines()) == 1
    assert "summary.json nor .hydra/config.yaml" in result.stderr and not (tmp_path / "data").exists()
