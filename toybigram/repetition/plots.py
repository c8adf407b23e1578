"""Figures from the run directory's tables (so they can be redrawn without rerunning)."""
from __future__ import annotations

from pathlib import Path

from toybigram import runio


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    runio.atomic_write_bytes(path, buffer.getvalue())
    return path.name


def layers_figure(run_dir: Path) -> str:
    plt = _pyplot()
    table = runio.read_json(run_dir / "layer_distribution.json")
    heads = runio.read_json(run_dir / "heads.json")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax.bar(table["relative_depth"], table["counts"], width=0.8 / max(len(table["counts"]), 1) if len(table["counts"]) > 1 else 0.1)
    ax.set_xlabel("relative depth of layer")
    ax.set_ylabel(f"neurons in top {100 * table['top_fraction']:.1f}% (delta > 0)")
    ax.set_title("repetition neurons by layer")
    layers = heads["layers"]
    bx.plot(layers, heads["induction_heads_per_layer"], "o-", label="induction heads")
    bx.plot(layers, heads["self_finding_heads_per_layer"], "s-", label="self-finding heads")
    bx.set_xlabel("layer")
    bx.set_ylabel(f"heads (mean attention >= {heads['threshold']})")
    bx.legend(loc="upper left")
    cx = bx.twinx()  # the strongest head per layer, whether or not it passes the threshold
    cx.plot(layers, [max(row) for row in heads["induction_mean"]], ":", color="C0", alpha=0.6)
    cx.plot(layers, [max(row) for row in heads["self_finding_mean"]], ":", color="C1", alpha=0.6)
    cx.set_ylim(0, 1)
    cx.set_ylabel("best head's mean attention (dotted)")
    plt.close(fig)
    return _save(fig, run_dir / "fig_layers_heads.png")


def profile_figure(run_dir: Path) -> str:
    plt = _pyplot()
    table = runio.read_json(run_dir / "onset_profile.json")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for neuron, values in zip(table["neurons"], table["mean_activation"]):
        ax.plot(table["offsets"], values, label=f"L{neuron['layer']} #{neuron['unit']}")
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("position relative to onset s")
    ax.set_ylabel("mean activation")
    ax.set_title("top repetition neurons around the onset")
    ax.legend()
    plt.close(fig)
    return _save(fig, run_dir / "fig_onset_profile.png")


STYLE = {  # selection -> (label, colour, marker)
    "top": ("top-K (largest delta)", "C3", "o"),
    "random": ("uniform random", "C0", "x"),
    "layer": ("layer-matched random", "C2", "s"),
    "bottom": ("bottom-K (most negative delta)", "C4", "v"),
}
YLABEL = {"deactivate": "share of held-out prompts still looping", "activate": "share of plain prompts now looping"}


