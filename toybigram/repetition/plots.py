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
    bx.legend(loc="upper left", fontsize=8)
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
    ax.legend(fontsize=8)
    plt.close(fig)
    return _save(fig, run_dir / "fig_onset_profile.png")


def interventions_figure(run_dir: Path) -> str:
    plt = _pyplot()
    tables = runio.read_json(run_dir / "interventions_table.json")
    ppl_path = run_dir / "perplexity_table.json"
    ppl = runio.read_json(ppl_path)["table"] if ppl_path.is_file() else []
    panels = list(tables) + (["perplexity"] if ppl else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, name in zip(axes[0], panels):
        if name == "perplexity":
            for experiment, style in (("deactivate", "-"), ("activate", "--")):
                rows = [r for r in ppl if r["experiment"] == experiment]
                ax.plot([r["k"] for r in rows], [r["top"] for r in rows], "o" + style, label=f"{experiment} top")
                ax.plot([r["k"] for r in rows], [r["random_mean"] for r in rows], "x" + style, label=f"{experiment} random")
            ax.set_yscale("log")
            ax.set_ylabel("perplexity")
        else:
            rows = tables[name]
            ax.plot([r["k"] for r in rows], [r["top"] for r in rows], "o-", label="top-K")
            ax.plot([r["k"] for r in rows], [r["random_mean"] for r in rows], "x--", label="random-K (mean)")
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("share of outputs that loop")
        ax.set_xlabel("K neurons")
        ax.set_title(name)
        ax.legend(fontsize=8)
    plt.close(fig)
    return _save(fig, run_dir / "fig_interventions.png")


def write_all(run_dir: str | Path) -> list[str]:
    run_dir = Path(run_dir)
    return [layers_figure(run_dir), profile_figure(run_dir), interventions_figure(run_dir)]
