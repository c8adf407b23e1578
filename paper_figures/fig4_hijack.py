"""Figure 4: knowledge-hijack phase diagram, model against calculator, redrawn from its tables in paper_figures/data/
(python paper_figures/fig4_hijack.py [--data DIR] [--out DIR]); the figure: experiments/figures/fig4_hijack.py."""
from experiments.figures.fig4_hijack import FIGURE

main = FIGURE.script_main

if __name__ == "__main__":
    main()
