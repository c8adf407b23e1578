"""Fast paths give the plain paths' numbers; the benchmark's FLOP count matches torch's counter. No timings."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from toybigram.bench import main as bench_main, step_flops
from toybigram.data import TriggerSampler, dirichlet_chain, shakespeare_chain
from toybigram.evaluation import token_losses
from toybigram.model import AssociativeTransformer, ModelSpec

REPO = Path(__file__).resolve().parents[1]
SAMPLERS = [
    (lambda: shakespeare_chain(), dict(n_triggers=5)),
    (lambda: dirichlet_chain(300, 0.5, seed=1), dict(n_triggers=4, triggers="random", outputs="bigram")),
    (lambda: dirichlet_chain(12, 0.5, seed=2), dict(n_triggers=3, triggers="random", exclude_trigger_output=True)),
    (lambda: dirichlet_chain(8, 1.0, seed=0), dict(n_triggers=0)),
]


@pytest.mark.parametrize("make_chain,kwargs", SAMPLERS, ids=["shakespeare", "bigram-outputs", "exclude", "no-triggers"])
def test_numpy_walk_equals_torch_walk(make_chain, kwargs):
    chain = make_chain()
    fast, plain = TriggerSampler(chain, seed=3, **kwargs), TriggerSampler(chain, seed=3, **kwargs)
    for batch_size, seq_len in ((37, 50), (1, 1), (64, 9)):
        draws = plain._draw(batch_size, seq_len)
        expected = plain._walk_torch(*draws)
        batch = fast.sample(batch_size, seq_len)
        assert torch.equal(batch.tokens, expected) and batch.tokens.dtype == torch.long
        assert torch.equal(batch.triggers, draws[0]) and torch.equal(batch.outputs, draws[1])


def test_labels_equal_the_one_hot_formula():
    chain = dirichlet_chain(10, 0.5, seed=0)
    batch = TriggerSampler(chain, n_triggers=4, triggers="random", seed=1).sample(32, 60)
    is_trigger = batch.inputs.unsqueeze(-1) == batch.triggers.unsqueeze(1)
    expected = (is_trigger.long().cumsum(dim=1) * is_trigger).sum(-1)
    assert torch.equal(batch.labels, expected)


def test_sampling_together_equals_separate_samplers():
    chain = dirichlet_chain(20, 0.5, seed=1)
    together = [TriggerSampler(chain, n_triggers=3, triggers="random", seed=i) for i in (0, 1, 1, 5)]
    alone = [TriggerSampler(chain, n_triggers=3, triggers="random", seed=i) for i in (0, 1, 1, 5)]
    for _ in range(2):
        for x, sampler in zip(TriggerSampler.sample_together(together, 16, 30), alone):
            y = sampler.sample(16, 30)
            for a, b in zip((x.tokens, x.labels, x.triggers, x.outputs), (y.tokens, y.labels, y.triggers, y.outputs)):
                assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(ffn="relu", d_hidden=24), dict(ffn="none"), dict(pos="rpe"), dict(pos="rope"),
    dict(pos="nope", n_layers=3), dict(n_layers=3),
], ids=["ape-linear", "relu", "no-ffn", "rpe", "rope", "nope", "three-layers"])
def test_analytic_flops_match_torch_flop_counter(kwargs):
    spec = ModelSpec(vocab_size=11, d_model=16, max_len=12, **kwargs)
    model = AssociativeTransformer(spec)
    tokens = torch.randint(11, (3, 10))
    with FlopCounterMode(display=False) as counter:
        token_losses(model(tokens), tokens).mean().backward()
    assert step_flops(spec, 3, 10)["total"] == counter.get_total_flops()


TINY_BENCH = ["data=dirichlet", "data.vocab_size=16", "data.seq_len=16", "data.n_triggers=2", "model.d_model=16",
              "train.batch_size=4", "train.eval_batch_size=8", "--steps", "1", "--warmup", "0",
              "--matmul-size", "32", "--sampler-shape", "4x8"]


def test_bench_reports_every_figure_as_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench_main([*TINY_BENCH, "--instances", "2", "--e2e", "3", "--json", str(out)])
    assert "GFLOP/s" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["sampler"]["tokens_per_second"] > 0
    for key in ("model_step_ms", "loop_step_ms", "eval_ms", "tokens_per_second"):
        assert result["train"][key] > 0
    assert result["flops_per_step"]["total"] == step_flops(ModelSpec(vocab_size=16, d_model=16, max_len=16), 4, 16)["total"]
    assert result["dense_matmul"]["gflops_median"] > 0 and result["fraction_of_dense"] > 0
    assert result["memory"]["peak_rss_mb"] > 0
    assert result["instances"]["count"] == 2 and result["e2e"]["together_ratio_to_single"] > 0
    assert result["instances"]["wide_batch_loop_step_ms"] > 0


@pytest.mark.parametrize("args,setting", [
    (["--instances", "0"], "--instances"),
    (["model.d_model=0"], "model.d_model"),
    (["model.no_such_option=1"], "no_such_option"),
])
def test_bench_bad_input_is_one_line_exit_2(tmp_path, capsys, args, setting):
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as exit_info:
        bench_main([*TINY_BENCH, *args, "--json", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and setting in err[0], err
    assert not out.exists()


# -- time to accuracy (--time-to-accuracy) ----------------------------------------------------
# A stand-in for a transformer-birth checkout: its main script logs evaluation lines in the
# reference's format, in-context accuracy rising by evaluation, and never stops by itself.
FAKE_REFERENCE_MAIN = """
import pathlib, sys, time
pathlib.Path("argv.txt").write_text("\\n".join(sys.argv[1:]))
accuracies = [0.1, 0.5, 0.92, 0.95, 0.99]
i = 0
while True:
    held_out = accuracies[min(i // 10, len(accuracies) - 1)]
    print(f"INFO:root:{i} (0.00, 0.01, {0.01 * i:.2f}): loss: 1.0 (1.0, 1.0), acc: 0.5 (0.4000 / {held_out:.4f}) "
          "probes: 0 / 0 / 0 / 0 (0)", file=sys.stderr, flush=True)
    i += 10
    time.sleep(0.02)
"""
SPEED_SHAPE = ["model.d_model=16", "data.seq_len=16", "train.batch_size=4", "train.eval_batch_size=8", "train.steps=20",
               "threads=1"]


def run_bench(*args: str, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "toybigram.bench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=240)


def test_time_to_accuracy_reads_both_codes_and_stops_the_reference_at_the_target(tmp_path):
    reference = fake_checkout(tmp_path / "transformer-birth")
    (reference / "ihead_basic_main.py").write_text(FAKE_REFERENCE_MAIN)
    out = tmp_path / "speed.json"
    proc = run_bench("--time-to-accuracy", *SPEED_SHAPE, "train.loss=all", "--reference", str(reference),
                     "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "| reference |" in proc.stdout and "held-out batch (512 sequences)" in proc.stdout
    result = json.loads(out.read_text())
    ref, ours = result["runs"]["reference"][0], result["runs"]["toybigram"][0]
    # line i is printed after update i + 1: 0.92 first at i = 20, 0.99 at i = 40; then it is stopped
    assert ref["acc_0.9"]["step"] == 21 and ref["acc_0.97"]["step"] == 41 and ref["stopped_at_target"]
    assert ref["acc_0.9"]["seconds"] <= ref["acc_0.97"]["seconds"] <= ref["process_seconds"]
    assert ref["train_batch_acc_0.9"] is None
    argv = (reference / "argv.txt").read_text().splitlines()
    assert {"model_args.dim=16", "data_args.seq_length=16", "optim_args.batch_size=4", "loss_head_only=False",
            "eval_delta=10", "data_args.k=5"} <= set(argv)
    assert (reference / "data" / "meta.pkl").is_file()
    assert ours["last_step"] == 20 and "gap_0.05" in ours and result["eval_every"] == 10


def fake_checkout(directory):
    directory.mkdir()
    for name in ("ihead_basic_main.py", "ihead_basic_model.py", "ihead_data.py"):
        (directory / name).write_text("")
    return directory


def test_time_to_accuracy_refuses_a_directory_that_is_no_reference_in_one_line(tmp_path):
    proc = run_bench("--time-to-accuracy", *SPEED_SHAPE, "--reference", str(tmp_path))
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "not a transformer-birth checkout" in err[0], proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("args,setting", [
    (["--reference", "{tmp}/missing"], "--reference"),
    (["--target", "1.5"], "--target"),
    (["--repeats", "0"], "--repeats"),
    (["model.pos=rope", "--reference", "{ref}"], "model.pos"),
])
def test_time_to_accuracy_bad_input_is_one_line_exit_2(tmp_path, capsys, args, setting):
    fake = fake_checkout(tmp_path / "ref")
    out = tmp_path / "speed.json"
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--time-to-accuracy", *SPEED_SHAPE, *(a.format(tmp=tmp_path, ref=fake) for a in args),
                    "--json", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and setting in err[0], err
    assert not out.exists() and not (fake / "data").exists()


def test_reference_needs_time_to_accuracy(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main([*TINY_BENCH, "--reference", str(tmp_path)])
    assert exit_info.value.code == 2 and "--time-to-accuracy" in capsys.readouterr().err
