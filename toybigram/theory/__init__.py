"""The analytic logit calculator and its comparison with the model."""
from toybigram.theory.calculator import Layer1, Prediction, Strengths, agreement, closed_form_incontext, hijack_threshold, predict
from toybigram.theory.compare import analyze_run
from toybigram.theory.ideal import ideal_model, log_bigram
from toybigram.theory.strengths import read_strengths

__all__ = ["Layer1", "Prediction", "Strengths", "agreement", "analyze_run", "closed_form_incontext", "hijack_threshold",
           "ideal_model", "log_bigram", "predict", "read_strengths"]
