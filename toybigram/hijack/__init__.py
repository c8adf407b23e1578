"""Knowledge hijack on a real language model (or the toy): does an in-context pair "q o", repeated c times,
override what the model stored about q, and from which count c*(T)? ``python -m toybigram.hijack``."""