def _plain_log(axis) -> None:
    """Log scale with ticks written 1, 1.5, 2, 3 rather than 2x10^0."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "1235" else ""))


def _selections(rows) -> list[str]:
    present = {r["selection"] for r in rows}
    return [s for s in STYLE if s in present]


def _errorbars(ax, x, y, lo, hi, selection: str, *, xerr=None, ls="-"):
    label, colour, marker = STYLE[selection]
    yerr = [[v - a for v, a in zip(y, lo)], [b - v for v, b in zip(y, hi)]]
    ax.errorbar(x, y, yerr=yerr, xerr=xerr, color=colour, marker=marker, ms=4, lw=1.2, ls=ls, capsize=2, label=label)


def _draw_spread(ax, x, lo, hi, selection: str) -> None:
    """The range over random draws (min to max of the draws' own values) as a light band."""
    if any(b > a for a, b in zip(lo, hi)):
        ax.fill_between(x, lo, hi, color=STYLE[selection][1], alpha=0.15, lw=0)


def draw_rates(ax, table: list[dict], experiment: str) -> None:
    """Loop rate against K per selection, 95% bootstrap intervals over prompts; K = 0 is the unedited model.
    Where a set has several random draws, a band shows the range of the draws' rates."""
    base = [r for r in table if r["selection"] == "none"]
    for selection in _selections(table):
        rows = base + [r for r in table if r["selection"] == selection]
        k = [r["k"] for r in rows]
        _errorbars(ax, k, [r["rate"] for r in rows], [r["rate_lo"] for r in rows], [r["rate_hi"] for r in rows], selection)
        if "rate_min" in rows[0]:
            _draw_spread(ax, k, [r["rate_min"] for r in rows], [r["rate_max"] for r in rows], selection)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("K neurons edited")
    ax.set_ylabel(YLABEL.get(experiment, "share looping"))


def draw_perplexity(ax, table: list[dict], experiment: str) -> None:
    """Perplexity ratio (edited / unedited) against K per selection, log scale."""
    mine = [r for r in table if r["experiment"] == experiment]
    base = [r for r in mine if r["selection"] == "none"]
    for selection in _selections(mine):
        rows = base + [r for r in mine if r["selection"] == selection]
        k = [r["k"] for r in rows]
        _errorbars(ax, k, [r["ratio"] for r in rows], [r["ratio_lo"] for r in rows], [r["ratio_hi"] for r in rows], selection)
        if base and "perplexity_min" in rows[0]:
            unedited = base[0]["perplexity"]
            _draw_spread(ax, k, [r["perplexity_min"] / unedited for r in rows], [r["perplexity_max"] / unedited for r in rows], selection)
    ax.set_yscale("log")
    _plain_log(ax.yaxis)
    ax.set_xlabel("K neurons edited")
    ax.set_ylabel("perplexity, edited / unedited")


def draw_effect_vs_damage(ax, rows: list[dict], experiment: str) -> None:
    """Effect on loops against perplexity cost: one line per selection through its K values."""
    mine = [r for r in rows if r["experiment"] == experiment]
    for selection in _selections(mine):
        pts = sorted((r for r in mine if r["selection"] == selection), key=lambda r: r["k"])
        x = [r["ratio"] for r in pts]
        xerr = [[v - r["ratio_lo"] for v, r in zip(x, pts)], [r["ratio_hi"] - v for v, r in zip(x, pts)]]
        _errorbars(ax, x, [r["effect"] for r in pts], [r["effect_lo"] for r in pts], [r["effect_hi"] for r in pts], selection, xerr=xerr)
        if selection == "top":
            for r in (r for r in pts if r["k"] >= 250):  # the smaller K crowd near a ratio of 1
                ax.annotate(f"{r['k']}", (r["ratio"], r["effect"]), textcoords="offset points", xytext=(3, 3), fontsize=8, color=STYLE["top"][1])
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xscale("log")
    _plain_log(ax.xaxis)
    ax.set_xlabel("perplexity, edited / unedited")
    ax.set_ylabel("loops removed" if experiment == "deactivate" else "loops added")


def interventions_figure(run_dir: Path) -> str:
    plt = _pyplot()
    tables = runio.read_json(run_dir / "interventions_table.json")
    ppl_path, damage_path = run_dir / "perplexity_table.json", run_dir / "effect_vs_damage.json"
    ppl = runio.read_json(ppl_path)["table"] if ppl_path.is_file() else None
    damage = runio.read_json(damage_path) if damage_path.is_file() else None
    experiments = list(tables)
    n_cols = 1 + (ppl is not None) + (damage is not None)
    fig, axes = plt.subplots(max(len(experiments), 1), n_cols, figsize=(4.6 * n_cols, 3.6 * max(len(experiments), 1)), squeeze=False)
    for row, experiment in zip(axes, experiments):
        draw_rates(row[0], tables[experiment], experiment)
        row[0].set_title(experiment)
        if ppl is not None:
            draw_perplexity(row[1], ppl, experiment)
        if damage is not None:
            draw_effect_vs_damage(row[-1], damage, experiment)
        row[0].legend()
    plt.close(fig)
    return _save(fig, run_dir / "fig_interventions.png")


def write_all(run_dir: str | Path) -> list[str]:
    run_dir = Path(run_dir)
    return [layers_figure(run_dir), profile_figure(run_dir), interventions_figure(run_dir)]
