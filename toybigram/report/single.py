"""The report of one run: status and provenance, final figures, training curves, attention, theory, settings."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import OmegaConf

from toybigram.factory import data_seeds, make_chain, make_sampler
from toybigram.checkpoint import load_run
from toybigram.data import Batch, BigramChain
from toybigram.errors import UserError
from toybigram.evaluation import run_in_chunks
from toybigram.hooks import pattern_hooks
from toybigram.report import plots
from toybigram.report.figures import ALL_FIGURES, SECTIONS, THEORY_FIGURES, Context, fmt
from toybigram.report.page import Section, esc, image, note, page, row, status_badge, table
from toybigram.report.runs import INTERRUPTED, Run, flatten

SYMBOLS = {" ": "␣", "\n": "↵", "\t": "⇥"}
CURVE_KEYS = [f.key for f in ALL_FIGURES] + ["bayes_loss_global", "bayes_loss_first", "bayes_loss_incontext"]


@dataclass
class Task:
    """The run's data as it was trained on: the chain and the held-out batch its evaluations used."""

    cfg: object
    chain: BigramChain
    held_out: Batch
    context: Context


def rebuild_task(config: dict) -> Task:
    """Chain and held-out batch from a run's config (the same seeds as the run), with its reference values."""
    cfg = OmegaConf.create(config)
    chain = make_chain(cfg.data)
    sampler = make_sampler(cfg.data, chain, torch.device("cpu"), data_seeds(cfg.data_seed)[1])
    batch = sampler.sample(cfg.train.eval_batch_size, cfg.data.seq_len)
    P = torch.tensor(chain.transition)
    best = P.max(-1).values[batch.inputs]
    first = batch.labels == 1
    if cfg.data.outputs == "bigram":
        first_chance = best[first].mean().item() if first.any() else None
    else:
        first_chance = 1 / (chain.vocab_size - (1 if cfg.data.exclude_trigger_output else 0))
    kl_uniform = math.log(chain.vocab_size) - chain.conditional_entropy()
    keep = np.ones(chain.vocab_size, dtype=bool)
    if cfg.data.triggers == "fixed":
        keep[sampler.fixed_triggers.numpy()] = False
    context = Context(chain.vocab_size, int(cfg.data.seq_len), best[batch.labels == 0].mean().item(), first_chance,
                      float(kl_uniform[keep].mean()) if keep.any() else None)
    return Task(cfg, chain, batch, context)


def try_task(run: Run) -> tuple[Task | None, str | None]:
    if run.config is None:
        return None, "the run recorded no settings"
    try:
        return rebuild_task(run.config), None
    except Exception as err:  # settings a failed job was refused for, a text file no longer there
        return None, f"cannot rebuild the run's data: {err}"


def symbol(chain: BigramChain, token: int) -> str:
    if chain.alphabet is None:
        return str(token)
    text = chain.alphabet[token]
    return SYMBOLS.get(text, text)


# -- sections ----------------------------------------------------------------------------------


def status_text(run: Run) -> str:
    """One paragraph saying what state the run is in and where the figures below come from."""
    s = run.summary
    if run.status == "diverged":
        return note(f"Training <b>diverged at step {esc(s.get('diverged_at_step'))}</b> ({esc(s.get('reason', 'non-finite loss'))}); "
                    "the figures are those of that step's evaluation. Lower <code>optim.lr</code> or add <code>optim.warmup_steps</code>.")
    if run.status == "failed":
        return note(f"The run was <b>refused</b> before training (status failed): <code>{esc(s.get('error', 'no reason recorded'))}</code>")
    if run.status == INTERRUPTED:
        where = (f"its checkpoint is at step {run.checkpoint_step}; continue it with <code>train.resume=true</code>"
                 if run.checkpoint_step is not None else "it stopped before its first checkpoint")
        last = f"the figures are from the last evaluation, at step {run.figures_step}" if run.rows else "it recorded no evaluation"
        return note(f"The run has no summary.json: it was <b>interrupted</b> (or is still running); {where}; {last}.")
    return ""


