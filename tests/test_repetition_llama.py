"""Hooks, interventions, ranking and batched decoding on a tiny random Llama built here (no download)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from toybigram.repetition import analysis  # noqa: E402
from toybigram.repetition.detector import find_loop  # noqa: E402
from toybigram.repetition.generation import generate_texts, greedy_continue  # noqa: E402
from toybigram.repetition.models import HFSubject  # noqa: E402
from toybigram.repetition.neurons import delta_scores, edited, make_edit, rank, split_by_site  # noqa: E402

# decoding passes the KV cache under the name this transformers version takes, without deprecation warnings
pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

VOCAB = 64


class StubTokenizer:
    """Just what HFSubject uses: a BOS id and decode."""

    bos_token_id = 1
    eos_token_id = 2

    def decode(self, ids):
        return " ".join(map(str, ids))


def tiny_llama(seed: int = 0, layers: int = 2, dtype=torch.float32):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=24, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="sdpa",
    )
    model = transformers.LlamaForCausalLM(config).to(dtype).eval()
    model.requires_grad_(False)
    return model


def subject_of(model) -> HFSubject:
    return HFSubject.build("tiny-llama", model, StubTokenizer(), torch.device("cpu"), model.dtype)


def all_hooks(model) -> int:
    """Hooks on the MLP activation modules (transformers keeps its own hooks elsewhere)."""
    return sum(len(layer.mlp.act_fn._forward_hooks) + len(layer.mlp.act_fn._forward_pre_hooks) for layer in model.model.layers)


@pytest.fixture(scope="module")
def subject():
    return subject_of(tiny_llama())


def test_sites_are_the_gate_activation_of_each_layer(subject):
    assert subject.site_layers == [0, 1]
    assert subject.site_sizes == [24, 24]
    assert subject.n_neurons == 48
    assert all(site is layer.mlp.act_fn for site, layer in zip(subject.sites, subject.model.model.layers))
    # the captured activation is act(W_gate x), before the product with W_up x
    ids = torch.randint(3, VOCAB, (2, 9))
    seen, inputs = {}, {}
    mlp0 = subject.model.model.layers[0].mlp
    handle = mlp0.register_forward_pre_hook(lambda m, args: inputs.__setitem__("x", args[0]))
    try:
        with subject.neuron_hooks(lambda site, act: seen.__setitem__(site, act.clone())):
            subject.forward(ids)
    finally:
        handle.remove()
    expected = torch.nn.functional.silu(mlp0.gate_proj(inputs["x"]))
    torch.testing.assert_close(seen[0], expected)
    assert all_hooks(subject.model) == 0


@pytest.mark.parametrize("mode,value", [("set", 0.0), ("add", 1.0)])
@pytest.mark.parametrize("newest_only", [True, False])
def test_edit_changes_exactly_the_chosen_neurons(subject, mode, value, newest_only):
    neurons = [3, 7, 24 + 0, 24 + 23]  # two in each layer
    edit = make_edit(neurons, subject.site_sizes, mode, value, newest_only)
    before, after = {}, {}
    ids = torch.randint(3, VOCAB, (3, 11))
    # a read hook registered before the edit sees the layer's own output, one after sees the edit
    with subject.neuron_hooks(lambda s, a: before.__setitem__(s, a.clone())):
        with subject.neuron_hooks(edit):
            with subject.neuron_hooks(lambda s, a: after.__setitem__(s, a.clone())):
                subject.forward(ids)
    units = split_by_site(neurons, subject.site_sizes)
    for site in (0, 1):
        expected = before[site].clone()
        rows = slice(-1, None) if newest_only else slice(None)
        if mode == "set":
            expected[:, rows, units[site]] = value
        else:
            expected[:, rows, units[site]] += value
        assert torch.equal(after[site], expected)
        changed = (after[site] != before[site]).any(dim=(0, 1)).nonzero().flatten().tolist()
        assert set(changed) <= set(units[site].tolist())
        if newest_only:
            assert torch.equal(after[site][:, :-1], before[site][:, :-1])
    assert all_hooks(subject.model) == 0


def test_edit_reaches_the_mlp_product(subject):
    """The edited gate really feeds down_proj: zeroed channels give zero product input."""
    edit = make_edit([5, 6], subject.site_sizes, "set", 0.0, newest_only=False)
    seen = {}
    down = subject.model.model.layers[0].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda m, args: seen.__setitem__("h", args[0]))
    try:
        with edited(subject, edit):
            subject.forward(torch.randint(3, VOCAB, (1, 6)))
    finally:
        handle.remove()
    assert torch.all(seen["h"][..., [5, 6]] == 0)
    assert torch.all(seen["h"][..., :5] != 0)


def test_hooks_removed_when_an_exception_escapes(subject):
    edit = make_edit([1], subject.site_sizes, "set", 0.0, True)
    with pytest.raises(RuntimeError, match="boom"):
        with edited(subject, edit):
            assert all_hooks(subject.model) == 2
            raise RuntimeError("boom")
    assert all_hooks(subject.model) == 0
    ids = torch.randint(3, VOCAB, (1, 5))
    plain = subject.forward(ids)
    assert torch.equal(plain, subject.model(ids).logits)


def test_k_zero_is_no_edit(subject):
    assert make_edit([], subject.site_sizes, "set", 0.0, True) is None


def reference_greedy(model, prompt, n_new):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                         do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_batched_generation_matches_one_at_a_time():
    model = tiny_llama(seed=1, dtype=torch.float64)
    subject = subject_of(model)
    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (3, 9, 5, 12, 1, 7)]
    batched = greedy_continue(subject, prompts, 20, batch_size=4)  # left-padded, KV cache
    singles = [greedy_continue(subject, [p], 20, batch_size=1)[0] for p in prompts]
    assert batched == singles
    assert singles == [reference_greedy(model, p, 20) for p in prompts]
    # with an intervention at the newest position, batching still changes nothing
    edit = make_edit(list(range(0, 48, 3)), subject.site_sizes, "add", 1.0, newest_only=True)
    edited_batched = greedy_continue(subject, prompts, 20, batch_size=6, edit=edit)
    edited_single = [greedy_continue(subject, [p], 20, batch_size=1, edit=edit)[0] for p in prompts]
    assert edited_batched == edited_single
    assert edited_batched != batched  # the edit does change the continuation


def test_edited_step_equals_full_recompute_with_edits_at_generated_positions():
    """KV-cache decoding with newest-position edits = one forward that edits exactly the generated positions."""
    model = tiny_llama(seed=2, dtype=torch.float64)
    subject = subject_of(model)
    prompt = [1, 9, 17, 33, 40]
    neurons = [2, 30]
    edit = make_edit(neurons, subject.site_sizes, "set", 0.0, newest_only=True)
    new = greedy_continue(subject, [prompt], 6, batch_size=1, edit=edit)[0]
    full = torch.tensor([prompt + new])
    units = split_by_site(neurons, subject.site_sizes)
    first_edited = len(prompt) - 1  # the last prompt position predicts the first new token

    def edit_generated(site, act):
        act = act.clone()
        if site in units:
            act[:, first_edited:, units[site]] = 0.0
        return act

    with subject.neuron_hooks(edit_generated):
        logits = subject.forward(full)
    assert logits[0, first_edited:-1].argmax(-1).tolist() == new


def test_sampled_starts_do_not_depend_on_batching():
    subject = subject_of(tiny_llama(seed=3, dtype=torch.float64))

    class Cfg:
        seed, prefix_len, greedy_len, temperature = 5, 6, 8, 1.0

    together = generate_texts(subject, [0, 1, 2, 3], Cfg)
    apart = generate_texts(subject, [2], Cfg) + generate_texts(subject, [0, 1], Cfg) + generate_texts(subject, [3], Cfg)
    assert together[0] == apart[1] and together[1] == apart[2] and together[2] == apart[0] and together[3] == apart[3]
    assert all(t[0] == 1 and len(t) == 1 + 6 + 8 for t in together)
    assert len({tuple(t[1:7]) for t in together}) == 4  # different seeded starts


class PlantedGate(torch.nn.Module):
    """SiLU, except one channel reports whether the current token already occurred earlier."""

    def __init__(self, unit: int, tokens: dict):
        super().__init__()
        self.unit, self.tokens = unit, tokens

    def forward(self, x):
        out = torch.nn.functional.silu(x)
        ids = self.tokens["ids"]
        seen = torch.zeros(ids.shape, dtype=out.dtype)
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                seen[b, t] = float(bool((ids[b, :t] == ids[b, t]).any()))
        out = out.clone()
        out[..., self.unit] = 3.0 * seen
        return out


def test_planted_repetition_neuron_ranks_first():
    model = tiny_llama(seed=4, layers=3)
    tokens = {}
    model.model.layers[1].mlp.act_fn = PlantedGate(unit=17, tokens=tokens)
    model.register_forward_pre_hook(lambda m, args, kwargs: tokens.__setitem__("ids", kwargs["input_ids"]), with_kwargs=True)
    subject = subject_of(model)
    rng = np.random.default_rng(0)
    texts = []
    for _ in range(12):
        head = rng.choice(np.arange(3, VOCAB), size=70, replace=True).tolist()
        cycle = rng.choice(np.arange(3, VOCAB), size=15, replace=False).tolist()
        ids = [1] + head + cycle * 9
        ids = ids[:200]
        loop = find_loop(ids)
        assert loop is not None and loop.onset > 50
        texts.append({"ids": ids, "loop": loop.as_dict()})
    windows, heads = analysis.capture(subject, texts, 31, 30, batch_size=5)
    delta = delta_scores(windows.means(), windows.offsets, 30)
    ranking = rank(delta)
    planted = subject.site_sizes[0] + 17
    assert ranking[0] == planted
    # its delta is exactly 3 x (share of already-seen tokens after - before the onset)
    def seen_share(lo, hi):
        flags = [float(t["ids"][q] in t["ids"][:q]) for t in texts for q in range(t["loop"]["onset"] + lo, t["loop"]["onset"] + hi)]
        return np.mean(flags)
    assert delta[planted] == pytest.approx(3.0 * (seen_share(-1, 29) - seen_share(-31, -1)), abs=1e-5)
    assert delta[planted] > 2 * np.sort(delta)[-2]
    layers = analysis.layer_distribution(subject, delta, top_fraction=1 / 72)
    assert layers["counts"] == [0, 1, 0]
    table = heads.table(0.5)
    assert np.asarray(table["induction_mean"]).shape == (3, 4)
    assert all_hooks(model) == 0


@pytest.mark.parametrize("make_subject", ["llama", "toy"])
def test_rows_that_stop_early_leave_the_others_unchanged(make_subject):
    """Dropping settled rows from the batch (and KV cache) changes neither their prefix nor the other rows."""
    if make_subject == "llama":
        subject, lengths = subject_of(tiny_llama(seed=4, dtype=torch.float64)), (6, 4, 6, 3, 6)  # left-padded
    else:
        from test_repetition_toy import toy

        subject, lengths = toy(), (6,) * 5  # the toy model takes no padding
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 20, (n,), generator=g).tolist() for n in lengths]
    edit = make_edit([1, 7], subject.site_sizes, "set", 0.0, newest_only=True)
    full = greedy_continue(subject, prompts, 50, batch_size=5, edit=edit)
    settle = {0: 20, 3: 40}  # rows 0 and 3 stop at the first check at or after these lengths

    def stop(prompt, new):
        row = prompts.index(list(prompt))
        return row in settle and len(new) >= settle[row]

    early = greedy_continue(subject, prompts, 50, batch_size=5, edit=edit, stop=stop)
    assert [len(e) for e in early] == [20, 50, 50, 40, 50]
    assert all(e == f[: len(e)] for e, f in zip(early, full))
