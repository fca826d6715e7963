"""Rollout throughput: Hugging Face generate vs the colocated vLLM engine (a benchmark, not a test).

Both engines (bridgerl.rollout) generate the same rollout batch from the same model: P prompts × n samples
× T new tokens, fixed-length outputs (ignore_eos), temperature 1 with a seed per prompt. Runs are
interleaved A B B A per round; each run's wall time and CPU time (this process plus the engine's worker
processes) are measured; generated tokens/s and the vLLM/HF ratio are printed. Greedy outputs of the two
engines are compared first (they must be identical).

    python benchmarks/bench_rollout.py [--prompts 40] [--n 5] [--tokens 64] [--rounds 3] [--threads 1]

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
    from bridgerl.prompts import render_prompt

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--n", type=int, default=5, help="samples per prompt (the GRPO group size)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per sample (fixed length)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of A B B A")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the HF engine")
    ap.add_argument("--pretrain-steps", type=int, default=100)
    ap.add_argument("--model-dir", default=None, help="a local model directory instead of the tiny model")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

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
