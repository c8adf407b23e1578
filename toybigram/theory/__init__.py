"""The analytic logit calculator and its comparison with the model.

The names below load from their modules on first use, so that ``python -m toybigram.theory``
can set up its process (toybigram.startup) before torch loads.
"""
from toybigram.exports import by_name, lazy_exports

_EXPORTS = by_name({
    "toybigram.theory.calculator": ("Layer1", "Prediction", "Strengths", "agreement", "closed_form_incontext",
                                    "hijack_threshold", "predict"),
    "toybigram.theory.report": ("analyze_run",),
    "toybigram.theory.ideal": ("ideal_model", "log_bigram"),
    "toybigram.theory.strengths": ("read_strengths",),
})
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
