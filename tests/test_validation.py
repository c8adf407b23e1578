"""Every training setting is checked, with its range, before anything is written or allocated."""
import os
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import pytest

from toybigram.validation import validate
from toybigram.config import register_configs
from toybigram.errors import ConfigError
from toybigram.memory import PART_SETTINGS, RunShape, check_memory, estimate, memory_budget, physical_memory

register_configs()  # the tests compose the training config, as the command does

REPO = Path(__file__).resolve().parents[1]
DIRICHLET = "data=dirichlet data.vocab_size=8"
TWO = "train.instances=2"


def refusal(case: str) -> tuple[tuple[str, ...], str]:
    """"a=1 b=2 -> setting": the overrides, and the setting the refusal names (by default the last override's)."""
    overrides, _, setting = case.partition(" -> ")
    overrides = tuple(overrides.split())
    return overrides, setting or overrides[-1].split("=")[0].lstrip("+")


BAD_SETTINGS = [refusal(case) for case in (
    # seeds: numpy refuses negatives, and every seed fits a signed 64-bit integer
    "seed=-1", "seed=9223372036854775808", "data_seed=-1", f"{DIRICHLET} data.chain_seed=-1",
    f"{TWO} train.instance_seeds=[-1,2]", f"{TWO} train.instance_data_seeds=[0,-3]",
    f"{TWO} seed=9223372036854775807 -> train.instances",
    # optimizer
    "optim.beta1=2", "optim.beta2=1.0", "optim.momentum=-1", "optim.weight_decay=-1", "optim.lr=inf", "optim.lr=nan",
    f"{TWO} train.instance_lrs=[inf,0.1]", "optim.min_lr_ratio=1.5", "optim.warmup_steps=-1", "optim.name=adam", "model.param=foo", "optim.ffn_lr_scale=0",
    "optim.schedule=linear",
    # model
    "model.rope_base=0", "model.rope_base=nan", "model.rope_base=-2", "model.rope_base=1", "model.d_model=0",
    "model.d_hidden=0", "model.max_len=0", "model.n_layers=4", "model.pos=alibi", "model.ape_extension=wrap",
    "model.ffn=gelu", "model.init=ones", "model.dtype=float16", "model.pos=nope", "model.pos=rope model.d_model=63",
    "data.seq_len=64 model.max_len=32 -> data.seq_len",
    # data
    "data.source=wiki", f"{DIRICHLET} data.dirichlet_alpha=inf", f"{DIRICHLET} data.dirichlet_alpha=1e7",
    "data=dirichlet data.vocab_size=5000", "data.seq_len=0", "data.n_triggers=-1", "data.trigger_offset=-1",
    "data.trigger_offset=61",  # 61 + 5 triggers > 65 tokens
    "data.triggers=sometimes", "data.outputs=copy", "data.n_triggers=0 -> train.theory",
    "data.n_triggers=0 train.theory=false train.loss=incontext",
    # training
    "train.steps=0", "train.batch_size=0", "train.eval_batch_size=0", "train.eval_every=0", "train.ckpt_every=-1",
    "train.loss=some", "train.progress=fancy", "train.instances=0", "+train.freeze_until={W_K9:3}",
    "+train.freeze_until={W_K1:-3} -> train.freeze_until.W_K1",
    # top level
    "device=tpu", "threads=-1", f"threads={4 * (os.cpu_count() or 1) + 1}", "max_memory_gb=0", "max_memory_gb=nan",
    # sizes beyond the memory budget
    "data.seq_len=100000 model.max_len=100000 -> max_memory_gb", "train.batch_size=100000000 -> max_memory_gb",
    "train.eval_batch_size=1000000000 -> max_memory_gb", "model.d_model=1000000 -> max_memory_gb",
    "model.ffn=relu model.d_hidden=1000000000 -> max_memory_gb", "train.instances=1000000 -> max_memory_gb",
    "data=dirichlet data.vocab_size=4096 max_memory_gb=1",  # refused before building
)]


