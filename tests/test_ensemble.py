"""Seeds trained together give each run the metrics of a separate run (up to float rounding)."""
import math
import sys

import pytest

from conftest import TINY
from toybigram.checkpoint import load_checkpoint, load_run
from toybigram.errors import ConfigError
from toybigram.runio import read_json, read_jsonl
from toybigram.train import TIMING_KEYS, train


def assert_rows_close(rows_a, rows_b, tol=1e-5):
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        assert a.keys() == b.keys()
        for key in a:
            if key in TIMING_KEYS or a[key] is None or b[key] is None:
                assert (a[key] is None) == (b[key] is None) or key in TIMING_KEYS, key
                continue
            assert math.isclose(a[key], b[key], rel_tol=tol, abs_tol=tol), (a["step"], key, a[key], b[key])


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_instances_match_separate_runs(compose_train, tmp_path, optim):
    common = (*TINY, "train.steps=20", "train.ckpt_every=0", "train.loss=incontext", f"optim={optim}",
              "+train.freeze_until={W_K1: 5}")
    lrs = [0.05, 0.02, 0.1] if optim == "sgd" else [0.01, 0.02, 0.005]
    together = train(compose_train(*common, "train.instances=3", "seed=4", "train.instance_data_seeds=[7,7,9]",
                                   f"train.instance_lrs=[{','.join(map(str, lrs))}]"), tmp_path / "together")
    assert [s["seed"] for s in together] == [4, 5, 6] and [s["data_seed"] for s in together] == [7, 7, 9]
    for i, (seed, data_seed, lr) in enumerate(zip([4, 5, 6], [7, 7, 9], lrs)):
        alone = train(compose_train(*common, f"seed={seed}", f"data_seed={data_seed}", f"optim.lr={lr}"), tmp_path / f"alone{i}")
        inst = tmp_path / "together" / f"instance{i}"
        assert_rows_close(read_jsonl(inst / "metrics.jsonl"), read_jsonl(tmp_path / f"alone{i}" / "metrics.jsonl"))
        assert together[i]["config"] == alone["config"]  # the instance is that single run
        assert abs(together[i]["acc_incontext"] - alone["acc_incontext"]) < 1e-6
    ensemble = read_json(tmp_path / "together" / "ensemble.json")
    assert ensemble["instances"] == 3 and len(ensemble["runs"]) == 3


def test_instance_directory_is_a_resumable_single_run(compose_train, tmp_path):
    common = (*TINY, "train.steps=10", "train.ckpt_every=0")
    train(compose_train(*common, "train.instances=2"), tmp_path / "together")
    model, cfg = load_run(tmp_path / "together" / "instance1")
    assert cfg.seed == 1 and cfg.data_seed == 1 and cfg.train.instances == 1
    state = load_checkpoint(tmp_path / "together" / "instance1" / "checkpoint.pt")
    assert state["step"] == 10 and state["optimizer"]["state"]  # optimizer moments saved per instance
    resumed = train(compose_train(*common, "train.steps=15", "seed=1", "data_seed=1", "train.resume=true"),
                    tmp_path / "together" / "instance1")
    assert resumed["steps"] == 15


@pytest.mark.parametrize("override,setting", [
    ("train.instances=0", "train.instances"),
    ("train.instance_lrs=[0.1,0.2]", "train.instance_lrs"),
])
def test_bad_instance_settings_are_config_errors(compose_train, tmp_path, override, setting):
    with pytest.raises(ConfigError, match=setting):
        train(compose_train(*TINY, "train.steps=2", override), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_bad_instances_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    from toybigram.cli import run_app
    from toybigram.train import main_task, precheck

    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["toybigram.train", *TINY, "train.instances=0", f"hydra.run.dir={run_dir}"])
    with pytest.raises(SystemExit) as exit_info:
        run_app(main_task, "train", precheck)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "train.instances" in err[0]
    assert not run_dir.exists()


def test_cli_trains_instances_into_subdirectories(monkeypatch, capsys, tmp_path):
    from toybigram.cli import run_app
    from toybigram.train import main_task, precheck

    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["toybigram.train", *TINY, "train.steps=5", "train.instances=2", f"hydra.run.dir={run_dir}"])
    run_app(main_task, "train", precheck)
    assert "2 instances" in capsys.readouterr().out
    for i in range(2):
        assert (run_dir / f"instance{i}" / "summary.json").is_file() and (run_dir / f"instance{i}" / "metrics.jsonl").is_file()
    assert (run_dir / "ensemble.json").is_file()


def test_data_seeds_follow_the_seeds_when_the_config_ties_them(compose_train, tmp_path):
    """``data_seed: ${seed}`` (the experiment configs) resolves per instance, as in each separate run."""
    from toybigram.ensemble import instance_configs

    tied = instance_configs(compose_train(*TINY, "data_seed=${seed}", "train.instances=2", "train.instance_seeds=[3,8]"))
    assert [(c.seed, c.data_seed) for c in tied] == [(3, 3), (8, 8)]
    fixed = instance_configs(compose_train(*TINY, "data_seed=5", "train.instances=2", "train.instance_seeds=[3,8]"))
    assert [(c.seed, c.data_seed) for c in fixed] == [(3, 5), (8, 6)]


def test_instance_directory_records_its_single_run_config(compose_train, tmp_path):
    from omegaconf import OmegaConf

    train(compose_train(*TINY, "train.steps=2", "train.instances=2", "seed=5"), tmp_path / "run")
    recorded = OmegaConf.load(tmp_path / "run" / "instance1" / "config.yaml")
    assert recorded.seed == 6 and recorded.train.instances == 1
    assert OmegaConf.to_container(recorded) == read_json(tmp_path / "run" / "instance1" / "summary.json")["config"]
