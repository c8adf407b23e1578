"""toybigram: how transformers weigh in-context evidence against knowledge stored in their weights.

A bigram-with-triggers sampler, a two-layer associative-memory transformer, probes of its
memories, and an analytic calculator of its logits.
"""
import os

# OpenMP threads that spin while waiting make every parallel torch op stall for a
# scheduler tick when another process holds a core (measured: an 8192 x 128 add took
# 12 ms instead of 0.1 ms on a busy 2-core machine). Sleeping waits cost little when
# the cores are free. Only effective when toybigram is imported before torch; a value
# set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
