"""Benchmark data-parallel training: training-iteration time with 1 and 2 processes (same global batch),
the scaling ratio, and the share of each step spent in DeepSpeed communication; on a GPU also tokens/s
and peak memory per method on a small real-architecture model (Qwen2-style, built from a config).

    python benchmarks/bench_distributed.py                        # CPU: tiny project, ZeRO-2, 1 vs 2 procs
    python benchmarks/bench_distributed.py --strategy zero3 --steps 5
    python benchmarks/bench_distributed.py --model qwen2-0.5b --methods bridge,rl_zero,sft --nprocs 1
                                                                   # GPU: ~0.5B Qwen2 config, per method

The driver builds the inputs once (the real prepare / init-model / build-demos stages on the embedded
task), then launches itself under torchrun as workers (`--worker`) that time `Trainer.train_step`.
Communication time comes from DeepSpeed's comms logger (its collectives are made blocking to be timed,
so the share is an upper bound of what overlapping hides). Results: one JSON line per run and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SMALL = [  # the tiny project of the tests, a little larger
    "data.synthetic.n_train=400", "data.synthetic.n_test=24", "data.val_fraction=0.05",
    "model.tiny.pretrain_steps=60", "model.tiny.pretrain_examples=600", "tracking.enabled=false",
    "train.eval_every=0", "train.save_every=100000", "train.grpo.max_new_tokens=24", "eval.max_new_tokens=24",
]
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1_000_000.0,
                 tie_word_embeddings=True, rms_norm_eps=1e-6)


def paths(root: Path) -> list[str]:
    return [f"data.out_dir={root}/data/prepared", f"demos.out_dir={root}/data/demos",
            f"model.out_dir={root}/models/base", f"train.out_dir={root}/models/trained",
            f"train.checkpoint_dir={root}/checkpoints", f"train.metrics_file={root}/metrics/train.json",
            f"train.plots_file={root}/plots/train.csv"]


def prepare_project(root: Path, overrides: list[str]) -> None:
    from bridgerl.config import load_config
    from bridgerl.stages import build_demos, init_model, prepare

    if (root / "data" / "demos" / "demos.jsonl").exists():
        return
    cfg = load_config(REPO / "params.yaml", SMALL + paths(root) + overrides)
    prepare.run(cfg)
    init_model.run(cfg)
    build_demos.run(cfg)


def build_qwen2(root: Path, vocab: int, layers: int | None, hidden: int | None) -> Path:
    """A Qwen2-architecture model from config (random init) with the embedded tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = root / "models" / "qwen2"
    if (out / "config.json").exists():
        return out
    kw = dict(QWEN2_05B)
    if layers:
        kw["num_hidden_layers"] = layers
    if hidden:
        kw.update(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=max(2, hidden // 64),
                  num_key_value_heads=1)
    tok = AutoTokenizer.from_pretrained(root / "models" / "base")
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def worker(args) -> None:
    import torch

    from bridgerl.config import load_config
    from bridgerl.train import parallel as D
    from bridgerl.train.trainer import make_trainer

    ov = json.loads(args.overrides)
    cfg = load_config(REPO / "params.yaml", ov)
    tr = make_trainer(cfg)
    from deepspeed.comm import comm as dscomm

    def comm_ms(reset: bool) -> float:  # DeepSpeed's per-op timers (cumulative, in ms)
        return sum(dscomm.timers(n).elapsed(reset=reset) for n in list(dscomm.comms_logger.comms_dict))

    tr.train_step()  # warm-up (first step builds buffers, traces ZeRO-3 modules)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    comm_ms(reset=True)
    times, tokens = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        m = tr.train_step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        tokens.append(m["tokens_per_s"] * m["step_time_s"])  # tokens of this step, all ranks
    comm = D.all_reduce([comm_ms(reset=False) / 1000.0], "max")[0]
    step = sum(times) / len(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else m["peak_memory_mb"]
    peak = D.all_reduce([peak], "max")[0]
    if tr.is_main:
        res = {"method": cfg.train.method, "strategy": cfg.train.distributed.strategy, "nproc": tr.env.world_size,
               "step_s": round(step, 4), "tokens_per_s": round(sum(tokens) / sum(times), 1),
               "comm_share": round(comm / sum(times), 4), "peak_memory_mb": round(peak, 1),
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
        Path(args.result).write_text(json.dumps(res))
    tr.close()


def launch(nproc: int, overrides: list[str], steps: int, result: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           __file__, "--worker", "--steps", str(steps), "--result", str(result), "--overrides", json.dumps(overrides)]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("OMP_NUM_THREADS", "1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"worker failed ({' '.join(cmd[:6])} ...):\n{p.stderr[-4000:]}")
    return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/bridgerl-bench-distributed", help="working directory (inputs are reused)")
    ap.add_argument("--strategy", default="zero2", choices=["zero2", "zero3"])
    ap.add_argument("--offload", action="store_true")
    ap.add_argument("--nprocs", default="1,2", help="process counts to compare")
    ap.add_argument("--methods", default="bridge")
    ap.add_argument("--steps", type=int, default=4, help="timed iterations after one warm-up")
    ap.add_argument("--prompt-batch", type=int, default=4)
    ap.add_argument("--model", default="tiny", choices=["tiny", "qwen2-0.5b"])
    ap.add_argument("--layers", type=int, default=None, help="qwen2: fewer layers (CPU smoke runs)")
    ap.add_argument("--hidden", type=int, default=None, help="qwen2: smaller hidden size (CPU smoke runs)")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("-S", dest="extra", action="append", default=[], help="more params overrides")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    root = Path(args.root)
    prepare_project(root, [])
    nprocs = [int(n) for n in args.nprocs.split(",")]
    demo_batch = args.prompt_batch
    ov = SMALL + paths(root) + [
        f"train.distributed.strategy={args.strategy}", f"train.distributed.offload={str(args.offload).lower()}",
        f"train.prompt_batch={args.prompt_batch}", f"train.demo_batch={demo_batch}",
        "train.distributed.seeded_rollouts=true",
        "train.distributed.deepspeed={comms_logger: {enabled: true, prof_all: true, verbose: false}}"]
    if args.model == "qwen2-0.5b":
        from transformers import AutoTokenizer

        vocab = len(AutoTokenizer.from_pretrained(root / "models" / "base"))
        ov.append(f"model.out_dir={build_qwen2(root, vocab, args.layers, args.hidden)}")
        ov.append("train.grpo.max_new_tokens=128")
    if args.max_new_tokens:
        ov.append(f"train.grpo.max_new_tokens={args.max_new_tokens}")
    rows = []
    for method in args.methods.split(","):
        for n in nprocs:
            res = launch(n, ov + [f"train.method={method}"] + args.extra, args.steps, root / f"result-{method}-{n}.json")
            print(json.dumps(res), flush=True)
            rows.append(res)
    print(f"\n{'method':<16}{'nproc':>6}{'step s':>10}{'tokens/s':>12}{'comm share':>12}{'peak MB':>10}")
    for r in rows:
        print(f"{r['method']:<16}{r['nproc']:>6}{r['step_s']:>10.3f}{r['tokens_per_s']:>12.1f}"
              f"{r['comm_share']:>12.1%}{r['peak_memory_mb']:>10.0f}")
    for method in args.methods.split(","):
        by_n = {r["nproc"]: r for r in rows if r["method"] == method}
        if 1 in by_n and 2 in by_n:
            ratio = by_n[1]["step_s"] / by_n[2]["step_s"]
            print(f"{method}: scaling 1 -> 2 processes (same global batch): {ratio:.2f}x step-time speedup "
                  f"(ideal 2.00x); communication {by_n[2]['comm_share']:.1%} of a 2-process step")


if __name__ == "__main__":
    main()
