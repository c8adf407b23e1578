"""Every argparse command of the project refuses a bad command line like the Hydra ones do:
one ``error:`` line naming the problem on stderr, nothing on stdout, exit code 2."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.figure import registry

ROOT = Path(__file__).resolve().parents[1]

MODULES = [
    "toybigram.bench", "toybigram.report.__main__", "toybigram.theory.ladder", "toybigram.theory.paths",
    "toybigram.theory.width", "toybigram.repetition.bench", "toybigram.repetition.export",
    "toybigram.repetition.toy_loops", "toybigram.hijack.export", "experiments.run", "experiments.aggregate",
]


def assert_one_error_line(out: str, err: str, name: str) -> None:
    assert out == "", (name, out)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert "--no-such-option" in lines[0] or "required" in lines[0], (name, err)  # names the option or what is missing


@pytest.mark.parametrize("module", MODULES)
def test_an_unknown_option_is_one_error_line_with_exit_2(module, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(["--no-such-option"])
    assert stop.value.code == 2
    assert_one_error_line(*capsys.readouterr(), module)


def test_every_figure_script_refuses_an_unknown_option_in_one_line(capsys):
    for key, figure in registry().items():
        with pytest.raises(SystemExit) as stop:
            figure.script_main(["--no-such-option"])
        assert stop.value.code == 2
        assert_one_error_line(*capsys.readouterr(), key)


def test_through_the_command_line():
    """Two of them as users run them: ``python -m`` a module, and a figure script."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    commands = [[sys.executable, "-m", "toybigram.hijack.export"], [sys.executable, "paper_figures/fig8_repetition.py"]]
    running = [(c[-1], subprocess.Popen([*c, "--no-such-option"], cwd=ROOT, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)) for c in commands]
    for name, process in running:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 2, (name, err)
        assert_one_error_line(out, err, name)
