"""Bigram sources and the bigram-with-triggers sampler."""
from toybigram.data.bigram import BigramChain, build_chain, dirichlet_chain, shakespeare_chain, text_chain
from toybigram.data.sampler import Batch, TriggerSampler

__all__ = [
    "Batch",
    "BigramChain",
    "TriggerSampler",
    "build_chain",
    "dirichlet_chain",
    "shakespeare_chain",
    "text_chain",
]
