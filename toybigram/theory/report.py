"""Everything the theory writes or prints: theory.json and its plots, the headline summary.json quotes,
the headline lines the training job and the theory command print.

The computing modules (compare.py, hierarchy.py, families.py) return dicts; this one turns an
analysis into files. The training job's own analysis is ``theory.json`` + ``theory/`` in the run
directory (``THEORY_NAME``); ``python -m toybigram.theory`` writes under names that record its
settings (see __main__.py), so it never replaces what the summary quotes.
"""
from __future__ import annotations

from pathlib import Path

from toybigram.checkpoint import load_run
from toybigram.runio import write_json
from toybigram.runtime import torch_threads
from toybigram.theory.compare import analyze
from toybigram.theory.plots import PLOT_FILES, write_plots

THEORY_NAME = "theory"  # the training job's analysis: theory.json and theory/*.png, quoted by summary.json
THEORY_FILE = f"{THEORY_NAME}.json"
HEADLINE_CALCULATORS = ("full", "scalar", "bayes_rule")  # the in-context R^2 the headline quotes, in this order
HEADLINE_KEYS = ("top1_agreement", "r2_centered_logits", "hijack_top1_agreement", "hijack_r2_centered_logits",
                 "hijack_threshold_within_one", "bayes_rule_top1_agreement", "scalar_top1_agreement",
                 "scalar_n_parameters", "readout_floor_r2_centered_logits",
                 *(f"r2_counterfactual_{name}" for name in HEADLINE_CALCULATORS), "wall_seconds")


def headline_figures(overall: dict, results: dict, calculators: dict) -> dict:
    """The agreement figures summary.json quotes: overall, beside the baselines and the readout floor of the
    calculator hierarchy, and the hijack family's when it ran."""
    headline = {"top1_agreement": overall["top1_agreement"], "r2_centered_logits": overall["r2_centered_logits"],
                "bayes_rule_top1_agreement": calculators["bayes_rule"]["top1"],
                "scalar_top1_agreement": calculators["scalar"]["top1"],
                "scalar_n_parameters": calculators["scalar"]["n_parameters"],
                "readout_floor_r2_centered_logits": calculators["full_uniform_layer2"]["r2_centred"],
                **{f"r2_counterfactual_{name}": calculators[name]["r2_counterfactual"] for name in HEADLINE_CALCULATORS}}
    if "hijack" in results:
        hijacked = results["hijack"]
        headline.update({"hijack_top1_agreement": hijacked["top1_agreement"],
                         "hijack_r2_centered_logits": hijacked["r2_centered_logits"],
                         "hijack_threshold_within_one": hijacked["threshold_within_one"]})
        if "non_trigger" in hijacked:
            headline.update({"hijack_non_trigger_top1_agreement": hijacked["non_trigger"]["top1_agreement"],
                             "hijack_non_trigger_model_top1_is_b_star": hijacked["non_trigger"]["model_top1_is_b_star"]})
    return headline


def output_paths(out_dir: str | Path, name: str = THEORY_NAME) -> tuple[Path, Path]:
    """The JSON file and the plot folder of the analysis called ``name``."""
    return Path(out_dir) / f"{name}.json", Path(out_dir) / name


def write_analysis(out_dir: Path, name: str, record: dict, results: dict, pooled: list | None) -> Path:
    """Plots (none when ``pooled`` is None), stale plots of an earlier analysis removed, then the JSON, last."""
    json_path, folder = output_paths(out_dir, name)
    written = write_plots(folder, results, pooled) if pooled is not None else []
    for stale in set(PLOT_FILES) - set(written):
        (folder / stale).unlink(missing_ok=True)
    write_json(json_path, record)
    return json_path


def _figure(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def headline(head: dict, run_dir: Path, json_name: str = THEORY_FILE) -> str:
    """The agreement figures beside the baselines (two lines; one for an older analysis), ending with the JSON file."""
    line = f"theory: top-1 agreement {head['top1_agreement']:.3f}"
    if "bayes_rule_top1_agreement" in head:
        line += (f" (bayes rule {_figure(head['bayes_rule_top1_agreement'])}, scalar "
                 f"{_figure(head['scalar_top1_agreement'])} with {head['scalar_n_parameters']} numbers)")
    line += f"  centred-logit R^2 {head['r2_centered_logits']:.3f}"
    if "readout_floor_r2_centered_logits" in head:
        line += f" (readout floor {_figure(head['readout_floor_r2_centered_logits'])})"
    if any(head.get(f"r2_counterfactual_{name}") is not None for name in HEADLINE_CALCULATORS):
        line += "\n    in-context R^2 (prompt - counterfactual) " + " / ".join(
            f"{name.replace('_', ' ')} {_figure(head.get(f'r2_counterfactual_{name}'))}" for name in HEADLINE_CALCULATORS)
    if "hijack_top1_agreement" in head:
        line += (f"  | hijack top-1 {head['hijack_top1_agreement']:.3f}  R^2 {head['hijack_r2_centered_logits']:.3f}"
                 f"  threshold within one {head['hijack_threshold_within_one']:.2f}")
    return line + f"  ({Path(run_dir) / json_name})"


def analyze_run(run_dir, model=None, cfg=None, *, quick: bool = True, variant: str = "full", seed: int = 0,
                families=None, plots: bool = True, out_dir=None, name: str = THEORY_NAME, threads: int = 1) -> dict:
    """Analyse a run: writes ``<out_dir>/<name>.json`` (+ ``<name>/*.png``) and returns the headline.

    The defaults are the training job's own analysis: theory.json and theory/ in the run
    directory, the files whose headline summary.json quotes. ``model``/``cfg`` default to
    the run's checkpoint (toybigram.checkpoint.load_run); ``families`` to every registered
    family. ``threads``: torch threads while it runs (few suit its small tables).
    """
    run_dir = Path(run_dir)
    if model is None or cfg is None:
        model, cfg = load_run(run_dir)
    with torch_threads(threads):
        record, results, pooled = analyze(model, cfg, quick=quick, variant=variant, seed=seed, families=families)
    record = {**headline_figures(record["overall"], results, record["calculators"]), **record}
    record["settings"] = {**record["settings"], "run_dir": str(run_dir), "output": name}
    write_analysis(Path(out_dir) if out_dir is not None else run_dir, name, record, results, pooled if plots else None)
    return {k: record[k] for k in HEADLINE_KEYS if k in record}
