"""Text in, text out: batched generation from prompts (strings) for evaluation and demonstrations.

A thin layer over the one generate loop, `bridgerl.rollout.hf.HFEngine` (token ids, left padding): it
tokenizes the prompts, stops at every EOS id of the model (its generation config's, e.g. SmolLM2's
<|im_end|> and <|endoftext|>, and the tokenizer's: as the rollouts do) and decodes the responses. `Generated` is also how
the trainer hands a rollout batch around.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Generated:
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # without padding; ends with EOS when the model stopped
    texts: list[str]
    truncated: list[bool]  # hit max_new_tokens without EOS


def stop_ids(model, tokenizer) -> list[int]:
    """The model's generation-config EOS ids (an int or a list), then the tokenizer's, unique."""
    from bridgerl.rollout.base import _ids

    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return list(dict.fromkeys(_ids(gen_eos) + _ids(tokenizer.eos_token_id)))


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, batch_size: int = 64, **generate_kwargs) -> Generated:
    """Generate one response per prompt; temperature 0 is greedy, sampling draws from torch's RNG.
    `generate_kwargs` go to `model.generate` (e.g. a `logits_processor`, `synced_gpus`). A response is
    exactly the sampled tokens: up to and including the first EOS, or max_new_tokens of them."""
    from bridgerl.rollout.hf import HFEngine

    engine = HFEngine(model, stop_ids(model, tokenizer), pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                      generate_kwargs=generate_kwargs)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out = Generated([], [], [], [])
    for prompt, (r,) in zip(ids, engine.generate(ids, 1, temperature, top_p, max_new_tokens)):
        out.prompt_ids.append(list(prompt))
        out.response_ids.append(r.token_ids)
        out.texts.append(tokenizer.decode(r.token_ids, skip_special_tokens=True))
        out.truncated.append(r.finish_reason == "length")
    return out
