"""The one Trainer: every method, on one process or many, over an engine (bridgerl.train.engines).

One *iteration* draws this rank's share of a prompt batch (rollouts, rewards, GRPO advantages) and/or
of a demo batch, then applies the method's update rule (the table in bridgerl.train.methods; the rules
in bridgerl.train.updates). Sharding, loss weights and metric reduction (bridgerl.train.parallel) are
the normal path and do nothing in one process. Rollouts are generated in ONE method,
`Trainer.generate_rollouts`, the place a rollout engine plugs in.

`make_trainer(cfg)` builds it for this process (process group, seeded models, engine, data);
`Trainer.save_checkpoint` / `load_checkpoint` / `export_models` go through the engine.
"""

from __future__ import annotations

import math
import random
import resource
import time
from pathlib import Path

import numpy as np
import torch

from bridgerl.config import Config
from bridgerl.generation import Generated, generate
from bridgerl.io import read_jsonl
from bridgerl.prompts import render_prompt
from bridgerl.rewards import is_correct
from bridgerl.train.batches import EpochSampler, SeqBatch, collate
from bridgerl.train.engines import make_engine
from bridgerl.train.losses import group_advantages
from bridgerl.train.methods import METHODS
from bridgerl.train.models import Models, build_models
from bridgerl.train.parallel import (
    ProcEnv,
    ShardedSampler,
    all_reduce,
    check_shardable,
    detect,
    init_process_group,
    reduce_metrics,
    weigh,
)
from bridgerl.train.seeded_sampling import SeededSampling, row_seeds
from bridgerl.train.updates import UPDATES, Ctx, rl_logprobs


# ------------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------------
def lam_at(cfg: Config, step: int, total: int, epoch: int) -> float:
    b = cfg.train.bridge
    if b.lam_schedule == "constant":
        return b.lam
    if b.lam_schedule == "linear":
        frac = step / max(1, total - 1)
        return b.lam_start + (b.lam - b.lam_start) * frac
    return min(b.lam, b.lam_start + epoch * b.lam_epoch_increment)