def _joined(*parts: tuple[str, object]) -> str | None:
    """``label value`` pairs that are known, joined by commas; None when none is."""
    known = [f"{label}{value}" for label, value in parts if value not in (None, "", {})]
    return ", ".join(known) if known else None


def _steps(done, total) -> str | None:
    if done is None:
        return None
    return f"{done} of {total}" if total is not None else str(done)


def overview_rows(run: Run, task: Task | None) -> list[tuple[str, str | None]]:
    """(name, plain text) of what the run recorded about itself; None where it recorded nothing."""
    s, cfg = run.summary, run.config or {}
    data = cfg.get("data") or {}
    triggers = s.get("triggers")
    if triggers is None and task is not None and task.cfg.data.triggers == "fixed":
        fixed = make_sampler(task.cfg.data, task.chain, torch.device("cpu"), 0).fixed_triggers.tolist()
        triggers = task.chain.decode(fixed) if task.chain.alphabet else fixed
    seconds = s.get("wall_seconds", run.checkpoint_seconds)
    versions = s.get("versions") or {}
    return [
        ("steps", _steps(s.get("steps", run.checkpoint_step), (cfg.get("train") or {}).get("steps"))),
        ("wall time", _joined(("", f"{seconds:.1f} s" if seconds is not None else None),
                              ("median ", f"{s['step_ms_median']:.1f} ms/step" if s.get("step_ms_median") else None))),
        ("seeds", _joined(("seed ", cfg.get("seed")), ("data_seed ", cfg.get("data_seed")))),
        ("data", _joined(("", s.get("data_source", data.get("source"))),
                         ("N = ", s.get("vocab_size", task.context.vocab_size if task else None)),
                         ("triggers ", repr(triggers) if isinstance(triggers, str) else triggers))),
        ("device / dtype", _joined(("", s.get("device", cfg.get("device"))), ("", s.get("dtype")),
                                   ("torch threads ", s.get("torch_threads")))),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or None),
        ("git commit", s.get("git_commit")),
        ("platform", s.get("platform")),
    ]


def overview_section(run: Run, task: Task | None) -> Section:
    rows = [["status", status_badge(run.status)]]
    missing = "not recorded" + ("" if run.summary else " (the run has no summary.json)")
    rows += [[esc(name), esc(value if value is not None else missing)] for name, value in overview_rows(run, task)]
    rows.append(["directory", f"<code>{esc(run.path.absolute())}</code>"])
    notes = "".join(note(esc(n)) for n in run.notes)
    return Section("run", "Run", status_text(run) + notes + table(None, rows))


def figures_section(run: Run, context: Context) -> Section:
    figures = run.figures
    if not figures:
        return Section("figures", "Final figures", "<p>No evaluation was recorded.</p>")
    step = run.figures_step
    rows = []
    for heading, entries in SECTIONS.items():
        rows.append([esc(heading)])
        rows += [[esc(f.name), esc(fmt(figures.get(f.key))), esc(f.reference(figures, context)), esc(f.meaning)] for f in entries]
    intro = (f"<p>Evaluation at step {esc(step)} on the run's fixed held-out batch (the same batch at every "
             "evaluation). The definitions are in docs/metrics.md.</p>")
    return Section("figures", "Final figures", intro + table(["figure", "value", "floor / good range", "meaning"], rows, {1}))


def run_curves(rows: list[dict], keys: list[str] = CURVE_KEYS) -> dict[str, plots.Curve]:
    """Each figure of metrics.jsonl against the step (missing values as NaN)."""
    steps = np.array([row["step"] for row in rows], dtype=float)
    curves = {}
    for key in keys:
        values = np.array([np.nan if row.get(key) is None else row[key] for row in rows], dtype=float)
        if np.isfinite(values).any():
            curves[key] = plots.Curve(steps, values)
    return curves


