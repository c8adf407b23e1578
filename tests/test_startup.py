"""Importing toybigram changes nothing; each command sets its process up before torch loads.

torch's OpenMP runtime reads OMP_WAIT_POLICY once, when ``import torch`` loads it, so a
command must choose the policy before any module that imports torch.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from toybigram import startup

REPO = Path(__file__).resolve().parents[1]
# Modules that run as ``python -m ...`` and the packages Python imports before each of them.
COMMANDS = {
    "toybigram/train.py": ["toybigram"],
    "toybigram/report/__main__.py": ["toybigram", "toybigram.report"],
    "toybigram/repetition/__main__.py": ["toybigram", "toybigram.repetition"],
    "toybigram/repetition/bench.py": ["toybigram", "toybigram.repetition"],
    "toybigram/repetition/toy_loops.py": ["toybigram", "toybigram.repetition"],
    "toybigram/repetition/export.py": ["toybigram", "toybigram.repetition"],
}


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True, timeout=120)


def test_import_has_no_side_effect_and_does_not_load_torch():
    out = python("import os, sys, toybigram; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "False"]


def test_packages_a_command_loads_first_do_not_load_torch():
    packages = sorted({p for chain in COMMANDS.values() for p in chain})
    out = python(f"import sys; import {', '.join(packages)}; print('torch' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_exports_still_load_on_first_use():
    out = python("import toybigram; print(toybigram.AssociativeTransformer.__name__, toybigram.shakespeare_chain().vocab_size)")
    assert out.stdout.split() == ["AssociativeTransformer", "65"], out.stderr


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_each_command_starts_before_any_other_import(path):
    """The first statement after ``from __future__`` is ``if __name__ == "__main__": ... start_command()``."""
    body = [node for node in ast.parse((REPO / path).read_text()).body
            if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))  # the docstring
            and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
    first = body[0]
    assert isinstance(first, ast.If) and ast.unparse(first.test) == "__name__ == '__main__'", path
    assert "start_command()" in ast.unparse(first)


def test_the_training_command_chooses_its_policy_before_torch_loads():
    """``python -m toybigram.train`` as runpy runs it, with the choice recorded when it is made."""
    code = (
        "import runpy, sys\n"
        "import toybigram.startup as startup\n"
        "startup.cores_busy = lambda: True\n"
        "seen = []\n"
        "choose = startup.choose_omp_wait_policy\n"
        "startup.choose_omp_wait_policy = lambda: seen.append(('torch' in sys.modules, choose()))\n"
        "sys.argv = ['toybigram.train', '--cfg', 'job']\n"
        "try:\n"
        "    runpy.run_module('toybigram.train', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    print('SEEN', seen)\n"
    )
    out = python(code)
    assert out.returncode == 0, out.stderr
    assert "SEEN [(False, 'PASSIVE')]" in out.stdout
    assert "train:" in out.stdout  # the job's config was printed


def test_the_training_command_still_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "toybigram.train", "--cfg", "job", "threads=1"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "threads: 1" in out.stdout and "train:" in out.stdout


def test_a_policy_the_user_set_wins(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(startup, "cores_busy", lambda: True)
    assert startup.choose_omp_wait_policy() == "ACTIVE"


def test_nothing_changes_once_torch_is_loaded(monkeypatch):
    """The runtime has read its policy already; the environment keeps saying what it read."""
    import torch  # noqa: F401

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(startup, "cores_busy", lambda: True)
    assert startup.choose_omp_wait_policy() is None
    assert "OMP_WAIT_POLICY" not in os.environ


def test_cores_busy_reads_the_runnable_tasks(monkeypatch, tmp_path):
    loadavg = tmp_path / "loadavg"
    cores = os.cpu_count() or 1
    monkeypatch.setattr(startup, "LOADAVG", str(loadavg))
    loadavg.write_text(f"0.50 0.40 0.30 {1 + max(1, cores // 2)}/300 12345\n")
    assert startup.cores_busy(samples=1)
    loadavg.write_text("0.50 0.40 0.30 1/300 12345\n")
    assert not startup.cores_busy(samples=1)
