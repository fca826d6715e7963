"""Time training iterations on the tiny model and print ratios (a benchmark, not a test).

1. bridge vs rl_zero: one iteration each at the same prompt batch, group size and lengths;
   prints the per-iteration time of both and bridge/rl_zero.
2. our GRPO iteration (rl_zero) vs TRL's GRPOTrainer on the same model, prompts, reward and batch
   (TRL is optional: `pip install -e ".[bench]"`); prints ours/TRL.

    python benchmarks/bench_trainer.py [--steps 5] [--threads 1]

It builds a small project (data, tiny base model, demos) in a temporary directory first.
"""

from __future__ import annotations

import argparse
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


def time_ours(cfg, method: str, steps: int) -> list[float]:
    from bridgerl.train.trainer import make_trainer

    c = cfg.model_copy(deep=True)
    c.train.method = method
    tr = make_trainer(c, device="cpu")
    tr.train_step()  # warm-up
    times = []
    for _ in range(steps):
        times.append(tr.train_step()["step_time_s"])
    return times


def time_trl(cfg, steps: int) -> list[float] | None:
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        print("TRL not installed: skipping the TRL comparison (pip install -e '.[bench]')")
        return None
    from bridgerl.io import read_jsonl
    from bridgerl.model.loading import load_model, load_tokenizer
    from bridgerl.prompts import render_prompt
    from bridgerl.rewards import is_correct

    t, g = cfg.train, cfg.train.grpo
    tok = load_tokenizer(cfg.model.out_dir)
    model = load_model(cfg.model.out_dir)
    rows = read_jsonl(Path(cfg.data.out_dir) / "rl_train.jsonl")
    ds = Dataset.from_list([{"prompt": render_prompt(r["problem"], tok, cfg.eval.prompt_template), "answer": r["answer"]}
                            for r in rows])

    def reward(completions, answer, **_):
        return [1.0 if is_correct("synthetic", c, a) else 0.0 for c, a in zip(completions, answer)]

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=t.prompt_batch * g.group_size,
                          num_generations=g.group_size, max_completion_length=g.max_new_tokens,
                          learning_rate=t.lr_theta, beta=g.kl_coef, epsilon=g.clip_eps, temperature=g.temperature,
                          max_steps=steps + 1, logging_steps=1000, save_strategy="no", report_to="none",
                          use_cpu=True, seed=cfg.seed, loss_type="dapo", bf16=False, fp16=False)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok,
                              callbacks=[timer])
        trainer.train()
    return timer.times[1:]  # drop the warm-up step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-trl", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from bridgerl.stages import build_demos, init_model, prepare

    with tempfile.TemporaryDirectory() as d:
        cfg = _cfg(Path(d))
        prepare.run(cfg)
        init_model.run(cfg)
        build_demos.run(cfg)
        rl = time_ours(cfg, "rl_zero", a.steps)
        br = time_ours(cfg, "bridge", a.steps)
        m_rl, m_br = statistics.median(rl), statistics.median(br)
        g = cfg.train.grpo
        print(f"batch: {cfg.train.prompt_batch} prompts x {g.group_size} rollouts, max {g.max_new_tokens} new tokens; "
              f"median of {a.steps} iterations, {a.threads} thread(s)")
        print(f"rl_zero iteration: {m_rl:.3f} s   bridge iteration: {m_br:.3f} s   ratio bridge/rl_zero: {m_br / m_rl:.2f}")
        if not a.no_trl:
            trl = time_trl(cfg, a.steps)
            if trl:
                m_trl = statistics.median(trl)
                print(f"TRL GRPOTrainer iteration: {m_trl:.3f} s   ratio ours(rl_zero)/TRL: {m_rl / m_trl:.2f}")


if __name__ == "__main__":
    main()
