"""Figure 8: repetition neurons in SmolLM2-135M, redrawn from its tables in paper_figures/data/
(python paper_figures/fig8_repetition.py [--data DIR] [--out DIR]); the figure: experiments/figures/fig8_repetition.py."""
from experiments.figures.fig8_repetition import FIGURE

main = FIGURE.script_main

if __name__ == "__main__":
    main()