def peak_memory_mb() -> float:
    """Peak GPU memory allocated (reset when a Trainer starts); on CPU the process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def state_memory_mb(models: Models, optimizer: torch.optim.Optimizer) -> float:
    """Memory of the training state: the weights of policy, shadow and reference, their gradients and
    the optimizer state (shared tensors counted once). Comparable across methods on any device."""
    seen, total = set(), 0
    modules = [m for m in (models.policy, models.shadow, models.ref) if m is not None]
    tensors = [p for m in modules for p in m.parameters()]
    tensors += [p.grad for p in tensors if p.grad is not None]
    tensors += [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total / 2**20


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: Config, models: Models, tokenizer, rl_rows: list[dict], demo_rows: list[dict],
                 val_rows: list[dict], device: torch.device | str = "cpu", env: ProcEnv | None = None):
        env = env or ProcEnv()
        check_shardable(cfg, env.world_size)
        self.cfg, self.m, self.tok, self.device, self.env = cfg, models, tokenizer, torch.device(device), env
        t = cfg.train
        self.method = t.method
        self.spec = METHODS[t.method]
        self.rl_rows, self.demo_rows, self.val_rows = rl_rows, demo_rows, val_rows
        W, n = env.world_size, t.grpo.mini_batches
        self.sft_blocks = n if self.spec.sft_in_minibatches else 1
        self.rl_sampler = ShardedSampler(EpochSampler(len(rl_rows), t.prompt_batch, cfg.seed), W, env.rank, n) \
            if rl_rows else None
        self.demo_sampler = ShardedSampler(EpochSampler(len(demo_rows), t.demo_batch, cfg.seed + 1), W, env.rank,
                                           self.sft_blocks) if demo_rows else None
        self.optimizer = self._make_optimizer()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        warm = t.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: min(1.0, (it + 1) / warm) if warm else 1.0)
        self.engine = make_engine(cfg, models, self.optimizer, env)  # may route the models' calls through it
        self.ctx = Ctx(models, self.engine, cfg)
        self.step = 0
        self.elapsed = 0.0  # training wall time, excluding held-out evaluation and checkpointing
        self.history: list[dict] = []
        self._prompt_cache: dict[str, list[int]] = {}
        self.total_steps = self.planned_steps()
        # the KL reference becomes the policy when RL starts (cold start's RL phase, train.grpo.ref_model)
        self.ref_reset_step = t.cold_start_sft_steps \
            if self.spec.sft_first and models.ref is not None and t.grpo.ref_model == "rl_start" else None
        if env.rank > 0:  # ranks sample differently (the models were built from the same seed)
            s = cfg.seed + 7919 * env.rank
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    # -- setup ---------------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        groups = [g for g in self.m.param_groups(self.cfg) if g["params"]]
        if t.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=t.lr_theta)
        return torch.optim.AdamW(groups, lr=t.lr_theta, weight_decay=t.weight_decay,
                                 betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)

    def planned_steps(self) -> int:
        t = self.cfg.train
        steps = t.steps
        if t.epochs and self.rl_rows:
            steps = math.ceil(t.epochs * len(self.rl_rows) / t.prompt_batch)
        if self.spec.sft_first:
            steps += t.cold_start_sft_steps
        return steps

    def phase(self, step: int) -> str:
        """The update rule iteration `step` applies (a key of bridgerl.train.updates.UPDATES)."""
        return self.spec.phase(step, self.cfg.train.cold_start_sft_steps)

    # -- data ----------------------------------------------------------------------------------
    def prompt_text(self, problem: str) -> str:
        """The problem as the model sees it: the same prompt as evaluation."""
        return render_prompt(problem, self.tok, self.cfg.eval.prompt_template, self.cfg.eval.use_chat_template)

    def _prompt_ids(self, problem: str) -> list[int]:
        ids = self._prompt_cache.get(problem)
        if ids is None:
            ids = self._prompt_cache[problem] = self.tok(self.prompt_text(problem), add_special_tokens=False)["input_ids"]
        return ids

    def sft_batch(self) -> SeqBatch:
        """This rank's share of a demo batch, with its loss weights."""
        rows = [self.demo_rows[i] for i in self.demo_sampler.next()]
        eos = self.tok.eos_token_id
        resp = [self.tok(r["response"], add_special_tokens=False)["input_ids"] + [eos] for r in rows]
        prompts = [self._prompt_ids(r["problem"]) for r in rows]
        batch = collate(prompts, resp, self.tok.pad_token_id, self.cfg.train.sft_max_tokens).to(self.device)
        weigh(batch, self.sft_blocks, True, self.env.world_size)
        return batch

    def generate_rollouts(self, prompts: list[str]) -> Generated:
        """One sampled response per prompt from π(θ, w): the one place rollouts are generated."""
        g = self.cfg.train.grpo
        kwargs = self.engine.generate_kwargs()
        if self.cfg.train.distributed.seeded_rollouts:  # rows sampled by their global position's seed
            G = g.group_size
            rows = [p * G + j for p in self.rl_sampler.positions for j in range(G)]
            kwargs["logits_processor"] = [SeededSampling(row_seeds(self.cfg.seed, self.step, rows), g.temperature,
                                                         g.top_p)]
            return generate(self.m.policy, self.tok, prompts, g.max_new_tokens, temperature=0.0,
                            batch_size=len(prompts), **kwargs)
        return generate(self.m.policy, self.tok, prompts, g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                        batch_size=len(prompts), **kwargs)

    @torch.no_grad()
    def rollouts(self) -> tuple[SeqBatch, dict]:
        """G samples per prompt of this rank's share, verified rewards, group advantages, old/ref log-probs."""
        g = self.cfg.train.grpo
        rows = [self.rl_rows[i] for i in self.rl_sampler.next()]
        rows = [r for r in rows for _ in range(g.group_size)]
        prompts = [self.prompt_text(r["problem"]) for r in rows]
        gen = self.generate_rollouts(prompts)
        correct = [is_correct(r["data_source"], o, r["answer"]) for r, o in zip(rows, gen.texts)]
        rewards = torch.tensor([g.reward_correct if c else g.reward_wrong for c in correct], dtype=torch.float32)
        batch = collate(gen.prompt_ids, gen.response_ids, self.tok.pad_token_id).to(self.device)
        batch.extras["advantages"] = group_advantages(rewards, g.group_size, g.scale_rewards).to(self.device)
        if g.ppo_epochs * g.mini_batches > 1:  # else the update's own forward of π(θ, w) gives them
            batch.extras["old_logp"] = rl_logprobs(self.m.policy, batch, self.cfg)[0]
        if self.m.ref is not None:
            batch.extras["ref_logp"] = rl_logprobs(self.m.ref, batch, self.cfg)[0]
        weigh(batch, g.mini_batches, g.loss_agg == "token", self.env.world_size)
        lens = [len(r) for r in gen.response_ids]
        info = {"reward_mean": rewards.mean().item(), "accuracy": float(np.mean(correct)),
                "response_length": float(np.mean(lens)), "truncation_rate": float(np.mean(gen.truncated))}
        return batch, info

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One iteration of the configured method; returns its metrics (averaged over ranks)."""
        t0 = time.perf_counter()
        phase = self.phase(self.step)
        if self.step == self.ref_reset_step:
            self.reset_ref_to_policy()
        self.m.policy.train()
        metrics: dict = {"step": self.step + 1}
        tokens = 0
        rl = sft = None
        lam = None
        if phase != "sft":
            rl, info = self.rollouts()
            tokens += rl.n_tokens
            metrics.update(info)
        if phase != "rl":
            sft = self.sft_batch()
            tokens += sft.n_tokens
        if phase == "bridge":
            lam = metrics["lambda"] = lam_at(self.cfg, self.step, self.total_steps, self.rl_sampler.epoch)
        metrics.update(UPDATES[phase](self.ctx, rl, sft, lam))
        if self.engine.grad_norm is not None:
            metrics["grad_norm"] = self.engine.grad_norm
        self.scheduler.step()
        dt = time.perf_counter() - t0
        self.step += 1
        self.elapsed += dt
        for group in self.optimizer.param_groups:
            metrics[f"lr_{group.get('name', 'theta')}"] = group["lr"]
        metrics.update(step_time_s=dt, tokens_per_s=tokens / dt if dt > 0 else 0.0, peak_memory_mb=peak_memory_mb(),
                       state_memory_mb=state_memory_mb(self.m, self.optimizer),
                       wall_time_s=self.elapsed, phase=phase)
        return reduce_metrics(metrics, self.env.world_size)

    def reset_ref_to_policy(self) -> None:
        """π_ref ← the current policy (cold start with train.grpo.ref_model = rl_start, when RL begins)."""
        ref = dict(self.m.ref.named_parameters())
        with torch.no_grad():
            for name, p in self.m.policy.named_parameters():
                r = ref[name]
                with self.engine.gathered([p]), self.engine.gathered([r], modify=True):
                    r.data.copy_(p.data)

    def _ref_state(self) -> dict | None:
        if self.ref_reset_step is None or self.step <= self.ref_reset_step:
            return None  # the reference is still the initial model (rebuilt from the base)
        sd = {}
        for name, r in self.m.ref.named_parameters():
            with self.engine.gathered([r]):
                sd[name] = r.data.detach().to("cpu", copy=True)
        return sd

    def _load_ref_state(self, sd: dict) -> None:
        with torch.no_grad():
            for name, r in self.m.ref.named_parameters():
                with self.engine.gathered([r], modify=True):
                    r.data.copy_(sd[name].to(r.device, r.dtype))

    @torch.no_grad()
    def heldout_accuracy(self) -> float:
        """Greedy accuracy on the first train.eval_items validation problems (split across ranks)."""
        rows = self.val_rows[: self.cfg.train.eval_items]
        if not rows:
            return float("nan")
        W, r = self.env.world_size, self.env.rank
        mine = rows[r::W]
        n_mine = len(mine)
        mine = mine + rows[: (len(rows) + W - 1) // W - n_mine]  # same number of generate calls on every rank
        prompts = [self.prompt_text(x["problem"]) for x in mine]
        gen = generate(self.m.policy, self.tok, prompts, self.cfg.eval.max_new_tokens, temperature=0.0,
                       batch_size=self.cfg.eval.batch_size, **self.engine.generate_kwargs())
        correct = sum(is_correct(x["data_source"], o, x["answer"]) for x, o in zip(mine[:n_mine], gen.texts))
        c, n = all_reduce([float(correct), float(n_mine)])
        return c / n

    # -- checkpoints and export (through the engine) -------------------------------------------
    def save_checkpoint(self, ckpt_dir: str | Path, key: str, keep: int, extra: dict | None = None) -> Path:
        """All ranks: the engine's checkpoint `ckpt_dir/step-NNNNNN` with the trainer's state."""
        state = {"step": self.step, "elapsed": self.elapsed, "history": self.history,
                 "scheduler": self.scheduler.state_dict(),
                 "rl_sampler": self.rl_sampler.state_dict() if self.rl_sampler else None,
                 "demo_sampler": self.demo_sampler.state_dict() if self.demo_sampler else None,
                 "ref": self._ref_state(), **(extra or {})}
        return self.engine.save(ckpt_dir, self.step, state, rng_state(), key, keep)

    def load_checkpoint(self, ckpt_dir: str | Path, key: str) -> dict | None:
        """All ranks: resume from the newest checkpoint; returns its state (None when there is none)."""
        loaded = self.engine.load(ckpt_dir, key)
        if loaded is None:
            return None
        s, rng = loaded
        self.scheduler.load_state_dict(s["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr
        if self.rl_sampler and s["rl_sampler"]:
            self.rl_sampler.load_state_dict(s["rl_sampler"])
        if self.demo_sampler and s["demo_sampler"]:
            self.demo_sampler.load_state_dict(s["demo_sampler"])
        self.step, self.elapsed, self.history = s["step"], s["elapsed"], s["history"]
        if s.get("ref") is not None:
            self._load_ref_state(s["ref"])
        if rng is not None:
            set_rng_state(rng)
        return s

    def export_models(self) -> Models | None:
        """All ranks: the policy to export (θ with w; gathered under ZeRO-3) on rank 0, None elsewhere."""
        return self.engine.export_models()

    def close(self) -> None:
        """All ranks, at the end: wait for each other, then leave the process group."""
        from bridgerl.train import parallel

        self.engine.close()
        parallel.close()


# ------------------------------------------------------------------------------------------------
# building it
# ------------------------------------------------------------------------------------------------
def load_inputs(cfg: Config) -> tuple[list[dict], list[dict], list[dict]]:
    """The RL prompts, demonstrations and validation problems the method uses."""
    data = Path(cfg.data.out_dir)
    spec = METHODS[cfg.train.method]
    rl = read_jsonl(data / "rl_train.jsonl", required=("id", "problem", "answer", "data_source")) if spec.rl else []
    val = read_jsonl(data / "rl_val.jsonl", required=("id", "problem", "answer", "data_source")) \
        if (data / "rl_val.jsonl").exists() else []
    demos = read_jsonl(Path(cfg.demos.out_dir) / "demos.jsonl", required=("id", "problem", "response")) \
        if spec.sft else []
    if spec.sft and not demos:
        raise ValueError(f"train.method = {cfg.train.method!r} needs SFT demonstrations, but "
                         f"{cfg.demos.out_dir}/demos.jsonl is empty")
    return rl, demos, val


def make_trainer(cfg: Config, env: ProcEnv | None = None, device: torch.device | str | None = None) -> Trainer:
    """This process's trainer: process group (if any), identically seeded models on its device, the data."""
    from bridgerl.model.loading import load_model, load_tokenizer, resolve_dtype

    env = env or detect()
    check_shardable(cfg, env.world_size)
    dev = init_process_group(env, cfg)
    device = torch.device(device) if device is not None else dev
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(cfg.model.out_dir)
    base = load_model(cfg.model.out_dir, resolve_dtype(cfg.model.dtype, device), device=device)
    models = build_models(cfg, base)
    rl, demos, val = load_inputs(cfg)
    return Trainer(cfg, models, tok, rl, demos, val, device=device, env=env)
