"""Benchmark: sampler throughput, training step time, FLOPs and the machine's matmul limit.

    python -m toybigram.bench                                   # the training app's defaults
    python -m toybigram.bench model.d_model=256 data.seq_len=256 --json bench.json
    python -m toybigram.bench optim=sgd train.loss=incontext --e2e 200     # also a real training run
    python -m toybigram.bench model.d_model=64 data.seq_len=64 train.batch_size=32 --instances 8 --e2e 200
    python -m toybigram.bench --time-to-accuracy model.d_model=128 data.seq_len=128 train.loss=incontext \
        [--target 0.97] [--reference /path/to/transformer-birth --repeats 2]

Positional arguments are training-app overrides (as for ``python -m toybigram.train``).
Every time is the median of several repeats after warm-up, taken in this process:

- sampler: tokens per second of ``TriggerSampler.sample`` at ``--sampler-shape``;
- model step: forward, backward and optimizer update on a fixed batch;
- loop step: the same with a fresh batch from the sampler each step (the training loop);
- evaluation: one ``evaluate`` call (every ``train.eval_every`` steps in training);
- FLOPs per step: matmul FLOPs of the model step counted analytically (``step_flops``);
- dense matmul GFLOP/s: an n x n x n matmul in the same process, dtype and thread
  count (measured before and after the rest, pooled): the practical limit;
- peak memory: the process's peak resident set (and CUDA peak allocation).

``--e2e STEPS`` also times ``train()`` end to end (evaluation, metrics rows and
checkpoint included, theory off) into a temporary directory: the whole call, the loop
alone (first to last metrics row: steps plus evaluations) and CPU seconds (all
threads); with ``--instances S`` it trains S instances together and, for comparison, one.

``--instances S`` times, interleaved: the loop step of S instances trained together, of
one, and of one model on an S-times batch (the same arithmetic with shared weights, so
the least that stacking S models could cost here). Times on a shared machine are
noisy: compare figures taken in the same sitting.

``--time-to-accuracy`` measures something else: the steps and whole-process wall seconds a
training process takes until held-out in-context accuracy first reaches ``--target`` (and
0.9), with ``--reference DIR`` beside Bietti et al.'s code, alternating processes
(toybigram.speed; the reference's launcher and log in toybigram.reference).
"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from toybigram.cli import compose, first_lines
from toybigram.config import register_configs
from toybigram.ensemble import instance_configs
from toybigram.errors import ConfigError, OneLineParser, UserError, exit_with
from toybigram.evaluation import evaluate
from toybigram.model import ModelSpec
from toybigram.runio import dumps, provenance, read_jsonl, write_json
from toybigram.runtime import DTYPES, apply_threads, resolve_device
from toybigram.speed import Targets, format_table, time_to_accuracy, with_quiet_training
from toybigram.train import RunParts, TrainingStep, build_run, train
from toybigram.validation import validate


# -- FLOPs -----------------------------------------------------------------------------------
def step_flops(spec: ModelSpec, batch_size: int, seq_len: int) -> dict[str, int]:
    """Matmul FLOPs (2 m n k per product) of one training step: forward, backward, total.

    Mirrors the model: the first layer reads its keys and values from embedding tables
    (``AssociativeTransformer.embedding_read``: a product with W costs (N + T) d^2 there, and
    its gradient W_E^T and P^T products as much); frozen matrices get no gradient; the
    first layer's input needs none, later layers' inputs do. Attention is counted over the
    full T x T score matrix, as computed. Elementwise work (softmax, masks, residual adds,
    the optimizer) is not counted.
    """
    B, T, d, N, h = batch_size, seq_len, spec.d_model, spec.vocab_size, spec.d_hidden
    M = B * T
    positional = spec.positional
    table_read = 2 * (N + positional.position_rows(T)) * d * d  # read(W) = (W_E W)[z] (+ P W)
    forward = backward = 0
    for layer in range(spec.n_layers):
        last = layer == spec.n_layers - 1
        if layer == 0:
            forward += table_read  # the key read: x W_K (rope: x W_K^T)
            backward += table_read  # its gradient: W_E^T and P^T times the table gradients
            forward += positional.score_flops(spec, B, T)  # scores against x, or against a position table
            backward += positional.score_flops(spec, B, T)  # grad of the key read
            forward += 2 * d * d * d + table_read + 2 * B * T * T * d  # W_O W_V, the value read, a @ values
            backward += 2 * B * T * T * d  # grad of a (the frozen values need none)
            continue
        forward += 2 * M * d * d + 2 * B * T * T * d  # x W_K, then scores against x
        backward += 2 * M * d * d + 2 * B * T * T * d  # grad of W_K, grad of the query
        backward += 2 * M * d * d + 2 * B * T * T * d  # grad of x through query and key
        forward += 2 * B * T * T * d  # sum_s a(t, s) x_s
        backward += 2 * B * T * T * d + 2 * B * T * T * d  # grad of a, grad of x
        forward += 2 * d * d * d + 2 * M * d * d  # W_O W_V, then applied
        backward += 2 * M * d * d + last * (2 * M * d * d + 2 * d * d * d)  # grad of z; of W_O (trainable in the last layer)
    if spec.ffn == "linear":
        forward += 2 * M * d * d
        backward += 2 * 2 * M * d * d
    elif spec.ffn == "relu":
        forward += 2 * 2 * M * d * h
        backward += 2 * 2 * 2 * M * d * h
    forward += 2 * M * d * N  # unembedding
    backward += 2 * M * d * N
    return {"forward": forward, "backward": backward, "total": forward + backward}


# -- timing ----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> tuple[float, list[float]]:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones (and all the times)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        tick = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - tick)
    return sorted(times)[len(times) // 2], times


def time_interleaved(fns: list[Callable[[], object]], device: torch.device, repeats: int, warmup: int,
                     block: int = 5) -> list[float]:
    """Median seconds of each function over ``repeats`` calls, timed in alternating blocks of ``block`` calls.

    Alternation spreads drifts in machine speed over all functions alike; each block starts
    with one untimed call, so no function is timed on caches its rival has just filled.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    while len(times[0]) < repeats:
        for fn, record in zip(fns, times):
            fn()
            for _ in range(min(block, repeats - len(record))):
                _sync(device)
                tick = time.perf_counter()
                fn()
                _sync(device)
                record.append(time.perf_counter() - tick)
    return [_median(record) for record in times]


