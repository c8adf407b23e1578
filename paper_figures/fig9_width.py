"""Figure 9: where the theory holds, the scalar calculator's ladder against width, redrawn from its tables in
paper_figures/data/ (python paper_figures/fig9_width.py [--data DIR] [--out DIR]); the figure: experiments/figures/fig9_width.py."""
from experiments.figures.fig9_width import FIGURE

main = FIGURE.script_main

if __name__ == "__main__":
    main()