def curves_section(run: Run, context: Context) -> Section:
    if len(run.rows) < 2:
        return Section("curves", "Training curves", "<p>Fewer than two evaluations in metrics.jsonl: nothing to plot.</p>")
    png = plots.training_curves(run_curves(run.rows), context, f"{run.path.name}: training curves ({len(run.rows)} evaluations)")
    caption = ("Top left: cross-entropy per label class on the held-out batch, each against its Bayes floor (dashed, same "
               "colour); the in-context floor is 0. Top right: top-1 accuracy per class, with chance 1/N and the true bigram's "
               "accuracy on the global targets. Bottom left: the memory-recall probes (read from the weights) and the attention "
               "probes (on the held-out batch). Bottom right: bigram KL of the feed-forward memory read alone.")
    return Section("curves", "Training curves", image(png, "training curves", caption))


def layer_titles(n_layers: int) -> list[str]:
    roles = {n_layers - 2: "previous-token head", n_layers - 1: "induction head"}
    return [f"layer {i + 1}" + (f" ({roles[i]})" if i in roles else "") for i in range(n_layers)]


def sample_index(batch: Batch) -> int:
    """The held-out sequence to draw: one with in-context targets (up to 3 count) and the most distinct tokens.

    The first sequence can be degenerate (a trigger whose output is itself fills it with one token).
    """
    incontext = (batch.labels >= 2).sum(-1).clamp_max(3)
    distinct = torch.tensor([len(set(row.tolist())) for row in batch.inputs])
    score = incontext * (batch.inputs.shape[1] + 1) + distinct
    return int(score.argmax())


def prompt_html(task: Task, index: int) -> str:
    """The sample prompt as token boxes: triggers in red, in-context targets (copied outputs) shaded green."""
    batch, chain = task.held_out, task.chain
    tokens = batch.tokens[index].tolist()
    triggers = set(batch.triggers[index].tolist())
    copied = {t + 1 for t, label in enumerate(batch.labels[index].tolist()) if label >= 2}
    spans = []
    for t, token in enumerate(tokens):
        kind = " ".join(k for k, on in (("trigger", token in triggers), ("target", t in copied)) if on)
        spans.append(f'<span class="{kind}" title="position {t}">{esc(symbol(chain, token))}</span>')
    return f'<p class="prompt">{"".join(spans)}</p>'


def attention_figures(model, task: Task, index: int) -> tuple[bytes, bytes]:
    """Maps of every layer on held-out sequence ``index``, and the previous-token layer's weight on t - 1 by position."""
    batch, n_layers = task.held_out, model.spec.n_layers
    names = pattern_hooks(n_layers)
    with torch.no_grad():
        _, cache = run_in_chunks(model, batch.inputs, names)
    inputs, triggers = batch.inputs[index], batch.triggers[index]
    is_trigger = (inputs[:, None] == triggers[None, :]).any(-1).numpy()
    labels = [symbol(task.chain, t) for t in inputs.tolist()]
    maps = plots.attention_maps([cache[n][index].double().numpy() for n in names], labels, is_trigger,
                                (batch.labels[index] >= 2).numpy(), layer_titles(n_layers))
    on_previous = cache[names[n_layers - 2]].diagonal(offset=-1, dim1=-2, dim2=-1).double()  # (B, T-1)
    after_trigger = (batch.inputs[:, :-1, None] == batch.triggers[:, None, :]).any(-1)
    by_trigger = torch.where(after_trigger, on_previous, torch.nan).nanmean(0)
    T = batch.inputs.shape[1]
    baseline = 1 / (np.arange(1, T) + 1)
    by_position = plots.previous_token_by_position(on_previous.mean(0).numpy(), by_trigger.numpy(), baseline, n_layers - 1)
    return maps, by_position


