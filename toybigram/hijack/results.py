"""The study's numbers from its jobs: c*(T) with intervals, the gap and recency dependence, compete,
the induction heads' share of the hijack, and the threshold law against its baselines."""
from __future__ import annotations

import numpy as np

from toybigram.hijack.analysis import (crossings, fit_and_score, gap_dependence, threshold_summary)


def curves_of(job: dict, pairs: list[dict], field: str = "margin") -> dict[str, np.ndarray]:
    """Per curve (pair x instance): query, gap, T, measured c*; and per cell the flip."""
    margins = np.asarray(job[field], dtype=float)  # (pairs, instances, counts)
    n_pairs, n_inst, n_counts = margins.shape
    pair_of = np.repeat(np.asarray(job["pairs"]), n_inst)
    flat = margins.reshape(-1, n_counts)
    return {"query": np.asarray([pairs[i]["q"] for i in pair_of]), "gap": np.asarray([pairs[i]["gap"] for i in pair_of]),
            "T": np.full(len(pair_of), job["T"]), "pair": pair_of, "margins": flat, "context_gap": -flat[:, 0],
            "c_star": crossings(job["counts"], flat), "counts": np.asarray(job["counts"])}


def flip_shares(curves: dict, top1: np.ndarray | None = None) -> dict:
    """Share of curves where o beats b* (and, given ``top1``, where o is the top-1 token) at each count."""
    out = {"counts": curves["counts"].tolist(), "o_beats_b": (curves["margins"] > 0).mean(0).tolist()}
    if top1 is not None:
        out["o_top1"] = top1.reshape(-1, top1.shape[-1]).mean(0).tolist()
    return out


def threshold_rows(jobs: dict, pairs: list[dict], filler: str, seed: int, field: str = "margin") -> list[dict]:
    """c*(T) per length for the uniform, unablated hijack jobs of one filler."""
    rows = []
    for job in jobs.values():
        if job["key"].startswith(f"grid/{filler}/") and field in job:
            curves = curves_of(job, pairs, field)
            top1 = np.asarray(job["top1"], dtype=float) if field == "margin" else None
            rows.append({"T": job["T"], **threshold_summary(curves["c_star"], curves["query"], seed),
                         **flip_shares(curves, top1), "gap": gap_dependence(curves["c_star"], curves["gap"], curves["query"], seed)})
    return sorted(rows, key=lambda r: r["T"])


def cells_of(curve_sets: list[dict]) -> tuple[dict, dict]:
    """Cells (curve x count) and curves pooled over jobs, for the law's fit."""
    cells = {k: [] for k in ("query", "gap", "context_gap", "T", "count", "flipped")}
    curves = {k: [] for k in ("query", "gap", "context_gap", "T", "c_star")}
    for c in curve_sets:
        n, k = c["margins"].shape
        cells["query"].append(np.repeat(c["query"], k))
        cells["gap"].append(np.repeat(c["gap"], k))
        cells["context_gap"].append(np.repeat(c["context_gap"], k))
        cells["T"].append(np.repeat(c["T"], k))
        cells["count"].append(np.tile(c["counts"], n))
        cells["flipped"].append((c["margins"] > 0).reshape(-1))
        for name in curves:
            curves[name].append(c[name])
    return {k: np.concatenate(v) for k, v in cells.items()}, {k: np.concatenate(v) for k, v in curves.items()}


def law_fit(jobs: dict, pairs: list[dict], queries: list[int], fraction: float, seed: int) -> dict:
    """The threshold law (two numbers) and its baselines, fitted on a share of the queries, scored on the rest;
    for the toy also the law read from the weights (no fitted number) on the same held-out cells."""
    grid = [j for j in jobs.values() if j["key"].startswith("grid/random/")]
    measured = [curves_of(j, pairs) for j in grid]
    cells, curves = cells_of(measured)
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(queries))
    fit = {queries[i] for i in order[: max(1, int(round(fraction * len(queries))))]}
    cap = float(max(max(j["counts"]) for j in grid) + 1)
    out = fit_and_score(cells, curves, fit, cap)
    if all("law_margin" in j for j in grid):
        held = ~np.isin(cells["query"], list(fit))
        read = [curves_of(j, pairs, "law_margin") for j in grid]
        read_cells, read_curves = cells_of(read)
        held_curve = ~np.isin(curves["query"], list(fit))
        out["rules"]["law_from_weights"] = {
            "numbers": 0, "fitted": "none: lambda_q, beta, g and the previous-token weights read from the weights",
            "accuracy_held_out": float((read_cells["flipped"][held] == cells["flipped"][held]).mean()),
            "accuracy_fit": float((read_cells["flipped"][~held] == cells["flipped"][~held]).mean()),
            "c_star_error_held_out": float(np.abs(np.minimum(read_curves["c_star"][held_curve], cap)
                                                  - np.minimum(curves["c_star"][held_curve], cap)).mean())}
    return out


