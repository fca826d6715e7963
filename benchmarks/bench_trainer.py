"""Per-iteration cost of training methods on the tiny model, measured so that ratios can be trusted on a
busy machine (a benchmark, not a test).

- The compared methods run in ONE process, interleaved A B B A A B ... (each repetition one iteration
  of every method, the order reversed every other repetition), so load from elsewhere hits them alike.
- Wall time and CPU time (the process's, all threads) of each iteration; min and median over the
  repetitions; the load average before and after.
- Response lengths fixed (EOS suppressed until train.grpo.max_new_tokens) for the per-iteration cost,
  since the methods' policies write answers of different lengths; `--lengths natural` (or both) times
  them as they sample.

    python benchmarks/bench_trainer.py [--methods rl_zero,bridge] [--reps 7] [--threads 1] [--lengths both]

Ratios are against the first method. With `--trl` (TRL installed: `pip install -e ".[bench]"`), TRL's
GRPOTrainer on the same model, prompts, reward and batch is timed too, interleaved with ours: each of its
steps is followed (from a TrainerCallback) by one iteration of each of our methods. It builds a small
project (data, tiny base model, demos) in a temporary directory first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _cfg(root: Path, *over: str):
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import path_overrides

    from bridgerl.config import load_config

    return load_config(REPO / "params.yaml", path_overrides(root) + ["tracking.enabled=false", "train.eval_every=0",
                                                                   "model.tiny.pretrain_steps=100", *over])


def make(cfg, method: str, fixed: bool):
    """A trainer of `method`, warmed up by one iteration; fixed: every rollout is max_new_tokens long."""
    from bridgerl.train.trainer import make_trainer

    c = cfg.model_copy(deep=True)
    c.train.method = method
    tr = make_trainer(c, device="cpu")
    tr.rollout.ignore_eos = fixed  # the rollout engine (HF or vLLM) generates max_new_tokens every time
    tr.train_step()
    return tr


def interleaved(trainers: dict, reps: int) -> dict:
    """{method: [(wall_s, cpu_s, response_length, phase), ...]}, one iteration of each per repetition, A B B A ..."""
    names = list(trainers)
    out = {m: [] for m in names}
    for r in range(reps):
        for m in (names if r % 2 == 0 else names[::-1]):
            w0, c0 = time.perf_counter(), time.process_time()
            metrics = trainers[m].train_step()
            out[m].append((time.perf_counter() - w0, time.process_time() - c0, metrics.get("response_length", 0.0),
                           metrics["phase"]))
    return out


def with_trl(cfg, trainers: dict, reps: int, fixed: bool) -> dict:
    """TRL's GRPOTrainer steps interleaved with one iteration of each of `trainers` after each step."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from bridgerl.core.io import read_jsonl
    from bridgerl.model.loading import load_model, load_tokenizer
    from bridgerl.model.prompts import render_prompt
    from bridgerl.rewards import is_correct

    t, g = cfg.train, cfg.train.grpo
    tok = load_tokenizer(cfg.model.out_dir)
    model = load_model(cfg.model.out_dir)
    rows = read_jsonl(Path(cfg.data.out_dir) / "rl_train.jsonl")
    ds = Dataset.from_list([{"prompt": render_prompt(r["problem"], tok, cfg.eval.prompt_template,
                                                     cfg.eval.use_chat_template), "answer": r["answer"]} for r in rows])
    out = {"trl_grpo": [], **{m: [] for m in trainers}}

    def reward(completions, answer, **_):
        return [1.0 if is_correct("synthetic", c, a) else 0.0 for c, a in zip(completions, answer)]

    class Interleave(TrainerCallback):
        def __init__(self):
            self.t0 = self.c0 = None
            self.lengths = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            if state.global_step > 1:  # the first step warms up
                out["trl_grpo"].append((wall, cpu, float("nan"), "rl"))
                for m, tr in trainers.items():
                    w0, c0 = time.perf_counter(), time.process_time()
                    metrics = tr.train_step()
                    out[m].append((time.perf_counter() - w0, time.process_time() - c0,
                                   metrics.get("response_length", 0.0), metrics["phase"]))

    gen_kwargs = {"min_new_tokens": g.max_new_tokens} if fixed else None
    with tempfile.TemporaryDirectory() as d:
        args = GRPOConfig(output_dir=d, per_device_train_batch_size=t.prompt_batch * g.group_size,
                          num_generations=g.group_size, max_completion_length=g.max_new_tokens,
                          learning_rate=t.lr_theta, beta=g.kl_coef, epsilon=g.clip_eps, temperature=g.temperature,
                          max_steps=reps + 1, logging_steps=1000, save_strategy="no", report_to="none",
                          use_cpu=True, seed=cfg.seed, loss_type="dapo", bf16=False, fp16=False,
                          generation_kwargs=gen_kwargs)
        GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok,
                    callbacks=[Interleave()]).train()
    return out


def report(title: str, res: dict) -> None:
    names = list(res)
    base = names[0]
    med = {m: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for m, v in res.items()}
    mins = {m: (min(x[0] for x in v), min(x[1] for x in v)) for m, v in res.items()}
    print(f"\n{title}")
    print(f"{'method (phase)':<26}{'wall min':>10}{'wall med':>10}{'cpu min':>10}{'cpu med':>10}{'resp len':>10}"
          f"   ratio to {base}: wall med / wall min / cpu med")
    for m in names:
        rl = statistics.fmean(x[2] for x in res[m])
        phases = "/".join(sorted({x[3] for x in res[m]}))
        name = f"{m} ({phases})"
        print(f"{name:<26}{mins[m][0]:>10.3f}{med[m][0]:>10.3f}{mins[m][1]:>10.3f}{med[m][1]:>10.3f}{rl:>10.1f}"
              f"   {med[m][0] / med[base][0]:.2f}x / {mins[m][0] / mins[base][0]:.2f}x / {med[m][1] / med[base][1]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="rl_zero,bridge", help="comma-separated; ratios are against the first")
    ap.add_argument("--reps", type=int, default=7, help="iterations of each method (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lengths", choices=("fixed", "natural", "both"), default="both")
    ap.add_argument("--trl", action="store_true", help="also TRL's GRPOTrainer, interleaved (needs trl)")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="configuration override key=value")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from bridgerl.stages import build_demos, init_model, prepare

    methods = [m.strip() for m in a.methods.split(",")]
    with tempfile.TemporaryDirectory() as d:
        cfg = _cfg(Path(d), *a.overrides)
        prepare.run(cfg)
        init_model.run(cfg)
        build_demos.run(cfg)
        g = cfg.train.grpo
        print(f"batch {cfg.train.prompt_batch} prompts x {g.group_size} rollouts (+ {cfg.train.demo_batch} demos), "
              f"max {g.max_new_tokens} new tokens; {a.reps} interleaved repetitions; torch threads {a.threads}; "
              f"{os.cpu_count()} CPUs; load average before {os.getloadavg()}")
        for fixed in ((True, False) if a.lengths == "both" else (a.lengths == "fixed",)):
            trainers = {m: make(cfg, m, fixed) for m in methods}
            res = with_trl(cfg, trainers, a.reps, fixed) if a.trl else interleaved(trainers, a.reps)
            report(f"{'fixed' if fixed else 'natural'} response lengths "
                   f"({'EOS ignored until ' + str(g.max_new_tokens) + ' tokens' if fixed else 'as sampled'})", res)
        print(f"\nload average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
