"""Figure 11: knowledge hijack on SmolLM2-135M beside the toy, redrawn from its tables in paper_figures/data/
(python paper_figures/fig11_hijack_lm.py [--data DIR] [--out DIR]); the figure: experiments/figures/fig11_hijack_lm.py."""
from experiments.figures.fig11_hijack_lm import FIGURE

main = FIGURE.script_main

if __name__ == "__main__":
    main()
