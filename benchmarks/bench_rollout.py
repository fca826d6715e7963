"""Rollout throughput: Hugging Face generate vs the colocated vLLM engine (a benchmark, not a test).

Both engines (bridgerl.rollout) generate the same rollout batch from the same model: P prompts × n samples
× T new tokens, fixed-length outputs (ignore_eos), temperature 1 with a seed per prompt. Runs are
interleaved A B B A per round; each run's wall time and CPU time (this process plus the engine's worker
processes) are measured; generated tokens/s and the vLLM/HF ratio are printed. Greedy outputs of the two
engines are compared first (they must be identical).

    python benchmarks/bench_rollout.py [--prompts 40] [--n 5] [--tokens 64] [--rounds 3] [--threads 1]
    python benchmarks/bench_rollout.py --zero3 [--prompts 8] [--n 5] [--tokens 64] [--rounds 2]

--zero3 runs the trainer's own rollout paths (bridgerl.train.policy_rollouts) on 2 processes under ZeRO-3
(torchrun, gloo, every parameter partitioned) and adds the collective traffic of a rollout batch (all-gather
calls and MB, DeepSpeed's comms logger; weight sync included): HF through the partitioned policy (per-token
gathers, train.rollout.hf_generation_copy=false), HF from the merged copy gathered once, and vLLM.

It builds the default tiny model (params.yaml's model.tiny, head size 32) in a temporary directory first.
On a GPU machine, --model-dir takes any local causal-LM directory instead (e.g. a Qwen2.5-shaped model
built from a config with random weights).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]


def _tiny_model(root: Path, pretrain_steps: int):
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import path_overrides

    from bridgerl.config import load_config
    from bridgerl.stages import init_model, prepare

    cfg = load_config(REPO / "params.yaml", path_overrides(root) + [
        "tracking.enabled=false", f"model.tiny.pretrain_steps={pretrain_steps}"])
    prepare.run(cfg)
    init_model.run(cfg)
    return cfg


def _prompts(cfg, model_dir: str, count: int) -> list[list[int]]:
    from bridgerl.model.loading import load_tokenizer
    from bridgerl.model.prompts import render_prompt

    tok = load_tokenizer(model_dir)
    rows = [json.loads(line) for line in (Path(cfg.data.out_dir) / "rl_train.jsonl").read_text().splitlines()]
    return [tok(render_prompt(r["problem"], tok, cfg.eval.prompt_template, cfg.eval.use_chat_template),
                add_special_tokens=False)["input_ids"] for r in rows[:count]]


def _cpu_seconds() -> float:
    """CPU time of this process and all its descendants (vLLM's engine core and workers) so far."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _run(engine, prompts, n: int, tokens: int, seeds) -> tuple[float, float, int]:
    c0, t0 = _cpu_seconds(), time.perf_counter()
    groups = engine.generate(prompts, n, 1.0, 1.0, tokens, seeds=seeds, ignore_eos=True)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    generated = sum(len(r.token_ids) for g in groups for r in g)
    assert generated == len(prompts) * n * tokens, generated
    return wall, cpu, generated


ZERO3_ENGINES = {"hf-per-token": ["train.rollout.backend=hf", "train.rollout.hf_generation_copy=false"],
                 "hf-gathered-once": ["train.rollout.backend=hf"],
                 "vllm": ["train.rollout.backend=vllm", "train.rollout.kv_cache_gb=1"]}


def zero3_worker(args) -> None:
    """One torchrun rank: a ZeRO-3 trainer, its rollouts through each engine, interleaved."""
    from bridgerl.config import load_config
    from bridgerl.train.parallel import all_reduce, allgather_traffic
    from bridgerl.train.policy_rollouts import PolicyRollouts
    from bridgerl.train.trainer import make_trainer

    root = Path(args.root)
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import path_overrides

    base = path_overrides(root) + [
        "tracking.enabled=false", "train.method=rl_zero", "train.distributed.strategy=zero3",
        f"train.prompt_batch={args.prompts}",
        f"train.grpo.group_size={args.n}", f"train.grpo.max_new_tokens={args.tokens}",
        "train.distributed.deepspeed={comms_logger: {enabled: true, prof_all: true, verbose: false}, "
        "zero_optimization: {stage3_param_persistence_threshold: 0}}"]
    tr = make_trainer(load_config(REPO / "params.yaml", base + ZERO3_ENGINES["hf-gathered-once"]))
    engines = {k: PolicyRollouts(load_config(REPO / "params.yaml", base + ov), tr.engine, tr.tok, tr.device,
                                 args.prompts * args.n) for k, ov in ZERO3_ENGINES.items()}
    rows = [tr.rl_rows[i] for i in tr.rl_sampler.next()]
    prompts = [tr._prompt_ids(r["problem"]) for r in rows]
    seeds = list(range(len(prompts)))
    version = 0

    def run(k: str) -> tuple[float, float, int, float, float]:
        nonlocal version
        version += 1  # a new version: the sync (the gather of π(θ, w)) is part of every batch, as in training
        eng = engines[k]
        g0, c0, t0 = allgather_traffic(), _cpu_seconds(), time.perf_counter()
        eng.sync(version)
        groups = eng.engine.generate(prompts, args.n, 1.0, 1.0, args.tokens, seeds=seeds, ignore_eos=True)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        g1 = allgather_traffic()
        gen = sum(len(r.token_ids) for g in groups for r in g)
        wall = all_reduce([wall], "max")[0]
        cpu, gen = all_reduce([cpu, float(gen)])  # both ranks (and their engines' processes)
        return wall, cpu, int(gen), g1[0] - g0[0], (g1[1] - g0[1]) / 2**20

    for k in engines:  # warm-up (the vLLM engines start here)
        run(k)
    order = list(engines) + list(reversed(engines))
    res: dict[str, list] = {k: [] for k in engines}
    for _ in range(args.rounds):
        for k in order:
            res[k].append(run(k))
    for e in engines.values():
        e.close()
    tr.close()
    if tr.is_main:
        batch = f"{len(prompts) * 2} prompts (2 ranks) × {args.n} samples × {args.tokens} tokens"
        print(f"\nZeRO-3, 2 processes: rollout batch {batch}; {args.rounds} rounds of A B C C B A")
        print("engine              wall s   cpu s (both ranks)  tokens/s  all-gathers/batch (rank 0)  MB/batch")
        tps = {}
        for k, runs in res.items():
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            tps[k] = runs[0][2] / wall
            print(f"{k:18s} {wall:7.2f} {cpu:10.2f} {tps[k]:18.0f} {runs[0][3]:18d} {runs[0][4]:18.2f}")
        for k in ("hf-gathered-once", "vllm"):
            print(f"{k} / hf-per-token tokens/s: {tps[k] / tps['hf-per-token']:.2f}x")


def zero3_main(args) -> None:
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        _tiny_model(Path(tmp), args.pretrain_steps)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__]
        worker = json.dumps({"root": tmp, "prompts": args.prompts, "n": args.n, "tokens": args.tokens,
                             "rounds": args.rounds})  # (torchrun would take --n for one of its own options)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "BENCH_ZERO3_WORKER": worker}
        subprocess.run(cmd, check=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--n", type=int, default=5, help="samples per prompt (the GRPO group size)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per sample (fixed length)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of A B B A")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the HF engine")
    ap.add_argument("--pretrain-steps", type=int, default=100)
    ap.add_argument("--model-dir", default=None, help="a local model directory instead of the tiny model")
    ap.add_argument("--zero3", action="store_true", help="2 processes under ZeRO-3, with collective traffic")
    args = ap.parse_args()
    if os.environ.get("BENCH_ZERO3_WORKER"):
        return zero3_worker(argparse.Namespace(**json.loads(os.environ["BENCH_ZERO3_WORKER"])))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.zero3:
        return zero3_main(args)

    from bridgerl.config import RolloutConfig
    from bridgerl.rollout import make_engine

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _tiny_model(Path(tmp), args.pretrain_steps)
        model_dir = args.model_dir or cfg.model.out_dir
        prompts = _prompts(cfg, cfg.model.out_dir, args.prompts)
        seeds = list(range(len(prompts)))
        engines = {"hf": make_engine("hf", model_dir, batch_size=len(prompts) * args.n),
                   "vllm": make_engine("vllm", model_dir, RolloutConfig(kv_cache_gb=1))}
        try:
            greedy = {k: [[r.token_ids for r in g] for g in e.generate(prompts, 1, 0.0, 1.0, args.tokens)]
                      for k, e in engines.items()}
            same = greedy["hf"] == greedy["vllm"]
            for e in engines.values():  # warm-up
                _run(e, prompts[:2], args.n, 8, seeds[:2])
            res: dict[str, list[tuple[float, float, int]]] = {"hf": [], "vllm": []}
            for _ in range(args.rounds):
                for k in ("hf", "vllm", "vllm", "hf"):
                    res[k].append(_run(engines[k], prompts, args.n, args.tokens, seeds))
        finally:
            for e in engines.values():
                e.close()

    batch = f"{len(prompts)} prompts × {args.n} samples × {args.tokens} tokens"
    print(f"\nrollout batch: {batch}; {args.rounds} rounds of A B B A; HF on {args.threads} torch thread(s)")
    print(f"greedy outputs identical (HF vs vLLM, {args.tokens} tokens): {same}")
    tps = {}
    for k, runs in res.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        tps[k] = runs[0][2] / wall
        print(f"{k:5s} wall {wall:6.2f} s (median of {len(runs)})  cpu {cpu:6.2f} s  "
              f"{tps[k]:8.0f} tokens/s  {runs[0][2] / cpu:8.0f} tokens per cpu-s")
    print(f"vLLM / HF generated tokens/s: {tps['vllm'] / tps['hf']:.2f}x")


if __name__ == "__main__":  # vLLM starts its engine processes with spawn
    main()
