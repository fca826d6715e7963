"""Plain chat kept: a few fixed chat prompts answered by a trained model, and its KL to the base model on them.

The comparison trains on math problems; a user adopting a method also needs the model to stay a chat model.
For each run `bridgerl compare` asks the trained model (and once the base model) `PROMPTS` through the chat
template, greedily, and measures the exact KL(π_trained ‖ π_base) along the trained model's own answers: at
each answer position the full next-token distributions of both models (teacher-forced on the same tokens),
Σ_v p(v) (log p(v) − log q(v)), averaged over the answer tokens. 0 means the base model's chat is untouched;
unlike the training curve's KL (to each method's own reference, on math rollouts, a sampled k3 estimate)
it is one yardstick for every method.
"""

from __future__ import annotations

from pathlib import Path

import torch

PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Give me two tips for sleeping well.",
    "Translate 'thank you' into Spanish.",
)
MAX_NEW_TOKENS = 48


def _load(model_dir: str | Path):
    from bridgerl.model.loading import load_model, load_tokenizer

    return load_model(str(model_dir)).eval(), load_tokenizer(str(model_dir))


def _chat_prompt(tokenizer, text: str) -> str:
    from bridgerl.model.prompts import render_prompt

    return render_prompt(text, tokenizer, "{problem}")


def answers(model_dir: str | Path, prompts: tuple[str, ...] = PROMPTS, max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """The model's greedy answers to `prompts` (chat template applied when the tokenizer has one)."""
    return _public(_answers(*_load(model_dir), prompts, max_new_tokens))


def _public(res: dict) -> dict:
    """What results.json keeps: the texts and token counts, not the token ids."""
    n = [len(r) for r in res["response_ids"]]
    return {k: v for k, v in res.items() if k not in ("prompt_ids", "response_ids")} | {"response_tokens": n}


@torch.no_grad()
def _answers(model, tok, prompts: tuple[str, ...], max_new_tokens: int) -> dict:
    from bridgerl.rollout.generation import generate

    gen = generate(model, tok, [_chat_prompt(tok, p) for p in prompts], max_new_tokens)
    return {"prompts": list(prompts), "responses": gen.texts, "prompt_ids": gen.prompt_ids,
            "response_ids": gen.response_ids, "truncated": gen.truncated}


@torch.no_grad()
def kl_per_token(model, base, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[float]:
    """Per answer: the mean over its tokens of KL(model ‖ base) between the full next-token distributions."""
    out = []
    for p, r in zip(prompt_ids, response_ids):
        if not r:
            out.append(0.0)
            continue
        ids = torch.tensor([list(p) + list(r)])
        sl = slice(len(p) - 1, len(p) - 1 + len(r))  # the positions that predict the answer's tokens
        lp = torch.log_softmax(model(ids).logits[0, sl].double(), -1)
        lq = torch.log_softmax(base(ids).logits[0, sl].double(), -1)
        out.append(float((lp.exp() * (lp - lq)).sum(-1).mean()))
    return out


def probe(model_dir: str | Path, base_dir: str | Path, prompts: tuple[str, ...] = PROMPTS,
          max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """The trained model's answers to `prompts` and its KL to the base model along them (per prompt, and the
    token-weighted mean `kl_to_base`)."""
    model, tok = _load(model_dir)
    res = _answers(model, tok, prompts, max_new_tokens)
    base, _ = _load(base_dir)
    kls = kl_per_token(model, base, res["prompt_ids"], res["response_ids"])
    n = [len(r) for r in res["response_ids"]]
    return _public(res) | {"kl_per_prompt": kls, "kl_to_base": sum(k * m for k, m in zip(kls, n)) / max(1, sum(n))}
