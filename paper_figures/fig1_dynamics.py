"""Figure 1: training dynamics, redrawn from its tables in paper_figures/data/
(python paper_figures/fig1_dynamics.py [--data DIR] [--out DIR]); the figure: experiments/figures/fig1_dynamics.py."""
from experiments.figures.fig1_dynamics import FIGURE

main = FIGURE.script_main

if __name__ == "__main__":
    main()
