"""The rollout-engine interface and the stop tokens of a model.

An engine turns prompts (token ids, already rendered) into `n` sampled responses each and takes new
weights between rollout batches. Responses are token ids ending with the stop token when generation
stopped there (`finish_reason == "stop"`), or `max_new_tokens` long (`"length"`). An engine may also
return its own log-probabilities of the sampled tokens: the trainer recomputes behaviour log-probs
with its own forward pass and uses the engine's only as a diagnostic (mean |Δ log p|).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

FinishReason = Literal["stop", "length"]


@dataclass
class Rollout:
    token_ids: list[int]  # the response; ends with a stop token when finish_reason == "stop"
    logprobs: list[float] | None  # the engine's log p of each token under the sampling temperature; None: not given
    finish_reason: FinishReason


class RolloutEngine(ABC):
    """Generates rollouts from the weights it was last given."""

    name: str

    @abstractmethod
    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seeds: Sequence[int] | None = None,
                 ignore_eos: bool = False) -> list[list[Rollout]]:
        """`n` rollouts for each prompt, in prompt order. Temperature 0 is greedy. `seeds`: one per prompt
        (the group's sampling seed); `ignore_eos`: always generate `max_new_tokens` (benchmarks)."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights, named like the base model's parameters (`merged_weights`), in place."""

    def close(self) -> None:  # noqa: B027 (optional: engines without processes have nothing to release)
        """Release the engine's processes and memory (idempotent)."""

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ids(v) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


def stop_token_ids(model_dir: str | Path, tokenizer=None) -> list[int]:
    """Every EOS id of a model directory: its generation config's `eos_token_id` (an int or a list: Qwen2.5
    ends chat turns with <|im_end|>, its base EOS is <|endoftext|>), its config's and the tokenizer's."""
    d = Path(model_dir)
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        f = d / name
        if f.is_file():
            ids += _ids(json.loads(f.read_text()).get("eos_token_id"))
    if tokenizer is not None:
        ids += _ids(tokenizer.eos_token_id)
    out = list(dict.fromkeys(ids))  # unique, in order
    if not out:
        raise ValueError(f"{d}: no eos_token_id in generation_config.json, config.json or the tokenizer")
    return out
