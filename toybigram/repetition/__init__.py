"""Repetition neurons (Hiraoka & Inui, "Repetition Neurons: How Do Language Models Produce Repetitions?", NAACL 2025).

Find feed-forward neurons whose activation rises once a greedy-decoding loop begins,
then switch them off or on to test whether they cause the loop (``docs/repetition.md``). Works on Hugging Face
causal LMs (SmolLM2 from a GGUF file, any local model directory) and on toybigram's own
model trained with ``model.ffn=relu``. Entry point: ``python -m toybigram.repetition``.
"""
