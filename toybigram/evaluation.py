"""Losses and accuracies split by label class, against their Bayes floors."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from toybigram.data import Batch
from toybigram.hooks import pattern_hooks
from toybigram.model import AssociativeTransformer
from toybigram.probes import LABEL_CLASSES, attention_probes, weight_probes


def class_mask(labels: torch.Tensor, name: str) -> torch.Tensor:
    low, high = LABEL_CLASSES[name]
    return (labels >= low) if high is None else (labels >= low) & (labels <= high)


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per target in nats, shaped like ``targets`` ((B, T), or (S, B, T) for stacked instances)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none").view(targets.shape)


def training_loss(logits: torch.Tensor, batch: Batch, loss_on: str) -> torch.Tensor:
    """Mean cross-entropy over a batch's (B, T) targets; one per instance for stacked (S, B, T) batches.

    ``loss_on`` is ``all`` (every target) or ``incontext`` (targets with label >= 2 only).
    """
    losses = token_losses(logits, batch.targets)
    if loss_on == "incontext":
        mask = class_mask(batch.labels, "incontext")
        return (losses * mask).sum((-2, -1)) / mask.sum((-2, -1)).clamp_min(1)
    return losses.mean((-2, -1))


def split_metrics(logits: torch.Tensor, batch: Batch, bayes: torch.Tensor) -> dict[str, float]:
    """loss_*, acc_*, bayes_loss_*, gap_* for the classes global (label 0), first (1), incontext (>= 2)."""
    losses = token_losses(logits, batch.targets)
    correct = (logits.argmax(-1) == batch.targets).double()
    out: dict[str, float] = {"loss_all": losses.mean().item(), "acc_all": correct.mean().item()}
    for name in LABEL_CLASSES:
        mask = class_mask(batch.labels, name)
        if not mask.any():
            out.update({f"loss_{name}": None, f"acc_{name}": None, f"bayes_loss_{name}": None, f"gap_{name}": None})
            continue
        loss, floor = losses[mask].mean().item(), bayes[mask].mean().item()
        out.update({
            f"loss_{name}": loss,
            f"acc_{name}": correct[mask].mean().item(),
            f"bayes_loss_{name}": floor,
            f"gap_{name}": loss - floor,
        })
    return out


CHUNK_SCORES = 2**20  # attention scores per chunk of sequences in evaluation


def run_in_chunks(model: AssociativeTransformer, inputs: torch.Tensor, names: list[str]):
    """``model.run_with_cache`` over chunks of at most CHUNK_SCORES attention scores, concatenated.

    A chunk's (B, T, T) scores stay in the CPU cache, which a whole held-out batch of long
    sequences would not.
    """
    size = max(1, CHUNK_SCORES // inputs.shape[-1] ** 2)
    parts = [model.run_with_cache(chunk, names_filter=names) for chunk in inputs.split(size)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([logits for logits, _ in parts]), {name: torch.cat([cache[name] for _, cache in parts]) for name in names}


@torch.no_grad()
def evaluate(model: AssociativeTransformer, batch: Batch, bayes: torch.Tensor, transition: torch.Tensor,
             triggers: torch.Tensor | None) -> dict[str, float]:
    """Everything we log at an evaluation: split losses, attention probes, weight probes."""
    was_training = model.training
    model.eval()
    names = pattern_hooks(model.spec.n_layers)
    logits, cache = run_in_chunks(model, batch.inputs, names)
    metrics = split_metrics(logits, batch, bayes)
    metrics.update(attention_probes(model, batch.inputs, batch.labels, cache))
    metrics.update(weight_probes(model, transition, triggers))
    model.train(was_training)
    return metrics
