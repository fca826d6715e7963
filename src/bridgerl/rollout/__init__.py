"""Rollout engines: sample groups of responses from the current policy π(θ, w) for RL.

Modules:
    base         the interface every engine implements (`RolloutEngine`, `Rollout`) and the stop tokens
                 read from a model directory (every EOS id of its generation config, config and tokenizer)
    hf           `HFEngine`: transformers `generate` on a plain generation model in the training process
    vllm_engine  `VLLMEngine`: a colocated vLLM engine started once per process; weights pushed in place
    weights      `merged_weights`: π(θ, w)'s weights (LoRA merged, never θ̂) as (name, tensor) pairs
                 named like the base model's parameters, the input of `update_weights`
    factory      `select_backend` / `make_engine`: train.rollout.backend = hf | vllm | auto

The trainer uses one engine through `generate` and `update_weights` only; rewards, advantages and
the updates do not depend on which engine produced the tokens.
"""

from bridgerl.rollout.base import Rollout, RolloutEngine, stop_token_ids
from bridgerl.rollout.factory import make_engine, select_backend, vllm_installed
from bridgerl.rollout.weights import merged_weights

__all__ = ["Rollout", "RolloutEngine", "make_engine", "merged_weights", "select_backend", "stop_token_ids",
           "vllm_installed"]
