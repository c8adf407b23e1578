"""Each figure's plot on tiny fixture tables: it reads only the tables and writes PNG and PDF; the
paper_figures/ scripts redraw through their figure module, from any working directory."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest

import torch

from experiments.figure import FIGURES_DIR, Build, Figure, registry, runs_table
from experiments.plotting import band, caption_text, plt
from experiments.runs import Collected, Run
from experiments.tables import MissingTable, write_table
from toybigram.theory.plots import PLOT_FILES, write_plots


def stat(name, mean, ci=0.05, n=3):
    return {f"{name}_mean": mean, f"{name}_ci": ci, f"{name}_n": n}


def fig1_to_4() -> dict[str, list[dict]]:
    fig1_metrics = ["loss_global", "loss_first", "loss_incontext", "bayes_loss_global", "bayes_loss_first", "bayes_loss_incontext",
                    "acc_incontext", "recall_prev_token", "recall_prev_token_first64", "recall_induction_key", "recall_copy", "bigram_kl"]
    fig1 = [{"variant": v, "step": s, **{k: x for m in fig1_metrics for k, x in stat(m, s / 40).items()}}
            for v in ("free", "freeze") for s in (0, 20, 40)]
    order = [{"variant": v, "probe": p, "matrix": m, **stat("release_step", r), **stat("rise_step", r + 10)}
             for v in ("free", "freeze") for p, m, r in (("recall_copy", "W_O2", 0), ("recall_induction_key", "W_K2", 10),
                                                          ("recall_prev_token", "W_K1", 20))]
    T = 6
    fig2 = [{"layer": layer, "t": t, "s": s, "weight": 1.0 / (t + 1)} for layer in (1, 2) for t in range(T) for s in range(t + 1)]
    prompt = [{"t": t, "token": t % 3, "label": 2 if t == 4 else 0, "seed": 0} for t in range(T)]
    acc = [{"pos": p, "ratio": r, "T_test": int(8 * r), "T_train": 8, **stat("acc_incontext", 0.9 / r)}
           for p in ("ape", "rpe", "rope", "nope") for r in (0.5, 1, 2)]
    attn = [{"pos": p, "T_test": 16, "T_train": 8, "position": t, **stat("attn_prev", 0.5)} for p in ("ape", "rpe") for t in range(1, 16)]
    hij = [{"T": T_, "c": c, "T_train": 8, **stat("share_model", c / 3), **stat("share_theory", c / 4), **stat("share_law", c / 5)}
           for T_ in (8, 16) for c in range(3)]
    thr = [{"T": 8, **stat("c_star_closed_form", 1.0), **stat("c_star_model", 1.0), **stat("c_star_theory", 2.0), **stat("c_star_law", 1.0)},
           {"T": 16, **stat("c_star_closed_form", math.nan, math.nan, 0), **stat("c_star_model", 2.0),
            **stat("c_star_theory", math.nan, math.nan, 0), **stat("c_star_law", 2.0, 0.5, 2)}]
    return {"fig1_dynamics": fig1, "fig1_order": order, "fig2_attention": fig2, "fig2_prompt": prompt,
            "fig3_length_acc": acc, "fig3_length_attn": attn, "fig4_hijack": hij, "fig4_threshold": thr}


def fig5_to_7() -> dict[str, list[dict]]:
    fams = ("length", "hijack", "compete", "dilution")
    r2 = [{"family": f, **stat("r2", 0.7), **stat("top1", 0.8)} for f in fams]
    scatter = [{"family": f, "predicted": x / 10, "measured": x / 9, "r2_seed": 0.7} for f in fams for x in range(-5, 6)]
    width = [{"d": d, "N": 8, "T": 16, **stat("r2_idealised", d / 100), **stat("r2_read", 0.9), **stat("top1_read", 0.8),
              **stat("attn2_error_idealised", 0.3), **stat("top1_idealised", 0.5)} for d in (16, 32, 64)]
    mats = [{"matrix": m, "row": i, "col": j, "value": float(i == j)} for m in ("lambda", "beta") for i in range(3) for j in range(3)]
    bigram = [{"i": i, "j": j, "g": i - j, "log_pi": i - j + 0.1} for i in range(3) for j in range(3)]
    alpha = [{"pos": "ape", "kind": "position", "index": t, **stat("alpha", math.log(t + 1))} for t in range(8)] + \
            [{"pos": "rpe", "kind": "offset", "index": t, **stat("alpha", float(t == 1))} for t in range(8)]
    stats = [{"pos": p, **stat("g_pearson", 0.9), **stat("lambda_diag_minus_off", 3.0), **stat("beta_diag_minus_off", 2.0)} for p in ("ape", "rpe")]
    grid = [{"N": N, "T": T_, "steps": 40, **stat("acc_incontext", 0.5), **stat("formation_step", 20.0 if N == 4 else math.nan, 1.0, 3 if N == 4 else 0),
             **stat("top1_agreement", 0.6), **stat("r2_centered_logits", 0.5)} for N in (4, 8) for T_ in (8, 16)]
    return {**fig10(), "fig5_r2": r2, "fig5_scatter": scatter, "fig5_width": width, "fig6_matrices": mats, "fig6_bigram": bigram,
            "fig6_alpha": alpha, "fig6_stats": stats, "fig7_grid": grid}


def fig10() -> dict[str, list[dict]]:
    lengths = (8, 16, 32)
    thr = [{"T": T_, **stat("c_star_measured", T_ / 8, 0.5, 2 if T_ < 32 else 1), **stat("c_star_law", T_ / 8, 0.0, 2),
            **stat("c_star_closed_form", 1.0, 0.0, 2), **stat("c_star_bayes", 1.0, 0.0, 2)} for T_ in lengths]
    pairs = [{"seed": s, "family": "hijack", "T": T_, "q": 0, "o": o, "b": 3, "c_star_measured": float(o + T_ // 8),
              "c_star_law": math.inf if o == 2 else float(o), "c_star_closed_form": 1.0, "c_star_bayes": 1.0}
             for s in (1, 2) for T_ in lengths for o in (1, 2)]
    compete = [{"T": T_, **stat("law_agreement", 0.8), **stat("bayes_agreement", 0.7), **stat("model_majority_share", 0.7)}
               for T_ in lengths]
    scores = [{"family": "hijack", "predictor": p, **stat("within_one", 0.6), **stat("mae_log", 0.4)}
              for p in ("law", "closed_form", "corrected_closed_form", "bayes")]
    return {"fig10_thresholds": thr, "fig10_pairs": pairs, "fig10_compete": compete, "fig10_scores": scores}


def runs_row(name: str, **settings) -> dict:
    """A row of a figure's runs table (experiments.figure.runs_table)."""
    return {"input": name, "profile": "quick", "runs": 3, "seeds": 3, "source": "dirichlet", "N": 16, "d": 64, "T": 32,
            "pos": "ape", "layers": 2, "steps": 300, "freeze": None, **settings}


