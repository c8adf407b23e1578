"""Figure 6: learned memories against the ideal ones, redrawn from its tables in paper_figures/data/
(python paper_figures/fig6_memories.py [--data DIR] [--out DIR]); the figure: experiments/figures/fig6_memories.py."""
from experiments.figures.fig6_memories import FIGURE

main = FIGURE.script_main

if __name__ == "__main__":
    main()
