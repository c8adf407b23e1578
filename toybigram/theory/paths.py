"""Which paths carry a trained model's logits: an exact split of the last-position logits.

For a two-layer model whose feed-forward block is linear (or absent) the forward pass is
linear once the two attention patterns are fixed. With the model's own patterns a1, a2
(read through hooks), the residual after layer 1 at position s is a sum of four feature
families (calculator.FEATURES; P and PhiP only with absolute positions, ape):

    h_s = w_E(z_s)  +  p_s  +  Phi_1 sum_u a1(s,u) w_E(z_u)  +  Phi_1 sum_u a1(s,u) p_u
          (E)          (P)     (PhiE)                           (PhiP)

and at the last position t the logits are

    y_t    = h_t + W_O^2 W_V^2 sum_s a2(t,s) h_s            (query's own | layer-2 copy)
    logits = W_U^T y_t + W_U^T W_F y_t                       (direct      | via W_F)

so they are exactly the sum of 2 sources x 4 families x 2 routes = 16 paths. Each path's
weight is reported as its share of the centred-logit variance (logits centred over the
vocabulary in each row, pooled over rows):

    share(p) = sum |c_p|^2 / sum |y|^2        c_p, y: the path's and the model's centred logits

Paths are correlated, so shares overlap (they need not sum to 1; they do only for
uncorrelated paths). The projection <c_p, y> / |y|^2, which does sum to 1 over paths, is
reported too.

Prompts and (q, o, b*) pairs are those of the hijack family of
``python -m toybigram.theory quick=true`` (families.py) for the same seed.

    python -m toybigram.theory.paths run_dir=outputs/main_default     # table; paths.json in the run dir
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from toybigram.factory import make_chain
from toybigram.checkpoint import load_run
from toybigram.errors import OneLineParser, UserError, exit_with
from toybigram.hooks import pattern_hooks
from toybigram.runio import provenance, write_json
from toybigram.runtime import torch_threads
from toybigram.theory.calculator import FEATURES, centred, features
from toybigram.theory.study import hijack_pairs, hijack_prompts, trigger_queries
from toybigram.theory.strengths import feature_rows, read_strengths

PATHS_FILE = "paths.json"
SOURCES = ("copy", "query")  # layer 2 copies the attended position's family | the query position's own
ROUTES = ("direct", "via_W_F")  # read by W_U directly | through the feed-forward block, W_U^T W_F
LABELS = {
    ("copy", "E"): "layer 2 copies token w_E(z_s)",
    ("copy", "P"): "layer 2 copies position p_s",
    ("copy", "PhiE"): "layer 2 copies previous-token Phi_1 w_E",
    ("copy", "PhiP"): "layer 2 copies previous-position Phi_1 p",
    ("query", "E"): "query token w_E(z_t)",
    ("query", "P"): "query position p_t",
    ("query", "PhiE"): "query previous-token Phi_1 w_E",
    ("query", "PhiP"): "query previous-position Phi_1 p",
}


def check_decomposable(model) -> None:
    """Refuse models whose last-position logits are not a sum of these paths."""
    spec = model.spec
    if spec.n_layers != 2:
        raise UserError(f"paths: defined for two-layer models; this one has model.n_layers={spec.n_layers} "
                        "(the layer-1 residual is then not the four feature families)")
    if spec.ffn == "relu":
        raise UserError("paths: defined for a linear (or no) feed-forward block; model.ffn=relu is not linear, "
                        "so its output is not a sum over paths")


@torch.no_grad()
def path_logits(model, tokens: torch.Tensor) -> tuple[dict[tuple[str, str, str], torch.Tensor], torch.Tensor]:
    """The last-position logits of prompts (B,T) split by path, and the model's own logits.

    Returns ({(source, family, route): logits (B,N), float64}, model logits (B,N)). The paths
    sum to the model's logits up to rounding; route via_W_F is absent without a feed-forward block.
    """
    check_decomposable(model)
    device = next(model.parameters()).device
    names = pattern_hooks(2)
    logits, cache = model.run_with_cache(tokens.to(device), names_filter=names)
    a1, a2 = (cache[n].double().cpu() for n in names)
    tokens = tokens.cpu()
    T = tokens.shape[1]
    coef = features(tokens, a1, model.vocab_size)                       # (B,T,n_f) per family
    rows = {f: r.cpu() for f, r in feature_rows(model, T).items()}      # (n_f, d) directions
    ov2 = model.ov(1).double().cpu()                                    # W_O^2 W_V^2
    W_U = model.W_U.double().cpu()                                      # (d, N)
    mlp = model.blocks[-1].mlp
    readouts = {"direct": W_U}
    if mlp is not None:
        readouts["via_W_F"] = mlp.W_F.double().cpu().T @ W_U           # logits of y through the block
    out = {}
    for f in FEATURES:
        if f not in rows:
            continue
        h = coef[f] @ rows[f]                                           # (B,T,d): family f of h_s
        vectors = {"query": h[:, -1], "copy": (a2[:, -1:] @ h)[:, 0] @ ov2.T}
        for source in SOURCES:
            for route, R in readouts.items():
                out[(source, f, route)] = vectors[source] @ R
    return out, logits[:, -1].double().cpu()


def shares(paths: dict, logits: torch.Tensor) -> dict[tuple[str, str, str], dict[str, float]]:
    """Per path: share of centred-logit variance |c_p|^2/|y|^2 and projection <c_p, y>/|y|^2 (sums to 1)."""
    y = centred(logits.double())
    total = (y ** 2).sum()
    out = {}
    for key, contribution in paths.items():
        c = centred(contribution)
        out[key] = {"share": ((c ** 2).sum() / total).item(), "projection": ((c * y).sum() / total).item()}
    return out


@torch.no_grad()
def hijack_paths(model, cfg, *, seed: int = 0, n_outputs: int = 3, max_count: int = 6, fillers: int = 4) -> dict:
    """Path shares on the designed hijack prompts: for each (q, o, b*) pair of study.hijack_pairs
    (n_outputs outputs per trigger query), hijack(q, o, c, T) for c = 0..max_count, ``fillers``
    prompts each, at the training length T. The defaults are the hijack family of
    ``python -m toybigram.theory quick=true`` with the same seed: the same prompts."""
    check_decomposable(model)
    chain = make_chain(cfg.data)
    T = int(cfg.data.seq_len)
    pairs = hijack_pairs(read_strengths(model, T, "full").bigram, trigger_queries(cfg, chain), n_outputs)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.arange(0, max_count + 1)
    prompts = torch.cat([hijack_prompts(chain, q, o, counts, T, fillers, gen) for q, o, _ in pairs])
    paths, logits = path_logits(model, prompts)
    table = shares(paths, logits)
    error = (sum(paths.values()) - logits).abs().max().item()
    return {
        "rows": prompts.shape[0], "T": T, "pairs": [list(p) for p in pairs], "counts": counts, "fillers_per_count": fillers,
        "max_abs_reconstruction_error": error, "max_abs_logit": logits.abs().max().item(),
        "paths": [{"source": s, "family": f, "route": r, "label": LABELS[s, f], **v} for (s, f, r), v in table.items()],
    }


def format_table(result: dict) -> str:
    """The shares as a markdown table, one row per (source, family): share (projection) per route."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for p in result["paths"]:
        cells.setdefault((p["source"], p["family"]), {})[p["route"]] = f"{p['share']:.3f} ({p['projection']:+.3f})"
    lines = ["| path | direct (W_U) | via W_F |", "|---|---|---|"]
    for key in [(s, f) for s in SOURCES for f in FEATURES if (s, f) in cells]:
        lines.append(f"| {LABELS[key]} | {cells[key].get('direct', '-')} | {cells[key].get('via_W_F', '-')} |")
    return "\n".join(lines)


