"""One self-contained HTML report per run directory or sweep.

    python -m toybigram.report outputs/train/<date>/<time>          # writes <run dir>/report.html
    python -m toybigram.report multirun/<date>/<time> --out sweep.html

A run's report holds its status and provenance, the final figures with their meaning and
floor, training curves from metrics.jsonl, attention maps of every layer on a held-out
prompt, the theory headline and plots, and the resolved settings. A sweep's report (a folder
of runs: Hydra's 0/, 1/, ... or train.instances' instance0/, ...) gives the mean and 95%
t-interval over seeds of every figure and curve, per group of runs with equal settings,
and links each run's own report. Figures are defined in docs/metrics.md.

From Python: ``toybigram.report.build.write_report(run_dir)``. The package itself imports
nothing, so that ``python -m toybigram.report`` sets its process up before torch loads.
"""
