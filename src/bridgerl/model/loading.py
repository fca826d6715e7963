"""Loading tokenizers and causal LMs from a model directory or hub id, with the configured dtype."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return _DTYPES[name]


def load_tokenizer(path: str, revision: str | None = None):
    tok = AutoTokenizer.from_pretrained(path, revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(path: str, dtype: torch.dtype | str = torch.float32, revision: str | None = None, device="cpu"):
    """dtype "auto": the checkpoint's own dtype (transformers' dtype="auto")."""
    model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype)
    return model.to(device)


def plain_copy(model: torch.nn.Module, dtype: torch.dtype, device: torch.device | str = "cpu"):
    """A plain (non-PEFT) model of `model`'s architecture and generation config, on `device`, for generation:
    made from the model in memory, not from any directory. Its weights are whatever its initialization gives
    until its owner loads them (the trainer's HF rollout engine pushes π(θ, w)'s merged weights before it
    generates)."""
    import copy

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = torch.device(device)
    # its random initialization must not move the global RNG: a resumed run starts this copy at another step
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        out = AutoModelForCausalLM.from_config(base.config, dtype=dtype)
    out.generation_config = copy.deepcopy(base.generation_config)
    return out.requires_grad_(False)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
