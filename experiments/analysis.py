"""Post-run analyses that need a trained model; each returns a JSON-able dict for one run.

The runner writes them to <run>/experiments/<figure>.json; the aggregator reads those files.
All prompts come from fixed generator seeds, so a re-run gives the same numbers.
"""
from __future__ import annotations

import math

import torch

from toybigram.build import make_chain, make_sampler
from toybigram.checkpoint import load_run
from toybigram.probes import bigram_memory, copy_memory, induction_key_memory, previous_token_scores
from toybigram.theory.calculator import agreement, centred, hijack_threshold
from toybigram.theory.compare import hijack_pairs, run_both
from toybigram.theory.ideal import log_bigram
from toybigram.theory.prompts import compete, dilution, hijack, length_prompts
from toybigram.theory.strengths import read_alpha, read_strengths

PROMPT_SEED = 1234


def _layers(model) -> tuple[str, str]:
    L = model.spec.n_layers
    return f"blocks.{L - 2}.attn.hook_pattern", f"blocks.{L - 1}.attn.hook_pattern"


def _triggers(cfg, chain) -> list[int]:
    sampler = make_sampler(cfg.data, chain, torch.device("cpu"), PROMPT_SEED)
    if cfg.data.triggers == "fixed":
        return sampler.fixed_triggers.tolist()
    return torch.tensor(chain.unigram).argsort(descending=True)[: max(1, cfg.data.n_triggers)].tolist()


@torch.no_grad()
def attention_map(run_dir, length: int = 64) -> dict:
    """Figure 2: both layers' attention on one prompt from the training distribution."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T = min(length, int(cfg.data.seq_len))
    batch = length_prompts(make_sampler(cfg.data, chain, torch.device("cpu"), PROMPT_SEED), T, 16)
    # the prompt of the batch with the most in-context positions, so the marks have something to mark
    pick = int((batch.labels >= 2).sum(1).argmax())
    names = _layers(model)
    _, cache = model.run_with_cache(batch.inputs[pick:pick + 1], names_filter=list(names))
    return {"T": T, "tokens": batch.inputs[pick], "labels": batch.labels[pick],
            "layer1": cache[names[0]][0], "layer2": cache[names[1]][0]}


@torch.no_grad()
def length_generalisation(run_dir, ratios=(0.5, 1, 2, 4, 8), batch: int = 32) -> dict:
    """Figure 3: in-context accuracy and previous-token attention by position at T_test = ratio * T."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T = int(cfg.data.seq_len)
    sampler = make_sampler(cfg.data, chain, torch.device("cpu"), PROMPT_SEED)
    prev = _layers(model)[0]
    out = {"T_train": T, "pos": cfg.model.pos, "by_ratio": []}
    for ratio in ratios:
        L = max(2, int(round(ratio * T)))
        b = length_prompts(sampler, L, batch)
        logits, cache = model.run_with_cache(b.inputs, names_filter=[prev])
        ic = b.labels >= 2
        acc = (logits.argmax(-1) == b.targets)[ic].double().mean().item() if ic.any() else math.nan
        attn = cache[prev].diagonal(offset=-1, dim1=-2, dim2=-1).mean(0)  # a1(t, t-1) for t = 1..L-1
        out["by_ratio"].append({"ratio": ratio, "T_test": L, "acc_incontext": acc, "n_incontext": int(ic.sum()),
                                "attn_prev_by_position": attn})
    return out


