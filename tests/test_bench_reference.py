"""The side-by-side harness for Bietti et al.'s implementation: its parsing, its data tables, its refusals."""
import importlib.util
import pickle
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "scripts" / "bench_reference.py"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("bench_reference", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_log_lines_and_timing_window(harness):
    lines = ["INFO:root:0 (1.52, 1.90, 1.90): loss: 4.1 (4.1, 4.2), acc: ...",
             "INFO:root:50 (0.00, 0.15, 9.40): loss: 3.0 (2.9, 3.1), acc: ...",
             "100 (0.00, 0.20, 25.40): loss: 2.0 (1.9, 2.1), acc: ...",
             "INFO:root:memory probes wk0: 0.1"]
    points = [(int(m[1]), float(m[4])) for line in lines if (m := harness.REFERENCE_LOG.match(line))]
    assert points == [(0, 1.90), (50, 9.40), (100, 25.40)]
    assert harness.window_ms_per_step(points, 50) == pytest.approx(320.0)  # 16 s over steps 51..100
    with pytest.raises(RuntimeError, match="no evaluations"):
        harness.window_ms_per_step(points[:2], 50)


def test_character_tables_match_toybigram_and_are_not_overwritten(harness, tmp_path):
    from toybigram.data import shakespeare_chain

    assert harness.write_meta(tmp_path)
    meta = pickle.loads((tmp_path / "data" / "meta.pkl").read_bytes())
    chain = shakespeare_chain()
    assert meta["vocab_size"] == chain.vocab_size == len(meta["stoi"]) == len(meta["itos"])
    # the reference normalises counts into pi_u and pi_b: the same chain as ours
    total = sum(meta["unigrams"].values())
    for ch, count in meta["unigrams"].items():
        assert count / total == pytest.approx(chain.unigram[meta["stoi"][ch]], rel=1e-9)
    row = {b: c for (a, b), c in meta["bigrams"].items() if a == "e"}
    for ch, count in row.items():
        assert count / sum(row.values()) == pytest.approx(chain.transition[meta["stoi"]["e"], meta["stoi"][ch]], rel=1e-9)
    assert not harness.write_meta(tmp_path)


def test_a_directory_without_the_reference_is_refused(harness, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        harness.main(["--reference", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "not a transformer-birth checkout" in capsys.readouterr().err


def test_an_evaluation_line_gives_updates_done_and_both_accuracies():
    from toybigram.reference import parse_reference_line

    line = ("INFO:root:10 (0.00, 0.25, 5.10): loss: 1.2345 (2.0000, 1.2000), acc: 0.5000 (0.6000 / 0.6500) "
            "probes: 0.1 / 0.2 / 0.3 / 0.4 (0.5)")
    assert parse_reference_line(line) == {"step": 11, "elapsed": 5.10, "acc_incontext": 0.65, "acc_incontext_train": 0.60}
    assert parse_reference_line("INFO:root:11 (0.00, 0.25, 5.30): 1.2345") is None  # a line between evaluations
    assert parse_reference_line("INFO:root:memory probes wk0: 0.1") is None


def test_the_reference_gets_toybigrams_shape_and_refuses_what_it_cannot_run(compose_train):
    from toybigram.errors import UserError
    from toybigram.reference import REFERENCE_OPTIMIZER, reference_overrides

    cfg = compose_train("model.d_model=128", "data.seq_len=96", "train.batch_size=32", "data.n_triggers=3",
                        "model.ffn=relu", "train.loss=incontext", "data.triggers=random", "data.outputs=bigram")
    cli = set(reference_overrides(cfg))
    assert {"model_args.dim=128", "model_args.max_length=96", "data_args.seq_length=96", "optim_args.batch_size=32",
            "data_args.k=3", "model_args.final_ffn=True", "model_args.linear_final_ffn=False", "loss_head_only=True",
            "data_args.fixed_special_toks=False", "bigram_outs_train=True", "model_args.freeze_embeddings=True",
            *REFERENCE_OPTIMIZER} <= cli
    for override, setting in (("model.pos=rpe", "model.pos"), ("data=dirichlet", "data.source"),
                              ("data.vocab_size=20", "data.vocab_size")):
        with pytest.raises(UserError, match=setting):
            reference_overrides(compose_train(override))
