"""Where and how torch computes: the device, the floating-point type and the CPU thread count."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

from toybigram.checks import choice
from toybigram.errors import ConfigError, require

DEVICES = "cpu, cuda, cuda:N or auto"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """cpu, cuda, cuda:N, or auto (CUDA when present). TF32 stays off so theory comparisons hold."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device {name!r} (choose {DEVICES})") from None
    if device.type == "cuda":
        require(torch.cuda.is_available(), "device", f"{name} requested but CUDA is not available")
        count = torch.cuda.device_count()
        require(device.index is None or device.index < count, "device", f"{name}: this machine has {count} CUDA device(s)")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        require(device.type == "cpu", "device", f"unsupported device {name!r} (choose {DEVICES})")
    return device


def resolve_dtype(name: str, setting: str = "model.dtype", choices: Iterable[str] = tuple(DTYPES)) -> torch.dtype:
    """The torch dtype called ``name``, one of ``choices`` (ConfigError naming ``setting`` otherwise)."""
    return DTYPES[choice(name, setting, choices)]


def apply_threads(threads: int) -> None:
    """Set torch's CPU thread count (0 keeps torch's default)."""
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(int(threads))


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (0 keeps the current count), then restore the count."""
    previous = torch.get_num_threads()
    apply_threads(threads)
    try:
        yield
    finally:
        apply_threads(previous)
