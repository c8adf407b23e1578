"""The bigram-with-triggers sampler, vectorised over the batch in torch.

Each sequence draws K triggers q_k and one output o_k per trigger. Then z_1 ~ pi_u and
z_{t+1} = o_k if z_t = q_k, else z_{t+1} ~ pi_b(. | z_t).

Sampling is sequential in time and parallel over the batch. Every step is a table
lookup: the next-token distribution of state i is an alias table (Walker/Vose), and
each trigger of each sequence gets a deterministic row of its own, so one gather per
step serves global and trigger transitions alike. All random numbers are drawn up front
with the sampler's torch.Generator; on CPU the walk itself runs in numpy (torch's
per-operation overhead dominates at these sizes), elsewhere in torch. Both walks give
identical tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from toybigram.checks import boolean, choice, integer
from toybigram.data.bigram import BigramChain
from toybigram.errors import require

TRIGGER_MODES = ("fixed", "random")
OUTPUT_MODES = ("uniform", "bigram")


def check_trigger_settings(vocab_size: int, n_triggers: int, triggers: str, trigger_offset: int, outputs: str,
                           exclude_trigger_output: bool) -> None:
    """The trigger settings for a vocabulary of ``vocab_size`` tokens (which must be at least 2)."""
    require(vocab_size >= 2, "data.vocab_size", f"must be at least 2, got {vocab_size}")
    integer(n_triggers, "data.n_triggers", 0)
    require(n_triggers <= vocab_size, "data.n_triggers", f"{n_triggers} triggers exceed the vocabulary size {vocab_size}")
    choice(triggers, "data.triggers", TRIGGER_MODES)
    integer(trigger_offset, "data.trigger_offset", 0)
    require(
        trigger_offset + n_triggers <= vocab_size,
        "data.trigger_offset",
        f"{trigger_offset} + {n_triggers} triggers exceed the vocabulary size {vocab_size} "
        "(the triggers are the tokens ranked trigger_offset+1 .. trigger_offset+n_triggers by frequency)",
    )
    choice(outputs, "data.outputs", OUTPUT_MODES)
    boolean(exclude_trigger_output, "data.exclude_trigger_output")


def require_trigger_support(chain: BigramChain, n_triggers: int, trigger_offset: int) -> None:
    """Triggers must be tokens the chain can emit: a zero-probability trigger would never fire."""
    support = int((chain.unigram > 0).sum())
    require(
        n_triggers + trigger_offset <= support,
        "data.n_triggers",
        f"{n_triggers} triggers (offset {trigger_offset}) need that many tokens with non-zero "
        f"probability, but the vocabulary has {support} of {chain.vocab_size}",
    )


@dataclass
class Batch:
    """tokens (B, T+1); labels (B, T) for the targets tokens[:, 1:]; triggers, outputs (B, K).

    Label 0: the target came from the global bigram; n >= 1: the n-th firing of its trigger.
    ``Batch.stack`` gives the same fields with a leading instance axis (S, B, ...).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    triggers: torch.Tensor
    outputs: torch.Tensor

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[..., :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[..., 1:]

    @staticmethod
    def stack(batches: list["Batch"]) -> "Batch":
        """The batches of S instances as one, each field with a leading instance axis."""
        return Batch(*(torch.stack(fields) for fields in zip(*((b.tokens, b.labels, b.triggers, b.outputs) for b in batches))))

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.tokens, self.labels, self.triggers, self.outputs)))


