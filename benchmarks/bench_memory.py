"""Benchmark memory at scale on CPU (issue 12): a Qwen2.5-shaped model built from a config with the real
vocabulary (151,936) but a small hidden size, rollouts of up to 2k tokens, one update of BRIDGE and of
RL-zero per configuration:

- peak memory of the update before (full-vocabulary fp32 logits, the whole batch in one pass) and after
  (chunked output layer; + micro-batches of train.micro_batch_tokens; + gradient checkpointing;
  + padding-free packing), and how it grows with the batch (before: with the batch; after: with the
  micro-batch);
- training-state memory (weights, gradients, optimizer state; bridgerl.train.memory) of BRIDGE over
  RL-zero with the shadow in memory and offloaded (train.bridge.shadow_offload);
- the share of computed positions that are padding, padded vs length-bucketed vs packed.

Each configuration runs in its own process (`--worker`), so its peak RSS (ru_maxrss) is its own; the
table gives the update's peak over the process's memory just before the update, with its wall and CPU
time. Configurations run interleaved (--repeat rounds), so slow neighbours hit every configuration.

    python benchmarks/bench_memory.py                 # the default table (~10 GB peak for 'before')
    python benchmarks/bench_memory.py --seq 1024 --batches 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

QWEN25_SMALL = dict(vocab_size=151936, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)

BEFORE = ["train.logprob_chunk_tokens=null"]
CHUNKED = ["train.logprob_chunk_tokens=1024"]


def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(args) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bridgerl.config import load_config
    from bridgerl.core.methods import METHODS
    from bridgerl.train.batches import collate, padding_fraction
    from bridgerl.train.engines import TorchEngine
    from bridgerl.train.memory import training_state
    from bridgerl.train.models import build_models
    from bridgerl.train.parallel import ProcEnv
    from bridgerl.train.updates import UPDATES, Ctx, rl_logprobs

    torch.set_num_threads(1)
    cfg = load_config(REPO / "params.yaml", ["tracking.enabled=false", f"train.method={args.method}",
                                             "train.grpo.kl_coef=0.001", "train.lora.r=16", "train.lora.alpha=16",
                                             "train.grpo.group_size=2", *args.set])
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(**QWEN25_SMALL, attn_implementation="sdpa"))
    m = build_models(cfg, base)
    t = cfg.train
    groups = [g for g in m.param_groups(cfg) if g["params"]]
    opt = torch.optim.AdamW(groups, lr=1e-5)
    eng = TorchEngine(cfg, m, opt, ProcEnv())
    g = torch.Generator().manual_seed(1)
    V, L, B = QWEN25_SMALL["vocab_size"], args.seq, args.batch

    def seqs(n, prompt, lo):
        ps = [torch.randint(3, V, (prompt,), generator=g).tolist() for _ in range(n)]
        rs = [torch.randint(3, V, (int(torch.randint(lo, L - prompt + 1, (1,), generator=g)),),
                            generator=g).tolist() for _ in range(n)]
        rs[0] = rs[0] + [5] * (L - prompt - len(rs[0]))  # one rollout of the full length
        return ps, rs

    spec = METHODS[args.method]
    rl = collate(*seqs(B, 128, 128), pad_id=0)
    rl.extras["advantages"] = torch.randn(B, generator=g)
    if m.ref is not None:
        with torch.no_grad():
            rl.extras["ref_logp"] = rl_logprobs(m.ref, rl, cfg)[0]
    sft = collate(*seqs(max(1, B // 2), 128, 128), pad_id=0) if spec.sft else None
    before = _rss_now()
    t0, c0 = time.perf_counter(), time.process_time()
    UPDATES[spec.update](Ctx(m, eng, cfg), rl, sft, 0.5)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    st = training_state(m, opt)
    return {"method": args.method, "batch": B, "seq": L, "set": args.set, "peak_rss_mb": peak / 2**20,
            "update_peak_mb": (peak - before) / 2**20, "state_device_mb": st["device"] / 2**20,
            "state_host_mb": st["host"] / 2**20, "wall_s": wall, "cpu_s": cpu,
            "padding": {"padded": padding_fraction(rl), "bucketed": padding_fraction(rl, t.micro_batch_tokens or 4096),
                        "packed": padding_fraction(rl, packed=True)}}


def run_one(method: str, batch: int, seq: int, sets: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--method", method, "--batch", str(batch), "--seq", str(seq)]
    for s in sets:
        cmd += ["-S", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def paper_padding(micro: int) -> str:
    """Padding share of a paper-like rank batch (80 rollouts: prompt 150 tokens, responses ~exponential
    with mean 1,000, clipped to 20–3,000): one padded block, length-bucketed micro-batches, packed."""
    import torch

    from bridgerl.train.batches import collate, padding_fraction

    torch.manual_seed(0)
    resp = torch.distributions.Exponential(1 / 1000).sample((80,)).clamp(20, 3000).long().tolist()
    b = collate([[5] * 150] * 80, [[7] * r for r in resp], 0)
    return (f"paper-like rank batch (80 rollouts, mean response {sum(resp) / 80:.0f}, max {max(resp)}): padding "
            f"{padding_fraction(b):.2f} padded, {padding_fraction(b, micro):.2f} bucketed into {micro}-token "
            f"micro-batches, {padding_fraction(b, packed=True):.2f} packed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--method", default="bridge")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("-S", dest="set", action="append", default=[])
    ap.add_argument("--batches", default="1,2,4", help="rollouts per update for the growth table")
    ap.add_argument("--micro", type=int, default=2048, help="train.micro_batch_tokens of the 'after' runs")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    seq, mb = args.seq, args.micro
    micro = [f"train.micro_batch_tokens={mb}"]
    variants = {
        "before (full logits, one pass)": BEFORE,
        "chunked logits": CHUNKED,
        "chunked + micro-batches": CHUNKED + micro,
        "+ gradient checkpointing": CHUNKED + micro + ["train.gradient_checkpointing=true"],
        "+ padding-free": CHUNKED + micro + ["train.gradient_checkpointing=true", "train.padding_free=true"],
    }
    batches = [int(b) for b in args.batches.split(",")]
    jobs = [(name, method, b, sets) for method in ("rl_zero", "bridge") for name, sets in variants.items()
            for b in batches if name != "before (full logits, one pass)" or b <= 2]
    jobs += [(f"state, shadow {k}", "bridge", batches[0], CHUNKED + micro + [f"train.bridge.shadow_offload={v}"])
             for k, v in (("in memory", "false"), ("offloaded", "true"))]
    results: dict[tuple, list[dict]] = {}
    for _ in range(args.repeat):
        for name, method, b, sets in jobs:  # interleaved rounds
            r = run_one(method, b, seq, sets)
            results.setdefault((name, method, b), []).append(r)
            print(json.dumps({"variant": name, **r}), file=sys.stderr)

    def best(key):
        rs = results[key]
        return min(rs, key=lambda r: r["update_peak_mb"])

    print(f"\nQwen2.5-shaped model (vocab {QWEN25_SMALL['vocab_size']}, hidden {QWEN25_SMALL['hidden_size']}, "
          f"{QWEN25_SMALL['num_hidden_layers']} layers), rollouts of up to {seq} tokens, fp32 on CPU, "
          f"micro_batch_tokens {mb}; MB of peak RSS over the process before the update\n")
    print(f"{'variant':34s} {'method':8s} " + " ".join(f"{'B=' + str(b):>9s}" for b in batches) + "   wall s  cpu s")
    for name in variants:
        for method in ("rl_zero", "bridge"):
            cells, times = [], ""
            for b in batches:
                key = (name, method, b)
                cells.append(f"{best(key)['update_peak_mb']:9.0f}" if key in results else f"{'-':>9s}")
            last = best(next(k for k in ((name, method, b) for b in reversed(batches)) if k in results))
            times = f"{last['wall_s']:8.2f} {last['cpu_s']:6.2f}"
            print(f"{name:34s} {method:8s} " + " ".join(cells) + "  " + times)
    b0 = batches[0]
    rl_state = best(("chunked + micro-batches", "rl_zero", b0))["state_device_mb"]
    print("\ntraining state on the device (weights + gradients + optimizer state), MB")
    print(f"{'RL-zero':34s} {rl_state:9.1f}")
    for k in ("in memory", "offloaded"):
        r = best((f"state, shadow {k}", "bridge", b0))
        print(f"{'BRIDGE, shadow ' + k:34s} {r['state_device_mb']:9.1f}  ratio to RL-zero "
              f"{r['state_device_mb'] / rl_state:.2f}x  (host memory {r['state_host_mb']:.1f} MB)")
    pad = best(("chunked + micro-batches", "rl_zero", batches[-1]))["padding"]
    print(f"\npadding share of computed positions (B={batches[-1]}): padded batch {pad['padded']:.2f}, "
          f"length-bucketed micro-batches {pad['bucketed']:.2f}, packed {pad['packed']:.2f}")
    print(paper_padding(16384))


if __name__ == "__main__":
    main()
