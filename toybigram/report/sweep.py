"""The report of a sweep: per group of runs with equal settings, mean and 95% t-interval over seeds."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.special import stdtrit  # Student t quantile; scipy.stats costs a second to import

from toybigram.report import plots
from toybigram.report.figures import SECTIONS, THEORY_FIGURES, Context, Figure, fmt
from toybigram.report.page import Section, esc, image, page, status_badge, table
from toybigram.report.runs import Group, Run, group_runs
from toybigram.report.single import CURVE_KEYS, try_task

MAX_GROUPS_WITH_CURVES = 12
FLOOR_KEYS = ("bayes_loss_global", "gap_global", "bayes_loss_first", "gap_first")  # quoted beside the losses
INTERVAL_TEXT = ("95% interval: mean &plusmn; t<sub>0.975, n&minus;1</sub> &middot; s / &radic;n, with s the standard "
                 "deviation over the n finished runs (Student t over seeds; none for n = 1).")


def interval(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values; the interval is NaN for fewer than two."""
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n < 2:
        return mean, math.nan, math.nan, 1
    half = float(stdtrit(n - 1, 0.975) * v.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def mean_curves(runs: list[Run], keys: list[str] = CURVE_KEYS) -> dict[str, plots.Curve]:
    """Each figure's mean and 95% interval across runs at every evaluated step."""
    steps = sorted({row["step"] for run in runs for row in run.rows})
    index = {step: i for i, step in enumerate(steps)}
    curves = {}
    for key in keys:
        grid = np.full((len(runs), len(steps)), np.nan)
        for r, run in enumerate(runs):
            for row in run.rows:
                if row.get(key) is not None:
                    grid[r, index[row["step"]]] = row[key]
        if not np.isfinite(grid).any():
            continue
        columns = [interval(grid[:, j]) for j in range(len(steps))]
        mean, lo, hi, _ = (np.array(part, dtype=float) for part in zip(*columns))
        curves[key] = plots.Curve(np.array(steps, dtype=float), mean, lo, hi)
    return curves


def _stat_rows(figures: list[Figure], source: list[dict], context: Context) -> list[list[str]]:
    """Mean, interval and n of each figure over ``source``; the floors are read at the means."""
    intervals = {key: interval(s.get(key) for s in source) for key in [f.key for f in figures] + list(FLOOR_KEYS)}
    means = {key: value[0] for key, value in intervals.items()}
    rows = []
    for figure in figures:
        mean, lo, hi, n = intervals[figure.key]
        ci = f"[{fmt(lo)}, {fmt(hi)}]" if n > 1 else "n/a"
        rows.append([esc(figure.name), esc(fmt(mean)), esc(ci), esc(n), esc(figure.reference(means, context)), esc(figure.meaning)])
    return rows


def group_table(group: Group, context: Context) -> str:
    finished = group.finished
    summaries = [run.summary for run in finished]
    rows = []
    for heading, figures in SECTIONS.items():
        rows.append([esc(heading)])
        rows += _stat_rows(figures, summaries, context)
    theory = [run.summary["theory"] for run in finished if run.summary.get("theory")]
    if theory:
        rows.append(["Theory against the model"])
        rows += _stat_rows(THEORY_FIGURES, theory, Context())
    headers = ["figure", "mean", "95% interval", "n", "floor / good range (at the mean)", "meaning"]
    return table(headers, rows, {1, 2, 3})


def group_section(number: int, group: Group, with_curves: bool) -> Section:
    finished = group.finished
    counts = Counter(run.status for run in group.runs)
    title = f"Group {number}" if len(group.label) > 60 else f"Group {number}: {group.label}"
    runs = f"{len(group.runs)} run" + ("s" if len(group.runs) != 1 else "")
    intro = (f"<p>Settings: <code>{esc(group.label)}</code>.</p><p>{runs} ({esc(', '.join(f'{n} {s}' for s, n in counts.items()))}); the figures are over "
             f"the <b>n={len(finished)}</b> finished runs, seeds {esc(', '.join(str((r.config or {}).get('seed')) for r in finished))}. "
             f"{INTERVAL_TEXT}</p>")
    if not finished:
        return Section(f"group{number}", title, intro + "<p>No finished run in this group.</p>")
    task, _ = try_task(finished[0])
    context = task.context if task else Context(finished[0].summary.get("vocab_size"))
    body = intro + group_table(group, context)
    with_rows = [run for run in finished if len(run.rows) > 1]
    if with_curves and with_rows:
        png = plots.training_curves(mean_curves(with_rows), context,
                                    f"{title}: mean over n={len(with_rows)} finished runs, shaded 95% t-interval")
        caption = ("Mean over seeds of each figure in metrics.jsonl at every evaluated step; the shaded band is the 95% "
                   "t-interval. Panels as in a run's report: losses against their Bayes floors (dashed), accuracies, "
                   "memory and attention probes, bigram KL of the feed-forward memory.")
        body += image(png, f"mean curves, {group.label}", caption)
    return Section(f"group{number}", title, body)


def _run_note(run: Run) -> str:
    if run.status == "diverged":
        return f"diverged at step {run.summary.get('diverged_at_step')}"
    if run.status == "failed":
        return run.summary.get("error", "")
    if run.status == "interrupted":
        return f"no summary.json; checkpoint at step {run.checkpoint_step}" if run.checkpoint_step is not None else "no summary.json"
    return ""


def runs_section(root: Path, runs: list[Run], groups: list[Group], links: dict[Path, str]) -> Section:
    group_of = {id(run): i + 1 for i, g in enumerate(groups) for run in g.runs}
    rows = []
    for run in runs:
        name = esc(run.path.relative_to(root).as_posix())
        cell = f'<a href="{esc(links[run.path])}">{name}</a>' if run.path in links else name
        f, cfg = run.figures, run.config or {}
        theory = (run.summary.get("theory") or {}).get("top1_agreement")
        rows.append([cell, status_badge(run.status), esc(group_of.get(id(run), "none")), esc(cfg.get("seed", "")), esc(cfg.get("data_seed", "")),
                     *(esc(fmt(f.get(k))) for k in ("acc_incontext", "gap_global", "bigram_kl", "attn_induction")),
                     esc(fmt(theory)), esc(_run_note(run))])
    headers = ["run", "status", "group", "seed", "data_seed", "in-context acc", "global gap", "bigram KL",
               "layer 2 on induction target", "theory top-1", "note"]
    intro = "<p>Each run's own report (status, curves, attention maps, settings) is linked from its name.</p>"
    return Section("runs", "Runs", intro + table(headers, rows, {3, 4, 5, 6, 7, 8, 9}))


def sweep_page(root: Path, runs: list[Run], links: dict[Path, str]) -> str:
    """The complete HTML report of a sweep's runs."""
    groups = group_runs(runs)
    counts = Counter(run.status for run in runs)
    sections = [group_section(i + 1, g, i < MAX_GROUPS_WITH_CURVES) for i, g in enumerate(groups)]
    sections.append(runs_section(root, runs, groups, links))
    subtitle = (f"toybigram sweep report for <code>{esc(root.absolute())}</code>: {len(runs)} runs "
                f"({esc(', '.join(f'{n} {s}' for s, n in counts.items()))}) in {len(groups)} group(s) of equal settings "
                "(seeds aside). Figures are defined in docs/metrics.md.")
    return page(f"toybigram sweep: {root.name}", subtitle, sections)
