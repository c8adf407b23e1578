"""Figure 10: predictions written before the model is measured, against the measured thresholds, redrawn from its tables
in paper_figures/data/ (python paper_figures/fig10_predictions.py [--data DIR] [--out DIR]); the figure:
experiments/figures/fig10_predictions.py."""
from experiments.figures.fig10_predictions import FIGURE

main = FIGURE.script_main

if __name__ == "__main__":
    main()
