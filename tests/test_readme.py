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