def alias_tables(transition: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias method for every row: draw column c uniformly, keep it with prob[i, c], else alias[i, c]."""
    n_rows, n = transition.shape
    prob = np.zeros((n_rows, n))
    alias = np.zeros((n_rows, n), dtype=np.int64)
    for i in range(n_rows):
        scaled = transition[i] * n / transition[i].sum()
        small = [j for j in range(n) if scaled[j] < 1.0]
        large = [j for j in range(n) if scaled[j] >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            prob[i, s], alias[i, s] = scaled[s], g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        for j in small + large:  # leftovers are 1 up to rounding
            prob[i, j], alias[i, j] = 1.0, j
    return prob, alias


class TriggerSampler:
    """Draws batches of trigger sequences from a bigram chain with its own torch.Generator."""

    def __init__(
        self,
        chain: BigramChain,
        *,
        n_triggers: int,
        triggers: str = "fixed",
        trigger_offset: int = 0,
        outputs: str = "uniform",
        exclude_trigger_output: bool = False,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ):
        n = chain.vocab_size
        check_trigger_settings(n, n_triggers, triggers, trigger_offset, outputs, exclude_trigger_output)
        require_trigger_support(chain, n_triggers, trigger_offset)
        self.chain = chain
        self.vocab_size = n
        self.n_triggers = n_triggers
        self.trigger_mode = triggers
        self.output_mode = outputs
        self.exclude_trigger_output = exclude_trigger_output
        self.device = torch.device(device)
        self.generator = torch.Generator(self.device).manual_seed(int(seed))

        prob, alias = alias_tables(chain.transition)
        self._unigram = torch.tensor(chain.unigram, dtype=torch.float32, device=self.device)
        self._transition = torch.tensor(chain.transition, dtype=torch.float32, device=self.device)
        self._accept = torch.tensor(prob.reshape(-1), dtype=torch.float32, device=self.device)
        self._alias = torch.tensor(alias.reshape(-1), device=self.device)
        self._entropy = torch.tensor(chain.conditional_entropy(), dtype=torch.float32, device=self.device)
        ranking = np.argsort(-chain.unigram, kind="stable")
        self.fixed_triggers = torch.tensor(
            ranking[trigger_offset : trigger_offset + n_triggers].copy(), device=self.device
        )

    # -- reproducibility -------------------------------------------------------------------
    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    # -- sampling --------------------------------------------------------------------------
    def _draw_triggers_and_outputs(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, k, g = self.vocab_size, self.n_triggers, self.generator
        if self.trigger_mode == "fixed":
            triggers = self.fixed_triggers.expand(batch_size, k).clone()
        else:
            triggers = torch.multinomial(self._unigram.expand(batch_size, n), k, replacement=False, generator=g)
        if self.output_mode == "bigram":
            rows = self._transition[triggers.reshape(-1)]
            outputs = torch.multinomial(rows, 1, generator=g).view(batch_size, k)
        elif self.exclude_trigger_output:
            outputs = torch.randint(n - 1, (batch_size, k), generator=g, device=self.device)
            outputs = outputs + (outputs >= triggers).long()
        else:
            outputs = torch.randint(n, (batch_size, k), generator=g, device=self.device)
        return triggers, outputs

    @torch.no_grad()
    def sample(self, batch_size: int, seq_len: int) -> Batch:
        """A batch of ``batch_size`` sequences with ``seq_len`` inputs (seq_len + 1 tokens)."""
        return self.sample_together([self], batch_size, seq_len)[0]

    def _draw(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, ...]:
        """All the randomness of one batch, in stream order: triggers, outputs, columns, uniforms, first tokens."""
        require(batch_size > 0, "batch_size", f"must be positive, got {batch_size}")
        require(seq_len > 0, "seq_len", f"must be positive, got {seq_len}")
        n, g, dev = self.vocab_size, self.generator, self.device
        triggers, outputs = self._draw_triggers_and_outputs(batch_size)
        columns = torch.randint(n, (seq_len, batch_size), generator=g, device=dev)
        uniforms = torch.rand((seq_len, batch_size), generator=g, device=dev)
        first = torch.multinomial(self._unigram, batch_size, replacement=True, generator=g)
        return triggers, outputs, columns, uniforms, first

    @staticmethod
    @torch.no_grad()
    def sample_together(samplers: list["TriggerSampler"], batch_size: int, seq_len: int) -> list[Batch]:
        """One batch from each sampler (same chain and settings, own generators) in a single walk.

        Each sampler draws exactly what its own ``sample`` would, so the batches are the
        same as separate calls; only the walk over all sequences is shared.
        """
        lead = samplers[0]
        for other in samplers[1:]:
            require(
                other.chain is lead.chain and other.device == lead.device and other.n_triggers == lead.n_triggers,
                "samplers", "sampling together needs one chain, device and trigger count",
            )
        draws = [s._draw(batch_size, seq_len) for s in samplers]
        triggers, outputs, columns, uniforms, first = zip(*draws)
        triggers, outputs, first = torch.cat(triggers), torch.cat(outputs), torch.cat(first)
        columns, uniforms = torch.cat(columns, dim=1), torch.cat(uniforms, dim=1)  # (T, B) each
        # All randomness is drawn; the walk itself is deterministic.
        walk = lead._walk_numpy if lead.device.type == "cpu" else lead._walk_torch
        tokens = walk(triggers, outputs, columns, uniforms, first)
        labels = TriggerSampler.label(tokens[:, :-1], triggers)  # per sequence, so one pass serves every sampler
        return [
            Batch(*fields)
            for fields in zip(*(t.split(batch_size) for t in (tokens, labels, triggers, outputs)))
        ]

    def _tables(self, triggers: torch.Tensor, outputs: torch.Tensor, lib):
        """Flat alias tables of this batch and each sequence's row of each state (row * N).

        Rows 0..N-1: the global chain. Row N + b*K + j: trigger j of sequence b, which
        always emits outputs[b, j] (accept probability 0, alias = the output).
        """
        n, (batch_size, k) = self.vocab_size, triggers.shape
        row_of_state = torch.arange(n, device=triggers.device).repeat(batch_size, 1)
        trigger_rows = n + torch.arange(batch_size * k, device=triggers.device).view(batch_size, k)
        row_of_state.scatter_(1, triggers, trigger_rows)
        accept = torch.cat([self._accept, self._accept.new_zeros(batch_size * k * n)])
        alias = torch.cat([self._alias, outputs.reshape(-1, 1).expand(-1, n).reshape(-1)])
        row_start = (row_of_state * n).view(-1)
        if lib is np:  # int32 indices where they fit: half the memory traffic of the gathers
            index = np.int32 if max(accept.numel(), row_start.numel()) < 2**31 else np.int64
            return row_start.numpy().astype(index), accept.numpy(), alias.numpy().astype(index)
        return row_start, accept, alias

    def _walk_torch(self, triggers, outputs, columns, uniforms, first) -> torch.Tensor:
        """The reference walk, tokens (B, T+1): one alias-table gather per step, on any device."""
        n, (seq_len, batch_size) = self.vocab_size, columns.shape
        row_start, accept, alias = self._tables(triggers, outputs, torch)
        tokens = torch.empty((seq_len + 1, batch_size), dtype=torch.long, device=columns.device)
        tokens[0] = first
        sequence_offset = torch.arange(batch_size, device=columns.device) * n
        state = first
        for t in range(seq_len):
            cell = row_start[sequence_offset + state] + columns[t]
            state = torch.where(uniforms[t] < accept[cell], columns[t], alias[cell])
            tokens[t + 1] = state
        return tokens.T.contiguous()

    def _walk_numpy(self, triggers, outputs, columns, uniforms, first) -> torch.Tensor:
        """The same walk on CPU: numpy calls into preallocated buffers cost far less per step than torch ops."""
        n, (seq_len, batch_size) = self.vocab_size, columns.shape
        row_start, accept, alias = self._tables(triggers, outputs, np)
        int_type = row_start.dtype
        columns, uniforms = columns.numpy().astype(int_type), uniforms.numpy()
        tokens = np.empty((seq_len + 1, batch_size), dtype=int_type)
        tokens[0] = first.numpy()
        sequence_offset = np.arange(batch_size, dtype=int_type) * n
        index, cell = np.empty(batch_size, int_type), np.empty(batch_size, int_type)
        threshold, keep = np.empty(batch_size, np.float32), np.empty(batch_size, bool)
        for t in range(seq_len):
            np.add(sequence_offset, tokens[t], out=index)
            row_start.take(index, out=cell)
            cell += columns[t]  # cell = row_start[b, state] + column
            accept.take(cell, out=threshold)
            np.less(uniforms[t], threshold, out=keep)
            alias.take(cell, out=tokens[t + 1])
            np.copyto(tokens[t + 1], columns[t], where=keep)  # keep the column, else its alias
        return torch.from_numpy(np.ascontiguousarray(tokens.T, dtype=np.int64))

    @staticmethod
    def label(inputs: torch.Tensor, triggers: torch.Tensor) -> torch.Tensor:
        """Label of each target: 0 if its input is no trigger, else that trigger's firing count so far."""
        if triggers.shape[1] == 0:
            return torch.zeros_like(inputs)
        labels = torch.zeros_like(inputs)
        for k in range(triggers.shape[1]):  # one (B, T) pass per trigger, not a (B, T, K) tensor
            is_trigger = inputs == triggers[:, k : k + 1]
            labels += is_trigger.cumsum(dim=1) * is_trigger
        return labels

    # -- Bayes floors ----------------------------------------------------------------------
    def first_occurrence_entropy(self, triggers: torch.Tensor) -> torch.Tensor:
        """Expected loss of the Bayes predictor on a trigger's first firing (its output is unknown)."""
        n = self.vocab_size
        if self.output_mode == "bigram":
            return self._entropy[triggers]
        return torch.full(triggers.shape, math.log(n - 1 if self.exclude_trigger_output else n), device=triggers.device)

    def bayes_loss(self, batch: Batch) -> torch.Tensor:
        """Per-target expected cross-entropy (nats) of the Bayes-optimal predictor, shape (B, T).

        Label 0 costs the conditional entropy of pi_b at the input token; label 1 the
        entropy of the output distribution; label >= 2 is determined by the context (0).
        With random triggers this is an oracle floor: it assumes the trigger set is known.
        """
        floor = self._entropy[batch.inputs].clone()
        if self.n_triggers:
            first = batch.labels == 1
            trigger_index = (batch.inputs.unsqueeze(-1) == batch.triggers.unsqueeze(1)).float().argmax(-1)
            first_cost = self.first_occurrence_entropy(batch.triggers).gather(1, trigger_index)
            floor = torch.where(first, first_cost, floor)
            floor = floor.masked_fill(batch.labels >= 2, 0.0)
        return floor

