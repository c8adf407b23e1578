"""Checkpoints: written atomically, loaded without arbitrary pickle (``weights_only=True``).

A checkpoint holds the model and optimizer state, plain values (step, sampler RNG state)
and the run's resolved config as JSON text, plus ``format_version``. Version 1 files
(written before the field existed) load like version 2 ones. A config saved by older
code lacks the settings added since: they are filled from the structured-config
defaults (toybigram.config.TrainAppConfig), which reproduce the older behaviour. Every
way a file can be unusable (empty, truncated, foreign, newer format, settings this code
does not know, a config that does not match the weights) ends in one UserError line.
"""
from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from toybigram.factory import make_chain, make_spec
from toybigram.config import TrainAppConfig
from toybigram.errors import UserError
from toybigram.model import AssociativeTransformer
from toybigram.runio import TEMPORARY_SUFFIX, atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 2  # 1: no format_version field (read the same way, missing settings filled from the defaults)
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format
# tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp"), as runio.atomic_write_bytes names its temporaries
ATOMIC_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX) + "$")


def save_checkpoint(path: str | Path, state: dict[str, Any], config: dict) -> None:
    """Save tensors, optimizer state and plain values, plus the run's config as JSON text and the format version."""
    buffer = io.BytesIO()
    torch.save({**state, "format_version": FORMAT_VERSION, "config_json": json.dumps(config)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, setting: str | None = None) -> dict[str, Any]:
    """The checkpoint's contents with ``state["config"]`` a plain dict, complete for this code's schema.

    Raises UserError (prefixed with ``setting`` when given) for a missing, empty,
    truncated or foreign file, a newer format, or a config that cannot be read.
    """
    path = Path(path)
    try:
        state = _read_state(path, map_location)
        _check_version(state.pop("format_version", 1), path)
        state["config"] = complete_config(_saved_config(state.pop("config_json"), path), path)
    except UserError as err:
        raise UserError(f"{setting}: {err}" if setting else str(err)) from None
    return state


def _where(path: Path) -> str:
    return f"{path.name} in {path.parent}"


def _read_state(path: Path, map_location) -> dict[str, Any]:
    """torch.load with tensors and plain values only; every failure becomes one line that says what is wrong."""
    if not path.is_file():
        raise UserError(f"no {path.name} in {path.parent}" if path.parent.is_dir() else f"no checkpoint at {path}")
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(ZIP_MAGIC))
    except PermissionError:
        raise UserError(f"{_where(path)} cannot be read (permission denied)") from None
    if not head:
        raise UserError(f"{_where(path)} is empty")
    if head != ZIP_MAGIC:  # torch.save has written zip archives since torch 1.6; anything else is not ours
        raise UserError(f"{_where(path)} is corrupt or another kind of file (not a PyTorch archive): "
                        "not a toybigram checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # objects other than tensors and plain values: refused, never executed
        raise UserError(f"{_where(path)} is not a toybigram checkpoint (it is damaged, or holds objects other "
                        "than tensors and plain values, which are never loaded)") from None
    except Exception:  # a cut or damaged archive: torch reports zip-reader or I/O errors
        raise UserError(f"{_where(path)} is truncated or corrupt: not a toybigram checkpoint") from None
    if not isinstance(state, dict) or "model" not in state or "config_json" not in state:
        raise UserError(f"{_where(path)} is not a toybigram checkpoint (no model weights and config)")
    return state


def _check_version(version: Any, path: Path) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{_where(path)} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise UserError(f"{_where(path)} has checkpoint format version {version}; this code reads versions "
                        f"up to {FORMAT_VERSION} (update toybigram)")


def _saved_config(text: Any, path: Path) -> dict:
    if not isinstance(text, str):
        raise UserError(f"{_where(path)} has no readable config (config_json is not text)")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{_where(path)} has a malformed config (invalid JSON: {err.msg} at line {err.lineno} "
                        f"column {err.colno})") from None
    if not isinstance(config, dict):
        raise UserError(f"{_where(path)} has a malformed config (a JSON {type(config).__name__}, not an object)")
    return config


def _schema() -> DictConfig:
    schema = OmegaConf.structured(TrainAppConfig)
    settings = OmegaConf.masked_copy(schema, [key for key in schema if key != "defaults"])
    OmegaConf.set_struct(settings, False)  # unknown keys are found by unknown_settings; dict settings take any key
    return settings


def unknown_settings(saved: dict, schema: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys of ``saved`` that the schema does not have (free-form dict settings are not entered)."""
    unknown = []
    for key, value in saved.items():
        if key not in schema:
            unknown.append(f"{prefix}{key}")
        elif isinstance(value, dict) and OmegaConf.is_dict(schema[key]) and OmegaConf.get_type(schema[key]) is not dict:
            unknown += unknown_settings(value, schema[key], f"{prefix}{key}.")
    return unknown


def complete_config(saved: dict, path: str | Path = CHECKPOINT_FILE) -> dict:
    """``saved`` merged onto the structured-config defaults: settings added since it was written get their default."""
    path, schema = Path(path), _schema()
    unknown = unknown_settings(saved, schema)
    if unknown:
        raise UserError(f"{_where(path)} has settings this code does not know: {', '.join(sorted(unknown))} "
                        "(written by a newer or edited toybigram?)")
    try:
        merged = OmegaConf.merge(schema, saved)
        return OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        reason = str(err).strip().splitlines()[0]
        key = getattr(err, "full_key", None)
        raise UserError(f"{_where(path)} has an invalid config: {f'{key}: ' if key else ''}{reason}") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", *, setting: str = "run_dir",
             ape_extension: str | None = None):
    """The trained model of a run directory and its config: ``(model, cfg)``.

    ``ape_extension`` (error, random or clamp) replaces the run's policy for prompts longer
    than its absolute position table, which changes no weight: ``random`` lets a notebook
    feed longer prompts. Errors are one UserError line prefixed with ``setting``: no
    directory, an unusable checkpoint, a config that no longer builds, or weights that do
    not match the config.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{setting}: no run directory at {run_dir}")
    path = run_dir / CHECKPOINT_FILE
    state = load_checkpoint(path, device, setting=setting)
    cfg = OmegaConf.create(state["config"])
    if ape_extension is not None:
        cfg.model.ape_extension = ape_extension
    try:
        model = AssociativeTransformer(make_spec(cfg, make_chain(cfg.data)), seed=cfg.seed).to(device)
    except UserError as err:
        raise UserError(f"{setting}: the config in {_where(path)} does not build a model: {err}") from None
    mismatch = state_mismatch(model.state_dict(), state["model"])
    if mismatch:
        raise UserError(f"{setting}: {_where(path)} does not match its own config: {mismatch}")
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg


def state_mismatch(expected: dict[str, torch.Tensor], saved: dict[str, Any]) -> str | None:
    """Why ``saved`` weights cannot go into a model with state ``expected`` (first problem), or None."""
    missing = [name for name in expected if name not in saved]
    if missing:
        return f"tensor {missing[0]} is missing from the file"
    extra = [name for name in saved if name not in expected]
    if extra:
        return f"tensor {extra[0]} in the file has no place in the model"
    for name, tensor in expected.items():
        stored = saved[name]
        if not isinstance(stored, torch.Tensor):
            return f"{name} in the file is not a tensor"
        if stored.shape != tensor.shape:
            return (f"tensor {name} has shape {tuple(stored.shape)} in the file but {tuple(tensor.shape)} "
                    "under the config (model.d_model, data.vocab_size, model.max_len?)")
        if stored.dtype != tensor.dtype:
            return f"tensor {name} is {stored.dtype} in the file but {tensor.dtype} under the config (model.dtype?)"
    return None


def clean_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove the temporaries a process killed mid-write left in ``run_dir`` and its folders; returns them.

    Only names of toybigram's atomic writes (``.<file>.<8 random characters>.tmp``, see
    runio.atomic_write_bytes) are touched. The ``instance{i}/`` folders of seeds trained
    together are runs of their own and are cleaned when they start. Call it only when no
    other process is writing into the directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    folders = [run_dir] + [p for p in sorted(run_dir.iterdir()) if p.is_dir() and not p.name.startswith("instance")]
    stale = [p for folder in folders for p in sorted(folder.iterdir()) if p.is_file() and ATOMIC_TEMPORARY.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
