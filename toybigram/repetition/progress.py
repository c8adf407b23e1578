"""Progress of the repetition study: each stage named as it starts, and never a long silence.

On a terminal every stage shows a tqdm bar on stderr. Otherwise (a log file, a Slurm job, a
pipe) a background thread logs where the study is whenever ``every_s`` seconds pass without a
line. Training prints its lines from its step loop (``toybigram.train.Progress``); the study
cannot, because one unit of work (an intervention condition, a perplexity pass, loading a real
model) can take minutes by itself.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from toybigram.startup import on_terminal

log = logging.getLogger("toybigram.repetition")


class Counter:
    """Progress within a stage, with the calls of a tqdm bar: ``update``, ``set_postfix_str``, ``close``."""

    def __init__(self, total: int, desc: str, unit: str, initial: int, show_bar: bool):
        self.total, self.desc, self.unit, self.done, self.postfix = total, desc, unit, initial, ""
        self.bar = None
        if show_bar:
            from tqdm.auto import tqdm  # deferred: only a terminal needs it

            self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def status(self) -> str:
        postfix = f" ({self.postfix})" if self.postfix else ""
        return f"{self.desc} {self.done}/{self.total} {self.unit}s{postfix}"


class StudyProgress:
    """Stage lines for the whole study; ``show`` adds bars (terminal) or timed lines (otherwise).

    Use as a context manager around the study (it owns the thread that writes the timed lines),
    ``stage(title)`` around each stage, and call it like ``tqdm(total, desc, unit)`` for a counter.
    """

    def __init__(self, n_stages: int, show: bool, every_s: float, logger: logging.Logger = log):
        self.n_stages, self.every_s, self.log = n_stages, every_s, logger
        self.bars = show and on_terminal()
        self.timed_lines = show and not self.bars
        self.index, self.title, self.stage_start = 0, "starting", time.perf_counter()
        self.counter: Counter | None = None
        self.last_line = time.perf_counter()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="repetition-progress", daemon=True)

    def __enter__(self) -> "StudyProgress":
        if self.timed_lines:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()

    def __call__(self, total: int, desc: str, unit: str = "text", initial: int = 0) -> Counter:
        self.counter = Counter(total, desc, unit, initial, self.bars)
        return self.counter

    @contextmanager
    def stage(self, title: str) -> Iterator[None]:
        """Log ``stage i/n: title`` now and the stage's wall time when it ends."""
        with self.lock:
            self.index, self.title, self.counter = self.index + 1, title, None
            self.stage_start = time.perf_counter()
        self.say(f"stage {self.index}/{self.n_stages}: {title}")
        yield
        self.say(f"stage {self.index}/{self.n_stages} done in {time.perf_counter() - self.stage_start:.1f} s")

    def say(self, text: str) -> None:
        with self.lock:
            self.log.info(text)
            self.last_line = time.perf_counter()

    def status(self) -> str:
        """Where the study is: the stage, its counter (if any) and the time spent in it."""
        where = self.counter.status() if self.counter is not None else self.title
        return f"  stage {self.index}/{self.n_stages}: {where}, {time.perf_counter() - self.stage_start:.0f} s"

    def _beat(self) -> None:
        while True:
            wait = self.last_line + self.every_s - time.perf_counter()
            if wait > 0:
                if self.stopped.wait(wait):
                    return
                continue
            self.say(self.status())