@pytest.mark.parametrize("overrides,setting", BAD_SETTINGS, ids=[" ".join(o) for o, _ in BAD_SETTINGS])
def test_bad_setting_is_refused_naming_it(compose_train, overrides, setting):
    with pytest.raises(ConfigError) as error:
        validate(compose_train(*overrides))
    assert str(error.value).startswith(f"{setting}: "), error.value


def write_text_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "corpus.txt"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_text("")
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00\x81" * 16)
    elif kind == "one symbol":
        path.write_text("aaaa")
    return path


@pytest.mark.parametrize("kind,why", [
    ("directory", "is a directory"), ("missing", "no such file"), ("empty", "is empty"),
    ("binary", "is not UTF-8 text"), ("one symbol", "fewer than 2 distinct symbols"),
])
def test_bad_text_file_says_what_is_wrong(compose_train, tmp_path, kind, why):
    path = write_text_file(tmp_path, kind)
    with pytest.raises(ConfigError) as error:
        validate(compose_train("data=text", f"data.text_path={path}", "data.n_triggers=1"))
    assert str(error.value).startswith("data.text_path: ") and why in str(error.value), error.value


def test_extreme_but_finite_values_are_allowed(compose_train):
    """A huge learning rate diverges (the trainer reports it); seeds up to 2**63 - 1 work."""
    chain, spec = validate(compose_train("optim.lr=1e30", "seed=9223372036854775807", "data_seed=0", "optim.beta2=0"))
    assert spec.vocab_size == chain.vocab_size == 65


@pytest.mark.parametrize("overrides", [
    (),  # the main job
    ("data=dirichlet", "data.vocab_size=32", "optim=sgd", "train.loss=incontext"),  # the README's examples
    ("model.pos=rpe", "data.seq_len=256"),
    ("model.d_model=128",),
    ("train.instances=8",),
])
def test_main_job_and_readme_examples_fit_a_small_machine(compose_train, overrides):
    """They pass validation here, and their estimate fits the budget of a machine with 8 GB of RAM."""
    cfg = compose_train(*overrides, "max_memory_gb=4")
    chain, spec = validate(cfg)
    assert check_memory(cfg, spec)["total"] < 4e9


def test_memory_estimate_grows_with_the_sizes_and_names_the_largest_part(compose_train):
    cfg = compose_train()
    _, spec = validate(cfg)
    shape = RunShape.of(cfg, spec)
    base = estimate(shape)
    assert 0.4e9 < base["total"] < 0.7e9  # the main job peaks at about 0.44 GB
    for size, part in [("seq_len", "training step"), ("batch_size", "training step"), ("instances", "training step"),
                       ("d_model", "weights and tables"), ("eval_batch_size", "evaluation")]:
        bigger = estimate(replace(shape, **{size: 4 * getattr(shape, size)}))
        assert bigger[part] > base[part] and bigger["total"] > base["total"], size
    long_parts = estimate(replace(shape, seq_len=100000, table_rows=100000))
    assert max(PART_SETTINGS, key=long_parts.get) == "evaluation"  # its batch (256) is 4x the training batch
    longer = compose_train("data.seq_len=100000", "model.max_len=100000")
    with pytest.raises(ConfigError) as error:
        validate(longer)
    message = str(error.value)
    assert "most of it for the evaluation (train.eval_batch_size=256, data.seq_len=100000" in message
    assert "raise max_memory_gb" in message and "budget is" in message
    assert "\n" not in message


def test_default_budget_is_half_the_ram():
    import torch

    ram = physical_memory()
    assert ram is not None and ram > 1e9
    budget, source = memory_budget(None, torch.device("cpu"))
    assert budget == pytest.approx(ram / 2) and "half" in source
    assert memory_budget(2.5, torch.device("cpu"))[0] == 2.5e9


def test_cli_refuses_an_oversized_run_before_writing(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "toybigram.train", "data.seq_len=100000", "model.max_len=100000", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: max_memory_gb: "), result.stderr
    assert not run_dir.exists()