def runs_tables() -> dict[str, list[dict]]:
    """Which runs made each figure of 1-7: one input each, two inputs with their own settings for fig1 and fig3."""
    tables = {f"{fig.name}_runs": [runs_row(fig.inputs[0].experiment if fig.inputs else fig.name)]
              for fig in registry().values() if fig.from_sweeps}
    tables["fig1_dynamics_runs"].append(runs_row("fig1_freeze", freeze="W_K2@40 W_K1@80"))
    tables["fig3_length_runs"] = [runs_row("fig3_length", pos="ape/rope/rpe"), runs_row("fig3_length_nope", pos="nope", layers=3)]
    return tables


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Fixture tables of figures 1-7 and 10, and the committed tables of figure 8 (written by the repetition
    export), figure 9 and figure 5's hierarchy."""
    folder = tmp_path_factory.mktemp("tables")
    for name, rows in {**fig1_to_4(), **fig5_to_7(), **runs_tables()}.items():
        write_table(folder / f"{name}.csv", rows)
    for pattern in ("fig8_repetition_*.csv", "fig9_*.csv", "fig5_hierarchy*.csv", "fig11_hijack_lm_*.csv"):
        for table in FIGURES_DIR.joinpath("data").glob(pattern):
            shutil.copy(table, folder)
    return folder


