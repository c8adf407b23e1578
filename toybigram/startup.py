"""What a command settles before it loads torch: a quiet Ctrl-C, OpenMP's wait policy, and whether
a person watches it (progress bars) or a log does (progress lines).

Importing toybigram changes nothing in the process. Each command-line entry point calls
``start_command()`` as its first statement, before it imports torch: torch's OpenMP runtime
reads ``OMP_WAIT_POLICY`` once, when its library is loaded by ``import torch``, so a value set
afterwards has no effect. This module therefore imports nothing but the standard library.
"""
from __future__ import annotations

import os
import signal
import sys
import time

WAIT_POLICY = "OMP_WAIT_POLICY"


def on_terminal() -> bool:
    """Whether a person watches stderr (bars) rather than a log (lines); CI counts as a log."""
    return sys.stderr.isatty() and not os.environ.get("CI")
LOADAVG = "/proc/loadavg"


def _interrupted_while_starting(signum, frame):
    # os._exit, not sys.exit: a SystemExit raised inside a half-done import (torch, matplotlib)
    # can be caught there and end in a traceback; nothing has been written yet to clean up.
    sys.stderr.write("error: interrupted\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def quiet_interrupt() -> None:
    """Ctrl-C ends the command with one ``error: interrupted`` line instead of a traceback.

    Only where Python's own handler is in place; the training loop installs its own
    (stop at the next step boundary) while it runs.
    """
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_while_starting)


def cores_busy(samples: int = 3) -> bool:
    """Whether other processes keep at least half the cores busy right now.

    Linux: the runnable-task count of /proc/loadavg (minus this process), the least of a
    few reads 5 ms apart; elsewhere the 1-minute load average (which lags by a minute).
    """
    cores = os.cpu_count() or 1
    try:
        others = []
        for i in range(samples):
            with open(LOADAVG) as f:
                others.append(int(f.read().split()[3].split("/")[0]) - 1)
            if i + 1 < samples:
                time.sleep(0.005)
        return min(others) >= max(1, cores // 2)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0] >= cores - 0.5
    except (AttributeError, OSError):  # no load average on this platform
        return False


def choose_omp_wait_policy() -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when other processes keep the cores busy; returns the policy in force.

    Threads that spin between parallel ops make every op wait for a scheduler tick when
    another process holds a core, so on a busy machine they should sleep at once (PASSIVE);
    on idle cores the runtime's default (spin briefly, then sleep) is faster. A value the
    user set wins, and once torch is loaded nothing is changed: its runtime has read the
    policy already, and the environment should say what it read.
    """
    if WAIT_POLICY not in os.environ and "torch" not in sys.modules and cores_busy():
        os.environ[WAIT_POLICY] = "PASSIVE"
    return os.environ.get(WAIT_POLICY)


def start_command() -> None:
    """The first call of every command-line entry point, before torch is imported."""
    quiet_interrupt()
    choose_omp_wait_policy()
