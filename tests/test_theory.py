"""The analytic logit calculator: closed form, prompts, threshold, ideal builds, strengths, CLI errors."""
import math
import subprocess
import sys

import pytest
import torch

from toybigram.data import dirichlet_chain
from toybigram.errors import ConfigError
from toybigram.model import ModelSpec
from toybigram.theory import calculator as C
from toybigram.theory.gram import BLOCKS, forward_selection, gram_build, predict_gram
from toybigram.theory.ideal import ideal_model, log_bigram
from toybigram.theory.prompts import compete, count_pairs, hijack
from toybigram.theory.strengths import read_strengths

N = 8


def test_closed_form_equals_explicit():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(N, (16, 24), generator=gen)
    tokens[:, -1] = 3
    st = C.Strengths(layer1=C.Layer1(exact=True), key=2.5, copy=4.0, bigram=None, vocab_size=N)
    explicit = C.predict(st, tokens).incontext_term[:, -1]
    assert torch.allclose(explicit, C.closed_form_incontext(tokens, 2.5, 4.0, N), atol=1e-12)
    # a large finite alpha is the exact head
    big = C.Strengths(layer1=C.Layer1(pos=C.prev_table(60.0, 24)), key=2.5, copy=4.0, bigram=None, vocab_size=N)
    assert torch.allclose(C.predict(big, tokens).incontext_term[:, -1], explicit, atol=1e-9)


def test_prompts_exact_counts_and_refusals():
    chain = dirichlet_chain(N, 0.5, 0)
    gen = torch.Generator().manual_seed(1)
    for c in (0, 1, 5, 15):
        p = hijack(chain, 2, 5, c, 32, 20, gen)
        assert p.shape == (20, 32) and (p[:, -1] == 2).all()
        assert (count_pairs(p, 2, 5) == c).all() and ((p == 2).sum(1) == c + 1).all()
    p = compete(chain, 1, 3, 2, 4, 3, 20, 10, gen)
    assert (count_pairs(p, 1, 3) == 2).all() and (count_pairs(p, 1, 4) == 3).all() and ((p == 1).sum(1) == 6).all()
    with pytest.raises(ConfigError, match="at least"):
        hijack(chain, 2, 5, 16, 32, 1, gen)
    with pytest.raises(ConfigError, match="equals the query"):
        hijack(chain, 2, 2, 1, 32, 1, gen)


def test_threshold_solver_equals_brute_force():
    T, lam, beta, gap = 40, 1.5, 3.0, 2.0
    g = torch.zeros(N, N, dtype=torch.float64)
    g[0, 1] = gap  # b* = 1 for q = 0
    st = C.Strengths(layer1=C.Layer1(exact=True), key=lam, copy=beta, bigram=g, vocab_size=N)
    counts = torch.arange(0, 19)
    margins = []
    for c in counts.tolist():  # q=0, o=2, filler token 7 plus one b* (f_b = 1)
        z = [7] * (T - 2 * c - 1) + [0, 2] * c + [0]
        z[3] = 1
        out = C.predict(st, torch.tensor([z])).logits[0, -1]
        margins.append(out[2] - out[1])
    brute = C.first_crossing(counts, torch.stack(margins))
    solved = C.hijack_threshold(T, lam, beta, beta, gap, 0.0, 1.0)
    assert math.isfinite(solved.item()) and solved.item() == brute.item()


def test_ideal_agreement_improves_with_d_and_gram_correction_is_exact():
    chain = dirichlet_chain(N, 0.5, 0)
    g = log_bigram(chain.transition)
    tokens = torch.randint(N, (4, 24), generator=torch.Generator().manual_seed(2))
    ideal = C.Strengths(layer1=C.Layer1(pos=C.prev_table(12.0, 24)), key=6.0, copy=5.0, bigram=g, vocab_size=N)
    r2 = []
    for d in (32, 1024):
        model = ideal_model(ModelSpec(vocab_size=N, d_model=d, max_len=24, dtype="float64"), alpha=12.0, lam=6.0, beta=5.0, g=g)
        logits = model(tokens)
        r2.append(C.agreement(logits, C.predict(ideal, tokens).logits)["r2_centered_logits"])
        build = gram_build(model, 12.0, 6.0, 5.0, g)
        assert torch.allclose(predict_gram(build, tokens, ()).logits, C.predict(ideal, tokens).logits, atol=1e-10)
        assert torch.allclose(predict_gram(build, tokens, BLOCKS).logits, logits, atol=1e-8)
    assert r2[1] > r2[0] + 0.3 and r2[1] > 0.7


