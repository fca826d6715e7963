"""Cost axes of a run that carry over to scale, besides wall time: generated tokens, trained tokens
(tokens through a forward+backward pass) and optimizer steps, cumulated over iterations, and the cost
a method needs to reach a target accuracy on each axis.

All three are the trainer's own counts where the curve has them (`generated_tokens` and
`trained_tokens` per iteration, cumulative `optimizer_steps`). For curves written before the trainer
counted them they follow from the phase (the iteration's update rule), its mean rollout length, the
configuration and the update rules' declared passes (bridgerl.core.methods.RULES), per iteration with P prompts × G rollouts,
D demonstrations, E PPO epochs, M mini-batches and k shadow steps (tests/test_comparison_costs.py checks
both against the trainer):

  rule         generated    trained tokens (forward+backward)       optimizer steps
  sft          0            S                                       1
  rl           P·G·r        E·R                                     E·M
  alternating  P·G·r        E·R + S                                 E·M + 1
  mixed        P·G·r        E·(R + S)                               E·M
  bridge       P·G·r        E·((1 + k)·R + S)   (no shadow: k = 0)   E·M·k (no shadow: E·M)

with r the mean response length, R = P·G·(prompt + r) the rollout tokens and S = D·(prompt + demo)
the demonstration tokens (prompt and demo lengths: their means over the data). Forward-only passes
(reference and behaviour log-probs, generation itself) are not "trained" tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bridgerl.config import Config
from bridgerl.core.methods import METHODS, RULES
from bridgerl.core.stage_table import DEMOS_FILE, RL_TRAIN

AXES = {
    "wall_time_s": "training wall time (s)",
    "generated_tokens": "generated tokens",
    "trained_tokens": "trained tokens (forward+backward)",
    "optimizer_steps": "optimizer steps",
}


@dataclass(frozen=True)
class TokenMeans:
    prompt: float  # tokens of a rendered RL prompt
    demo: float  # tokens of a demonstration sequence (prompt + response + EOS, truncated as in training)


def token_means(cfg: Config) -> TokenMeans:
    """Mean prompt and demonstration lengths in tokens, from the inputs the runs trained on."""
    from bridgerl.core.io import read_jsonl
    from bridgerl.model.loading import load_tokenizer
    from bridgerl.model.prompts import render_prompt

    tok = load_tokenizer(cfg.model.out_dir)
    e = cfg.eval

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    rl = read_jsonl(Path(cfg.data.out_dir) / RL_TRAIN.name)
    demos = read_jsonl(Path(cfg.demos.out_dir) / DEMOS_FILE.name)
    prompt = sum(n(render_prompt(r["problem"], tok, e.prompt_template, e.use_chat_template)) for r in rl) / max(1, len(rl))
    demo = sum(min(cfg.train.sft_max_tokens,
                   n(render_prompt(d["problem"], tok, e.prompt_template, e.use_chat_template)) + n(d["response"]) + 1)
               for d in demos) / max(1, len(demos))
    return TokenMeans(prompt, demo)


def passes(cfg: Config, method: str, phase: str) -> tuple[int, int, int]:
    """Of one iteration: forward+backward passes over its rollout batch, over its demonstration batch,
    and optimizer steps (the rule's own declaration, bridgerl.core.methods.RULES; module docstring)."""
    if phase not in RULES:
        raise ValueError(f"unknown phase {phase!r}")
    g = cfg.train.grpo
    k = cfg.train.bridge.shadow_steps if METHODS[method].shadow else 0
    return RULES[phase].passes(g.ppo_epochs, g.mini_batches, k)


def iteration_cost(cfg: Config, method: str, phase: str, response_length: float, tm: TokenMeans) -> dict:
    """Generated tokens, trained tokens and optimizer steps of one iteration (module docstring)."""
    t, g = cfg.train, cfg.train.grpo
    P, G, D = t.prompt_batch, g.group_size, t.demo_batch
    r = 0.0 if math.isnan(response_length) else response_length
    rl_passes, sft_passes, steps = passes(cfg, method, phase)
    rule = RULES[phase]
    R = P * G * (tm.prompt + r) if rule.rollouts else 0.0
    S = D * tm.demo if rule.demos else 0.0
    return {"generated_tokens": P * G * r if rule.rollouts else 0.0,
            "trained_tokens": rl_passes * R + sft_passes * S, "optimizer_steps": float(steps)}


def _recorded(row: dict, key: str, derived: float) -> float:
    """The curve's value of `key` in this row, else `derived` (curves from before the trainer counted it)."""
    v = row.get(key)
    return float(v) if v not in ("", None) else derived


def cumulative(cfg: Config, method: str, rows: list[dict], tm: TokenMeans) -> list[dict]:
    """Per curve row (step 0 = before training): the cumulative cost on every axis so far (the trainer's
    counts where the row has them, else derived: module docstring)."""
    total = {"generated_tokens": 0.0, "trained_tokens": 0.0, "optimizer_steps": 0.0}
    out = []
    for row in rows:
        phase = row.get("phase") or ""
        if phase and phase != "init":
            c = iteration_cost(cfg, method, phase, _recorded(row, "response_length", math.nan), tm)
            for k in ("generated_tokens", "trained_tokens"):
                total[k] += _recorded(row, k, c[k])
            # the trainer records optimizer steps cumulatively
            total["optimizer_steps"] = _recorded(row, "optimizer_steps", total["optimizer_steps"] + c["optimizer_steps"])
        out.append({"step": int(row["step"]), "wall_time_s": float(row.get("wall_time_s") or 0.0), **total})
    return out


def reach(points: list[tuple[float, float]], target: float) -> float | None:
    """The first cost at which accuracy reaches `target` ((cost, accuracy) points in order); None: never."""
    for cost, acc in points:
        if acc >= target - 1e-9:
            return cost
    return None