def attention_section(run: Run, task: Task | None, task_error: str | None) -> Section:
    title = "Attention"
    if task is None:
        return Section("attention", title, f"<p>No attention maps: {esc(task_error)}.</p>")
    if run.checkpoint_step is None:
        return Section("attention", title, "<p>No attention maps: the run has no readable checkpoint.</p>")
    try:
        model, _ = load_run(run.path)
    except (UserError, RuntimeError) as err:
        return Section("attention", title, f"<p>No attention maps: {esc(err)}</p>")
    index = sample_index(task.held_out)
    maps, by_position = attention_figures(model, task, index)
    n = model.spec.n_layers
    caption = (f"Model at its checkpoint (step {run.checkpoint_step}), on held-out sequence {index} (shown above). "
               "Row t is the query position, column s the key position; each row sums to 1 over s &le; t. Red tick labels: "
               "the sequence's trigger tokens. Red &#9664; at the right edge: in-context query positions (the input is a "
               f"trigger firing again), where layer {n} should look at the position right after the trigger's earlier "
               f"occurrence, and layer {n - 1} at the previous token (the diagonal just below the main one).")
    by_caption = (f"Layer-{n - 1} weight on the previous token, averaged over the {task.held_out.inputs.shape[0]} held-out "
                  "sequences, by query position; its mean over positions is the attn_prev_token figure. Red: positions whose "
                  "previous token is a trigger (the keys the induction head reads). Dotted: a head spreading evenly.")
    body = (f"<p>Sample prompt (held-out sequence {index}; red: trigger tokens; green: targets the context fixes, i.e. a "
            "trigger's output after its first firing):</p>" + prompt_html(task, index) + image(maps, "attention maps", caption)
            + image(by_position, "previous-token attention by position", by_caption))
    return Section("attention", title, body)


def theory_section(run: Run) -> Section:
    headline = run.summary.get("theory")
    pictures = sorted((run.path / "theory").glob("*.png")) if (run.path / "theory").is_dir() else []
    if not headline and not pictures:
        why = ("the run did not finish" if run.status != "finished" else
               "the analysis was switched off (train.theory=false) or cut short; run python -m toybigram.theory run_dir=...")
        return Section("theory", "Theory against the model", f"<p>No theory analysis: {esc(why)}.</p>")
    body = ("<p>The analytic calculator predicts the model's logits from the memories read off its weights and the "
            "prompt's counts, on designed prompt families (quick analysis; details in docs/theory.md and theory.json).</p>")
    if headline:
        rows = [[esc(f.name), esc(fmt(headline.get(f.key))), esc(f.reference(headline, Context())), esc(f.meaning)]
                for f in THEORY_FIGURES if f.key in headline]
        body += table(["figure", "value", "good range", "meaning"], rows, {1})
    else:
        body += note("summary.json has no theory headline (the analysis was cut short); the plots below are from theory/.")
    captions = {"logits_scatter": "Centred logits, model against calculator, every prompt family (points on the diagonal agree).",
                "hijack_margins": "Hijack prompts: logit of the in-context output o minus that of the global favourite b*, "
                                  "against the count c of 'q o' in the prompt: mean over the (q, o) pairs with their min-max band; "
                                  "model solid, calculator dashed; above the zero line o wins."}
    body += row(*(image(path.read_bytes(), path.stem, esc(captions.get(path.stem, f"theory/{path.name}"))) for path in pictures))
    return Section("theory", "Theory against the model", body)


def settings_section(run: Run) -> Section:
    if not run.config:
        return Section("settings", "Settings", "<p>The run recorded no settings.</p>")
    groups: dict[str, list[list[str]]] = {}
    for key, value in flatten(run.config).items():
        group = key.split(".")[0] if "." in key else "run"
        shown = value if isinstance(value, str) else json.dumps(value)
        groups.setdefault(group, []).append([f"<code>{esc(key)}</code>", esc(shown)])
    tables = [table([group, "value"], rows) for group, rows in groups.items()]
    return Section("settings", "Settings", "<p>The resolved config the run was trained with (command-line name = value).</p>"
                   + row(*tables))


def single_page(run: Run) -> str:
    """The complete HTML report of one run."""
    task, task_error = try_task(run)
    context = task.context if task else Context(run.summary.get("vocab_size"))
    sections = [overview_section(run, task)]
    if run.status != "failed":
        sections += [figures_section(run, context), curves_section(run, context), attention_section(run, task, task_error),
                     theory_section(run)]
    sections.append(settings_section(run))
    subtitle = f"{status_badge(run.status)} &nbsp; toybigram run report for <code>{esc(run.path.absolute())}</code>"
    return page(f"toybigram run: {run.path.name}", subtitle, sections)
