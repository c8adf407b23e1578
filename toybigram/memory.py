"""How much memory a training run needs, estimated from its sizes before anything is allocated.

The estimate adds the process itself (Python, torch, Hydra), what every instance keeps
(weights, gradients and optimizer state, the samplers' N x N alias tables, the held-out
batch), a training step and an evaluation:

- a training step of B sequences of T tokens keeps, per layer, the B x T x T attention
  pattern for the backward pass and briefly holds the scores and their gradients, about ten
  B x T x d activations, and the B x T x N logits with their log-softmax and gradients;
  S instances trained together need S times that;
- an evaluation runs the held-out batch in chunks of at most ``CHUNK_SCORES`` attention
  scores, but keeps the whole batch's patterns (every layer) and logits for the probes.

Step and evaluation are added, not maxed: the allocator keeps what a step freed for reuse,
and an evaluation of other sizes cannot use it. The constants were fitted to the peak
resident memory of real runs (``/usr/bin/time -v``) so that the estimate stays above the
measured peak. ``check_memory`` refuses a run above ``max_memory_gb``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from toybigram.checks import number
from toybigram.errors import ConfigError
from toybigram.evaluation import CHUNK_SCORES
from toybigram.model import ModelSpec
from toybigram.positional import positional_encoding

GB = 1e9
RUNTIME_BYTES = 0.40 * GB  # Python with torch, numpy and Hydra loaded, and torch's first kernels
INSTANCE_BYTES = 2e6  # the Python objects of one more instance: modules, hooks, optimizer, samplers
STEP_ACTIVATIONS = 10  # B x T x d activations alive at the peak of a step (kept for backward, and gradients)
EVAL_ACTIVATIONS = 4  # B x T x d activations alive at once in a forward pass without gradients
# Chunked evaluation keeps every chunk's patterns and logits, then concatenates them; the small
# chunks fragment the heap, so the process holds about three copies of the whole batch's.
CHUNKED_COPIES = 3
TOKEN_BYTES = 64  # per sampled token: the walk's draws, tokens, labels and loss masks
DEFAULT_RAM_SHARE = 0.5
DEFAULT_GPU_SHARE = 0.9
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


@dataclass(frozen=True)
class RunShape:
    """The sizes that fix a run's memory."""

    batch_size: int
    eval_batch_size: int
    seq_len: int
    vocab_size: int
    d_model: int
    d_hidden: int  # 0 unless the feed-forward block is relu
    n_layers: int
    table_rows: int  # rows of the frozen position tables (ape, rpe), else 0
    pos: str  # the positional encoding's name
    ffn: str
    n_triggers: int
    instances: int
    dtype_bytes: int
    optimizer_states: int  # per trainable entry: 2 for adamw, 1 for sgd

    @classmethod
    def of(cls, cfg: DictConfig, spec: ModelSpec) -> "RunShape":
        train = cfg.train
        return cls(
            batch_size=train.batch_size, eval_batch_size=train.eval_batch_size, seq_len=cfg.data.seq_len,
            vocab_size=spec.vocab_size, d_model=spec.d_model, d_hidden=spec.d_hidden if spec.ffn == "relu" else 0,
            n_layers=spec.n_layers, table_rows=spec.positional.table_rows(spec), pos=spec.pos,
            ffn=spec.ffn, n_triggers=cfg.data.n_triggers, instances=train.get("instances", 1),
            dtype_bytes=8 if spec.dtype == "float64" else 4, optimizer_states=2 if cfg.optim.name == "adamw" else 1,
        )


def step_bytes(x: RunShape) -> float:
    """Peak of one training step of one instance, forward and backward."""
    B, T, s = x.batch_size, x.seq_len, x.dtype_bytes
    attention = B * T * T * s * (x.n_layers + 2) + 3 * T * T  # patterns kept, scores and gradients; causal masks
    attention += positional_encoding(x.pos).score_bytes(B, T, x.table_rows, s)
    activations = B * T * (STEP_ACTIVATIONS * x.d_model + 4 * x.d_hidden) * s
    products = 8 * x.d_model**2 * s  # W_O W_V, W_E W and the like, with their gradients
    logits = B * T * x.vocab_size * (2 * s + 8)  # logits and gradient; float32 log-softmax and gradient
    return attention + activations + products + logits + B * T * TOKEN_BYTES


