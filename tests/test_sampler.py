import math

import numpy as np
import pytest
import torch

from toybigram.data import TriggerSampler, dirichlet_chain, shakespeare_chain
from toybigram.data.sampler import alias_tables
from toybigram.errors import ConfigError


def test_alias_tables_reproduce_the_distribution():
    chain = dirichlet_chain(7, 0.3, seed=1)
    prob, alias = alias_tables(chain.transition)
    n = chain.vocab_size
    rebuilt = np.zeros((n, n))
    for i in range(n):
        for c in range(n):
            rebuilt[i, c] += prob[i, c] / n
            rebuilt[i, alias[i, c]] += (1 - prob[i, c]) / n
    np.testing.assert_allclose(rebuilt, chain.transition, atol=1e-12)


def test_global_transitions_match_the_bigram_chain():
    chain = shakespeare_chain()
    sampler = TriggerSampler(chain, n_triggers=5, seed=0)
    batch = sampler.sample(512, 256)
    glob = batch.labels == 0
    prev, nxt = batch.inputs[glob], batch.targets[glob]
    counts = torch.zeros(65, 65, dtype=torch.float64)
    counts.index_put_((prev, nxt), torch.ones_like(prev, dtype=torch.float64), accumulate=True)
    rows = counts.sum(1) >= 2000  # states seen often enough for a tight check
    assert rows.sum() >= 10
    empirical = counts[rows] / counts[rows].sum(1, keepdim=True)
    expected = torch.tensor(chain.transition)[rows]
    # Total variation per row: with n >= 2000 draws over 65 symbols the sampling error is ~0.05.
    tv = 0.5 * (empirical - expected).abs().sum(1)
    assert tv.max() < 0.08, tv


def test_trigger_is_always_followed_by_its_output_and_labels_count_firings():
    chain = dirichlet_chain(20, 0.5, seed=3)
    sampler = TriggerSampler(chain, n_triggers=4, triggers="random", seed=5)
    batch = sampler.sample(64, 100)
    for b in range(64):
        seen = {}
        for t in range(100):
            token = int(batch.inputs[b, t])
            triggers = batch.triggers[b].tolist()
            if token in triggers:
                k = triggers.index(token)
                assert int(batch.targets[b, t]) == int(batch.outputs[b, k])
                seen[token] = seen.get(token, 0) + 1
                assert int(batch.labels[b, t]) == seen[token]
            else:
                assert int(batch.labels[b, t]) == 0
    assert (batch.labels >= 2).sum() > 0


def test_random_triggers_are_distinct_and_excluded_outputs_differ():
    chain = dirichlet_chain(10, 1.0, seed=0)
    sampler = TriggerSampler(chain, n_triggers=5, triggers="random", exclude_trigger_output=True, seed=1)
    batch = sampler.sample(256, 8)
    assert all(len(set(row.tolist())) == 5 for row in batch.triggers)
    assert not (batch.outputs == batch.triggers).any()


def test_bayes_floor_per_label_class():
    chain = shakespeare_chain()
    sampler = TriggerSampler(chain, n_triggers=3, seed=0)
    batch = sampler.sample(32, 64)
    floor = sampler.bayes_loss(batch)
    entropy = torch.tensor(chain.conditional_entropy(), dtype=torch.float32)
    glob = batch.labels == 0
    torch.testing.assert_close(floor[glob], entropy[batch.inputs[glob]])
    assert torch.allclose(floor[batch.labels == 1], torch.tensor(math.log(65)))
    assert (floor[batch.labels >= 2] == 0).all()


def test_same_seed_same_batch_and_state_round_trip():
    chain = dirichlet_chain(12, 0.5, seed=0)
    a = TriggerSampler(chain, n_triggers=2, seed=9)
    b = TriggerSampler(chain, n_triggers=2, seed=9)
    state = a.get_state()
    first = a.sample(8, 16)
    assert torch.equal(first.tokens, b.sample(8, 16).tokens)
    a.set_state(state)
    assert torch.equal(first.tokens, a.sample(8, 16).tokens)


def test_too_many_triggers_is_a_config_error():
    chain = dirichlet_chain(4, 1.0, seed=0)
    with pytest.raises(ConfigError, match="data.n_triggers"):
        TriggerSampler(chain, n_triggers=5)


def test_shakespeare_table_statistics():
    chain = shakespeare_chain()
    assert chain.vocab_size == 65
    top = np.argsort(-chain.unigram)[:5]
    assert chain.decode(top) == " etoa"
    assert abs(chain.unigram[top[0]] - 0.15) < 0.01
    np.testing.assert_allclose(chain.transition.sum(1), 1.0)
