"""Figure 7: vocabulary size x prompt length, redrawn from its tables in paper_figures/data/
(python paper_figures/fig7_vocab_length.py [--data DIR] [--out DIR]); the figure: experiments/figures/fig7_vocab_length.py."""
from experiments.figures.fig7_vocab_length import FIGURE

main = FIGURE.script_main

if __name__ == "__main__":
    main()
