"""``python -m toybigram.hijack.export LM_RUN TOY_RUN``: the tables of paper figure 11 from two hijack studies.

LM_RUN is a study of a real LM (``lm=smollm2``), TOY_RUN one of a toy (``lm=toy``); both finished
(summary.json). Writes, atomically, into ``paper_figures/data/``:

- ``fig11_hijack_lm_shares.csv``: share of prompts where o beats b* (and o is top-1) per side, series, T and c;
- ``fig11_hijack_lm_thresholds.csv``: c*(T) with its query-bootstrap interval per side and series;
- ``fig11_hijack_lm_curves.csv``: each curve's threshold beside its pair's gap (the gap panel);
- ``fig11_hijack_lm_rules.csv``: held-out flip accuracy of the law and its baselines;
- ``fig11_hijack_lm_ablation.csv``: the share o beats b* with the induction heads (or random heads) zeroed;
- ``fig11_hijack_lm_attention.csv``: the induction heads' attention on the copied o's, and the other heads' mean;
- ``fig11_hijack_lm_setting.csv``: the settings the caption quotes.
"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

import math
from pathlib import Path

from toybigram import runio
from toybigram.errors import OneLineParser, UserError, exit_with
from toybigram.hijack.results import curves_of
from toybigram.hijack.study import JOBS_PARTIAL

DATA_DIR = Path(__file__).resolve().parents[2] / "paper_figures" / "data"
PREFIX = "fig11_hijack_lm"
SIDES = ("lm", "toy")


def finite(value):
    return value if value is not None and math.isfinite(value) else None


def read_study(run_dir: Path, kind: str) -> tuple[dict, dict, dict]:
    """(summary, words, jobs) of a finished study of the expected kind."""
    if not (run_dir / runio.SUMMARY_FILE).is_file():
        raise UserError(f"{kind}_run: {run_dir} holds no summary.json; is it a finished hijack study?")
    summary = runio.read_json(run_dir / runio.SUMMARY_FILE)
    if "c_star" not in summary:
        raise UserError(f"{kind}_run: {run_dir / runio.SUMMARY_FILE} is not a hijack study's summary")
    if (summary["kind"] == "toy") != (kind == "toy"):
        raise UserError(f"{kind}_run: {run_dir} studies a {'toy' if summary['kind'] == 'toy' else 'real LM'}; give the "
                        f"{'toy' if kind == 'toy' else 'real LM'} study here")
    jobs = {r["key"]: r for r in runio.read_jsonl(run_dir / JOBS_PARTIAL)}
    return summary, runio.read_json(run_dir / "words.json"), jobs


def side_tables(side: str, summary: dict, words: dict, jobs: dict) -> dict[str, list[dict]]:
    pairs = words["pairs"]
    shares, thresholds, curves = [], [], []
    for series, rows in summary["c_star"].items():
        for r in rows:
            thresholds.append({"side": side, "series": series, "T": r["T"], "c_star": finite(r["c_star"]),
                               "lo": finite(r["interval"][0]), "hi": finite(r["interval"][1]), "flipped": r["flipped"]})
            for i, c in enumerate(r["counts"]):
                shares.append({"side": side, "series": series, "T": r["T"], "c": c, "o_beats_b": r["o_beats_b"][i],
                               "o_top1": r["o_top1"][i] if "o_top1" in r else None})
    for r in summary["recency"]:
        thresholds.append({"side": side, "series": r["region"], "T": r["T"], "c_star": finite(r["c_star"]),
                           "lo": finite(r["interval"][0]), "hi": finite(r["interval"][1]), "flipped": r["flipped"]})
    for key, job in jobs.items():
        if key.startswith("grid/random/"):
            found = curves_of(job, pairs)
            for gap, c_star, context in zip(found["gap"], found["c_star"], found["context_gap"]):
                curves.append({"side": side, "T": job["T"], "gap": float(gap), "context_gap": float(context),
                               "c_star": finite(float(c_star))})
    rules = [{"side": side, "rule": name, "numbers": r["numbers"], "accuracy_held_out": r["accuracy_held_out"],
              "accuracy_fit": r["accuracy_fit"], "c_star_error_held_out": r["c_star_error_held_out"]}
             for name, r in summary["law"]["rules"].items()]
    ablation = [{"side": side, "ablated": r["ablated"], "heads": len(r["heads"]), "T": r["T"], "c": c,
                 "o_beats_b": share, "gain_remaining": r["gain_remaining"]}
                for r in summary["ablation"] for c, share in zip(r["counts"], r["o_beats_b"])]
    looked = summary["attention"]
    attention = [{"side": side, "T": looked["T"], "c": r["c"], "induction_mean": r["induction_mean"],
                  "other_mean": r["other_mean"]} for r in looked.get("by_c", [])]
    return {"shares": shares, "thresholds": thresholds, "curves": curves, "rules": rules, "ablation": ablation,
            "attention": attention}


def setting_rows(lm: dict, toy: dict, toy_train: dict) -> list[dict]:
    p = lm["config"]["prompts"]
    data, model, train = toy_train.get("data", {}), toy_train.get("model", {}), toy_train.get("train", {})
    values = {
        "lm": lm["model"], "lm_queries": lm["queries"], "lm_pairs": lm["pairs"], "lm_corpus": lm["config"]["words"]["corpus"],
        "lm_heads": len(lm["heads"]["induction"]),
        "toy_queries": toy["queries"], "toy_pairs": toy["pairs"],
        "toy_setting": (f"{data.get('source')} chain N={toy['vocab_size']}, triggers {data.get('triggers')}, "
                        f"{model.get('pos')}, d={model.get('d_model')}, T={data.get('seq_len')}, {train.get('steps')} steps"),
        "lengths": " ".join(map(str, p["lengths"])), "counts": " ".join(map(str, p["counts"])), "instances": p["instances"],
        "prose_lengths": " ".join(map(str, p["prose_lengths"])), "recency_length": p["recency_length"],
        "ablation_length": lm["config"]["heads"]["ablation_length"], "fit_fraction": lm["config"]["law"]["fit_fraction"],
        "seed": lm["config"]["seed"],
    }
    return [{"key": k, "value": v} for k, v in values.items()]


def tables(lm_run: Path, toy_run: Path) -> dict[str, list[dict]]:
    lm, lm_words, lm_jobs = read_study(lm_run, "lm")
    toy, toy_words, toy_jobs = read_study(toy_run, "toy")
    out = side_tables("lm", lm, lm_words, lm_jobs)
    for name, rows in side_tables("toy", toy, toy_words, toy_jobs).items():
        out[name] += rows
    train_summary = Path(toy["config"]["lm"]["path"]) / runio.SUMMARY_FILE
    toy_train = runio.read_json(train_summary).get("config", {}) if train_summary.is_file() else {}
    out["setting"] = setting_rows(lm, toy, toy_train)
    return out


def main(argv=None) -> None:
    parser = OneLineParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("lm_run", help="a finished hijack study of a real LM (lm=smollm2 or lm=hf)")
    parser.add_argument("toy_run", help="a finished hijack study of a toy model (lm=toy)")
    parser.add_argument("--data", default=str(DATA_DIR), help="folder for the tables (default paper_figures/data)")
    args = parser.parse_args(argv)
    try:
        runio.write_tables(args.data, PREFIX, tables(Path(args.lm_run), Path(args.toy_run)))
    except UserError as err:
        exit_with(err)
    print(f"tables {PREFIX}_*.csv written to {args.data}")


if __name__ == "__main__":
    main()
