"""Figure 3: length generalisation, redrawn from its tables in paper_figures/data/
(python paper_figures/fig3_length.py [--data DIR] [--out DIR]); the figure: experiments/figures/fig3_length.py."""
from experiments.figures.fig3_length import FIGURE

main = FIGURE.script_main

if __name__ == "__main__":
    main()
