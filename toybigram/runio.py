"""Run-directory I/O: atomic writes, JSON lines, provenance."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
INSTANCE_CONFIG_FILE = "config.yaml"  # an instance of seeds trained together records its single-run config here


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(obj: Any, indent: int | None = 2) -> str:
    """JSON text with tensors/arrays converted and non-finite floats as null."""
    return json.dumps(_jsonable(obj), indent=indent, allow_nan=False)


TEMPORARY_SUFFIX = ".tmp"


def _file_mode() -> int:
    """The mode a plain ``open`` would give a new file (0o666 less the umask); mkstemp's is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:  # a full disk names no file: say which write failed
        Path(tmp).unlink(missing_ok=True)
        if err.filename:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(dumps(row, indent=None) + "\n" for row in rows))


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row; a crash can lose the row but never leaves a partial line behind a full one."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(dumps(row, indent=None) + "\n")
        handle.flush()


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """A CSV table of ``rows`` (columns: every key, in order of first appearance), written atomically."""
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_tables(folder: str | os.PathLike, prefix: str, tables: dict[str, list[dict]]) -> None:
    """Each table as ``<folder>/<prefix>_<name>.csv`` (a figure's data), written atomically."""
    for name, rows in tables.items():
        write_csv(Path(folder) / f"{prefix}_{name}.csv", rows)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from an interrupted run
    return rows


def git_commit() -> str | None:
    """The source tree's commit, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(device: torch.device | str, dtype: torch.dtype | str) -> dict:
    """Versions, machine, device and dtype: recorded with every run."""
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    info = {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "hydra-core": version("hydra-core"),
            "toybigram": version("toybigram"),
        },
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["cuda_device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return info
