"""``python -m toybigram.repetition.export RUN_DIR``: a study's tables for paper figure 8.

Reads the run directory's per-condition rows (the resumable ``*.partial.jsonl`` files,
so a sweep that is still running or was stopped part-way can be drawn from what it has
finished), recomputes the tables with their bootstrap intervals and writes, atomically,
into ``paper_figures/data/``:

- ``fig8_repetition_loops.csv``: loop rate and effect per experiment, K and selection;
- ``fig8_repetition_perplexity.csv``: perplexity and its ratio to the unedited model;
- ``fig8_repetition_damage.csv``: effect beside perplexity ratio (equal-damage comparison);
- ``fig8_repetition_layers.csv``: the top repetition neurons per layer;
- ``fig8_repetition_setting.csv``: the settings the caption quotes.
"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

from pathlib import Path

from omegaconf import OmegaConf

from toybigram import runio
from toybigram.errors import OneLineParser, UserError, exit_with
from toybigram.repetition import interventions, perplexity
from toybigram.repetition.__main__ import INTERVENTIONS_PARTIAL, PERPLEXITY_PARTIAL, TEXTS

DATA_DIR = Path(__file__).resolve().parents[2] / "paper_figures" / "data"
PREFIX = "fig8_repetition"


def read_rows(path: Path) -> list[dict]:
    """Rows of a partial file made under the newest row's settings, the last one kept when a condition appears twice."""
    rows = runio.read_jsonl(path) if path.is_file() else []
    newest = rows[-1].get("settings") if rows else None
    return list({r["key"]: r for r in rows if r.get("settings") == newest}.values())


def run_config(run_dir: Path):
    """The run's resolved config: from summary.json once finished, else Hydra's record of it."""
    if (run_dir / runio.SUMMARY_FILE).is_file():
        return OmegaConf.create(runio.read_json(run_dir / runio.SUMMARY_FILE)["config"])
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UserError(f"run_dir: {run_dir} has neither summary.json nor .hydra/config.yaml; is it a repetition study's run directory?")
    return OmegaConf.load(path)


def tables(run_dir: Path) -> dict[str, list[dict]]:
    """All figure tables recomputed from the run directory's rows."""
    cfg = run_config(run_dir)
    rows = read_rows(run_dir / INTERVENTIONS_PARTIAL)
    if not rows:
        raise UserError(f"run_dir: no intervention results in {run_dir} yet ({INTERVENTIONS_PARTIAL} is missing or empty)")
    ks = sorted({int(r["k"]) for r in rows} | {0})
    loops = {e: interventions.summarise([r for r in rows if r["experiment"] == e], ks, cfg.seed)
             for e in ("deactivate", "activate") if any(r["experiment"] == e for r in rows)}
    ppl_rows = read_rows(run_dir / PERPLEXITY_PARTIAL)
    ppl = perplexity.summarise(ppl_rows, ks, cfg.seed)
    layers = runio.read_json(run_dir / "layer_distribution.json")
    texts = runio.read_jsonl(run_dir / TEXTS) if (run_dir / TEXTS).is_file() else []
    setting = {
        "model": "SmolLM2-135M-Instruct" if cfg.lm.kind == "smollm2" else str(cfg.lm.path),
        "n_rank": sum(t["split"] == "rank" for t in texts),
        "n_heldout": max((r["n_prompts"] for r in rows if r["experiment"] == "deactivate"), default=0),
        "n_plain": max((r["n_prompts"] for r in rows if r["experiment"] == "activate"), default=0),
        "new_tokens": cfg.intervene.new_tokens,
        "activate_value": cfg.intervene.activate_value,
        "activate_prompt_len": cfg.intervene.activate_prompt_len,
        "random_draws": draws_range([r for r in loops.get("deactivate", []) if r["selection"] in ("random", "layer")]),
        "ppl_text": cfg.perplexity.text,
        "ppl_tokens": sum(ppl_rows[0]["window_tokens"]) if ppl_rows else 0,
        "ppl_windows": len(ppl_rows[0]["window_tokens"]) if ppl_rows else 0,
        "ppl_draws": draws_range([r for r in ppl if r["experiment"] == "deactivate" and r["selection"] in ("random", "layer")]),
        "top_fraction": layers["top_fraction"],
    }
    return {
        "loops": [{"experiment": e, **r} for e, table in loops.items() for r in table],
        "perplexity": ppl,
        "damage": interventions.effect_vs_damage(loops, ppl) if ppl else [],
        "layers": [{"layer": layer, "relative_depth": depth, "count": count}
                   for layer, depth, count in zip(layers["layers"], layers["relative_depth"], layers["counts"])],
        "setting": [{"key": key, "value": value} for key, value in setting.items()],
    }


def draws_range(table: list[dict]) -> str:
    """Random draws per K as the caption states them: "3", or "1-2" while a sweep is part-way."""
    counts = sorted({int(r["n_draws"]) for r in table})
    return "0" if not counts else str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def main(argv=None) -> None:
    parser = OneLineParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("run_dir", help="a repetition study's run directory (finished or still running)")
    parser.add_argument("--data", default=str(DATA_DIR), help="folder for the tables (default paper_figures/data)")
    args = parser.parse_args(argv)
    try:
        run_dir = Path(args.run_dir)
        if not run_dir.is_dir():
            raise UserError(f"run_dir: no directory {run_dir}")
        runio.write_tables(args.data, PREFIX, tables(run_dir))
    except UserError as err:
        exit_with(err)
    print(f"tables {PREFIX}_*.csv written to {args.data}")


if __name__ == "__main__":
    main()