def recency_rows(jobs: dict, pairs: list[dict], seed: int) -> list[dict]:
    rows = []
    for job in jobs.values():
        if job["key"].startswith("recency/"):
            curves = curves_of(job, pairs)
            rows.append({"region": job["region"], "T": job["T"], **threshold_summary(curves["c_star"], curves["query"], seed),
                         **flip_shares(curves, np.asarray(job["top1"], dtype=float))})
    return rows


def ablation_rows(jobs: dict, pairs: list[dict], seed: int) -> list[dict]:
    """Per ablation (none, induction heads, random control heads): c*, flip shares, and the hijack's margin gain
    m(c) - m(0) averaged over c >= 1 and curves, with the share of the unablated gain that remains."""
    rows = {}
    for job in jobs.values():
        if job["key"].startswith("ablation/"):
            curves = curves_of(job, pairs)
            counts = curves["counts"]
            gain = (curves["margins"][:, counts > 0] - curves["margins"][:, counts == 0]).mean()
            rows[job["key"].split("/")[1]] = {"ablated": job["key"].split("/")[1], "heads": job["heads"], "T": job["T"],
                                              **threshold_summary(curves["c_star"], curves["query"], seed),
                                              **flip_shares(curves, np.asarray(job["top1"], dtype=float)),
                                              "margin_gain": float(gain)}
    base = rows.get("none", {}).get("margin_gain")
    for row in rows.values():
        row["gain_remaining"] = row["margin_gain"] / base if base else None
    return list(rows.values())


def compete_summary(jobs: dict) -> dict:
    """Which of two in-context outputs wins: the majority (c1 != c2), split by whether it came last; at c1 = c2 the
    later one's share."""
    job = next((j for j in jobs.values() if j["kind"] == "compete"), None)
    if job is None:
        return {}
    majority_last, majority_first, tie_later = [], [], []
    for row in job["rows"]:
        m = np.asarray(row["margin"])  # o1 - o2
        o1_wins = m > 0
        if row["c1"] == row["c2"]:
            tie_later.extend((o1_wins if row["o1_last"] else ~o1_wins).tolist())
            continue
        majority_wins = o1_wins if row["c1"] > row["c2"] else ~o1_wins
        majority_is_last = row["o1_last"] == (row["c1"] > row["c2"])
        (majority_last if majority_is_last else majority_first).extend(majority_wins.tolist())
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {"T": job["T"], "majority_wins_when_last": mean(majority_last), "majority_wins_when_first": mean(majority_first),
            "later_wins_at_equal_counts": mean(tie_later), "prompts": len(majority_last) + len(majority_first) + len(tie_later)}


def attention_summary(jobs: dict) -> dict:
    """Mean attention of each induction head (and of the other heads) from the final q onto the copied o's, per c."""
    job = next((j for j in jobs.values() if j["kind"] == "attention"), None)
    if job is None or not job["heads"]:
        return {}
    by_c: dict[int, list] = {}
    for row in job["rows"]:
        by_c.setdefault(row["c"], []).append(row)
    return {"T": job["T"], "heads": job["heads"], "by_c": [
        {"c": c, "induction": np.mean([r["induction"] for r in rows], axis=0).tolist(),
         "induction_mean": float(np.mean([np.mean(r["induction"]) for r in rows])),
         "other_mean": float(np.mean([r["other_mean"] for r in rows]))} for c, rows in sorted(by_c.items())]}