def test_reduced_gram_correction_improves_on_a_fresh_build():
    """Blocks chosen on one small ideal build raise R^2 over the idealised calculator on another."""
    chain = dirichlet_chain(N, 0.5, 0)
    g = log_bigram(chain.transition)

    def case(seed):
        model = ideal_model(ModelSpec(vocab_size=N, d_model=64, max_len=24, dtype="float64"), alpha=12.0, lam=6.0, beta=5.0, g=g, seed=seed)
        tokens = torch.randint(N, (4, 24), generator=torch.Generator().manual_seed(seed + 10))
        return gram_build(model, 12.0, 6.0, 5.0, g), tokens, model(tokens)

    steps = forward_selection(*case(0), target=0.95, max_blocks=3)
    assert len(steps) >= 2 and all(b["r2"] > a["r2"] for a, b in zip(steps, steps[1:]))
    build, tokens, logits = case(1)
    r2 = lambda keep: C.agreement(logits, predict_gram(build, tokens, keep).logits)["r2_centered_logits"]  # noqa: E731
    assert r2([s["block"] for s in steps[1:]]) > r2(()) + 0.05


def test_exact_variant_equals_forward_pass_and_full_keeps_most():
    """A trained-like model (random memories): every table = forward pass; full is close but not exact."""
    model = ideal_model(ModelSpec(vocab_size=N, d_model=32, max_len=16, dtype="float64"), alpha=3.0, lam=2.0, beta=3.0,
                        g=log_bigram(dirichlet_chain(N, 0.5, 0).transition))
    with torch.no_grad():
        for layer in model.blocks:  # perturb every trainable matrix off the ideal memories
            for p in layer.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype) / p.shape[-1] ** 0.5)
    tokens = torch.randint(N, (3, 16), generator=torch.Generator().manual_seed(4))
    logits = model(tokens)
    exact = C.predict(read_strengths(model, 16, "exact"), tokens)
    assert torch.allclose(exact.logits, logits, atol=1e-8)
    full = C.predict(read_strengths(model, 16, "full"), tokens)
    assert C.agreement(logits, full.logits)["r2_centered_logits"] > 0.5


@pytest.mark.parametrize("pos", ["ape", "rpe"])
def test_read_strengths_from_ideal_build(pos):
    lam = torch.linspace(4.0, 8.0, N, dtype=torch.float64)
    model = ideal_model(ModelSpec(vocab_size=N, d_model=2048, max_len=16, pos=pos, dtype="float64"),
                        alpha=10.0, lam=lam, beta=6.0, g=None)
    st = read_strengths(model, 16, "diagonal")
    assert torch.allclose(st.key, lam, rtol=0.15)
    assert torch.allclose(st.copy, torch.full((N,), 6.0, dtype=torch.float64), rtol=0.15)
    if pos == "ape":
        alpha = st.layer1.pos.diagonal(-1)  # alpha |p_t|^2 |p_{t-1}|^2: norms fluctuate by O(1/sqrt(d))
        assert torch.allclose(alpha, torch.full((15,), 10.0, dtype=torch.float64), rtol=0.25) and abs(alpha.mean() - 10) < 0.5
    full = read_strengths(model, 16, "full")
    tokens = torch.randint(N, (2, 16), generator=torch.Generator().manual_seed(3))
    a1 = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_pattern"])[1]["blocks.0.attn.hook_pattern"]
    assert torch.allclose(C.predict(full, tokens).a1, a1, atol=1e-8)  # layer 1 is exact in the full read


def test_cli_refuses_missing_run_dir(tmp_path):
    out = subprocess.run([sys.executable, "-m", "toybigram.theory", f"run_dir={tmp_path / 'nope'}"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