def run(run_dir, *, seed: int = 0, n_outputs: int = 3, max_count: int = 6, fillers: int = 4) -> dict:
    """Load a run, decompose, write <run_dir>/paths.json (atomically) and return what it holds."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    with torch_threads(1):  # small matrices: one thread suits them, as in analyze_run
        model, cfg = load_run(run_dir)
        result = hijack_paths(model, cfg, seed=seed, n_outputs=n_outputs, max_count=max_count, fillers=fillers)
    out = {**result, "share_definition": "sum |c_p|^2 / sum |y|^2 over rows and tokens, logits centred per row; "
                                         "projection: sum <c_p, y> / sum |y|^2 (sums to 1 over paths)",
           "settings": {"seed": seed, "n_outputs": n_outputs, "max_count": max_count, "fillers": fillers},
           "run_dir": str(run_dir), "wall_seconds": time.perf_counter() - start,
           **provenance("cpu", "float64 (paths); model " + str(next(model.parameters()).dtype))}
    write_json(run_dir / PATHS_FILE, out)
    return out


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def main(argv: list[str] | None = None) -> dict:
    parser = OneLineParser(prog="python -m toybigram.theory.paths",
                     description="Split a trained model's last-position logits on the designed hijack prompts by path.")
    parser.add_argument("run_dir", type=lambda s: s.removeprefix("run_dir="),
                        help="training run directory holding checkpoint.pt (also accepted as run_dir=PATH)")
    parser.add_argument("--seed", type=_count(0), default=0, help="prompt generation (default 0, as the theory command)")
    parser.add_argument("--outputs", type=_count(1), default=3, help="outputs o per trigger query (default 3)")
    parser.add_argument("--max-count", type=_count(0), default=6, help="counts c = 0..max (default 6)")
    parser.add_argument("--fillers", type=_count(1), default=4, help="prompts per count (default 4)")
    args = parser.parse_args(argv)
    try:
        out = run(args.run_dir, seed=args.seed, n_outputs=args.outputs, max_count=args.max_count, fillers=args.fillers)
    except UserError as err:
        exit_with(err)
    print(format_table(out))
    print(f"paths: share of centred-logit variance (projection), {out['rows']} rows ({len(out['pairs'])} pairs x "
          f"{len(out['counts'])} counts x {out['fillers_per_count']} fillers); paths sum to the logits within "
          f"{out['max_abs_reconstruction_error']:.1e} (|logit| up to {out['max_abs_logit']:.1f}); "
          f"{out['wall_seconds']:.1f} s; {Path(args.run_dir) / PATHS_FILE}")
    return out


if __name__ == "__main__":
    main()
