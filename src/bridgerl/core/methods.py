"""The tables of training methods and of their update rules: declared once, read everywhere.

Each `Rule` (an update rule: its computation is `bridgerl.train.updates.UPDATES[name]`) declares what one
iteration needs and does: whether it draws a rollout batch, a demonstration batch, takes λ, and its passes
(forward+backward over the rollouts and over the demonstrations, optimizer steps) as functions of the PPO
epochs E, the mini-batches M and the shadow steps k. The trainer draws batches by these flags and the cost
model (bridgerl.comparison.costs) counts by these passes; a test checks the passes against the trainer's own
counts.

Each `Method` says which models it builds (a LoRA adapter w, the RL-only shadow θ̂, whether w is trained),
how its iterations are split (cold start's SFT phase first; whether the SFT batch follows the RL
mini-batches) and which rule one iteration applies; the data it uses (RL prompts, demonstrations) follows
from its rules. The configuration's allowed values, model building, the trainer's dispatch, sharding,
`bridgerl compare`, the compare pipeline and the tests all read these tables. It imports nothing
(the configuration reads it).

The two ablations of BRIDGE's upper level: `bridge_frozen_w` (w never trains: does training w help?) and
`bridge_single_level` (w trains at the same β, by ∇w of the lower level's −[(1−λ)J_SFT(θ,w) + λJ_RL(θ,w)],
with no shadow θ̂: does maximizing the cooperative gain help, or only an adapter with its own rate?).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

Passes = Callable[[int, int, int], int]  # (E, M, k) -> count


@dataclass(frozen=True)
class Rule:
    name: str
    rollouts: bool  # draws a rollout batch (prompts of the prepared RL set)
    demos: bool  # draws a demonstration batch
    rl_passes: Passes  # forward+backward passes over the rollout batch
    sft_passes: Passes  # ... over the demonstration batch
    optimizer_steps: Passes
    lam: bool = False  # takes λ (train.bridge.lam and its schedule)

    def passes(self, ppo_epochs: int, mini_batches: int, shadow_steps: int) -> tuple[int, int, int]:
        """(rollout passes, demonstration passes, optimizer steps) of one iteration; shadow_steps 0: no shadow."""
        a = (ppo_epochs, mini_batches, shadow_steps)
        return self.rl_passes(*a), self.sft_passes(*a), self.optimizer_steps(*a)


RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("sft", rollouts=False, demos=True, rl_passes=lambda E, M, k: 0, sft_passes=lambda E, M, k: 1,
         optimizer_steps=lambda E, M, k: 1),
    Rule("rl", rollouts=True, demos=False, rl_passes=lambda E, M, k: E, sft_passes=lambda E, M, k: 0,
         optimizer_steps=lambda E, M, k: E * M),
    Rule("alternating", rollouts=True, demos=True, rl_passes=lambda E, M, k: E, sft_passes=lambda E, M, k: 1,
         optimizer_steps=lambda E, M, k: E * M + 1),
    Rule("mixed", rollouts=True, demos=True, rl_passes=lambda E, M, k: E, sft_passes=lambda E, M, k: E,
         optimizer_steps=lambda E, M, k: E * M),
    # policy and shadow each pass over the rollouts (k shadow steps: k−1 shadow-only, then the joint one)
    Rule("bridge", rollouts=True, demos=True, lam=True, rl_passes=lambda E, M, k: E * (1 + k),
         sft_passes=lambda E, M, k: E, optimizer_steps=lambda E, M, k: E * M * max(k, 1)),
)}


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    update: str  # the update rule of one iteration: a key of RULES (and of bridgerl.train.updates.UPDATES)
    lora: bool = False  # wraps θ with a LoRA adapter w (merged at export)
    shadow: bool = False  # keeps the RL-only shadow θ̂ (sharing w)
    trains_w: bool = False  # w is trained (else frozen at its initialization)
    sft_first: bool = False  # train.cold_start_sft_steps SFT iterations before the RL ones
    sft_in_minibatches: bool = False  # the SFT batch is split alongside the RL mini-batches (one loss each)
    color: str = "#000000"  # its line in comparison plots

    @property
    def phases(self) -> tuple[str, ...]:
        """The update rules its iterations apply."""
        return ("sft", self.update) if self.sft_first else (self.update,)

    @property
    def rl(self) -> bool:
        """Draws rollouts (prompts from the prepared RL set)."""
        return any(RULES[p].rollouts for p in self.phases)

    @property
    def sft(self) -> bool:
        """Draws demonstrations."""
        return any(RULES[p].demos for p in self.phases)

    def phase(self, step: int, cold_start_sft_steps: int) -> str:
        """The update rule iteration `step` applies ('sft' during cold start's first phase)."""
        if self.sft_first and step < cold_start_sft_steps:
            return "sft"
        return self.update


_TABLE = (
    Method("sft", "SFT only on the demonstrations", "sft", color="#7f7f7f"),
    Method("rl_zero", "GRPO from the base model", "rl", color="#1f77b4"),
    Method("cold_start", "SFT, then GRPO from the SFT model", "rl", sft_first=True,
           color="#ff7f0e"),
    Method("alternating", "each iteration one GRPO step, then one SFT step", "alternating",
           color="#9467bd"),
    Method("mixed", "one loss (1-mu) L_GRPO + mu L_SFT (CHORD-style)", "mixed",
           sft_in_minibatches=True, color="#8c564b"),
    Method("bridge", "cooperative SFT + RL by bilevel optimization (θ, θ̂, w)", "bridge",
           lora=True, shadow=True, trains_w=True, sft_in_minibatches=True, color="#d62728"),
    Method("bridge_frozen_w", "BRIDGE without the upper level (w frozen, no shadow)", "bridge",
           lora=True, sft_in_minibatches=True, color="#e377c2"),
    Method("bridge_single_level", "BRIDGE's θ and w both trained by the lower-level objective (no shadow, no "
           "cooperative term)", "bridge", lora=True, trains_w=True, sft_in_minibatches=True,
           color="#17becf"),
)

METHODS: dict[str, Method] = {m.name: m for m in _TABLE}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHOD_NAMES)})") from None
