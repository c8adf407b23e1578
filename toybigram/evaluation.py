"""Losses and accuracies split by label class, against their Bayes floors."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from toybigram.data import Batch
from toybigram.model import AssociativeTransformer
from toybigram.probes import LABEL_CLASSES, attention_probes, weight_probes


def class_mask(labels: torch.Tensor, name: str) -> torch.Tensor:
    low, high = LABEL_CLASSES[name]
    return (labels >= low) if high is None else (labels >= low) & (labels <= high)


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per target in nats, (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape)


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


@torch.no_grad()
def evaluate(model: AssociativeTransformer, batch: Batch, bayes: torch.Tensor, transition: torch.Tensor,
             triggers: torch.Tensor | None) -> dict[str, float]:
    """Everything we log at an evaluation: split losses, attention probes, weight probes."""
    was_training = model.training
    model.eval()
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.spec.n_layers)]
    logits, cache = model.run_with_cache(batch.inputs, names_filter=names)
    metrics = split_metrics(logits, batch, bayes)
    metrics.update(attention_probes(model, batch.inputs, batch.labels, cache))
    metrics.update(weight_probes(model, transition, triggers))
    model.train(was_training)
    return metrics