@pytest.mark.parametrize("key", list(registry()))
def test_each_figure_draws_png_and_pdf_from_its_tables(key, data_dir, tmp_path):
    fig = registry()[key]
    paths = fig.draw(data_dir, tmp_path)
    assert sorted(p.name for p in paths) == [f"{fig.name}.pdf", f"{fig.name}.png"]
    assert (tmp_path / f"{fig.name}.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / f"{fig.name}.pdf").read_bytes()[:4] == b"%PDF"


def test_every_script_in_paper_figures_draws_a_registered_figure():
    names = {fig.name for fig in registry().values()}
    scripts = sorted(p.stem for p in FIGURES_DIR.glob("fig*.py"))
    assert scripts and set(scripts) <= names, set(scripts) - names


def test_a_figure_script_redraws_from_any_working_directory(data_dir, tmp_path):
    """`python paper_figures/fig4_hijack.py` needs no path set-up: the figure module is imported as a package."""
    script = FIGURES_DIR / "fig4_hijack.py"
    proc = subprocess.run([sys.executable, str(script), "--data", str(data_dir), "--out", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig4_hijack.pdf", "fig4_hijack.png"]


def test_missing_table_is_a_clear_error(tmp_path):
    with pytest.raises(MissingTable, match="make figures"):
        registry()["fig7"].draw(tmp_path, tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_figure_without_its_runs_table_is_refused(data_dir, tmp_path):
    """A figure never draws without the caption saying which runs made it."""
    for table in data_dir.glob("fig7_*.csv"):
        shutil.copy(table, tmp_path)
    (tmp_path / "fig7_vocab_length_runs.csv").unlink()
    with pytest.raises(MissingTable, match="fig7_vocab_length_runs"):
        registry()["fig7"].draw(tmp_path, tmp_path)


def test_caption_names_the_profile_the_shared_settings_and_each_inputs_own():
    text = caption_text(runs_tables()["fig3_length_runs"], "bands: 95% CI")
    assert text == ("quick profile: synthetic chain, N=16, d=64, T=32, 300 steps, 3 seeds; fig3_length: ape/rope/rpe, 2 layers; "
                    "fig3_length_nope: nope, 3 layers. Bands: 95% CI")
    one_seed = caption_text([runs_row("fig4_hijack", profile="smoke", seeds=1, pos=None, layers=None)])
    assert one_seed == "smoke profile: synthetic chain, N=16, d=64, T=32, 300 steps, 1 seed"


def fake_run(seed: int, steps: int, vocab: int, freeze: dict | None = None) -> Run:
    config = {"seed": seed, "data": {"source": "dirichlet", "vocab_size": vocab, "seq_len": 16},
              "model": {"d_model": 8, "pos": "rpe", "n_layers": 2}, "train": {"steps": steps, "freeze_until": freeze or {}}}
    return Run(f"seed={seed}", None, {}, config, {"status": "finished"}, {})


def test_the_runs_table_comes_from_the_configs_of_the_runs_used():
    """The caption's settings are those the aggregated runs recorded, several values joined, builds named by their kind."""
    sweep = Collected("demo", runs=[fake_run(0, 30, 16, {"W_K1": 20, "W_K2": 10}), fake_run(1, 30, 8, {"W_K1": 20, "W_K2": 10})])
    build = Collected("widths", runs=[Run(f"d={d}", None, {}, {"seed": 0}, {}, {"N": 8, "T": 16, "d": d}) for d in (4, 32, 16)])
    fig = Figure("fig9", "fig9_demo", plot=print, builds=(Build("widths", print, print, kind="ideal-memory builds"),))
    rows = {row["input"]: row for row in runs_table(fig, "smoke", {"demo": sweep, "widths": build})}
    assert rows["demo"] == {"input": "demo", "profile": "smoke", "runs": 2, "seeds": 2, "source": "dirichlet", "N": "8/16",
                            "d": "8", "T": "16", "pos": "rpe", "layers": "2", "steps": "30", "freeze": "W_K2@10 W_K1@20"}
    assert rows["widths"] == {"input": "widths", "profile": "smoke", "runs": 3, "seeds": 1, "source": "ideal-memory builds",
                              "N": "8", "d": "4/16/32", "T": "16", "pos": None, "layers": None, "steps": None, "freeze": None}


def test_bands_of_bounded_quantities_stay_in_their_range():
    rows = [{"r_mean": m, "r_ci": 0.5, "r_n": 3} for m in (0.1, 0.9, 1.0)]
    fig, ax = plt.subplots()
    band(ax, [0, 1, 2], rows, "r", limits=(0.0, 1.0))
    ys = ax.collections[0].get_paths()[0].vertices[:, 1]
    plt.close(fig)
    assert ys.min() >= 0.0 and ys.max() <= 1.0 and ys.max() == 1.0


def hijack_results(counts: int = 4, pairs: int = 3) -> dict:
    margins = [torch.linspace(-1.0 + p, 2.0 + p, counts) for p in range(pairs)]
    return {"hijack": {"counts": torch.arange(counts), "T": 32,
                       "pairs": [{"margin_model": m, "margin_theory": m + 0.1} for m in margins]}}


def test_per_run_theory_plots_are_written_with_their_names(tmp_path):
    pooled = [(torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)) for _ in range(2)]
    assert write_plots(tmp_path / "a", hijack_results(), pooled) == list(PLOT_FILES)
    assert all((tmp_path / "a" / name).read_bytes()[:4] == b"\x89PNG" for name in PLOT_FILES)
    assert write_plots(tmp_path / "b", {}, pooled) == [PLOT_FILES[0]]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [PLOT_FILES[0]]
