"""Batched generation with Hugging Face transformers (left padding), shared by rollouts and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Generated:
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # without padding; ends with EOS when the model stopped
    texts: list[str]
    truncated: list[bool]  # hit max_new_tokens without EOS


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, batch_size: int = 64, **generate_kwargs) -> Generated:
    """Generate one response per prompt; temperature 0 is greedy. `generate_kwargs` go to `model.generate`
    (e.g. a `logits_processor`, `synced_gpus`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = Generated([], [], [], [])
    eos = tokenizer.eos_token_id
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i: i + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        seqs = model.generate(**enc, **kwargs, **generate_kwargs)
        L = enc["input_ids"].shape[1]
        for row, att in zip(seqs, enc["attention_mask"]):
            prompt = row[:L][att.bool()].tolist()
            resp = row[L:].tolist()
            # exactly the sampled tokens: up to the first EOS (after it, generate pads finished rows); a row
            # without EOS ran to the end of the batch's generation, every token sampled (a sampled pad token
            # included: removing it would train on a sequence that was never sampled)
            if eos in resp:
                resp = resp[: resp.index(eos) + 1]
                trunc = False
            else:
                trunc = True
            out.prompt_ids.append(prompt)
            out.response_ids.append(resp)
            out.texts.append(tokenizer.decode(resp, skip_special_tokens=True))
            out.truncated.append(trunc)
    model.train(was_training)
    return out
