"""toybigram: how transformers weigh in-context evidence against knowledge stored in their weights.

A bigram-with-triggers sampler, a two-layer associative-memory transformer, probes of its
memories, and an analytic calculator of its logits.

Importing the package has no side effect and does not load torch: the names below are
loaded from their modules on first use, so that a command (``python -m toybigram.train``)
can set up its process (toybigram.startup) before torch loads.
"""
from toybigram.exports import by_name, lazy_exports

__version__ = "0.1.0"

_EXPORTS = by_name({
    "toybigram.model": ("AssociativeTransformer", "ModelSpec"),
    "toybigram.data": ("BigramChain", "TriggerSampler", "dirichlet_chain", "shakespeare_chain", "text_chain"),
})
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
