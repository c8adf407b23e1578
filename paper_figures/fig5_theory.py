"""Figure 5: theory against measurement, and agreement against width, redrawn from its tables in paper_figures/data/
(python paper_figures/fig5_theory.py [--data DIR] [--out DIR]); the figure: experiments/figures/fig5_theory.py."""
from experiments.figures.fig5_theory import FIGURE

main = FIGURE.script_main

if __name__ == "__main__":
    main()
