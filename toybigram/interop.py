"""Export a toybigram model to TransformerLens (the optional ``tl`` extra).

``to_hooked_transformer(model)`` builds a ``transformer_lens.HookedTransformer`` that computes
the same logits, so TransformerLens's own tools (activation patching, head detectors, circuit
views) apply to a trained toy model. The mapping, in TransformerLens's right-multiplying
convention (x @ W), with toybigram's matrices acting on column vectors:

    embed.W_E = W_E               pos_embed.W_pos = W_pos (ape; zeros for nope)
    attn.W_Q = I                  attn.W_K = W_K^T      (scores x_t^T W_K x_s)
    attn.W_V = W_V^T              attn.W_O = W_O^T      (one head, d_head = d)
    mlp (relu):   W_in = W_in^T,  W_out = W_out^T
    mlp (linear): W_F y = relu(W_F y) - relu(-W_F y): W_in = [W_F^T, -W_F^T], W_out = [I; -I]
    unembed.W_U = W_U             every bias zero, no normalisation

Rotary positions rotate only layer 1 in toybigram while TransformerLens rotates every layer:
the later layers get an identity rotation (cosines 1, sines 0) for every position up to n_ctx.
Relative position tables (rpe) enter layer 1's scores directly and have no TransformerLens
counterpart.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from toybigram.errors import UserError, require
from toybigram.model import AssociativeTransformer

# toybigram's model.pos -> TransformerLens's positional_embedding_type (nope: a table of zeros).
POSITIONAL_EMBEDDING_TYPES = {"ape": "standard", "rope": "rotary", "nope": "standard"}
INSTALL_HINT = "install the tl extra: pip install -e '.[tl]'"


def hooked_transformer_config(model: AssociativeTransformer, n_ctx: int | None = None) -> dict[str, Any]:
    """The ``HookedTransformerConfig`` fields of ``model``'s export, as a plain dict.

    ``n_ctx`` is the longest prompt the export takes (default: the model's ``max_len``); an ape
    model goes beyond its table only with ``model.ape_extension`` random or clamp.
    """
    spec = model.spec
    require(spec.pos in POSITIONAL_EMBEDDING_TYPES, "model.pos",
            f"{spec.pos} cannot be exported to TransformerLens: its relative position table enters "
            "layer 1's scores directly, and TransformerLens has no such attention; "
            f"exportable: {', '.join(POSITIONAL_EMBEDDING_TYPES)}")
    n_ctx = spec.max_len if n_ctx is None else n_ctx
    require(isinstance(n_ctx, int) and n_ctx >= 1, "n_ctx", f"must be a positive integer, got {n_ctx!r}")
    longest = spec.positional.max_length(spec)
    require(longest is None or n_ctx <= longest, "n_ctx",
            f"{n_ctx} exceeds the absolute position table (model.max_len={longest}); load the run with "
            "ape_extension='random' or 'clamp' to export longer positions")
    d = spec.d_model
    config = dict(
        n_layers=spec.n_layers, d_model=d, d_head=d, n_heads=1, d_vocab=spec.vocab_size, n_ctx=n_ctx,
        act_fn="relu", normalization_type=None, attn_only=spec.ffn == "none",
        d_mlp=_mlp_width(spec.ffn, d, spec.d_hidden),
        positional_embedding_type=POSITIONAL_EMBEDDING_TYPES[spec.pos],
        use_attn_scale=spec.scale_scores, attn_scale=math.sqrt(d) if spec.scale_scores else 1.0,
        dtype=model.W_E.dtype, device=str(model.W_E.device), init_weights=False, seed=model.seed,
        default_prepend_bos=False, original_architecture="toybigram",
    )
    if spec.pos == "rope":
        config.update(rotary_dim=d, rotary_base=spec.rope_base, rotary_adjacent_pairs=False)
    return config


def _mlp_width(ffn: str, d_model: int, d_hidden: int) -> int | None:
    """Hidden width of the exported MLP: the ReLU block's, 2d for a linear block split in ReLU halves."""
    return {"none": None, "linear": 2 * d_model, "relu": d_hidden}[ffn]


def hooked_transformer_weights(model: AssociativeTransformer, n_ctx: int | None = None) -> dict[str, torch.Tensor]:
    """Every parameter of the export by its TransformerLens name (biases zero), from ``model``'s weights."""
    config = hooked_transformer_config(model, n_ctx)
    d, n_ctx, d_mlp = model.d_model, config["n_ctx"], config["d_mlp"]
    weights = {"embed.W_E": model.W_E, "unembed.W_U": model.W_U, "unembed.b_U": model.W_U.new_zeros(model.vocab_size)}
    if config["positional_embedding_type"] == "standard":
        positions = model.positions(n_ctx)
        weights["pos_embed.W_pos"] = positions if positions is not None else model.W_E.new_zeros(n_ctx, d)
    for i, block in enumerate(model.blocks):
        weights.update(_attention_weights(f"blocks.{i}.attn", block.attn))
        if d_mlp is not None:
            weights.update(_mlp_weights(f"blocks.{i}.mlp", block.mlp, d, d_mlp, model.W_E))
    return {name: tensor.detach().clone() for name, tensor in weights.items()}


def _attention_weights(prefix: str, attn) -> dict[str, torch.Tensor]:
    """One head with W_Q = I: TransformerLens's (head, in, out) matrices and zero biases."""
    d = attn.W_K.shape[0]
    identity = torch.eye(d, dtype=attn.W_K.dtype, device=attn.W_K.device)
    zeros = attn.W_K.new_zeros(1, d)
    return {f"{prefix}.W_Q": identity[None], f"{prefix}.W_K": attn.W_K.T[None], f"{prefix}.W_V": attn.W_V.T[None],
            f"{prefix}.W_O": attn.W_O.T[None], f"{prefix}.b_Q": zeros, f"{prefix}.b_K": zeros,
            f"{prefix}.b_V": zeros, f"{prefix}.b_O": attn.W_K.new_zeros(d)}


def _mlp_weights(prefix: str, mlp, d: int, d_mlp: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """W_in (d, d_mlp), W_out (d_mlp, d) and zero biases; a layer without a block gets zero weights."""
    if mlp is None:
        W_in, W_out = like.new_zeros(d, d_mlp), like.new_zeros(d_mlp, d)
    elif mlp.kind == "relu":
        W_in, W_out = mlp.W_in.T, mlp.W_out.T
    else:  # linear: W_F y = relu(W_F y) - relu(-W_F y)
        identity = torch.eye(d, dtype=like.dtype, device=like.device)
        W_in, W_out = torch.cat([mlp.W_F.T, -mlp.W_F.T], dim=1), torch.cat([identity, -identity], dim=0)
    return {f"{prefix}.W_in": W_in, f"{prefix}.W_out": W_out, f"{prefix}.b_in": like.new_zeros(d_mlp),
            f"{prefix}.b_out": like.new_zeros(d)}


def to_hooked_transformer(model: AssociativeTransformer, n_ctx: int | None = None):
    """A ``transformer_lens.HookedTransformer`` with ``model``'s logits, in its dtype and on its device.

    ``n_ctx`` as in ``hooked_transformer_config``. Raises ConfigError for an encoding with no
    counterpart (rpe) and UserError when TransformerLens (>= 3.9, < 4: the versions that still
    have HookedTransformer) is missing.
    """
    config = hooked_transformer_config(model, n_ctx)
    weights = hooked_transformer_weights(model, n_ctx)
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as err:
        raise UserError(f"transformer_lens: HookedTransformer is unavailable ({str(err).splitlines()[0]}); "
                        f"{INSTALL_HINT}") from None
    with warnings.catch_warnings():  # the tl extra pins the 3.x line, which warns that 4.0 drops this class
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        exported = HookedTransformer(HookedTransformerConfig(**config))
    _load_complete(exported, weights)
    if model.spec.pos == "rope":
        for block in exported.blocks[1:]:
            _identity_rotation(block.attn, config["n_ctx"])
    return exported.eval()


def _load_complete(exported: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load ``weights`` into ``exported``, which must name exactly these parameters (buffers kept)."""
    parameters = {name for name, _ in exported.named_parameters()}
    if parameters != set(weights):
        raise RuntimeError(f"this TransformerLens version names its parameters differently: missing "
                           f"{sorted(parameters - set(weights))}, unknown {sorted(set(weights) - parameters)}")
    state = exported.state_dict()
    state.update(weights)
    exported.load_state_dict(state)


def _identity_rotation(attn, n_ctx: int) -> None:
    """Rotary caches of n_ctx positions that rotate nothing (TransformerLens recomputes a cache it must extend)."""
    attn.rotary_cos = torch.ones_like(attn.rotary_cos[:1]).expand(n_ctx, -1).contiguous()
    attn.rotary_sin = torch.zeros_like(attn.rotary_cos)
