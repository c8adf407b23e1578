"""The README's Python blocks run as written, after a small training run in a fresh working directory."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert python_blocks(), "the README lost its notebook example"


@pytest.mark.parametrize("block", range(len(python_blocks())))
def test_readme_block_runs_after_a_training_run(tmp_path, block):
    train = subprocess.run([sys.executable, "-m", "toybigram.train", *TINY, "train.steps=30", "train.report=false", "threads=1"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    latest = tmp_path / "outputs" / "train" / "latest"
    assert latest.is_symlink() and (latest / "summary.json").is_file()
    script = tmp_path / "block.py"
    script.write_text(python_blocks()[block] + "\nimport json\nprint('PROBES', json.dumps(globals().get('probes', {})))\n")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((latest / "summary.json").read_text())
    probes = json.loads(result.stdout.split("PROBES", 1)[1])
    for key, value in probes.items():  # the block's probes are the summary's, from the same weights
        assert value == pytest.approx(summary[key], abs=1e-6), key


def test_a_run_with_its_own_directory_leaves_latest_alone(tmp_path):
    result = subprocess.run([sys.executable, "-m", "toybigram.train", *TINY, "train.steps=10", "train.report=false", "threads=1",
                             "hydra.run.dir=mine"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "outputs" / "train" / "latest").exists()


NUMBER = re.compile(r"-?\d+\.\d+")
# The lines with numbers (not timings), by the words they start with.
COMPARED = ("in-context  acc", "global", "first occ.", "probes", "attention", "theory:", "in-context R^2")


def main_job_block() -> str:
    section = (ROOT / "README.md").read_text().split("### What the main job does and prints", 1)[1]
    return re.search(r"```\n(.*?)```", section, flags=re.S).group(1)


def numbered_lines(text: str) -> dict[str, list[str]]:
    lines = (line.strip() for line in text.splitlines())
    return {next(p for p in COMPARED if line.startswith(p)): NUMBER.findall(line) for line in lines if line.startswith(COMPARED)}


def test_the_main_job_prints_the_numbers_the_readme_shows(tmp_path):
    """The README quotes the main job's output: the job on its defaults prints the same figures (to the last digit
    shown, give or take two units for other CPUs' rounding). The README's run used two threads (`make run` on 2 cores)."""
    result = subprocess.run([sys.executable, "-m", "toybigram.train", "train.report=false", "threads=2", "hydra.run.dir=run"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    quoted, printed = numbered_lines(main_job_block()), numbered_lines(result.stdout)
    assert quoted.keys() == printed.keys() and len(quoted) == len(COMPARED)
    for key, numbers in quoted.items():
        assert len(numbers) == len(printed[key]), (key, printed[key])
        for shown, actual in zip(numbers, printed[key]):
            unit = 10.0 ** -len(shown.split(".")[1])
            assert abs(float(shown) - float(actual)) <= 2 * unit + 1e-12, (key, shown, actual)