def evaluation_bytes(x: RunShape) -> float:
    """Peak of one evaluation: chunked forward passes, then the whole batch's patterns and logits for the probes."""
    B, T, N, s = x.eval_batch_size, x.seq_len, x.vocab_size, x.dtype_bytes
    chunk = min(B, max(1, CHUNK_SCORES // T**2))
    kept = B * T * N * s + x.n_layers * B * T * T * s
    gathering = kept * (CHUNKED_COPIES if chunk < B else 1) + chunk * T * (2 * T + EVAL_ACTIVATIONS * x.d_model) * s
    probes = kept + 2 * B * T * N * 4 + B * T * T * (2 + 2 * s)  # float32 losses; the probes' masks
    return max(gathering, probes) + 4 * N * N * s  # the weight probes' N x N memories


def instance_bytes(x: RunShape) -> float:
    """What one instance keeps: weights with gradients and optimizer state, sampler tables, held-out batch."""
    d, N, s = x.d_model, x.vocab_size, x.dtype_bytes
    frozen = (2 * N * d + x.table_rows * d + (2 * x.n_layers - 1) * d * d) * s
    ffn = {"none": 0, "linear": d * d, "relu": 2 * d * x.d_hidden}[x.ffn]
    trainable = ((x.n_layers + 1) * d * d + ffn) * s * (2 + x.optimizer_states)
    samplers = N * N * (2 * 16 + 8)  # two samplers' alias tables and the transition matrix for the probes
    held_out = x.eval_batch_size * (x.seq_len + 1) * 32
    stacked = frozen if x.instances > 1 else 0  # vmapped instances stack the frozen matrices once more
    return frozen + trainable + samplers + held_out + stacked + INSTANCE_BYTES


def estimate(x: RunShape) -> dict[str, float]:
    """Bytes by part (runtime, instances, chain, step, evaluation) and their ``total``."""
    N, S = x.vocab_size, x.instances
    parts = {
        "runtime": RUNTIME_BYTES,
        "weights and tables": S * instance_bytes(x) + 48 * N * N,  # + the chain and its construction
        "training step": S * step_bytes(x) + 16 * (N * N + S * x.batch_size * x.n_triggers * N),
        "evaluation": evaluation_bytes(x),
    }
    # A step's freed memory stays with the allocator for reuse; an evaluation of other sizes adds to it.
    return {**parts, "total": sum(parts.values())}


PART_SETTINGS = {
    "training step": ("train.batch_size", "data.seq_len", "model.d_model", "data.vocab_size", "train.instances"),
    "evaluation": ("train.eval_batch_size", "data.seq_len", "data.vocab_size", "model.d_model"),
    "weights and tables": ("model.d_model", "data.vocab_size", "model.max_len", "train.instances"),
}


def memory_budget(max_memory_gb: float | None, device: torch.device) -> tuple[float, str]:
    """The budget in bytes and where it comes from: ``max_memory_gb``, else a share of RAM (or of the GPU's memory)."""
    if max_memory_gb is not None:
        return number(max_memory_gb, "max_memory_gb", above=0) * GB, "max_memory_gb"
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device.index or 0).total_memory
        return DEFAULT_GPU_SHARE * total, f"the default, {DEFAULT_GPU_SHARE:.0%} of the GPU's {gb(total)} GB"
    total = physical_memory()
    if total is None:
        return 8 * GB, "the default for a machine whose RAM is unknown"
    return DEFAULT_RAM_SHARE * total, f"the default, half of this machine's {gb(total)} GB of RAM"


def physical_memory() -> float | None:
    """Bytes of RAM this process may use: physical memory, or a lower container (cgroup) limit."""
    try:
        total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None
    for limit_file in CGROUP_LIMITS:
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, float(limit))
    return total


def gb(size: float) -> str:
    value = size / GB
    return f"{value:.1f}" if value < 1e4 else f"{value:.3g}"


def check_memory(cfg: DictConfig, spec: ModelSpec, device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Refuse (ConfigError naming max_memory_gb) a run whose estimate exceeds the budget; returns the estimate."""
    budget, source = memory_budget(cfg.get("max_memory_gb"), device)
    parts = estimate(RunShape.of(cfg, spec))
    if device.type == "cuda":
        parts["total"] -= RUNTIME_BYTES  # the process itself lives in host memory
    if parts["total"] > budget:
        largest = max(PART_SETTINGS, key=parts.get)
        values = ", ".join(f"{name}={effective_value(cfg, name, spec)}" for name in PART_SETTINGS[largest])
        raise ConfigError(
            f"max_memory_gb: this run needs about {gb(parts['total'])} GB, most of it for the {largest} ({values}), "
            f"but the budget is {gb(budget)} GB ({source}); lower those settings or raise max_memory_gb"
        )
    return parts


def effective_value(cfg: DictConfig, name: str, spec: ModelSpec):
    """A setting's effective value for the message: N and the table length as the spec resolved them."""
    if name == "data.vocab_size":
        return spec.vocab_size
    if name == "model.max_len":
        return spec.max_len
    group, key = name.split(".")
    return cfg[group].get(key, 1)
