"""toybigram: how transformers weigh in-context evidence against knowledge stored in their weights.

A bigram-with-triggers sampler, a two-layer associative-memory transformer, probes of its
memories, and an analytic calculator of its logits.
"""
import os
import signal
import sys
import time


def _interrupted_while_starting(signum, frame):
    sys.stderr.write("error: interrupted\n")
    sys.exit(128 + signum)


# Started as a command (`python -m toybigram.<app>`: argv[0] is "-m" while the package loads),
# Ctrl-C before the app takes over ends quietly instead of with a traceback from an import.
if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_starting)


def _cores_busy(samples: int = 3) -> bool:
    """Whether other processes keep at least half the cores busy right now.

    Linux: the runnable-task count of /proc/loadavg (minus this process), the least of a
    few reads 5 ms apart; elsewhere the 1-minute load average (which lags by a minute).
    """
    cores = os.cpu_count() or 1
    try:
        others = []
        for i in range(samples):
            with open("/proc/loadavg") as f:
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


# OpenMP's wait policy, chosen before torch loads its OpenMP runtime (a value set by the
# user wins; toybigram must be imported before torch for this to act). Threads that spin
# between parallel ops make every op stall for a scheduler tick when another process holds
# a core (measured on a busy 2-core machine: an 8192 x 128 add took 12 ms instead of
# 0.1 ms), so on a busy machine they sleep at once (PASSIVE). On idle cores the runtime's
# default (spin briefly, then sleep) is much faster: a d=64 training step took 7 ms with it
# and 15 ms with PASSIVE. See docs/performance.md.
if "OMP_WAIT_POLICY" not in os.environ and _cores_busy():
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from toybigram.data import BigramChain, TriggerSampler, dirichlet_chain, shakespeare_chain, text_chain  # noqa: E402
from toybigram.model import AssociativeTransformer, ModelSpec  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "AssociativeTransformer",
    "BigramChain",
    "ModelSpec",
    "TriggerSampler",
    "dirichlet_chain",
    "shakespeare_chain",
    "text_chain",
]
