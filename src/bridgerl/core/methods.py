"""The one table of training methods: what each method is, declared once and read everywhere.

Each `Method` says which data it uses (RL prompts, SFT demonstrations), which models it builds (a LoRA
adapter w, the RL-only shadow θ̂, whether w is trained), how its iterations are split (cold start's SFT
phase first; whether the SFT batch follows the RL mini-batches) and which update rule one iteration
applies (a name in `bridgerl.train.updates.UPDATES`, where the rules live). The configuration's allowed
values, model building, the trainer's dispatch, sharding, `bridgerl compare` and the compare pipeline
all read this table. It imports nothing heavy (config.py reads it).

The two ablations of BRIDGE's upper level: `bridge_frozen_w` (w never trains: does training w help?) and
`bridge_single_level` (w trains at the same β, by ∇w of the lower level's −[(1−λ)J_SFT(θ,w) + λJ_RL(θ,w)],
with no shadow θ̂: does maximizing the cooperative gain help, or only an adapter with its own rate?).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    update: str  # the update rule of one iteration: a key of bridgerl.train.updates.UPDATES
    rl: bool  # draws rollouts (prompts from data/prepared/rl_train.jsonl)
    sft: bool  # draws demonstrations (data/demos/demos.jsonl)
    lora: bool = False  # wraps θ with a LoRA adapter w (merged at export)
    shadow: bool = False  # keeps the RL-only shadow θ̂ (sharing w)
    trains_w: bool = False  # w is trained (else frozen at its initialization)
    sft_first: bool = False  # train.cold_start_sft_steps SFT iterations before the RL ones
    sft_in_minibatches: bool = False  # the SFT batch is split alongside the RL mini-batches (one loss each)
    color: str = "#000000"  # its line in comparison plots

    def phase(self, step: int, cold_start_sft_steps: int) -> str:
        """The update rule iteration `step` applies ('sft' during cold start's first phase)."""
        if self.sft_first and step < cold_start_sft_steps:
            return "sft"
        return self.update


_TABLE = (
    Method("sft", "SFT only on the demonstrations", "sft", rl=False, sft=True, color="#7f7f7f"),
    Method("rl_zero", "GRPO from the base model", "rl", rl=True, sft=False, color="#1f77b4"),
    Method("cold_start", "SFT, then GRPO from the SFT model", "rl", rl=True, sft=True, sft_first=True,
           color="#ff7f0e"),
    Method("alternating", "each iteration one GRPO step, then one SFT step", "alternating", rl=True, sft=True,
           color="#9467bd"),
    Method("mixed", "one loss (1-mu) L_GRPO + mu L_SFT (CHORD-style)", "mixed", rl=True, sft=True,
           sft_in_minibatches=True, color="#8c564b"),
    Method("bridge", "cooperative SFT + RL by bilevel optimization (θ, θ̂, w)", "bridge", rl=True, sft=True,
           lora=True, shadow=True, trains_w=True, sft_in_minibatches=True, color="#d62728"),
    Method("bridge_frozen_w", "BRIDGE without the upper level (w frozen, no shadow)", "bridge", rl=True, sft=True,
           lora=True, sft_in_minibatches=True, color="#e377c2"),
    Method("bridge_single_level", "BRIDGE's θ and w both trained by the lower-level objective (no shadow, no "
           "cooperative term)", "bridge", rl=True, sft=True, lora=True, trains_w=True, sft_in_minibatches=True,
           color="#17becf"),
)

METHODS: dict[str, Method] = {m.name: m for m in _TABLE}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHOD_NAMES)})") from None