def dense_matmul_gflops(n: int, dtype: torch.dtype, device: torch.device, repeats: int = 7) -> list[float]:
    """GFLOP/s of an n x n by n x n matmul, one figure per repeat."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    _, times = time_median(lambda: torch.mm(a, b, out=out), device, repeats, warmup=2)
    return [2 * n**3 / t / 1e9 for t in times]


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    out = {"peak_rss_mb": rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20}
    if device.type == "cuda":
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


# -- the benchmark ---------------------------------------------------------------------------
def run_benchmark(cfg: DictConfig, *, steps: int = 10, warmup: int = 3, sampler_shape: tuple[int, int] = (512, 256),
                  matmul_size: int = 1024, instances: int = 1, e2e_steps: int = 0) -> dict:
    """Measure ``cfg``'s config; returns a JSON-ready dict (see the module docstring)."""
    chain, spec = validate(cfg)
    _check_options(steps, warmup, sampler_shape, instances, e2e_steps)
    apply_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = DTYPES[spec.dtype]
    B, T = cfg.train.batch_size, cfg.data.seq_len
    dense = dense_matmul_gflops(matmul_size, dtype, device)

    run = build_run(cfg, chain, spec, device)
    sampler_b, sampler_t = sampler_shape
    sampler_s, _ = time_median(lambda: run.sampler.sample(sampler_b, sampler_t), device, max(3, steps // 2), 1)
    timings = _time_training(cfg, run, device, steps, warmup)
    flops = step_flops(spec, B, T)
    result = {
        "config": {
            "vocab_size": spec.vocab_size, "d_model": spec.d_model, "n_layers": spec.n_layers, "pos": spec.pos,
            "ffn": spec.ffn, "seq_len": T, "batch_size": B, "loss": cfg.train.loss, "optim": cfg.optim.name,
            "eval_every": cfg.train.eval_every, "eval_batch_size": cfg.train.eval_batch_size, "dtype": spec.dtype,
        },
        "sampler": {"batch_size": sampler_b, "seq_len": sampler_t, "seconds": sampler_s,
                    "tokens_per_second": sampler_b * sampler_t / sampler_s},
        "train": timings,
        "flops_per_step": flops,
        "achieved_gflops": flops["total"] / (timings["model_step_ms"] / 1e3) / 1e9,
    }
    if instances > 1:
        result["instances"] = _bench_instances(cfg, chain, spec, device, instances, steps, warmup)
    if e2e_steps:
        result["e2e"] = _bench_end_to_end(cfg, e2e_steps, instances)
    dense += dense_matmul_gflops(matmul_size, dtype, device)
    result["dense_matmul"] = {"n": matmul_size, "gflops_median": _median(dense), "gflops_max": max(dense)}
    result["fraction_of_dense"] = result["achieved_gflops"] / result["dense_matmul"]["gflops_median"]
    result["memory"] = peak_memory_mb(device)
    result["machine"] = {**provenance(device, dtype), "load_average": list(_load_average()), "cpu_count": _cpu_count()}
    return result


def _check_options(steps: int, warmup: int, sampler_shape: tuple[int, int], instances: int, e2e_steps: int) -> None:
    if instances < 1:
        raise ConfigError(f"--instances: must be at least 1, got {instances}")
    if steps < 1 or warmup < 0 or e2e_steps < 0:
        raise ConfigError("--steps must be positive; --warmup and --e2e non-negative")
    if min(sampler_shape) < 1:
        raise ConfigError(f"--sampler-shape: both sizes must be positive, got {sampler_shape}")


def _time_training(cfg: DictConfig, run: RunParts, device: torch.device, steps: int, warmup: int) -> dict:
    """Model step (fixed batch), loop step (fresh batches) and evaluation of the trainer's own code, in ms."""
    B, T = cfg.train.batch_size, cfg.data.seq_len
    model = run.model
    model.train()
    fixed = run.sampler.sample(B, T)
    training_step = TrainingStep([run], [cfg.optim], cfg.train, T)  # the trainer's own step

    def model_step() -> None:
        training_step.update([fixed], 0)

    model_s, _ = time_median(model_step, device, steps, warmup)
    loop_s, _ = time_median(lambda: training_step(0), device, steps, warmup)
    eval_s, _ = time_median(
        lambda: evaluate(model, run.eval_batch, run.eval_bayes, run.transition, run.fixed_triggers), device, max(3, steps // 3), 1
    )
    return {
        "model_step_ms": 1e3 * model_s,
        "loop_step_ms": 1e3 * loop_s,
        "eval_ms": 1e3 * eval_s,
        "loop_step_ms_with_eval": 1e3 * (loop_s + eval_s / cfg.train.eval_every),
        "tokens_per_second": B * T / loop_s,
        "model_tokens_per_second": B * T / model_s,
        "steps_timed": steps,
        "warmup": warmup,
    }


def _bench_instances(cfg, chain, spec, device, count: int, steps: int, warmup: int) -> dict:
    """Loop step (sampling included) of ``count`` instances trained together, against one."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    cfg.train.instances = count
    configs = instance_configs(cfg)
    runs = [build_run(single, chain, spec, device) for single in configs]
    T = cfg.data.seq_len
    together = TrainingStep(runs, [single.optim for single in configs], cfg.train, T)
    one = TrainingStep(runs[:1], [cfg.optim], cfg.train, T)
    # One model on a count-times batch does the same arithmetic with one set of weights: no way of
    # stacking count models can beat it on this machine, so it is the bound for the ratio.
    wide_train = OmegaConf.merge(cfg.train, {"batch_size": count * cfg.train.batch_size})
    wide = TrainingStep([build_run(configs[0], chain, spec, device)], [cfg.optim], wide_train, T)
    B = cfg.train.batch_size
    one_s, together_s, wide_s = time_interleaved([lambda: one(0), lambda: together(0), lambda: wide(0)], device, steps, warmup)
    flops = count * step_flops(spec, B, T)["total"]
    return {"count": count, "loop_step_ms": 1e3 * together_s, "single_loop_step_ms": 1e3 * one_s,
            "achieved_gflops": flops / together_s / 1e9, "single_achieved_gflops": flops / count / one_s / 1e9,
            "ratio_to_single": together_s / one_s,
            "wide_batch_loop_step_ms": 1e3 * wide_s, "wide_batch_ratio_to_single": wide_s / one_s}


def _bench_end_to_end(cfg: DictConfig, steps: int, instances: int) -> dict:
    """Wall time of real training runs (theory off, checkpoint only at the end) in a temporary directory."""

    def run(count: int, directory: Path) -> tuple[float, float, float]:
        """Wall seconds of train(), its CPU seconds, and the loop's seconds (first to last metrics row)."""
        c = OmegaConf.create(OmegaConf.to_container(cfg))
        c.train.steps, c.train.theory, c.train.ckpt_every, c.train.progress = steps, False, 0, "none"
        c.train.instances = count
        tick, cpu = time.perf_counter(), time.process_time()
        train(c, directory)
        wall, cpu = time.perf_counter() - tick, time.process_time() - cpu
        rows = read_jsonl((directory / "instance0" if count > 1 else directory) / "metrics.jsonl")
        return wall, cpu, rows[-1]["elapsed_seconds"] - rows[0]["elapsed_seconds"]

    with tempfile.TemporaryDirectory(prefix="toybigram-bench-") as tmp:
        wall, cpu, loop = run(1, Path(tmp) / "single")
        out = {"steps": steps, "wall_seconds": wall, "ms_per_step": 1e3 * wall / steps,
               "loop_ms_per_step": 1e3 * loop / steps, "cpu_ms_per_step": 1e3 * cpu / steps}
        if instances > 1:
            together, cpu, loop = run(instances, Path(tmp) / "together")
            out.update({"instances": instances, "together_wall_seconds": together,
                        "together_ms_per_step": 1e3 * together / steps, "together_loop_ms_per_step": 1e3 * loop / steps,
                        "together_cpu_ms_per_step": 1e3 * cpu / steps, "together_cpu_ratio_to_single": cpu / out["cpu_ms_per_step"] / steps * 1e3,
                        "together_ratio_to_single": together / wall})
    return out


def _load_average() -> tuple[float, ...]:
    try:
        return os.getloadavg()
    except (OSError, AttributeError):
        return ()


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def format_report(r: dict) -> str:
    c, t, f = r["config"], r["train"], r["flops_per_step"]
    lines = [
        f"config     N={c['vocab_size']} d={c['d_model']} T={c['seq_len']} batch={c['batch_size']} layers={c['n_layers']} "
        f"pos={c['pos']} ffn={c['ffn']} loss={c['loss']} optim={c['optim']} {c['dtype']}",
        f"machine    {r['machine']['device']}, {r['machine']['torch_threads']} torch threads, "
        f"load average {', '.join(f'{x:.2f}' for x in r['machine']['load_average'])} on {r['machine']['cpu_count']} cores",
        f"sampler    {r['sampler']['tokens_per_second'] / 1e6:.2f} M tokens/s at {r['sampler']['batch_size']} x {r['sampler']['seq_len']}",
        f"model step {t['model_step_ms']:.1f} ms  ({t['model_tokens_per_second'] / 1e3:.0f} k tokens/s)",
        f"loop step  {t['loop_step_ms']:.1f} ms with sampling, {t['loop_step_ms_with_eval']:.1f} ms with evaluation amortised "
        f"(eval {t['eval_ms']:.1f} ms every {c['eval_every']})  ({t['tokens_per_second'] / 1e3:.0f} k tokens/s)",
        f"FLOPs      {f['total'] / 1e9:.2f} GFLOP/step (forward {f['forward'] / 1e9:.2f}, backward {f['backward'] / 1e9:.2f})",
        f"throughput {r['achieved_gflops']:.1f} GFLOP/s = {100 * r['fraction_of_dense']:.0f}% of dense matmul "
        f"{r['dense_matmul']['gflops_median']:.1f} GFLOP/s (n={r['dense_matmul']['n']}, max {r['dense_matmul']['gflops_max']:.1f})",
        f"memory     peak RSS {r['memory']['peak_rss_mb']:.0f} MB"
        + (f", CUDA peak {r['memory']['cuda_peak_allocated_mb']:.0f} MB" if "cuda_peak_allocated_mb" in r["memory"] else ""),
    ]
    if "instances" in r:
        i = r["instances"]
        lines.append(f"instances  {i['count']} together {i['loop_step_ms']:.1f} ms/step vs one {i['single_loop_step_ms']:.1f} "
                     f"ms/step: {i['ratio_to_single']:.2f}x (interleaved; {i['achieved_gflops']:.1f} vs "
                     f"{i['single_achieved_gflops']:.1f} GFLOP/s)")
        lines.append(f"           bound: one model on {i['count']}x the batch {i['wide_batch_loop_step_ms']:.1f} ms/step = "
                     f"{i['wide_batch_ratio_to_single']:.2f}x one (the same arithmetic with shared weights)")
    if "e2e" in r:
        e = r["e2e"]
        line = (f"end to end {e['ms_per_step']:.1f} ms/step over {e['steps']} steps ({e['wall_seconds']:.1f} s; "
                f"loop alone {e['loop_ms_per_step']:.1f} ms/step; {e['cpu_ms_per_step']:.0f} CPU-ms/step)")
        if "instances" in e:
            line += (f"; {e['instances']} instances together {e['together_ms_per_step']:.1f} ms/step "
                     f"({e['together_wall_seconds']:.1f} s, {e['together_ratio_to_single']:.2f}x one; "
                     f"{e['together_cpu_ms_per_step']:.0f} CPU-ms/step, {e['together_cpu_ratio_to_single']:.2f}x one)")
        lines.append(line)
    return "\n".join(lines)


def _shape(text: str) -> tuple[int, int]:
    try:
        b, t = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxLENGTH such as 512x256, got {text!r}") from None
    return b, t


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m toybigram.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="training-app overrides, e.g. model.d_model=256 optim=sgd")
    parser.add_argument("--steps", type=int, default=10, help="timed repeats per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repeats first")
    parser.add_argument("--sampler-shape", type=_shape, default=(512, 256), help="BATCHxLENGTH for the sampler (512x256)")
    parser.add_argument("--matmul-size", type=int, default=1024, help="n of the dense n x n x n reference matmul")
    parser.add_argument("--instances", type=int, default=1, help="also time S instances trained together")
    parser.add_argument("--e2e", type=int, default=0, metavar="STEPS", help="also time a real training run of STEPS steps")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON ('-' for stdout only)")
    speed = parser.add_argument_group("time to accuracy (--time-to-accuracy)")
    speed.add_argument("--time-to-accuracy", action="store_true",
                       help="time training processes until held-out in-context accuracy reaches --target")
    speed.add_argument("--target", type=float, default=0.97, help="the accuracy to reach (0.9 is reported too)")
    speed.add_argument("--gap-target", type=float, default=0.05,
                       help="with train.loss=all, also the global gap (nats above its Bayes floor) to reach")
    speed.add_argument("--reference", type=Path, metavar="DIR", help="a transformer-birth checkout to run beside")
    speed.add_argument("--repeats", type=int, default=1, help="processes per code, alternating")
    speed.add_argument("--reference-steps", type=int, default=600, help="the reference's most training steps")
    speed.add_argument("--workers", type=int, default=2, help="the reference's data worker processes")
    return parser


def _time_to_accuracy(args: argparse.Namespace) -> dict:
    overrides = with_quiet_training(args.overrides)
    cfg = _compose(overrides)
    validate(cfg)
    return time_to_accuracy(cfg, overrides, Targets(args.target, args.gap_target), args.reference, args.repeats,
                            args.reference_steps, args.workers)


def _compose(overrides: list[str]) -> DictConfig:
    try:
        return compose("train", overrides)
    except UserError:
        raise
    except Exception as err:  # Hydra/OmegaConf composition errors
        raise UserError(first_lines(err)) from None


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_intermixed_args(argv)
    register_configs()
    try:
        if args.time_to_accuracy:
            result = _time_to_accuracy(args)
        elif args.reference is not None:
            raise UserError("--reference: needs --time-to-accuracy (scripts/bench_reference.py compares step times)")
        else:
            if args.matmul_size < 1:
                raise ConfigError(f"--matmul-size: must be positive, got {args.matmul_size}")
            result = run_benchmark(_compose(args.overrides), steps=args.steps, warmup=args.warmup,
                                   sampler_shape=args.sampler_shape, matmul_size=args.matmul_size,
                                   instances=args.instances, e2e_steps=args.e2e)
    except UserError as err:
        exit_with(err)
    if args.json == "-":
        print(dumps(result))
    else:
        print(format_table(result) if args.time_to_accuracy else format_report(result))
        if args.json:
            write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
