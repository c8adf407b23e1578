"""The paper figures, one module each, every one defining ``FIGURE`` (experiments.figure.Figure).

``experiments.figure.registry()`` imports every module here and in the folders listed in the
environment variable TOYBIGRAM_FIGURE_PATH (separated like PATH), so a figure can also live
outside the repository.
"""
import os

FIGURE_PATH_VARIABLE = "TOYBIGRAM_FIGURE_PATH"

__path__ += [folder for folder in os.environ.get(FIGURE_PATH_VARIABLE, "").split(os.pathsep) if folder]