@torch.no_grad()
def hijack_grid(run_dir, ratios=(0.25, 0.5, 1, 2, 4), counts=range(0, 9), n_outputs: int = 2, fillers: int = 8) -> dict:
    """Figure 4: over (c, T), the share of hijack prompts where the in-context token o beats the
    global favourite b* at the last position, for the model and the calculator (full strengths),
    and the closed-form threshold c*(T) (calculator.hijack_threshold on the diagonal strengths,
    median over (q, o) pairs)."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T0 = int(cfg.data.seq_len)
    lengths = sorted({max(8, int(round(r * T0))) for r in ratios})
    strengths = read_strengths(model, max(lengths), "full")
    diag = read_strengths(model, T0, "diagonal")
    pairs = hijack_pairs(model, strengths, _triggers(cfg, chain), n_outputs)
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    cells, thresholds = [], []
    for L in lengths:
        cs = [c for c in counts if 2 * c + 2 <= L]
        wins_m = {c: [] for c in cs}
        wins_t = {c: [] for c in cs}
        closed = []
        for q, o, b in pairs:
            prompts = torch.cat([hijack(chain, q, o, c, L, fillers, gen) for c in cs])
            m, _, _, p = run_both(model, strengths, prompts, last_only=True)
            m, th = m[:, -1], p.logits[:, -1]
            win_m = (m[:, o] > m[:, b]).double().view(len(cs), fillers).mean(1)
            win_t = (th[:, o] > th[:, b]).double().view(len(cs), fillers).mean(1)
            for i, c in enumerate(cs):
                wins_m[c].append(win_m[i].item())
                wins_t[c].append(win_t[i].item())
            counts_t = torch.tensor(cs).repeat_interleave(fillers)
            f_o = ((prompts == o).sum(1) - counts_t).double().mean()
            f_b = (prompts == b).sum(1).double().mean()
            gap = diag.glob[q, b] - diag.glob[q, o]
            closed.append(hijack_threshold(L, diag.key[q], diag.copy[o], diag.copy[b], gap, f_o, f_b).item())
        for c in cs:
            cells.append({"T": L, "c": c, "share_model": sum(wins_m[c]) / len(pairs), "share_theory": sum(wins_t[c]) / len(pairs)})
        finite = sorted(closed)
        thresholds.append({"T": L, "c_star_closed_form": finite[len(finite) // 2],
                           "c_star_model": _crossing(cs, [sum(wins_m[c]) / len(pairs) for c in cs]),
                           "c_star_theory": _crossing(cs, [sum(wins_t[c]) / len(pairs) for c in cs])})
    return {"T_train": T0, "pairs": [list(p) for p in pairs], "cells": cells, "thresholds": thresholds}


def _crossing(cs: list[int], shares: list[float]) -> float:
    """Smallest c from which the share stays at or above one half; inf if never."""
    for i, c in enumerate(cs):
        if all(s >= 0.5 for s in shares[i:]):
            return float(c)
    return math.inf


@torch.no_grad()
def theory_families(run_dir, points: int = 400) -> dict:
    """Figure 5: calculator (full strengths) against the model per prompt family: centred-logit
    R^2 and top-1 agreement, and a subsample of (predicted, measured) centred logits."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T = int(cfg.data.seq_len)
    strengths = read_strengths(model, T, "full")
    sampler = make_sampler(cfg.data, chain, torch.device("cpu"), PROMPT_SEED)
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    pairs = hijack_pairs(model, strengths, _triggers(cfg, chain), 2)
    fam: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"length": [], "hijack": [], "compete": [], "dilution": []}
    batch = length_prompts(sampler, T, 8)
    m, _, _, p = run_both(model, strengths, batch.inputs)
    fam["length"].append((m.flatten(0, 1), p.logits.flatten(0, 1)))
    for q, o, _b in pairs:
        prompts = torch.cat([hijack(chain, q, o, c, T, 4, gen) for c in (0, 1, 2, 4, 6)])
        m, _, _, p = run_both(model, strengths, prompts, last_only=True)
        fam["hijack"].append((m[:, -1], p.logits[:, -1]))
        for L, prompts in dilution(chain, q, o, 2, [max(8, T // 4), T], 4, gen).items():
            m, _, _, p = run_both(model, strengths, prompts, last_only=True)
            fam["dilution"].append((m[:, -1], p.logits[:, -1]))
    for q in sorted({q for q, _, _ in pairs}):
        outs = [o for qq, o, _ in pairs if qq == q]
        if len(outs) < 2:
            continue
        prompts = torch.cat([compete(chain, q, outs[0], c1, outs[1], c2, T, 4, gen) for c1, c2 in [(1, 2), (2, 1), (2, 2), (1, 3), (3, 1)]])
        m, _, _, p = run_both(model, strengths, prompts, last_only=True)
        fam["compete"].append((m[:, -1], p.logits[:, -1]))
    out = {"families": {}}
    gen_pts = torch.Generator().manual_seed(0)
    for name, parts in fam.items():
        if not parts:
            continue
        mm, tt = torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
        a = agreement(mm, tt)
        x, y = centred(tt).flatten(), centred(mm).flatten()
        keep = torch.randperm(len(x), generator=gen_pts)[:points]
        out["families"][name] = {"r2": a["r2_centered_logits"], "top1": a["top1_agreement"], "n_rows": a["n"],
                                 "predicted": x[keep], "measured": y[keep]}
    return out


@torch.no_grad()
def width_agreement(d: int, N: int, T: int, seed: int, prompts: int = 2, alpha: float = 12.0, lam: float = 10.0,
                    beta: float = 8.0) -> dict:
    """Figure 5b: the calculator against an ideal-memory build of width d.

    The build (float64) stores alpha, lambda, beta and g = centred log pi_b (toybigram.theory.ideal);
    prompts come from its trigger sampler. Two calculators: "idealised" (the strengths the build was
    made with, exact previous-token table) and "read" (strengths read back from the weights, full variant).
    """
    from toybigram.data import TriggerSampler, dirichlet_chain, shakespeare_chain
    from toybigram.model import ModelSpec
    from toybigram.theory.calculator import Layer1, Strengths, attention_error, predict, prev_table
    from toybigram.theory.ideal import ideal_model

    chain = shakespeare_chain() if N == 65 else dirichlet_chain(N, 0.5, seed)
    g = log_bigram(chain.transition)
    model = ideal_model(ModelSpec(vocab_size=N, d_model=d, max_len=T, dtype="float64"), alpha=alpha, lam=lam, beta=beta, g=g, seed=seed)
    tokens = TriggerSampler(chain, n_triggers=5, seed=seed + 1).sample(prompts, T).inputs
    name = "blocks.1.attn.hook_pattern"
    logits, cache = model.run_with_cache(tokens, names_filter=[name])
    out = {"d": d, "N": N, "T": T, "seed": seed}
    calculators = {"idealised": Strengths(layer1=Layer1(pos=prev_table(alpha, T)), key=lam, copy=beta, glob=g, vocab_size=N),
                   "read": read_strengths(model, T, "full")}
    for label, strengths in calculators.items():
        p = predict(strengths, tokens)
        fit = agreement(logits, p.logits)
        out.update({f"r2_{label}": fit["r2_centered_logits"], f"top1_{label}": fit["top1_agreement"],
                    f"attn2_error_{label}": attention_error(cache[name], p.a2)})
    return out


@torch.no_grad()
def memories(run_dir) -> dict:
    """Figure 6: learned memories against the ideal ones."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T = int(cfg.data.seq_len)
    lam = induction_key_memory(model).double()
    beta = copy_memory(model).double()
    g = bigram_memory(model)
    ideal_g = log_bigram(chain.transition)
    out = {"pos": cfg.model.pos, "T": T, "lambda": lam, "beta": beta, "triggers": _triggers(cfg, chain)}
    if g is not None:
        out["g_centred"] = centred(g.double())
        out["log_pi_centred"] = ideal_g
        x, y = ideal_g.flatten(), out["g_centred"].flatten()
        out["g_pearson"] = torch.corrcoef(torch.stack([x, y]))[0, 1].item()
    if cfg.model.pos == "ape":
        out["alpha"] = read_alpha(model, T)  # alpha_t by position
    elif cfg.model.pos in ("rpe", "rope"):
        S = previous_token_scores(model, T).double()
        row = S[T - 1, :].flip(0)  # score by offset delta = 0..T-1 from the last query
        out["alpha_by_offset"] = row - row.mean()
    return out


@torch.no_grad()
def length_agreement(run_dir, prompts: int = 8) -> dict:
    """Figure 7: calculator (full strengths) against the model on prompts from the training
    distribution, all positions: top-1 agreement and centred-logit R^2."""
    model, cfg = load_run(run_dir)
    chain = make_chain(cfg.data)
    T = int(cfg.data.seq_len)
    strengths = read_strengths(model, T, "full")
    batch = length_prompts(make_sampler(cfg.data, chain, torch.device("cpu"), PROMPT_SEED), T, prompts)
    m, _, _, p = run_both(model, strengths, batch.inputs)
    a = agreement(m, p.logits)
    return {"top1_agreement": a["top1_agreement"], "r2_centered_logits": a["r2_centered_logits"]}
