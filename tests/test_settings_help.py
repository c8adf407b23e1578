"""Every setting has one description, shown by --help and by the README's table."""
import subprocess
import sys
from pathlib import Path

from toybigram.config import TrainAppConfig, settings_table
from toybigram.settings_help import setting_docs, undocumented

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_described():
    docs = setting_docs(TrainAppConfig)
    assert {"model.pos", "model.rope_base", "train.progress", "seed", "max_memory_gb"} <= {d.key for d in docs}
    assert undocumented(docs) == []


def test_readme_table_is_the_generated_one():
    assert settings_table() in (ROOT / "README.md").read_text(), "README's settings table is stale: paste `python -m toybigram.config`"


def test_help_lists_every_setting_with_its_description():
    result = subprocess.run([sys.executable, "-m", "toybigram.train", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for doc in setting_docs(TrainAppConfig):
        line = next((ln for ln in lines if ln.strip().startswith(f"{doc.key}=")), None)
        assert line is not None, f"{doc.key} missing from --help"
        assert line.split(None, 1) == [f"{doc.key}={doc.default}", doc.description]
    assert "data: dirichlet, shakespeare, text" in result.stdout
