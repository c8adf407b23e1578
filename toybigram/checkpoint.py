"""Checkpoints: written atomically, loaded without arbitrary pickle (``weights_only=True``)."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from toybigram.errors import UserError
from toybigram.runio import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any], config: dict) -> None:
    """Save tensors, optimizer state and plain values, plus the run's config as JSON text."""
    buffer = io.BytesIO()
    torch.save({**state, "config_json": json.dumps(config)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupted or foreign file
        raise UserError(f"cannot load checkpoint {path}: {err}") from None
    state["config"] = json.loads(state.pop("config_json"))
    return state


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """The trained model of a run directory and its config: ``(model, cfg)``."""
    from toybigram.build import make_chain, make_spec
    from toybigram.model import AssociativeTransformer

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"no run directory at {run_dir}")
    state = load_checkpoint(run_dir / CHECKPOINT_FILE, device)
    cfg = OmegaConf.create(state["config"])
    chain = make_chain(cfg.data)
    model = AssociativeTransformer(make_spec(cfg, chain), seed=cfg.seed).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg
