"""Structured config of `python -m toybigram.theory`, registered in Hydra's ConfigStore."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from toybigram.theory.families import FAMILIES


@dataclass
class TheoryConfig:
    run_dir: Optional[str] = None  # a training run directory (holds checkpoint.pt); required
    out_dir: Optional[str] = None  # where the analysis is written; conf/theory.yaml makes it ${run_dir}
    quick: bool = False  # the short analysis the training job runs at its end
    variant: str = "full"  # full (memory matrices + readout paths) | diagonal (alpha_t, lambda_k, beta_k, g) | exact
    families: list[str] = field(default_factory=lambda: list(FAMILIES))  # the registry's (families.py), in run order
    seed: int = 0  # prompt generation
    plots: bool = True
    overwrite: bool = False  # replace an earlier analysis with the same settings
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (model forward; the calculator runs in float64 on CPU)
    threads: int = 0  # CPU threads for torch; 0 = the analysis's own choice (one: its tables are small)


def register_configs() -> None:
    """Store the schema in Hydra's ConfigStore (idempotent); the command calls it before composing."""
    ConfigStore.instance().store(name="theory_schema", node=TheoryConfig)
