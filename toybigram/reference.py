"""Bietti et al.'s public implementation (transformer-birth) run beside toybigram on the CPU.

The reference is a checkout of https://github.com/albietz/transformer-birth, cloned by hand
(nothing here downloads it). Its ``ihead_basic_main.py`` runs unmodified, with two changes
made from the outside: its hard-coded ``.cuda()`` calls become no-ops (``CPU_LAUNCHER``), and
its character tables (``data/meta.pkl``, which its ``data/prepare.py`` downloads) are written
from toybigram's Shakespeare counts when the checkout has none (``write_meta``).

What its evaluation log lines mean (``parse_reference_line``): line ``i`` is printed after
update i + 1 (0-based ``i``). Its ``acc_end`` is the in-context accuracy on the batch update i
has just trained on, predicted before that update (fresh data for the model that predicts it);
``acc_end_test`` is the in-context accuracy on a fixed held-out batch of 512 sequences after
the update: the figure that matches toybigram's held-out ``acc_incontext``.
"""
from __future__ import annotations

import json
import pickle
import re
import resource
from pathlib import Path

from omegaconf import DictConfig

from toybigram.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE_TABLE = Path(__file__).resolve().parent / "data" / "shakespeare_bigram.json"
REFERENCE_FILES = ("ihead_basic_main.py", "ihead_basic_model.py", "ihead_data.py")
# The reference's log line at an evaluation: "<iter> (<data s>, <step s>, <elapsed s>): loss ..."
REFERENCE_LOG = re.compile(r"^(?:INFO:root:)?(\d+) \(([\d.]+), ([\d.]+), ([\d.]+)\): loss")
# ... and its accuracies: "acc: <acc on targets after a trigger> (<acc_end> / <acc_end_test>)"
REFERENCE_ACCURACY = re.compile(r"acc: ([\d.]+) \(([\d.]+) / ([\d.]+)\)")
# Run the reference's main script on the CPU: .cuda() becomes a no-op; the data workers need fork.
CPU_LAUNCHER = """
import multiprocessing, runpy, sys, torch
multiprocessing.set_start_method("fork", force=True)
torch.Tensor.cuda = lambda self, *args, **kwargs: self
torch.nn.Module.cuda = lambda self, *args, **kwargs: self
torch.set_num_threads({threads})
sys.argv = ["ihead_basic_main.py"] + sys.argv[1:]
runpy.run_path("ihead_basic_main.py", run_name="__main__")
"""
# The reference's own optimizer (its defaults; its README's runs use them).
REFERENCE_OPTIMIZER = ("optim_args.use_sgd=True", "optim_args.learning_rate=0.2", "optim_args.momentum=0.9",
                       "optim_args.weight_decay=0.0001")


def check_reference(path: Path, option: str = "--reference") -> Path:
    """``path`` if it is a transformer-birth checkout, else UserError naming ``option``."""
    missing = [name for name in REFERENCE_FILES if not (path / name).is_file()]
    if missing:
        raise UserError(f"{option}: {path} is not a transformer-birth checkout (missing {', '.join(missing)})")
    return path


def write_meta(reference: Path) -> bool:
    """Write the reference's data/meta.pkl from toybigram's Shakespeare counts unless it exists."""
    meta_path = reference / "data" / "meta.pkl"
    if meta_path.exists():
        return False
    table = json.loads(SHAKESPEARE_TABLE.read_text())
    alphabet = table["alphabet"]
    meta = {
        "vocab_size": len(alphabet),
        "itos": dict(enumerate(alphabet)),
        "stoi": {ch: i for i, ch in enumerate(alphabet)},
        "unigrams": {ch: int(c) for ch, c in zip(alphabet, table["unigram_counts"])},
        "bigrams": {
            (a, b): int(c)
            for a, row in zip(alphabet, table["bigram_counts"])
            for b, c in zip(alphabet, row) if c
        },
    }
    meta_path.parent.mkdir(exist_ok=True)
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(meta))
    tmp.replace(meta_path)
    return True


def parse_reference_line(line: str) -> dict | None:
    """An evaluation line's figures: ``step`` (updates done), ``elapsed`` (its loop clock, s),
    ``acc_incontext`` (held-out, after the update) and ``acc_incontext_train`` (its batch, before); else None."""
    line = line.strip()
    head, accuracy = REFERENCE_LOG.match(line), REFERENCE_ACCURACY.search(line)
    if head is None or accuracy is None:
        return None
    return {"step": int(head[1]) + 1, "elapsed": float(head[4]), "acc_incontext": float(accuracy[3]),
            "acc_incontext_train": float(accuracy[2])}


def reference_overrides(cfg: DictConfig) -> list[str]:
    """The reference's command-line settings for the shape and data of toybigram's config ``cfg``.

    Its optimizer is its own (``REFERENCE_OPTIMIZER``); settings it cannot express are refused
    (UserError naming the setting).
    """
    data, model = cfg.data, cfg.model
    for setting, value, wanted in (("data.source", data.source, "shakespeare"), ("model.pos", model.pos, "ape"),
                                   ("model.n_layers", model.n_layers, 2)):
        if value != wanted:
            raise UserError(f"{setting}: the reference runs only {setting}={wanted}, got {value}")
    if data.vocab_size not in (None, 65):
        raise UserError(f"data.vocab_size: the reference reads the whole Shakespeare table (65), got {data.vocab_size}")
    ffn = {"none": ["model_args.final_ffn=False"],
           "linear": ["model_args.final_ffn=True", "model_args.linear_final_ffn=True"],
           "relu": ["model_args.final_ffn=True", "model_args.linear_final_ffn=False"]}[model.ffn]
    seq_len = cfg.data.seq_len
    bigram_outputs = data.outputs == "bigram"
    return [
        f"model_args.dim={model.d_model}", f"model_args.max_length={seq_len}", f"data_args.seq_length={seq_len}",
        f"optim_args.batch_size={cfg.train.batch_size}", f"data_args.k={data.n_triggers}",
        f"data_args.fixed_special_toks={data.triggers == 'fixed'}", f"data_args.special_toks_offset={data.trigger_offset}",
        f"data_args.no_repeat={bool(data.exclude_trigger_output)}", f"bigram_outs_train={bigram_outputs}",
        f"bigram_outs_test={bigram_outputs}", *ffn, "model_args.freeze_embeddings=True",
        "model_args.freeze_output=True", f"loss_head_only={cfg.train.loss == 'incontext'}", *REFERENCE_OPTIMIZER,
    ]


def window_ms_per_step(points: list[tuple[int, float]], first_step: int) -> float:
    """ms per step between the evaluation at ``first_step`` and the last one, from (step, elapsed s) pairs."""
    points = sorted(points)
    start = [p for p in points if p[0] == first_step]
    if not start or points[-1][0] <= first_step:
        raise RuntimeError(f"no evaluations at step {first_step} and after it: {points}")
    (s0, t0), (s1, t1) = start[0], points[-1]
    return 1e3 * (t1 - t0) / (s1 - s0)


def cpu_seconds_of_children() -> float:
    """User + system seconds of every finished child process (and their reaped children) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
