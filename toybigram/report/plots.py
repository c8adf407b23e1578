"""The report's plots, drawn with matplotlib's Agg backend and returned as PNG bytes."""
from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from toybigram.report.figures import Context  # noqa: E402

STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9, "figure.dpi": 100}
CLASS_COLORS = {"global": "C0", "first": "C1", "incontext": "C2"}
CLASS_NAMES = {"global": "global (bigram) targets", "first": "first firing of a trigger", "incontext": "in-context targets"}
PROBES = {  # weight probes dashed, attention probes solid
    "recall_prev_token": ("previous-token recall (weights)", "tab:red", "--"),
    "recall_induction_key": ("induction-key recall (weights)", "tab:purple", "--"),
    "recall_copy": ("copy recall (weights)", "tab:olive", "--"),
    "attn_prev_token": ("layer-1 attention on previous token", "tab:pink", "-"),
    "attn_induction": ("layer-2 attention on induction target", "tab:cyan", "-"),
}
MAX_TOKEN_LABELS = 64  # longer prompts get position ticks instead of one label per token


@dataclass
class Curve:
    """A figure against the step: one run's values, or a mean with a 95% interval (lo, hi) across seeds."""

    steps: np.ndarray
    mean: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None


def to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # laid out by the caller (tight_layout): one draw, not two
    plt.close(fig)
    return buffer.getvalue()


def _line(ax, curve: Curve | None, label: str, color: str, **style) -> None:
    if curve is None or not np.isfinite(curve.mean).any():
        return
    ax.plot(curve.steps, curve.mean, color=color, label=label, lw=1.8, **style)
    if curve.lo is not None:
        ax.fill_between(curve.steps, curve.lo, curve.hi, color=color, alpha=0.2, lw=0)


def _loss_panel(ax, curves: dict[str, Curve]) -> None:
    for kind, color in CLASS_COLORS.items():
        _line(ax, curves.get(f"loss_{kind}"), CLASS_NAMES[kind], color)
        _line(ax, curves.get(f"bayes_loss_{kind}"), f"Bayes floor, {kind}", color, ls="--", alpha=0.8)
    _line(ax, curves.get("train_loss"), "training loss (training stream)", "0.5", alpha=0.8)
    ax.set(title="Loss per label class against its Bayes floor", xlabel="step", ylabel="cross-entropy (nats)")


def _accuracy_panel(ax, curves: dict[str, Curve], ctx: Context) -> None:
    for kind, color in CLASS_COLORS.items():
        _line(ax, curves.get(f"acc_{kind}"), CLASS_NAMES[kind], color)
    if ctx.bayes_acc_global is not None:
        ax.axhline(ctx.bayes_acc_global, color=CLASS_COLORS["global"], ls="--", lw=1, label="true bigram's global accuracy")
    if ctx.chance:
        ax.axhline(ctx.chance, color="k", ls=":", lw=1, label=f"chance 1/N = {ctx.chance:.3f}")
    ax.set(title="Accuracy per label class", xlabel="step", ylabel="top-1 accuracy", ylim=(-0.02, 1.02))


def _probe_panel(ax, curves: dict[str, Curve]) -> None:
    for key, (label, color, style) in PROBES.items():
        _line(ax, curves.get(key), label, color, ls=style)
    ax.set(title="Memory recall and attention probes", xlabel="step", ylabel="share / attention weight", ylim=(-0.02, 1.02))


def _kl_panel(ax, curves: dict[str, Curve], ctx: Context) -> None:
    _line(ax, curves.get("bigram_kl"), "feed-forward memory alone", "C7")
    if ctx.uniform_kl is not None:
        ax.axhline(ctx.uniform_kl, color="k", ls=":", lw=1, label=f"uniform guess ({ctx.uniform_kl:.2f})")
    ax.set(title="Bigram KL of the feed-forward memory", xlabel="step", ylabel="KL (nats)")
    ax.set_ylim(bottom=0)


def training_curves(curves: dict[str, Curve], ctx: Context, title: str) -> bytes:
    """Four panels against the step: losses with their floors, accuracies, probes, bigram KL."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, 2, figsize=(13, 10.5))
        _loss_panel(axes[0, 0], curves)
        _accuracy_panel(axes[0, 1], curves, ctx)
        _probe_panel(axes[1, 0], curves)
        _kl_panel(axes[1, 1], curves, ctx)
        for ax in axes.flat:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # below the panel, clear of the curves
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
        fig.suptitle(title)
        fig.tight_layout()
        return to_png(fig)


def _token_ticks(ax, labels: list[str], is_trigger: np.ndarray) -> None:
    T = len(labels)
    if T > MAX_TOKEN_LABELS:
        return
    ticks = np.arange(T)
    ax.set_xticks(ticks, labels, fontsize=8, family="monospace")
    ax.set_yticks(ticks, [f"{t} {s}" for t, s in zip(ticks, labels)], fontsize=8, family="monospace")
    for tick_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        for label, trigger in zip(tick_labels, is_trigger):
            if trigger:
                label.set_color("red")
                label.set_fontweight("bold")


def attention_maps(patterns: list[np.ndarray], labels: list[str], is_trigger: np.ndarray, incontext: np.ndarray,
                   titles: list[str]) -> bytes:
    """Each layer's attention (query t down, key s across) on one prompt; triggers in red, in-context queries marked."""
    T = len(labels)
    size = 6.5 if T <= MAX_TOKEN_LABELS else 5.5
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(patterns), figsize=(size * len(patterns), size), squeeze=False)
        for ax, pattern, title in zip(axes[0], patterns, titles):
            image = ax.imshow(pattern, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            rows = np.flatnonzero(incontext)
            ax.scatter(np.full(len(rows), T - 0.5 + 0.6), rows, marker="<", color="red", s=28, clip_on=False,
                       label="in-context query (label >= 2)")
            _token_ticks(ax, labels, is_trigger)
            with_tokens = " (token)" if T <= MAX_TOKEN_LABELS else ""
            ax.set(title=title, xlabel=f"key position s{with_tokens}", ylabel=f"query position t{with_tokens}")
            ax.set_xlim(-0.5, T + 0.5)
            ax.legend(loc="upper right", fontsize=8)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight a(t, s)")
        fig.tight_layout()
        return to_png(fig)


def previous_token_by_position(mean_by_t: np.ndarray, trigger_by_t: np.ndarray, baseline: np.ndarray, layer: int) -> bytes:
    """The previous-token layer's weight a(t, t-1) by query position, averaged over the held-out batch."""
    t = np.arange(1, len(mean_by_t) + 1)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 4))
        ax.plot(t, mean_by_t, "o-", ms=3, color="C6", label="all positions")
        if np.isfinite(trigger_by_t).any():
            ax.plot(t, trigger_by_t, "s", ms=3, color="red", alpha=0.7, label="previous token is a trigger")
        ax.plot(t, baseline, ":", color="k", label="even spread over t + 1 keys")
        ax.set(title=f"Layer-{layer} attention on the previous token by position", xlabel="query position t",
               ylabel=f"mean a{layer}(t, t-1)", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        fig.tight_layout()
        return to_png(fig)
