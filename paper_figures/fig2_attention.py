"""Figure 2: attention maps of both layers, redrawn from its tables in paper_figures/data/
(python paper_figures/fig2_attention.py [--data DIR] [--out DIR]); the figure: experiments/figures/fig2_attention.py."""
from experiments.figures.fig2_attention import FIGURE

main = FIGURE.script_main

if __name__ == "__main__":
    main()
