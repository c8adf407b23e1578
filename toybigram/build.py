"""The names a run is built with, under one roof: the factory, the settings validator and torch's runtime settings."""
from toybigram.factory import as_container, data_seeds, make_chain, make_sampler, make_spec
from toybigram.runtime import apply_threads, resolve_device, torch_threads
from toybigram.validation import validate

__all__ = ["apply_threads", "as_container", "data_seeds", "make_chain", "make_sampler", "make_spec", "resolve_device",
           "torch_threads", "validate"]
