"""Bad input ends in one line naming the setting, exit code 2, no traceback, nothing written."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "toybigram.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def run_in_process(monkeypatch, capsys, *args):
    from toybigram.cli import run_app
    from toybigram.train import main_task, precheck

    monkeypatch.setattr(sys, "argv", ["toybigram.train", *args])
    with pytest.raises(SystemExit) as exit_info:
        run_app(main_task, "train", precheck)
    return exit_info.value.code, capsys.readouterr().err


BAD_INPUTS = [
    (("data=dirichlet", "data.vocab_size=1"), "data.vocab_size"),
    (("data=dirichlet", "data.vocab_size=4", "data.n_triggers=5"), "data.n_triggers"),
    (("model.pos=alibi",), "model.pos"),
    (("model.pos=nope",), "model.pos"),
    (("data.seq_len=256", "model.max_len=128"), "data.seq_len"),
    (("train.steps=0",), "train.steps"),
    (("train.batch_size=-4",), "train.batch_size"),
    (("data=text", "data.text_path=/no/such/file.txt"), "data.text_path"),
    (("train.resume=true",), "train.resume"),
    (("model.ffn=gelu",), "model.ffn"),
    (("model.no_such_option=3",), "no_such_option"),
    (("train.steps=many",), "train.steps"),
    (("device=tpu",), "device"),
    (("optim=rmsprop",), "optim"),
]


@pytest.mark.parametrize("args,setting", BAD_INPUTS, ids=[a[-1] for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(monkeypatch, capsys, tmp_path, args, setting):
    run_dir = tmp_path / "run"
    code, err = run_in_process(monkeypatch, capsys, *args, f"hydra.run.dir={run_dir}")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and setting in lines[0], err
    assert not run_dir.exists()


def test_end_to_end_error_and_refusal_to_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    bad = run_cli("model.pos=alibi", f"hydra.run.dir={run_dir}")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "model.pos" in bad.stderr
    assert not run_dir.exists()

    ok = run_cli(*TINY, "train.steps=5", f"hydra.run.dir={run_dir}")
    assert ok.returncode == 0, ok.stderr
    assert "in-context" in ok.stdout and (run_dir / "summary.json").is_file()
    before = (run_dir / "summary.json").read_bytes()

    again = run_cli(*TINY, "train.steps=5", f"hydra.run.dir={run_dir}")
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    assert (run_dir / "summary.json").read_bytes() == before
